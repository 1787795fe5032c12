"""Deferred per-step metrics (``metrics_sync_steps``, the GPU default): the loss is read from the device
every N steps, yet MLflow gets exactly the points the Trainer's per-step path gives."""

from __future__ import annotations

import json

import pytest
from conftest import train_tiny


def _history(run_id: str, key: str) -> list[tuple[int, float]]:
    import mlflow

    return sorted((m.step, m.value) for m in mlflow.tracking.MlflowClient().get_metric_history(run_id, key))


def test_deferred_reads_log_the_same_point_at_every_step(mg_home, tiny_model, sample_data):
    runs = {every: train_tiny(tiny_model, sample_data, max_steps=7, batch_size=3, seed=3, register_as="none",
                              metrics_sync_steps=every, save_steps=3, experiment=f"sync-{every}")
            for every in (1, 4)}
    per_step, deferred = runs[1], runs[4]
    for key in ("train/loss", "train/learning_rate", "system/trainer/epoch"):
        a, b = dict(_history(per_step.run_id, key)), _history(deferred.run_id, key)
        assert [s for s, _ in b] == list(range(1, 8)), key  # every step, once (read at 3, 4, 6, 7)
        assert [v for _, v in b] == pytest.approx([a[s] for s, _ in b], rel=1e-5), key
    assert deferred.metrics["trained_tokens"] == per_step.metrics["trained_tokens"] > 0  # no pad token counted
    assert deferred.metrics["train/loss_final"] == pytest.approx(per_step.metrics["train/loss_final"], rel=1e-5)
    # grad_norm comes from the Trainer's own log, every N steps (and the first); throughput per read window
    assert {s for s, _ in _history(deferred.run_id, "train/grad_norm")} == {1, 4}
    # one throughput point per read: every 4 steps, the last step, and before each checkpoint (3, 6)
    assert {s for s, _ in _history(deferred.run_id, "train/tokens_per_second")} == {3, 4, 6, 7}
    assert all(v > 0 for _, v in _history(deferred.run_id, "train/tokens_per_second"))
    # checkpoints at 3 and 6 (between reads): read before saving, so a resume counts tokens exactly
    for step in (3, 6):
        states = [json.loads((r.output_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").read_text())
                  for r in (per_step, deferred)]
        assert states[1]["num_input_tokens_seen"] == states[0]["num_input_tokens_seen"] > 0, step


def test_sync_steps_is_validated_and_auto_is_one_on_the_cpu(tmp_path):
    from mg_mlflow.config import ConfigError, TrainConfig, build_config
    from mg_mlflow.training.step_stats import sync_every

    base = {"base_model": "m", "dataset": "d.jsonl"}
    assert sync_every(build_config(TrainConfig, overrides=base)) == 1  # no GPU here: the Trainer's own path
    assert sync_every(build_config(TrainConfig, overrides={**base, "metrics_sync_steps": 5})) == 5
    with pytest.raises(ConfigError, match="metrics_sync_steps must be >= 0"):
        build_config(TrainConfig, overrides={**base, "metrics_sync_steps": -1}).validate()


def test_deferred_reads_keep_the_logging_grid(mg_home, tiny_model, sample_data):
    """``logging_steps`` still decides which steps get a point (1, every N-th, the last), whatever the
    read interval; throughput lands on the last point of each read."""
    result = train_tiny(tiny_model, sample_data, max_steps=7, batch_size=3, seed=3, register_as="none",
                        metrics_sync_steps=4, logging_steps=3, experiment="sync-grid")
    assert [s for s, _ in _history(result.run_id, "train/loss")] == [1, 3, 6, 7]
    assert [s for s, _ in _history(result.run_id, "train/tokens_per_second")] == [3, 7]  # reads at 4 and 7
    assert result.metrics["trained_tokens"] > 0


def test_deferred_token_count_reads_every_batch_shape_of_the_objectives():
    """The GPU path's token count (metrics_sync_steps > 1) on the batches each TRL trainer feeds its
    training_step: a pair batch (ORPO, SimPO) counts its chosen and rejected rows, as the per-step path
    does; GRPO's batch is prompts, whose tokens its trainer counts itself (None: nothing counted here)."""
    import torch

    from mg_mlflow.training.step_stats import count_tokens

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert int(count_tokens({"input_ids": torch.zeros(2, 4), "attention_mask": mask}, 0)) == 5  # sft, dpo, kto
    assert int(count_tokens({"input_ids": torch.tensor([[5, 6, 0]])}, 0)) == 2  # no mask: not the pad id
    pairs = {"prompt_input_ids": torch.ones(2, 2), "chosen_input_ids": torch.ones(2, 4), "chosen_attention_mask": mask,
             "rejected_input_ids": torch.ones(2, 4), "rejected_attention_mask": torch.ones(2, 4, dtype=torch.int64)}
    assert int(count_tokens(pairs, 0)) == 5 + 8
    assert count_tokens([{"prompt": "Shout the word: red"}], 0) is None
