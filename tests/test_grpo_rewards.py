"""Rewards for reinforcement learning, checked before anything trains: built-ins score as documented, and a
user's reward file that cannot work (syntax error, a signature TRL cannot call, an exception, the wrong number
of scores) is refused with its file:line, exit code 2 and no MLflow run. No training here."""

from __future__ import annotations

import json
import os

import pytest

from conftest import invoke_cli


def _runs():
    import mlflow

    client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


@pytest.fixture()
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say {w}", "answer": w}) + "\n" for w in ("apple", "river")))
    return path


def _cfg(**kw):
    from mg_mlflow.config import TrainConfig, build_config

    return build_config(TrainConfig, overrides={"base_model": "x", "dataset": "d.jsonl", "objective": "grpo",
                                                "batch_size": 4, **kw})


def _scores(spec, completions, **cfg):
    from mg_mlflow.registry.rewards import build_rewards, score_completions

    records = [{"prompt": [{"role": "user", "content": "q"}], "answer": "Paris"}] * len(completions)
    rewards = build_rewards(_cfg(reward=[spec], **cfg), [spec], records)
    return score_completions(rewards, [r["prompt"] for r in records], completions,
                             {"answer": [r["answer"] for r in records]})[rewards[0].name]


def test_built_in_rewards_score_as_documented(tmp_path):
    assert _scores("exact_match", [" Paris ", "paris", "Paris!"]) == [1.0, 0.0, 0.0]
    assert _scores("contains", ["It is paris.", "Lyon"]) == [1.0, 0.0]
    assert _scores("regex", ["id 42", "none"], reward_regex=r"\d+") == [1.0, 0.0]
    assert _scores("length", ["abcd", "abcdefgh", ""], reward_length_target=4) == [0.0, -1.0, -1.0]
    assert _scores("format", ["<think>x</think><answer>y</answer>", "<answer>y</answer>"]) == [1.0, 0.0]
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "required": ["a"]}))
    assert _scores("json_schema", ['{"a": 1}', '{"b": 1}', "not json"], reward_schema=str(schema)) == [1.0, 0.5, 0.0]
    # conversational completions (what grpo passes for message prompts) score the same as text
    assert _scores("exact_match", [[{"role": "assistant", "content": "Paris"}]]) == [1.0]


def test_reward_specs_take_weights_and_get_stable_metric_names(tmp_path):
    from mg_mlflow.registry.rewards import build_rewards, split_spec

    assert split_spec("exact_match:0.5") == ("exact_match", 0.5)
    assert split_spec("models:/rm@champion:2") == ("models:/rm@champion", 2.0)
    assert split_spec("rewards.py:mine") == ("rewards.py:mine", 1.0)
    records = [{"prompt": [{"role": "user", "content": "q"}], "answer": "a"}]
    rewards = build_rewards(_cfg(reward=["contains", "contains:2"]), ["contains", "contains:2"], records)
    assert [(r.name, r.weight, r.func.__name__) for r in rewards] == [("contains", 1.0, "contains"),
                                                                      ("contains_2", 2.0, "contains_2")]


@pytest.mark.parametrize("source, line, expected", [
    ("def my_reward(prompts, completions, **kw):\n    return [1.0 for c in completions\n", 2, "syntax error"),
    ("def my_reward(completions):\n    return [1.0] * len(completions)\n", 1, "cannot take TRL's call"),
    ("def my_reward(prompts, completions, **kw):\n    return [1.0]\n", 1, "returned 1 values for 2 completions"),
    ("def my_reward(prompts, completions, **kw):\n    x = 1\n    return [c.upper() for c in kw['nope']]\n", 3,
     "KeyError"),
    ("import no_such_module_here\ndef my_reward(prompts, completions, **kw):\n    return [0.0, 0.0]\n", 1,
     "ModuleNotFoundError"),
    ("def my_reward(prompts, completions, **kw):\n    return ['good', 'bad']\n", 1, "must be a float"),
])
def test_a_broken_reward_file_is_refused_with_its_line_before_any_run(mg_home, tiny_model, prompts, tmp_path,
                                                                      source, line, expected):
    path = tmp_path / "rewards.py"
    path.write_text(source)
    proc = invoke_cli(["train", "--objective", "grpo", "--base-model", str(tiny_model), "--dataset", str(prompts),
                       "--reward", f"{path}:my_reward", "--reward", "exact_match", "--batch-size", "4",
                       "--max-steps", "1", "--no-carbon", "--no-system-metrics"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{path}:{line}" in proc.stderr and expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert _runs() == []


@pytest.mark.parametrize("extra, expected", [
    ([], "objective grpo needs at least one --reward"),
    (["--reward", "exact_match", "--num-generations", "3"], "must be a multiple of num_generations=3"),
    (["--reward", "exact_match", "--reward-column", "gold"], "reward exact_match (--reward exact_match) compares "
                                                             "each completion with the column 'gold'"),
    (["--reward", "regex"], "--reward regex needs the pattern"),
    (["--reward", "bleu"], "--reward bleu: not a reward Model Garden knows"),
    (["--reward", "missing.py:f"], "missing.py does not exist"),
    (["--reward", "exact_match", "--generation", "vllm"], "--generation vllm needs a CUDA GPU"),
    (["--reward", "exact_match", "--loss-type", "sigmoid"], "loss_type='sigmoid' is not a grpo loss"),
])
def test_bad_grpo_settings_are_refused_before_any_run(mg_home, tiny_model, prompts, tmp_path, extra, expected):
    proc = invoke_cli(["train", "--objective", "grpo", "--base-model", str(tiny_model), "--dataset", str(prompts),
                       "--batch-size", "4", "--max-steps", "1", "--no-carbon", "--no-system-metrics", *extra],
                      cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr, proc.stderr
    assert _runs() == []


def test_a_prompt_file_with_bad_records_is_refused_with_every_line(mg_home, tiny_model, tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text("\n".join([json.dumps({"prompt": "a", "answer": "x"}), json.dumps({"prompt": ""}),
                               json.dumps({"prompt": "b", "completions": 1, "answer": "y"})]) + "\n")
    proc = invoke_cli(["train", "--objective", "grpo", "--base-model", str(tiny_model), "--dataset", str(data),
                       "--reward", "exact_match", "--batch-size", "4", "--no-carbon"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "p.jsonl:2: field 'prompt' is empty" in proc.stderr
    assert "p.jsonl:3: column 'completions' clashes" in proc.stderr
    assert _runs() == []


def test_evaluate_scores_answers_with_rewards_and_logs_each_mean(mg_home, tiny_model, prompts, tmp_path):
    """`evaluate --reward` on prompts: each reward's mean and the weighted total, one row per prompt."""
    rewards = tmp_path / "mine.py"
    rewards.write_text("def short(prompts, completions, **kw):\n"
                       "    return [1.0 if len(c[0]['content']) < 1000 else 0.0 for c in completions]\n")
    proc = invoke_cli(["evaluate", str(tiny_model), "--dataset", str(prompts), "--reward", "exact_match:2",
                       "--reward", f"{rewards}:short", "--max-new-tokens", "4", "--no-carbon", "--json"])
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)["metrics"]
    assert metrics["eval/reward/exact_match"] == 0.0 and metrics["eval/reward/short"] == 1.0
    assert metrics["eval/reward/total"] == 1.0  # 2 x 0 + 1 x 1
    assert "eval/loss" not in metrics  # prompts have no reference answers to score a loss on
    import mlflow

    from mg_mlflow.evaluation.record import TABLE

    client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run_id = json.loads(proc.stdout)["run_id"]
    assert client.get_run(run_id).data.metrics["eval/reward/short"] == 1.0
    table = json.loads(open(client.download_artifacts(run_id, TABLE)).read())
    assert len(table["data"]) == 2
    assert {"prediction", "reward/exact_match", "reward/short", "reward/total"} <= set(table["columns"])


def test_evaluate_refuses_a_broken_reward_file_before_any_run(mg_home, tiny_model, prompts, tmp_path):
    path = tmp_path / "rewards.py"
    path.write_text("def my_reward(prompts, completions, **kw):\n    return [0.0]\n")
    proc = invoke_cli(["evaluate", str(tiny_model), "--dataset", str(prompts), "--reward", f"{path}:my_reward",
                       "--no-carbon"])
    assert proc.returncode == 2 and f"{path}:1" in proc.stderr and "returned 1 values" in proc.stderr, proc.stderr
    assert _runs() == []


def test_grpo_options_reach_trls_grpo_config_and_trainer_args_are_checked_against_it(tmp_path):
    from mg_mlflow.errors import ConfigError
    from mg_mlflow.registry.rewards import build_rewards
    from mg_mlflow.training.objectives import objective_for

    cfg = _cfg(reward=["length", "exact_match:0.5"], reward_length_target=8, num_generations=2,
               max_completion_length=12, temperature=0.7, beta=0.0, loss_type="dr_grpo", scale_rewards="none",
               epsilon=0.3, trainer_args={"num_iterations": "2"})
    objective = objective_for(cfg)
    objective.rewards = build_rewards(cfg, cfg.reward, [{"prompt": [{"role": "user", "content": "q"}], "answer": "a"}])
    args = objective.settings(tmp_path, False, "hf")
    assert type(args).__name__ == "GRPOConfig"
    assert (args.num_generations, args.max_completion_length, args.temperature, args.beta, args.loss_type,
            args.scale_rewards, args.epsilon, args.reward_weights, args.num_iterations, args.use_vllm) == \
        (2, 12, 0.7, 0.0, "dr_grpo", "none", 0.3, [1.0, 0.5], 2, False)
    assert objective.params()["rewards_resolved"] == "length:1,exact_match:0.5"
    assert objective.reference_note() == "none (beta=0: no KL term)"
    assert objective_for(_cfg(reward=["format"], beta=0.04)).reference_note() == \
        "the starting model (the adapter switched off)"
    with pytest.raises(ConfigError, match="use --num-generations"):
        _cfg(reward=["format"], trainer_args={"num_generations": "8"})
    with pytest.raises(ConfigError, match="not a setting of trl.GRPOConfig"):
        _cfg(reward=["format"], trainer_args={"truncation_mode": "keep_end"})
