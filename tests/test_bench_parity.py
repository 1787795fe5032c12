"""The GPU parity bench's arithmetic and plumbing, on CPU (bench/gpu/bench_parity.py and friends).

MFU arithmetic on known numbers; the peak measurement's bookkeeping; datasets whose token lengths are
exact; bare TRL and `model-garden train` (through mg_timed.py, in process) counting the same real
tokens on the same rows with the same meter; the report's ratios; CPU results refused by the writer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

GPU_DIR = Path(__file__).resolve().parents[1] / "bench" / "gpu"
sys.path.insert(0, str(GPU_DIR))

import mfu  # noqa: E402
import parity_report  # noqa: E402


def test_mfu_arithmetic_on_a_known_case():
    # Llama-3.2-1B shape: 1,235,814,400 parameters (tied embedding once); 20,000 tok/s on a 700 TFLOP/s card
    n, tps, peak = 1_235_814_400, 20_000.0, 700e12
    assert mfu.flops_per_token(n) == 6 * n
    assert mfu.mfu(tps, n, peak) == pytest.approx(6 * n * tps / peak, rel=1e-12)
    assert mfu.mfu(tps, n, peak) == pytest.approx(0.21185, abs=1e-5)
    fields = mfu.mfu_fields(tps, n, peak)
    assert fields["model_tflops"] == pytest.approx(148.2977, rel=1e-5)
    assert fields["mfu_4n"] == pytest.approx(fields["mfu"] * 4 / 6, rel=1e-12)
    assert mfu.matmul_flops(8192) == 2 * 8192**3 == 1_099_511_627_776
    assert mfu.matmul_flops(2, 3, 4) == 48
    # attention's share on the 1B shape at 512 tokens: 12 * 16 * 2048 * 512 = 201 M FLOP/token, 2.7% of 6N
    assert mfu.attention_flops_per_token(16, 2048, 512) / mfu.flops_per_token(n) == pytest.approx(0.02715, abs=1e-4)
    assert mfu.mfu_fields(None, n, peak) == {}
    with pytest.raises(ValueError, match="peak"):
        mfu.mfu(tps, n, 0)


def test_measured_peak_is_the_median_burst():
    import statistics

    peak = mfu.measure_peak(n=32, iters=3, repeats=5, dtype="float32", device="cpu")
    assert len(peak["seconds"]) == 5 and min(peak["seconds"]) > 0 and peak["statistic"] == "median"
    assert peak["peak_flops"] == pytest.approx(2 * 32**3 * 3 / statistics.median(peak["seconds"]), rel=1e-12)
    assert peak["peak_tflops"] == pytest.approx(peak["peak_flops"] / 1e12, rel=1e-12)
    assert peak["best_tflops"] >= peak["peak_tflops"] and peak["spread"] >= 0


def test_param_count_matches_the_loaded_model(tiny_model):
    from transformers import AutoModelForCausalLM

    counted = mfu.param_count(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert counted["n_params"] == sum(p.numel() for p in model.parameters())
    assert counted["layers"] == 2 and counted["hidden"] == 128
    assert counted["n_embedding"] == model.get_input_embeddings().weight.numel()


def test_fixed_rows_are_exact_and_both_forms_hold_the_same_text(tiny_model, tmp_path):
    import bench_data
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    fixed = bench_data.build(tiny_model, tmp_path, "fixed", rows=8, seq=96)
    var = bench_data.build(tiny_model, tmp_path, "var", rows=24, seq=96, min_len=40)
    records = [json.loads(line) for line in Path(fixed["data"]).read_text().splitlines()]
    assert [bench_data.row_tokens(tok, r) for r in records] == [95] * 8
    assert (fixed["min_tokens"], fixed["max_tokens"]) == (95, 95)
    lengths = [bench_data.row_tokens(tok, json.loads(line)) for line in Path(var["data"]).read_text().splitlines()]
    assert 40 <= min(lengths) and max(lengths) <= 95 and len(set(lengths)) > 5
    assert var["mean_tokens"] == pytest.approx(sum(lengths) / len(lengths))
    pc = [json.loads(line) for line in Path(var["pc_data"]).read_text().splitlines()]
    first = json.loads(Path(var["data"]).read_text().splitlines()[0])
    assert pc[0]["prompt"][0]["content"] == f"{first['instruction']}\n{first['input']}"
    assert pc[0]["completion"][0]["content"] == first["output"]


def test_bare_and_platform_are_timed_alike_on_the_same_tokens(tiny_model, mg_home, tmp_path):
    import bench_data
    import bare_trl
    import mg_timed

    import mg_mlflow.training.common as common

    fixed = bench_data.build(tiny_model, tmp_path, "fixed", rows=16, seq=96)
    var = bench_data.build(tiny_model, tmp_path, "var", rows=16, seq=96, min_len=40)
    common_args = ["--steps", "3", "--warmup", "1", "--batch", "4", "--seq", "96"]
    bare_fixed = bare_trl.main(["--model", str(tiny_model), "--data", fixed["pc_data"], *common_args])
    assert bare_fixed["tokens_per_step"] == 4 * 95 and bare_fixed["pad_fraction"] == 0
    assert bare_fixed["grad_accum"] == 1 and bare_fixed["eff_grad_accum"] == 1 and bare_fixed["timed_steps"] == 2
    assert bare_fixed["eff_tokens_seen"] == "no"  # the meter counts; the trainer adds no per-step sync

    bare_var = bare_trl.main(["--model", str(tiny_model), "--data", var["pc_data"], *common_args])
    original = common.trainer_kwargs
    platform = mg_timed.run(["--warmup", "1", "--no-tokens-seen", "--meter-out", str(tmp_path / "m.json"), "--",
                             "train", "--base-model", str(tiny_model), "--dataset", var["data"], "--max-steps", "3",
                             "--batch-size", "4", "--max-seq-length", "96", "--register-as", "none",
                             "--no-carbon", "--no-system-metrics", "--no-progress", "--run-name", "bench-test"])
    assert platform["exit_code"] == 0, platform
    assert common.trainer_kwargs is original  # the toggle's patch is undone
    assert platform["eff_tokens_seen"] == "no" and platform["toggle_no_tokens_seen"] is True
    # same rows, same seed, same batches: the same real tokens per step on both sides, some padding
    assert platform["tokens_per_step"] == bare_var["tokens_per_step"]
    assert platform["slots_per_step"] == bare_var["slots_per_step"]
    assert 0 < platform["pad_fraction"] < 1
    assert json.loads((tmp_path / "m.json").read_text())["tokens_per_step"] == platform["tokens_per_step"]


def _row(variant, side, backend, tps, round_=0, **kw):
    base = {"variant": variant, "side": side, "backend": backend, "method": "lora", "shape": "var",
            "batching": "padded", "toggle": "", "num_gpus": 1, "tokens_per_s": tps, "round": round_}
    return {**base, **kw}


def _rounds(variant, side, backend, values, **kw):
    """One row per round; ``values`` per round (a number is tokens/s; a dict sets several fields)."""
    rows = []
    for k, v in enumerate(values):
        extra = v if isinstance(v, dict) else {"tokens_per_s": v}
        rows.append(_row(variant, side, backend, None, k, **{**kw, **extra}))
    return rows


def test_ratios_pair_like_with_like_round_by_round():
    rows = [*_rounds("bare-u", "bare", "unsloth", [20000.0, 10000.0]),
            *_rounds("mg-u", "mg", "unsloth", [19000.0, 9000.0]),
            *_rounds("bare-h", "bare", "hf", [10000.0, 5000.0]),
            *_rounds("mg-h", "mg", "hf", [{"tokens_per_s": 9500.0, "mg_tokens_per_s": 9000.0,
                                           "mg_tokens_per_s_last": 10000.0}] * 2),
            *_rounds("mg-u-nolog", "mg", "unsloth", [19950.0, 9450.0], toggle="nolog"),
            *_rounds("mg-u-packed", "mg", "unsloth", [38000.0, 18000.0], batching="packed"),
            *_rounds("mg-h-2", "mg", "hf", [{"tokens_per_s": 18000.0, "mg_tokens_per_s": 18000.0,
                                             "mg_tokens_per_s_last": 15000.0}] * 2, num_gpus=2),
            *_rounds("mg-h-fixed", "mg", "hf", [19000.0, 19000.0], shape="fixed"),
            _row("broken", "bare", "hf", None, error="boom")]
    found = parity_report.ratios(rows)
    got = {(r["kind"], r["a"], r["b"]): r for r in found}
    # each pair is one round of both variants: ratios 0.95 and 0.90, median 0.925, range kept
    u = got[("platform/bare tok/s", "mg-u", "bare-u")]
    assert (u["pairs"], u["ratio"], u["lo"], u["hi"]) == (2, pytest.approx(0.925), pytest.approx(0.9),
                                                          pytest.approx(0.95))
    assert got[("platform/bare tok/s", "mg-h", "bare-h")]["per_pair"] == pytest.approx([0.95, 1.9])
    assert got[("unsloth/hf tok/s", "mg-u", "mg-h")]["ratio"] == pytest.approx((2.0 + 9000 / 9500) / 2)
    assert got[("toggled/full tok/s", "mg-u-nolog", "mg-u")]["ratio"] == pytest.approx((1.05 + 1.05) / 2)
    assert got[("batching/padded tok/s", "mg-u-packed", "mg-u")]["ratio"] == pytest.approx((2.0 + 2.0) / 2)
    assert got[("var/fixed rows tok/s", "mg-h", "mg-h-fixed")]["ratio"] == pytest.approx(0.5)
    assert got[("2 GPUs/1 tok/s (MLflow, median)", "mg-h-2", "mg-h")]["ratio"] == pytest.approx(2.0)
    assert got[("2 GPUs/1 tok/s (MLflow, last window)", "mg-h-2", "mg-h")]["ratio"] == pytest.approx(1.5)
    assert not any("broken" in k for k in got)  # a failed row pairs with nothing
    assert got[("unsloth/hf tok/s", "bare-u", "bare-h")]["ratio"] == pytest.approx(2.0)


def test_no_ratio_from_a_single_pair():
    rows = [_row("mg-u", "mg", "unsloth", 19000.0), _row("bare-u", "bare", "unsloth", 20000.0),
            _row("mg-h", "mg", "hf", 9000.0, round_=1)]  # a round the others did not run
    got = {(r["kind"], r["a"], r["b"]): r for r in parity_report.ratios(rows)}
    one = got[("platform/bare tok/s", "mg-u", "bare-u")]
    assert one["pairs"] == 1 and one["ratio"] is None and "no ratio (needs 2)" in one["note"]
    assert got[("unsloth/hf tok/s", "mg-u", "mg-h")]["pairs"] == 0
    md = parity_report.lane_markdown({"meta": {"lane": "x", "card": "H200", "date": "d", "versions": {},
                                               "peak": {"peak_tflops": 700.0, "n": 8192, "repeats": 5},
                                               "params": {"n_params": 1e9}, "data": {},
                                               "args": {"batch": 8, "steps": 90, "warmup": 40, "gc": False}},
                                      "rows": rows, "ratios": parity_report.ratios(rows)})
    assert "| platform/bare tok/s | mg-u | bare-u | 1 | - | - | 1 pair(s): no ratio" in md


def test_rounds_alternate_their_order():
    import variants

    plan = variants.schedule("packing-u,mg-hf-lora-var-padded64", repeat=3)
    names = [(r, v.name) for r, v in plan]
    block = [v.name for v in variants.groups()["packing-u"]]
    assert [n for r, n in names if r == 0][:len(block)] == block
    assert [n for r, n in names if r == 1][:len(block)] == block[::-1]  # ABBA within the block
    assert [n for r, n in names if r == 2][:len(block)] == block
    assert names[-3:] == [(0, "mg-hf-lora-var-padded64"), (1, "mg-hf-lora-var-padded64"),
                          (2, "mg-hf-lora-var-padded64")]  # loose variants form their own block


def test_an_older_result_gets_its_last_window_from_the_exported_runs():
    rows = [*_rounds("mg-h", "mg", "hf", [{"tokens_per_s": 9500.0, "mg_tokens_per_s": 9000.0}] * 2),
            *_rounds("mg-h-2", "mg", "hf", [{"tokens_per_s": 18000.0, "mg_tokens_per_s": 18000.0}] * 2, num_gpus=2)]
    res = {"meta": {}, "rows": rows, "ratios": parity_report.ratios(rows)}
    exported = {"experiments": [{"name": "x", "runs": [
        {"name": "mg-h", "history": {"tokens_per_second": [[20, 3000.0], [30, 6000.0], [10, 1000.0]]}},
        {"name": "mg-h-2", "history": {"tokens_per_second": [[10, 7000.0], [30, 9000.0]]}}]}]}
    parity_report.fill_last_window(res, exported)
    assert [r["mg_tokens_per_s_last"] for r in res["rows"]] == [6000.0] * 2 + [9000.0] * 2  # the highest step's point
    got = {r["kind"]: r["ratio"] for r in res["ratios"]}
    assert got["2 GPUs/1 tok/s (MLflow, last window)"] == pytest.approx(1.5)


def test_the_writer_refuses_cpu_results(tmp_path):
    res = {"meta": {"lane": "main", "card": "cpu", "cpu_smoke": True}, "rows": []}
    (tmp_path / "results.json").write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="CPU smoke"):
        parity_report.write_results([tmp_path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_packing_block_keeps_the_platform_comparison_adjacent_in_both_orders():
    """packing-track-u: full tracking, all tracking off and bare run next to each other in each round,
    so the platform's ratios pair runs minutes apart, not a block apart."""
    import variants

    names = [v.name for r, v in variants.schedule("packing-track-u", repeat=2) if r == 0]
    trio = ["mg-unsloth-lora-var-padded64", "mg-unsloth-lora-var-padded64-untracked", "bare-unsloth-lora-var-padded64"]
    assert names[-3:] == trio and "mg-unsloth-lora-var-packed" in names
    assert "mg-unsloth-lora-var-packed" in [v.name for v in variants.groups()["packing-u"]]


def test_host_profile_splits_the_training_loop_by_phase(tmp_path):
    """py-spy's raw format (``thread (tid): name;frame;...;leaf count``): only the thread that runs the
    Trainer loop is split, by the innermost phase frame; other threads are counted by name."""
    import host_profile

    loop = "thread (7): MainThread;train (t.py:1);_inner_training_loop (t.py:2)"
    (tmp_path / "raw.txt").write_text("\n".join([
        f"{loop};training_step (t.py:3);compute_loss (t.py:4);forward (m.py:1) 60",
        f"{loop};training_step (t.py:3);backward (torch/_tensor.py:5) 20",
        f"{loop};optimizer_step (t.py:6);step (torch/optim/adamw.py:7) 10",
        f"{loop};call_event (transformers/trainer_callback.py:8);on_step_end (mg.py:9) 10",
        "thread (7): MainThread;<module> (x.py:1);import_stuff (x.py:2) 500",  # before the loop: not counted
        "thread (9): mg-carbon;run (c.py:1) 3"]))
    got = host_profile.summarize(tmp_path / "raw.txt")
    assert got["loop_samples"] == 100 and got["training_thread"] == "thread (7): MainThread"
    assert got["share"] == {"forward": 0.6, "backward": 0.2, "optimizer": 0.1, "callbacks": 0.1}
    assert got["other_threads_samples"] == {"mg-carbon": 3}


def test_dpo_bare_and_platform_count_the_same_pair_tokens(tiny_model, mg_home, tmp_path):
    """The dpo group: bare TRL DPOTrainer (implicit reference, and an explicit ref_model copy) and
    `model-garden train --objective dpo` on the same pairs; the meter counts the real tokens of both
    rows of every pair (prompt + chosen, prompt + rejected)."""
    import bare_dpo
    import bench_data
    import mg_timed

    pref = bench_data.build_preference(tiny_model, tmp_path, rows=4, seq=128)
    assert pref["max_tokens"] < 128 and pref["min_tokens"] < pref["max_tokens"]  # nothing truncated, lengths vary
    common_args = ["--model", str(tiny_model), "--data", pref["pc_data"], "--steps", "2", "--warmup", "1",
                   "--batch", "4", "--seq", "128"]
    implicit = bare_dpo.main(common_args)
    explicit = bare_dpo.main([*common_args, "--ref", "model"])
    platform = mg_timed.run(["--warmup", "1", "--meter-out", str(tmp_path / "m.json"), "--", "train",
                             "--base-model", str(tiny_model), "--dataset", pref["data"], "--objective", "dpo",
                             "--max-steps", "2", "--batch-size", "4", "--max-seq-length", "128",
                             "--register-as", "none", "--no-carbon", "--no-system-metrics", "--no-progress",
                             "--run-name", "bench-dpo-test"])
    assert platform["exit_code"] == 0, platform
    # batch = all 4 pairs: each step holds every chosen and rejected row, the total the data measured
    assert implicit["tokens_per_step"] == pref["pair_tokens_total"]
    assert explicit["tokens_per_step"] == platform["tokens_per_step"] == pref["pair_tokens_total"]
    assert implicit["slots_per_step"] == platform["slots_per_step"] > pref["pair_tokens_total"]  # padded
    assert {r["eff_trainer_class"] for r in (implicit, explicit, platform)} == {"DPOTrainer"}
    assert (implicit["eff_ref_model"], platform["eff_ref_model"]) == ("NoneType", "NoneType")  # adapter off
    assert explicit["eff_ref_model"] == "LlamaForCausalLM"


def test_dpo_variants_build_both_command_lines(tmp_path):
    import argparse

    import variants

    names = [v.name for v in variants.groups()["dpo"]]
    assert names == ["bare-hf-lora-dpo", "mg-hf-lora-dpo", "bare-hf-lora-dpo-refmodel", "bare-unsloth-lora-dpo",
                     "mg-unsloth-lora-dpo"]
    a = argparse.Namespace(steps=80, warmup=30, batch=8, seq=512, gc=False)
    data = {"data": "pref.jsonl", "pc_data": "pref.pc.jsonl"}
    bare, mg, ref, *_ = variants.groups()["dpo"]
    cmd = variants.bare_command(ref, a, data, "M", tmp_path / "x.json")
    assert cmd[1].endswith("bare_dpo.py") and cmd[cmd.index("--ref") + 1] == "model"
    assert cmd[cmd.index("--data") + 1] == "pref.pc.jsonl"
    cli = variants.mg_command(mg, a, data, "M", tmp_path / "x.json", "exp")
    assert cli[cli.index("--objective") + 1] == "dpo" and cli[cli.index("--dataset") + 1] == "pref.jsonl"
    assert "batching=padded" not in " ".join(cli)  # preference trainers pad themselves
    with pytest.raises(ValueError, match="no explicit reference"):
        variants.mg_command(variants.dpo_variant("mg", "hf", "model"), a, data, "M", tmp_path / "x.json", "exp")
    # the scaling pair: two runs that must not share a log file or an MLflow run name
    one, two = variants.groups()["dpo-ddp"]
    assert (one.name, two.name) == ("mg-hf-lora-dpo", "mg-hf-lora-dpo-2gpu")
    cli2 = variants.mg_command(two, a, data, "M", tmp_path / "y.json", "exp")
    assert "num_gpus=2" in cli2 and cli2[cli2.index("--objective") + 1] == "dpo"


def test_dpo_ratios_pair_the_implicit_reference_and_compare_the_copy():
    dpo = {"shape": "pref", "objective": "dpo"}
    rows = [*_rounds("bare-hf-dpo", "bare", "hf", [{"tokens_per_s": 10000.0, "peak_train_gb": 10.0}] * 2, **dpo),
            *_rounds("mg-hf-dpo", "mg", "hf", [9600.0, 9800.0], **dpo),
            *_rounds("bare-hf-dpo-refmodel", "bare", "hf",
                     [{"tokens_per_s": 11000.0, "peak_train_gb": 12.5}] * 2, ref="model", **dpo),
            *_rounds("mg-hf-sft", "mg", "hf", [20000.0, 20000.0])]
    got = {(r["kind"], r["a"], r["b"]): r for r in parity_report.ratios(rows)}
    assert got[("platform/bare tok/s", "mg-hf-dpo", "bare-hf-dpo")]["ratio"] == pytest.approx(0.97)
    assert not any(k[0] == "platform/bare tok/s" and k[2] == "bare-hf-dpo-refmodel" for k in got)
    assert got[("ref model/implicit peak GiB", "bare-hf-dpo-refmodel", "bare-hf-dpo")]["ratio"] == pytest.approx(1.25)
    assert got[("ref model/implicit tok/s", "bare-hf-dpo-refmodel", "bare-hf-dpo")]["ratio"] == pytest.approx(1.1)
    assert not any("mg-hf-sft" in k for k in got)  # an sft run pairs with no dpo run
