"""What `train` and `data validate` print: the user's business (records cut at max_seq_length, above a
documented share) and none of the libraries' notices that are not (MLflow's pickling, type-hint and
input-example notices, its dataset-source ambiguity, codecarbon's start-up lines)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import invoke_cli, run_cli

# Library notices a Model Garden training used to print on every run; none is the user's to act on.
NOISE = ("setuptools", "CloudPickle", "Add type hints", "input example was not provided",
         "can be interpreted in multiple ways", "Multiple instances of codecarbon", "offline tracker init")
LONG_ANSWER = " ".join(["the green fox is happy"] * 20)  # 122 tokens with the tiny model's chat template


def _mixed(path: Path, long: int, short: int) -> Path:
    """``long`` records of 122 tokens and ``short`` sample records of 17-30 tokens."""
    from mg_mlflow.data.sample import sample_records

    rows = [{"instruction": "Repeat the story.", "input": "", "output": LONG_ANSWER}] * long
    rows += sample_records(short, seed=3)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_validate_warns_when_more_than_a_tenth_of_records_are_cut(tmp_path, tiny_model):
    from mg_mlflow.data.stats import TRUNCATION_WARN_SHARE

    data = _mixed(tmp_path / "long.jsonl", long=31, short=19)  # 62% longer than 64 tokens
    res = invoke_cli(["data", "validate", str(data), "--base-model", str(tiny_model), "--max-seq-length", "64"])
    text = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 0, text
    assert "valid, with a warning" in text and "31 (62.0%)" in text
    assert "62% of the records are longer than --max-seq-length 64 tokens" in text and "raise --max-seq-length" in text
    assert TRUNCATION_WARN_SHARE == 0.10 and "warned above 10%" in text

    few = _mixed(tmp_path / "few.jsonl", long=1, short=19)  # 5%: below the threshold, no warning
    res = invoke_cli(["data", "validate", str(few), "--base-model", str(tiny_model), "--max-seq-length", "64"])
    assert res.returncode == 0 and "warning" not in res.stdout + res.stderr and "1 (5.0%)" in res.stdout


@pytest.mark.slow
def test_train_prints_no_library_noise_and_warns_and_records_truncation(tmp_path, tiny_model):
    import mlflow

    home = tmp_path / "home"
    data = _mixed(tmp_path / "long.jsonl", long=31, short=19)
    env = {"MG_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    proc = run_cli(["train", "--base-model", str(tiny_model), "--dataset", str(data), "--max-steps", "4",
                    "--max-seq-length", "64", "--eval-split", "0.2", "--batch-size", "4",
                    "--register-as", "quiet", "--carbon-interval-steps", "2", "--no-progress"], env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    noisy = [line for line in out.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, "\n".join(noisy)
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.search_runs([client.get_experiment_by_name("model-garden").experiment_id])[0]
    share = run.data.metrics["truncated_share"]
    assert 0.5 < share < 0.8, share  # of the 40 training records of the 80/20 split (62% of all 50)
    flat = " ".join(out.split())
    assert f"{100 * share:.0f}% of the records are longer than max_seq_length 64 tokens" in flat, out[-4000:]
    assert client.get_model_version("quiet", "1").run_id == run.info.run_id  # the model was logged and registered
