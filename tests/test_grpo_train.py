"""Reinforcement learning on the one training path: GRPO learns a reward a tiny model can learn in a CPU-sized
run, every step records every reward, sampled completions are logged as tables, the held-out reward rises and
promote moves the alias on it; a reward model trains, registers, reloads with the same scores and rewards GRPO
by its URI. Real tiny Llama, real sqlite store, CPU.

The learnable task: completions of 16 tokens as close as possible to 16 characters (the ``length`` reward). The
random tiny model samples tokens of ~2 characters (~33 characters, reward ~-1); GRPO moves it to one character
per token. Its greedy answers to held-out prompts are 17-25 characters long before (reward ~-0.24) and 16 after.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import pytest

from conftest import invoke_cli

pytestmark = pytest.mark.slow

BASE = {"system_metrics": False, "carbon": False}
GRPO = {"objective": "grpo", "reward": ["length"], "reward_length_target": 16, "num_generations": 4,
        "max_completion_length": 16, "batch_size": 8, "beta": 0.0, "method": "full", "save_method": "merged_16bit",
        "learning_rate": 1e-2, "sample_steps": 10}
STEPS = 30


def _client():
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    return mlflow.tracking.MlflowClient()


def _train(**options):
    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.training.recipe import train

    return train(build_config(TrainConfig, overrides={**BASE, **options}), show_progress=False)


def _series(client, run_id, key):
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    from mg_mlflow.data.sample import write_prompt_sample

    folder = tmp_path_factory.mktemp("prompts")
    return {"train": write_prompt_sample(folder / "prompts.jsonl", 64),
            "heldout": write_prompt_sample(folder / "heldout.jsonl", 16, seed=7)}


def test_grpo_learns_the_reward_logs_every_step_and_promote_moves_on_the_heldout_reward(mg_home, tiny_model,
                                                                                        prompts, monkeypatch):
    from trl import GRPOTrainer

    from mg_mlflow import metric_names as mn

    common = {**GRPO, "base_model": str(tiny_model), "dataset": str(prompts["train"]), "register_as": "tiny-grpo"}
    start = _train(**{**common, "learning_rate": 1e-9}, max_steps=1, alias="champion")  # v1: the starting model
    generating = []  # an independent timer around TRL's generation method
    inner = GRPOTrainer._generate

    def timed(self, *args, **kwargs):
        began = time.perf_counter()
        try:
            return inner(self, *args, **kwargs)
        finally:
            generating.append(time.perf_counter() - began)

    monkeypatch.setattr(GRPOTrainer, "_generate", timed)
    result = _train(**common, max_steps=STEPS, carbon=True, carbon_country="FRA")  # v2
    client = _client()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mg.objective"] == "grpo"
    assert run.data.params["generation_resolved"] == "generate" and run.data.params["rewards_resolved"] == "length:1"

    # every step records every reward, the total, the lengths and the clipped ratio
    for key in ("train/rewards/length/mean", "train/rewards/length/std", "train/reward", "train/reward_std", "train/completions/mean_length",
                "train/completions/clipped_ratio", "train/clip_ratio/region_mean", "train/time/generation_s"):
        steps = sorted(m.step for m in client.get_metric_history(result.run_id, key))
        assert steps == list(range(1, STEPS + 1)), key
    rewards = _series(client, result.run_id, "train/rewards/length/mean")
    first, last = statistics.mean(rewards[:5]), statistics.mean(rewards[-5:])
    assert last - first > 0.25, rewards  # the reward is -|chars - 16| / 16: a quarter is 4 characters closer
    summary = run.data.metrics
    assert 0 < summary["generation_share"] < 1 and summary["generation_seconds"] > 0

    # carbon where it goes: generation and optimisation each measured, adding up to the run's totals
    gen, opt = ({name: summary[mn.phase(p, name)] for name in mn.PHASE_FIGURES} for p in mn.PHASES)
    assert gen[mn.ENERGY_J] > 0 and opt[mn.ENERGY_J] > 0 and gen[mn.EMISSIONS_MG] > 0 and opt[mn.EMISSIONS_MG] > 0
    for name, total in ((mn.ENERGY_J, mn.TOTAL_ENERGY_J), (mn.EMISSIONS_MG, mn.TOTAL_EMISSIONS_MG),
                        (mn.DURATION_S, mn.DURATION_S)):
        assert gen[name] + opt[name] == pytest.approx(summary[mn.carbon(total)], rel=1e-6), name
    assert len(generating) == STEPS  # one generation call per step here
    assert gen[mn.DURATION_S] == pytest.approx(sum(generating), rel=0.02, abs=0.05)
    assert 0 < summary[mn.carbon(mn.GENERATION_SHARE_TIME)] < 1 and 0 < summary[mn.carbon(mn.GENERATION_SHARE_ENERGY)] < 1
    assert "start and end of every generation call" in run.data.tags["mg.carbon.phases"]

    # the sampled completions, with each reward's score, as tables at step 1 and every 10 steps
    names = sorted(a.path for a in client.list_artifacts(result.run_id, "samples"))
    assert names == ["samples/step_00001.json", "samples/step_00010.json", "samples/step_00020.json",
                     "samples/step_00030.json"]
    table = json.loads(open(client.download_artifacts(result.run_id, names[-1])).read())
    assert {"step", "prompt", "completion", "length", "total", "advantage"} <= set(table["columns"])
    assert len(table["data"]) == 8
    shown = invoke_cli(["runs", "show", result.run_id, "--samples"])
    assert shown.returncode == 0 and "samples/step_00030.json (4 table(s) logged)" in shown.stdout, shown.stdout

    # held-out prompts: the trained version's reward beats the starting one's, and promote follows it
    evaluate = ["evaluate", "--dataset", str(prompts["heldout"]), "--reward", "length", "--reward-length-target",
                "16", "--max-new-tokens", "16", "--no-carbon", "--json"]
    before = invoke_cli([*evaluate[:1], f"models:/tiny-grpo/{start.registered_version}", *evaluate[1:]])
    after = invoke_cli([*evaluate[:1], f"models:/tiny-grpo/{result.registered_version}", *evaluate[1:]])
    assert before.returncode == 0 and after.returncode == 0, before.stderr + after.stderr
    scored = [json.loads(p.stdout)["metrics"] for p in (before, after)]
    assert scored[1]["eval/reward/length"] > scored[0]["eval/reward/length"] + 0.1, scored
    assert scored[1]["eval/reward/total"] == scored[1]["eval/reward/length"]
    promoted = invoke_cli(["promote", "tiny-grpo", "--alias", "champion", "--metric", "eval/reward/length"])
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert str(client.get_model_version_by_alias("tiny-grpo", "champion").version) == result.registered_version
    print(f"rewards/length/mean first 5 steps {first:.3f}, last 5 {last:.3f}; held-out eval/reward/length "
          f"{scored[0]['eval/reward/length']:.3f} -> {scored[1]['eval/reward/length']:.3f}; generation "
          f"{gen[mn.DURATION_S]:.2f} s (timer {sum(generating):.2f} s), {gen[mn.ENERGY_J]:.1f} J; optimisation "
          f"{opt[mn.DURATION_S]:.2f} s, {opt[mn.ENERGY_J]:.1f} J")


def test_a_reward_model_trains_registers_reloads_and_rewards_grpo_by_uri(mg_home, tiny_model, prompts, tmp_path):
    import mlflow

    from mg_mlflow.data.sample import preference_records, write_preference_sample
    from mg_mlflow.errors import MGError
    from mg_mlflow.registry.loader import load_reward_dir, reward_scores, reward_text
    from mg_mlflow.registry.rewards import build_rewards
    from mg_mlflow.config import TrainConfig, build_config

    pairs = write_preference_sample(tmp_path / "pairs.jsonl", 64, "pairs")
    result = _train(base_model=str(tiny_model), dataset=str(pairs), objective="reward", eval_split=0.25,
                    max_steps=16, batch_size=8, learning_rate=3e-3, register_as="tiny-rm")
    client = _client()
    mv = client.get_model_version("tiny-rm", result.registered_version)
    assert mv.tags["mg.objective"] == "reward" and float(mv.tags["mg.verify_max_logit_diff"]) <= 1e-3
    assert len(client.get_metric_history(result.run_id, "train/accuracy")) == 16
    assert 0.0 <= result.metrics["eval/pairwise_accuracy"] <= 1.0
    meta = json.loads((result.model_dir / "mg_model.json").read_text())
    assert meta["head"] == "sequence-classification"

    # the registered pyfunc scores texts as the saved folder does
    model, tok = load_reward_dir(result.model_dir)
    texts = [reward_text(tok, [{"role": "user", "content": r["prompt"]}], r["chosen"])
             for r in preference_records(4, seed=3)]
    served = mlflow.pyfunc.load_model(f"models:/tiny-rm/{result.registered_version}").predict(texts)
    assert max(abs(a - b) for a, b in zip(served, reward_scores(model, tok, texts))) < 1e-4

    # a GRPO reward by URI, logged under the registered name; beta > 0: the KL to the starting model per step
    grpo = _train(**{**GRPO, "reward": [f"models:/tiny-rm/{result.registered_version}"], "beta": 0.04},
                  base_model=str(tiny_model), dataset=str(prompts["train"]), max_steps=2, register_as="none")
    for key in ("train/rewards/tiny-rm/mean", "train/rewards/tiny-rm/std", "train/kl"):
        assert len(client.get_metric_history(grpo.run_id, key)) == 2, key

    # a causal language model is no reward model: refused before any run
    base = next(m.name for m in client.search_registered_models()
                if client.get_model_version(m.name, "1").tags.get("mg.save_method") == "base")
    cfg = build_config(TrainConfig, overrides={"base_model": "x", "dataset": "d", "objective": "grpo",
                                               "reward": [f"models:/{base}/1"]})
    with pytest.raises(MGError, match="is not a reward model"):
        build_rewards(cfg, cfg.reward, [{"prompt": [{"role": "user", "content": "q"}]}])
