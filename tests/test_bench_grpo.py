"""The GRPO GPU bench's plumbing on CPU (bench/gpu/bench_grpo.py, bare_grpo.py, grpo_meter.py): both sides run the
same prompts, reward and settings, in alternating order; the ratio needs two pairs; and, in the slow lane, the
CPU smoke runs bare GRPOTrainer and `model-garden train --objective grpo` with the same meter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

GPU_DIR = Path(__file__).resolve().parents[1] / "bench" / "gpu"
sys.path.insert(0, str(GPU_DIR))

import bench_grpo  # noqa: E402


def _flags(cmd: list[str]) -> dict[str, str]:
    return {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}


def test_both_sides_run_the_same_work_in_alternating_order(tmp_path):
    a = bench_grpo.parse(["--backends", "hf,unsloth", "--repeat", "2", "--vllm-gpu-memory-utilization", "0.4"])
    assert bench_grpo.schedule(a) == [(0, "bare", "hf"), (0, "mg", "hf"), (1, "mg", "hf"), (1, "bare", "hf"),
                                      (0, "bare", "unsloth"), (0, "mg", "unsloth"), (1, "mg", "unsloth"),
                                      (1, "bare", "unsloth")]
    bare = _flags(bench_grpo.bare_command(a, "unsloth", "M", "P.jsonl", tmp_path / "b.json"))
    mg_cmd = bench_grpo.mg_command(a, "unsloth", "M", "P.jsonl", tmp_path / "m.json", "exp", "run")
    mg = _flags(mg_cmd[mg_cmd.index("--") + 1:])
    assert _flags(mg_cmd[:mg_cmd.index("--")])["--meter"] == "grpo"
    pairs = {"--model": "--base-model", "--data": "--dataset", "--backend": "--backend", "--steps": "--max-steps",
             "--batch": "--batch-size", "--num-generations": "--num-generations", "--lr": "--learning-rate",
             "--max-completion-length": "--max-completion-length", "--target": "--reward-length-target",
             "--lora-r": "--lora-r", "--lora-alpha": "--lora-alpha"}
    for bare_flag, mg_flag in pairs.items():
        assert bare[bare_flag] == mg[mg_flag], (bare_flag, mg_flag)
    assert mg["--reward"] == "length" and mg["--beta"] == "0" and mg["--loss-type"] == "dapo"
    assert mg["--trainer-arg"] == "vllm_gpu_memory_utilization=0.4" and bare["--vllm-gpu-memory-utilization"] == "0.4"
    # every Model Garden option the bench passes exists (a renamed one would fail the run, not this test)
    from mg_mlflow.config import TrainConfig, build_config

    cfg = build_config(TrainConfig, overrides={"objective": "grpo", "reward": ["length"], "base_model": "M",
                                               "dataset": "P.jsonl", "reward_length_target": int(mg["--reward-length-target"]),
                                               "num_generations": int(mg["--num-generations"]),
                                               "batch_size": int(mg["--batch-size"])})
    assert cfg.num_generations == 8 and cfg.batch_size == 16
    assert bench_grpo.main(["--plan", "--backends", "hf"])["estimate_s"] > 0


def test_a_platform_variant_adds_its_options_and_is_paired_with_bare(tmp_path):
    a = bench_grpo.parse(["--backends", "hf", "--mg-variant", "quiet=--no-carbon --logging-steps 30"])
    assert bench_grpo.schedule(a) == [(0, "bare", "hf"), (0, "mg", "hf"), (0, "mg-quiet", "hf"),
                                      (1, "mg-quiet", "hf"), (1, "mg", "hf"), (1, "bare", "hf")]
    mg_cmd = bench_grpo.mg_command(a, "hf", "M", "P.jsonl", tmp_path / "m.json", "exp", "run", a.extra["mg-quiet"])
    assert mg_cmd[-3:] == ["--no-carbon", "--logging-steps", "30"]

    def row(side, r, cps, **args):
        return {"variant": f"{side}-hf-grpo", "side": side, "backend": "hf", "round": r, "completions_per_s": cps,
                "s_per_step": 1.0, "gen_s_per_step": 0.6, "opt_s_per_step": 0.4, "generation_share": 0.6,
                "eff_args": {"output_dir": f"'/tmp/{side}'", "warmup_steps": "0", "reward_weights": "None",
                             "gradient_checkpointing": "False", **args}}

    out = bench_grpo.summary([row("bare", 0, 10.0), row("mg", 0, 9.0, warmup_steps="0.0", reward_weights="[1.0]"),
                              row("mg-quiet", 0, 10.0), row("mg-quiet", 1, 9.5, gradient_checkpointing="True"),
                              row("mg", 1, 9.0), row("bare", 1, 10.0)])
    assert out["ratios"]["hf"]["median"] == pytest.approx(0.9)
    assert out["ratios"]["hf mg-quiet"]["median"] == pytest.approx(0.975)
    # where each side writes and equal values spelt apart are shared; a real difference is reported
    assert out["unshared_settings"] == {"hf mg-quiet: gradient_checkpointing": "bare=False mg=True"}


def test_the_bare_reward_is_model_gardens_length_reward():
    import bare_grpo

    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.registry.rewards import build_rewards, score_completions

    texts = ["short", "  exactly sixteen!  ", "a completion much longer than its target of sixteen"]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    records = [{"prompt": [{"role": "user", "content": "q"}]}] * len(texts)
    cfg = build_config(TrainConfig, overrides={"objective": "grpo", "reward": ["length"], "reward_length_target": 16,
                                               "base_model": "M", "dataset": "P.jsonl", "batch_size": 4})
    ours = score_completions(build_rewards(cfg, ["length"], records), [r["prompt"] for r in records], completions, {})
    assert bare_grpo.make_reward(16)(completions) == pytest.approx(ours["length"])


def test_the_ratio_needs_two_pairs_of_the_same_round():
    def row(side, r, cps):
        return {"variant": f"{side}-hf-grpo", "side": side, "backend": "hf", "round": r, "completions_per_s": cps,
                "s_per_step": 1.0, "gen_s_per_step": 0.6, "opt_s_per_step": 0.4, "generation_share": 0.6}

    one = bench_grpo.summary([row("bare", 0, 10.0), row("mg", 0, 9.0)])
    assert one["ratios"]["hf"] == {"pairs": 1, "median": None, "min": 0.9, "max": 0.9}
    two = bench_grpo.summary([row("bare", 0, 10.0), row("mg", 0, 9.0), row("mg", 1, 10.0), row("bare", 1, 10.0),
                              {**row("mg", 2, 50.0), "error": "killed"}])
    assert two["ratios"]["hf"]["pairs"] == 2 and two["ratios"]["hf"]["median"] == pytest.approx(0.95)
    assert two["variants"]["mg-hf-grpo"]["rounds"] == 2


def test_merged_calls_pair_only_runs_of_the_same_call_and_round(tmp_path):
    def row(side, r, cps):
        return {"variant": f"{side}-hf-grpo", "side": side, "backend": "hf", "round": r, "completions_per_s": cps,
                "s_per_step": 1.0, "gen_s_per_step": 0.6, "opt_s_per_step": 0.4, "generation_share": 0.6}

    def call(name, rows, card="NVIDIA H200"):
        path = tmp_path / name / "results.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"meta": {"card": card, "cpu_smoke": False, "args": {
            "size": "1b", "steps": 30, "warmup": 10, "batch": 16, "num_generations": 8, "max_completion_length": 256}},
            "rows": rows}))
        return str(path)

    # each call alone has one pair per round 0; merged, the second call's round 0 is round 1, never paired
    # with the first call's bare run
    first = call("a", [row("bare", 0, 10.0), row("mg", 0, 8.0)])
    second = call("b", [row("bare", 0, 20.0), row("mg", 0, 20.0)])
    merged = bench_grpo.main(["--merge", first, second, "--out", str(tmp_path / "out")])
    assert sorted(r["round"] for r in merged["rows"]) == [0, 0, 1, 1]
    assert merged["summary"]["ratios"]["hf"] == {"pairs": 2, "median": pytest.approx(0.9), "min": 0.8, "max": 1.0}
    assert "2 calls merged" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(SystemExit, match="different cards"):
        bench_grpo.main(["--merge", first, call("c", [row("bare", 0, 1.0)], card="NVIDIA H100"),
                         "--out", str(tmp_path / "x")])


@pytest.mark.slow
def test_cpu_smoke_times_both_sides_with_the_same_meter(tmp_path):
    proc = subprocess.run([sys.executable, str(GPU_DIR / "bench_grpo.py"), "--cpu-smoke", "--out", str(tmp_path / "out"),
                           "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"bare-hf-grpo", "mg-hf-grpo"} and result["meta"]["cpu_smoke"]
    for r in rows.values():
        assert not r.get("error"), r.get("error")
        assert r["eff_use_vllm"] is False and r["timed_steps"] == 2
        assert r["completions_per_step"] == 4  # the batch: 2 prompts x 2 generations
        assert r["completions_per_s"] > 0 and 0 < r["generation_share"] < 1
        assert r["gen_s_per_step"] + r["opt_s_per_step"] == pytest.approx(r["s_per_step"], rel=1e-9)
    # both sides trained with the same trainer settings, apart from where they write and the platform's tracking
    assert result["summary"]["unshared_settings"] == {}
    mg = rows["mg-hf-grpo"]
    assert mg["mg_generation_resolved"] == "generate" and mg["run_status"] == "FINISHED"
    assert mg["carbon"]["system/carbon/generation/energy_j"] > 0
    assert "mg/bare completions/s" in (tmp_path / "out" / "results.md").read_text()
