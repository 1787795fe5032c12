"""Batching (padded / padding_free / packed, ``auto`` by a measured rule): the same tokens give the
same loss in every mode, the run records how batches were built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import train_tiny

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()


@pytest.fixture(scope="module")
def varlen_data(tmp_path_factory):
    """6 instruction records whose lengths differ by up to ~10x (what padding wastes work on)."""
    path = tmp_path_factory.mktemp("varlen") / "data.jsonl"
    with path.open("w") as fh:
        for i, n in enumerate((2, 19, 5, 33, 11, 3)):
            words = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))
            fh.write(json.dumps({"instruction": f"Repeat {i}", "input": words, "output": words[: 4 * n + 3]}) + "\n")
    return path


def first_batch_loss(tiny_model, data, mode: str, responses_only: bool, **extra):
    """(loss, target tokens, batch, trainer) of the first batch the real SFTTrainer would train on, before
    any update (LoRA's B starts at zero, so every mode sees the same initial model)."""
    import torch

    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.training.text import TextModality

    # batch_size 6 = the whole dataset; 6 packed bins hold it too, so every mode sees the same tokens.
    cfg = build_config(TrainConfig, overrides={
        "base_model": str(tiny_model), "dataset": str(data), "batching": mode, "batch_size": 6,
        "max_seq_length": 256, "train_on_responses_only": responses_only, "max_steps": 1, **extra})
    modality = TextModality(cfg)
    train_data, _ = modality.load_data()
    model, tok, peft_config = modality.load("hf", str(tiny_model), None)
    trainer = modality.trainer(model, tok, peft_config, data.parent / f"out-{mode}-{len(extra)}", "hf", train_data,
                               None, [])
    from mg_mlflow.training.batching import effective_mode

    assert effective_mode(trainer) == mode  # what the built trainer really does
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    targets = int(batch["labels"][..., 1:].ne(-100).sum())
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=torch.tensor(targets))
    return float(loss), targets, batch, trainer


@pytest.mark.parametrize("responses_only", [True, False])
def test_same_tokens_give_the_same_loss_in_every_mode(tiny_model, varlen_data, responses_only):
    import torch

    padded, n_padded, b_padded, _ = first_batch_loss(tiny_model, varlen_data, "padded", responses_only)
    free, n_free, b_free, trainer = first_batch_loss(tiny_model, varlen_data, "padding_free", responses_only)
    packed, n_packed, b_packed, _ = first_batch_loss(tiny_model, varlen_data, "packed", responses_only)
    # The batches really are built differently: padded has 6 rows with pad tokens, the others one
    # row with no padding, example boundaries given by position ids that restart at 0 six times.
    assert b_padded["input_ids"].shape[0] == 6 and "attention_mask" in b_padded
    assert int(b_padded["attention_mask"].eq(0).sum()) > 100  # the work padding-free saves
    for flat in (b_free, b_packed):
        assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
        assert int(flat["position_ids"].eq(0).sum()) == 6
        assert flat["input_ids"].shape[1] == int(b_padded["attention_mask"].sum())
    # The same target tokens, and the same mean loss over them. float32 on CPU: the modes differ only
    # in summation order and masking (padded rows vs a block-diagonal mask): measured within 2e-7
    # relative. A leak of context across examples (the control below: position ids that never
    # restart) moved it by 3e-4 (answers only) and 2e-3 (whole sequence) on this random-init model,
    # so 1e-5 separates the two with room on both sides.
    assert n_padded == n_free == n_packed > 50
    assert free == pytest.approx(padded, rel=1e-5)
    assert packed == pytest.approx(padded, rel=1e-5)
    leak = {"input_ids": b_free["input_ids"], "labels": b_free["labels"],
            "position_ids": torch.arange(b_free["input_ids"].shape[1])[None]}
    with torch.no_grad():
        leaked = float(trainer.compute_loss(trainer.model, leak, num_items_in_batch=torch.tensor(n_free)))
    assert abs(leaked - padded) > 1e-4 * padded


def test_bucketed_padding_changes_the_shape_not_the_loss(tiny_model, varlen_data):
    """``pad_to_multiple_of``: every batch is as wide as a multiple of N (fewer distinct shapes for the
    GPU), the extra positions are masked pad, the loss over the same target tokens is unchanged."""
    long = {"max_seq_length": 2048}  # nothing truncated: the plain batch is as wide as its longest example
    plain, n_plain, b_plain, _ = first_batch_loss(tiny_model, varlen_data, "padded", True, **long)
    bucketed, n_bucketed, b_bucketed, trainer = first_batch_loss(tiny_model, varlen_data, "padded", True,
                                                                 pad_to_multiple_of=64, **long)
    assert trainer.args.pad_to_multiple_of == 64
    width, plain_width = b_bucketed["input_ids"].shape[1], b_plain["input_ids"].shape[1]
    assert width % 64 == 0 and width > plain_width and plain_width % 64 != 0
    assert int(b_bucketed["attention_mask"].sum()) == int(b_plain["attention_mask"].sum())  # only pad added
    assert n_bucketed == n_plain
    assert bucketed == pytest.approx(plain, rel=1e-5)


def test_bucketed_padding_is_validated_and_text_only():
    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.errors import ConfigError
    from mg_mlflow.vision_config import VisionTrainConfig

    with pytest.raises(ConfigError, match=r"pad_to_multiple_of must be >= 0 \(0 = off\) or -1 \(auto\), got -8"):
        build_config(TrainConfig, overrides={"base_model": "m", "dataset": "d", "pad_to_multiple_of": -8}).validate()
    with pytest.raises(ConfigError, match="pad_to_multiple_of=64 applies to text runs only"):
        build_config(VisionTrainConfig, overrides={"base_model": "m", "dataset": "d", "pad_to_multiple_of": 64})
    build_config(VisionTrainConfig, overrides={"base_model": "m", "dataset": "d"}).validate()  # auto is fine


def test_auto_bucketing_follows_its_measured_rule():
    """pad_to_multiple_of = -1 (the default): 64 for padded batches on a GPU (measured: docs/performance.md), off on
    the CPU and for rows that are not padded per batch; an explicit value always wins."""
    from mg_mlflow.config import TrainConfig
    from mg_mlflow.training.batching import AUTO_PAD_MULTIPLE, resolve_pad_multiple
    from mg_mlflow.training.text import sft_config

    auto = TrainConfig(base_model="m", dataset="d")
    assert auto.pad_to_multiple_of == -1
    assert resolve_pad_multiple(auto, "padded", "cuda:0")[0] == 64 == AUTO_PAD_MULTIPLE["cuda"][0]
    assert resolve_pad_multiple(auto, "padded", "cpu")[0] == 0
    assert resolve_pad_multiple(auto, "packed", "cuda")[0] == resolve_pad_multiple(auto, "padding_free", "cuda")[0] == 0
    assert resolve_pad_multiple(TrainConfig(base_model="m", dataset="d", pad_to_multiple_of=0), "padded", "cuda") == \
        (0, "requested")
    assert resolve_pad_multiple(TrainConfig(base_model="m", dataset="d", pad_to_multiple_of=32), "padded", "cpu") == \
        (32, "requested")
    assert sft_config(auto, Path("/tmp/x"), False, "hf", "padded").pad_to_multiple_of is None  # this CPU machine


def test_attention_that_ignores_position_ids_is_refused(tiny_model):
    from mg_mlflow.errors import MGError
    from mg_mlflow.training.batching import check_boundaries

    class Cfg:
        _attn_implementation = "my_own_kernel"

    class Model:
        config = Cfg()

    check_boundaries(Model(), "padded", "hf")  # padded never mixes examples
    with pytest.raises(MGError, match="batching=packed needs an attention implementation.*my_own_kernel"):
        check_boundaries(Model(), "packed", "hf")


def test_run_records_requested_and_resolved_batching(mg_home, tiny_model, varlen_data):
    """Three real runs: the params say how batches were built, and padding-free trains exactly like
    padded (same tokens, same losses step by step), while packed puts more examples in a step."""
    import mlflow

    from mg_mlflow.training.batching import AUTO_PAD_MULTIPLE, CPU_WHY

    runs = {mode: train_tiny(tiny_model, varlen_data, batching=mode, max_steps=3, batch_size=3, seed=1,
                             register_as="none") for mode in ("auto", "padding_free", "packed")}
    for mode, result in runs.items():
        run = mlflow.get_run(result.run_id)
        resolved = "padded" if mode == "auto" else mode
        assert (run.data.params["batching"], run.data.params["batching_resolved"]) == (mode, resolved)
        reason = run.data.tags["mg.batching_reason"]
        assert reason.startswith("requested;" if mode != "auto" else f"auto (hf, cpu): {CPU_WHY};")
        assert run.data.params["pad_to_multiple_of_resolved"] == "0"  # auto on the CPU: no bucketing
        assert reason.endswith("pad_to_multiple_of: " + (f"auto (cpu): {AUTO_PAD_MULTIPLE['cpu'][1]}" if mode == "auto"
                                                         else f"auto: {mode} rows are not padded per batch"))
        assert result.metrics["train_steps"] == 3
    padded, free, packed = (runs[m].metrics for m in ("auto", "padding_free", "packed"))
    client = mlflow.tracking.MlflowClient()
    curves = [[m.value for m in client.get_metric_history(runs[m].run_id, "train/loss")] for m in ("auto", "padding_free")]
    assert len(curves[0]) == 3 and curves[1] == pytest.approx(curves[0], rel=1e-5)  # measured: equal to 1e-6
    assert free["trained_tokens"] == padded["trained_tokens"]  # 1134 here: no pad token counted in either
    assert packed["trained_tokens"] > 1.5 * padded["trained_tokens"]  # 3 bins hold more than 3 examples


def test_auto_follows_the_rule_table():
    from mg_mlflow.config import TrainConfig
    from mg_mlflow.training.batching import AUTO_RULES, CPU_WHY, auto_rule, resolve_batching
    from mg_mlflow.vision_config import VisionTrainConfig

    auto = TrainConfig(base_model="m", dataset="d")
    table = {key: resolve_batching(auto, *key) for key in
             [("unsloth", "cuda"), ("unsloth", "cpu"), ("hf", "cuda"), ("hf", "cpu")]}
    assert table == {key: AUTO_RULES[key][0] for key in table} == {key: "padded" for key in table}  # never packed
    assert auto_rule("hf", "cuda:1") == AUTO_RULES[("hf", "cuda")] and auto_rule("unsloth", "cpu") == ("padded", CPU_WHY)
    assert resolve_batching(auto, "unsloth", "cuda:0") == "padded"
    assert resolve_batching(TrainConfig(base_model="m", dataset="d", batching="padding_free"), "hf", "cpu") == \
        "padding_free"
    assert resolve_batching(VisionTrainConfig(base_model="m", dataset="d"), "unsloth", "cuda") == "padded"


def test_auto_rule_is_per_backend_and_names_the_faster_layout():
    """On a GPU the reason is the backend's own measurement (docs/performance.md), and it points to
    ``--batching packed``, which auto never picks (it changes how many examples a step holds)."""
    from mg_mlflow.config import TrainConfig
    from mg_mlflow.training.batching import resolve_with_reason

    auto = TrainConfig(base_model="m", dataset="d")
    unsloth, hf = (resolve_with_reason(auto, b, "cuda")[1] for b in ("unsloth", "hf"))
    assert unsloth != hf
    assert unsloth.startswith("auto (unsloth, cuda): GPU, Unsloth: padded to a multiple of 64 is 1.25x padding-free")
    assert hf.startswith("auto (hf, cuda): GPU, hf: padded to a multiple of 64 is as fast as padding-free")
    assert "--batching packed is 2.1x as fast" in unsloth and "--batching packed is 2.5x as fast" in hf


def test_unsloth_flattened_rows_attention_is_only_touched_on_a_gpu():
    """Unsloth's varlen flash path is opened for flattened rows on a CUDA GPU only (checked there by
    bench/gpu/unsloth_varlen_check.py); padded rows and the hf backend are never touched."""
    from mg_mlflow.training.batching import SEGMENT_SDPA, unsloth_flat_attention

    assert unsloth_flat_attention("padded", "unsloth") == ""
    assert unsloth_flat_attention("packed", "hf") == unsloth_flat_attention("padding_free", "hf") == ""
    assert unsloth_flat_attention("packed", "unsloth") == f"{SEGMENT_SDPA} (no CUDA GPU)"  # this CPU machine


def test_unsloth_cannot_choose_for_us():
    """Unsloth's SFTConfig leaves padding_free None ("Unsloth decides"); ours is always explicit, and
    its own variable is pinned while its trainer is built, then restored."""
    import os

    from mg_mlflow.training.batching import sft_kwargs, unsloth_choice

    for mode in ("padded", "padding_free", "packed"):
        assert isinstance(sft_kwargs(mode, "unsloth")["padding_free"], bool)
    assert sft_kwargs("padded", "unsloth") == {"packing": False, "padding_free": False}
    assert sft_kwargs("packed", "hf")["packing_strategy"] == "bfd"
    os.environ.pop("UNSLOTH_PADDING_CHOICE", None)
    with unsloth_choice("padded", "unsloth"):
        assert os.environ["UNSLOTH_PADDING_CHOICE"] == "padded"
    assert "UNSLOTH_PADDING_CHOICE" not in os.environ
    with unsloth_choice("padded", "hf"):
        assert "UNSLOTH_PADDING_CHOICE" not in os.environ


def test_packing_is_not_an_option_batching_is(tmp_path):
    """``batching=packed`` is the one way to pack: ``packing`` is an unknown option everywhere."""
    from mg_mlflow.cli.train import train_cmd
    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.errors import ConfigError

    (tmp_path / "old.yaml").write_text("base_model: m\ndataset: d\npacking: true\n")
    with pytest.raises(ConfigError, match="unknown option 'packing'"):
        build_config(TrainConfig, tmp_path / "old.yaml")
    with pytest.raises(ConfigError, match="unknown option 'packing'"):
        build_config(TrainConfig, overrides={"base_model": "m", "dataset": "d"}, set_args=["packing=true"])
    assert not [p for p in train_cmd.params if "--packing" in p.opts]
    assert build_config(TrainConfig, overrides={"base_model": "m", "dataset": "d"},
                        set_args=["batching=packed"]).batching == "packed"


@pytest.mark.parametrize("mode", ["padding_free", "packed"])
def test_vision_runs_are_padded_only(mode):
    from mg_mlflow.config import build_config
    from mg_mlflow.errors import ConfigError
    from mg_mlflow.vision_config import VisionTrainConfig

    with pytest.raises(ConfigError, match=f"batching={mode} is not supported for vision runs"):
        build_config(VisionTrainConfig, overrides={"base_model": "m", "dataset": "d", "batching": mode})
    assert build_config(VisionTrainConfig, overrides={"base_model": "m", "dataset": "d"}).batching == "auto"


def test_model_card_says_how_batches_were_bucketed():
    from mg_mlflow.registry.model_card import model_card

    def card(**params):
        return model_card("m", "1", {}, {}, params={"batching": "auto", "batching_resolved": "padded", **params})

    assert "- batching: padded, padded to a multiple of 64 (asked: auto)" in card(pad_to_multiple_of_resolved="64")
    assert "- batching: padded (asked: auto)" in card(pad_to_multiple_of_resolved="0")
    assert "- batching: padded (asked: auto)" in card()  # a run from before the param existed


def test_flattened_rows_on_a_gpu_run_flex_attention():
    """hf backend: padding-free and packed rows get FlexAttention on a CUDA GPU (a document mask from
    position ids), padded rows and every CPU run keep SDPA (FlexAttention has no CPU backward)."""
    from mg_mlflow.training.batching import FLAT_ROW_ATTENTION, attention_implementation

    assert FLAT_ROW_ATTENTION == "flex_attention"
    assert attention_implementation("padding_free", "cuda") == attention_implementation("packed", "cuda:1") == \
        "flex_attention"
    assert attention_implementation("padded", "cuda") == "sdpa"
    assert attention_implementation("padding_free", "cpu") == attention_implementation("packed", "cpu") == "sdpa"


def test_flex_attention_keeps_examples_of_a_flattened_row_apart(tiny_model, varlen_data):
    """The GPU path's attention on the real padding-free batch: the trainer's model switched to
    FlexAttention gives the padded batch's loss over the same targets (forward only: FlexAttention has
    no backward on the CPU), then goes back to SDPA for the reload probe."""
    import torch

    from mg_mlflow.training.backends import inference_attention

    padded, n_padded, _, _ = first_batch_loss(tiny_model, varlen_data, "padded", True)
    _, n_free, b_free, trainer = first_batch_loss(tiny_model, varlen_data, "padding_free", True)
    model = trainer.model
    model.set_attn_implementation("flex_attention")
    assert model.config._attn_implementation == "flex_attention"
    # FlexAttention's mask and scores run eagerly (the same math as the compiled kernel): compiling it
    # on the CPU takes 20-45 s of a 2-core machine with a cold inductor cache, the whole test 5 s.
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        free = float(trainer.compute_loss(model, b_free, num_items_in_batch=torch.tensor(n_free)))
    assert n_free == n_padded and free == pytest.approx(padded, rel=1e-5)
    inference_attention(model)
    assert model.config._attn_implementation == "sdpa"
