"""Preference data is checked before anything runs: every bad record as file:line, a file of the wrong
shape refused naming the shape the objective needs, exit code 2, no MLflow run left behind."""

from __future__ import annotations

import json

import pytest

from conftest import invoke_cli


def _write(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def _runs() -> int:
    import mlflow

    client = mlflow.tracking.MlflowClient()
    return sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())


def _train(tiny_model, data, *args):
    return invoke_cli(["train", "--base-model", str(tiny_model), "--dataset", data, "--no-progress", "--no-carbon",
                       "--no-system-metrics", *args])


def test_every_form_normalises_to_trl_conversational_records(tmp_path):
    from mg_mlflow.data.preference import load_preference_records

    data = _write(tmp_path / "p.jsonl", [
        {"prompt": "Name the colour: a red fox", "chosen": "red", "rejected": "fox"},
        {"prompt": "Hi", "chosen": "hello", "rejected": "go away", "system": "Be kind."},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "no"}]},
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "no"}]},
        {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}],
         "chosen": {"from": "gpt", "value": "hello"}, "rejected": {"from": "gpt", "value": "no"}},
    ])
    recs = load_preference_records(data, "pairs").records
    hello = [{"role": "assistant", "content": "hello"}]
    assert recs[1] == {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
                       "chosen": hello, "rejected": [{"role": "assistant", "content": "go away"}]}
    assert recs[2]["prompt"] == recs[3]["prompt"] == [{"role": "user", "content": "Hi"}]
    assert recs[3]["chosen"] == hello and recs[4]["chosen"] == hello
    assert recs[4]["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]

    unpaired = _write(tmp_path / "u.jsonl", [
        {"prompt": "Hi", "completion": "hello", "label": True},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "no"}], "label": False},
    ])
    recs = load_preference_records(unpaired, "unpaired").records
    assert [r["label"] for r in recs] == [True, False]
    assert recs[1] == {"prompt": [{"role": "user", "content": "Hi"}],
                       "completion": [{"role": "assistant", "content": "no"}], "label": False}


def test_bad_pairs_are_listed_by_file_and_line_before_any_run(mg_home, tiny_model, tmp_path):
    data = _write(tmp_path / "bad.jsonl", [
        {"prompt": "Hi", "chosen": "hello", "rejected": "no"},
        {"prompt": "Hi", "chosen": "same", "rejected": "same"},
        {"prompt": "Hi", "chosen": "", "rejected": "no"},
        {"prompt": "Hi", "chosen": "hello"},
        {"prompt": "Hi", "chosen": "hello", "rejected": "no", "system": "a", "conversations": "x"},
        {"conversations": [{"from": "robot", "value": "Hi"}], "chosen": "a", "rejected": "b"},
        "{not json",
    ])
    proc = _train(tiny_model, data, "--objective", "dpo")
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert f"{data}:2: 'chosen' and 'rejected' are the same answer" in out
    assert f"{data}:3: field 'chosen' is empty" in out
    assert f"{data}:4: missing field 'chosen' or 'rejected'" in out
    assert f"{data}:6: conversations[0].from must be one of" in out
    assert f"{data}:7: not valid JSON" in out
    assert _runs() == 0


def test_kto_records_need_a_boolean_label(mg_home, tiny_model, tmp_path):
    data = _write(tmp_path / "kto.jsonl", [
        {"prompt": "Hi", "completion": "hello", "label": True},
        {"prompt": "Hi", "completion": "no"},
        {"prompt": "Hi", "completion": "no", "label": "maybe"},
        {"prompt": "Hi", "completion": "no", "label": False},
    ])
    proc = _train(tiny_model, data, "--objective", "kto")
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert f"{data}:2: missing field 'label'" in out
    assert f"{data}:3: field 'label' must be true" in out
    assert _runs() == 0


@pytest.mark.parametrize("objective,kind,says", [
    ("sft", "pairs", "objective sft trains on conversations"),
    ("sft", "unpaired", "--objective kto"),
    ("dpo", "unpaired", "objective dpo trains on preference pairs"),
    ("kto", "pairs", "objective kto trains on unpaired labelled answers"),
    ("orpo", "sft", "objective orpo trains on preference pairs"),
])
def test_a_dataset_of_the_wrong_shape_is_refused_naming_the_shape_it_needs(mg_home, tiny_model, tmp_path,
                                                                           objective, kind, says):
    from mg_mlflow.data.sample import write_preference_sample

    data = str(write_preference_sample(tmp_path / f"{kind}.jsonl", 8, kind))
    proc = _train(tiny_model, data, "--objective", objective)
    assert proc.returncode == 2
    assert says in proc.stdout + proc.stderr
    assert _runs() == 0


def test_objective_options_are_checked_together(mg_home, tiny_model, tmp_path):
    from mg_mlflow.data.sample import write_preference_sample

    data = str(write_preference_sample(tmp_path / "p.jsonl", 8, "pairs"))
    proc = _train(tiny_model, data, "--objective", "orpo", "--loss-type", "ipo", "--beta", "0",
                  "--label-smoothing", "0.1", "--batching", "packed")
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    for text in ("objective orpo has no loss variants", "beta must be > 0", "label_smoothing applies to dpo and simpo",
                 "batching=packed is for sft"):
        assert text in out, text
    proc = _train(tiny_model, data, "--objective", "dpo", "--loss-type", "sigmoidd")
    assert proc.returncode == 2 and "not a dpo loss" in proc.stdout + proc.stderr
    proc = _train(tiny_model, data, "--objective", "dpo", "--trainer-arg", "beta=0.3")
    assert proc.returncode == 2 and "use --beta" in proc.stdout + proc.stderr
    assert _runs() == 0


def test_trainer_args_are_checked_against_the_objectives_trl_settings(tmp_path):
    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.errors import ConfigError

    base = {"base_model": "m", "dataset": "d.jsonl"}
    cfg = build_config(TrainConfig, overrides={**base, "objective": "simpo", "trainer_args": ("simpo_gamma=0.8",)})
    assert cfg.trainer_args == {"simpo_gamma": "0.8"}
    with pytest.raises(ConfigError, match="not a setting of trl.SFTConfig"):
        build_config(TrainConfig, overrides={**base, "trainer_args": ("simpo_gamma=0.8",)})
    with pytest.raises(ConfigError, match="not a setting of trl.DPOConfig"):
        build_config(TrainConfig, overrides={**base, "objective": "dpo", "trainer_args": ("simpo_gamma=0.8",)})


def test_submit_objective_dpo_checks_the_pairs_and_queues_the_same_training(mg_home, tiny_model, tmp_path):
    """`submit --objective dpo`: the data is checked as `train --objective dpo` checks it before anything
    is queued, and the job's command line rebuilds the same configuration."""
    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.data.sample import write_preference_sample
    from mg_mlflow.team.submit import training_argv, validate_training

    unpaired = str(write_preference_sample(tmp_path / "u.jsonl", 8, "unpaired"))
    proc = invoke_cli(["submit", "--base-model", str(tiny_model), "--dataset", unpaired, "--objective", "dpo"])
    assert proc.returncode == 2 and "objective dpo trains on preference pairs" in proc.stdout + proc.stderr
    assert not (mg_home / "ray").exists()  # refused before a local Ray was started

    pairs = str(write_preference_sample(tmp_path / "p.jsonl", 8, "pairs"))
    cfg = build_config(TrainConfig, overrides={"base_model": str(tiny_model), "dataset": pairs, "objective": "dpo",
                                                "beta": 0.2, "loss_type": "ipo"})
    validate_training(cfg)
    argv = training_argv("train", cfg)
    assert argv[:2] == ["train", "--no-progress"]
    for flag, value in (("--objective", "dpo"), ("--beta", "0.2"), ("--loss-type", "ipo")):
        assert argv[argv.index(flag) + 1] == value
    from mg_mlflow.cli.train import train_cmd

    ctx = train_cmd.make_context("train", argv[1:])
    rebuilt = build_config(TrainConfig, ctx.params.pop("config_file"), {k: v for k, v in ctx.params.items()
                                                                        if k not in ("set_args", "progress")})
    assert rebuilt == cfg


def test_vision_runs_refuse_a_preference_objective():
    from mg_mlflow.errors import ConfigError
    from mg_mlflow.options import build_config
    from mg_mlflow.vision_config import VisionTrainConfig

    with pytest.raises(ConfigError, match="vision runs train with sft only"):
        build_config(VisionTrainConfig, overrides={"base_model": "m", "dataset": "d.jsonl", "objective": "dpo"})


def test_evaluate_refuses_unpaired_records_before_any_run(mg_home, tmp_path):
    from mg_mlflow.data.sample import write_preference_sample

    data = str(write_preference_sample(tmp_path / "u.jsonl", 8, "unpaired"))
    proc = invoke_cli(["evaluate", "models:/none/1", "--dataset", data, "--no-carbon"])
    assert proc.returncode == 2 and "unpaired labelled answers" in proc.stdout + proc.stderr
    assert _runs() == 0


def test_preference_metrics_count_wins_per_sum_and_per_token(tiny_model):
    """A pair scores a win when the chosen answer's summed (and, separately, per-token) log-probability
    is higher; the margin is the mean summed difference. Checked against the same log-probabilities."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mg_mlflow.evaluation.data import EvalExample
    from mg_mlflow.evaluation.local import answer_logps, preference_metrics

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = [{"role": "user", "content": "Name the colour: a red fox"}]
    examples = [EvalExample(prompt, "red", "x:1", rejected="fox"), EvalExample(prompt, "fox", "x:2", rejected="red"),
                EvalExample(prompt, "red", "x:3", rejected="red red red red")]
    got = preference_metrics(model, tok, examples)
    (red, fox, long), = [answer_logps(model, tok, [(prompt, "red"), (prompt, "fox"), (prompt, "red red red red")])]
    wins = [red[0] > fox[0], fox[0] > red[0], red[0] > long[0]]
    per_token = [red[0] / red[1] > fox[0] / fox[1], fox[0] / fox[1] > red[0] / red[1],
                 red[0] / red[1] > long[0] / long[1]]
    assert got["eval/preference_accuracy"] == pytest.approx(sum(wins) / 3)
    assert got["eval/preference_accuracy_normalized"] == pytest.approx(sum(per_token) / 3)
    assert got["eval/preference_margin"] == pytest.approx((red[0] - fox[0] + fox[0] - red[0] + red[0] - long[0]) / 3,
                                                          rel=1e-5)
    assert long[1] > red[1] and wins[2]  # a longer answer has more tokens and a lower summed log-probability


def test_a_preference_file_with_other_column_names_loads_through_the_column_map(tmp_path, mg_home, tiny_model):
    """--columns maps a file's own names onto prompt/chosen/rejected, for validate and for training's
    loader alike; without the map the file is refused naming the keys."""
    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.training.objectives import objective_for

    data = _write(tmp_path / "qa.jsonl", [{"question": f"Name the colour: a red fox {i}", "good": "red",
                                            "bad": "fox"} for i in range(4)])
    columns = "prompt=question,chosen=good,rejected=bad"
    proc = invoke_cli(["data", "validate", data, "--columns", columns])
    assert proc.returncode == 0 and "--objective dpo" in proc.stdout, proc.stdout + proc.stderr
    cfg = build_config(TrainConfig, overrides={"base_model": str(tiny_model), "dataset": data, "objective": "dpo",
                                               "columns": {"prompt": "question", "chosen": "good",
                                                           "rejected": "bad"}})
    train, _ = objective_for(cfg).load_data()
    assert train.records[0]["chosen"] == [{"role": "assistant", "content": "red"}]
    assert train.records[0]["prompt"][-1] == {"role": "user", "content": "Name the colour: a red fox 0"}
    refused = invoke_cli(["data", "validate", data])
    assert refused.returncode == 2 and "question" in refused.stderr
    assert _runs() == 0
