"""Held-out data that does not leak: `data sample --split` and `data split` write disjoint train and
held-out files, and `evaluate` warns when its dataset shares records with the model's training data."""

from __future__ import annotations

import json

from conftest import invoke_cli, train_tiny


def _lines(path) -> list[str]:
    return [json.dumps(json.loads(line), sort_keys=True) for line in path.read_text().splitlines() if line.strip()]


def test_data_sample_split_writes_disjoint_train_and_heldout(tmp_path):
    train, held = tmp_path / "data.jsonl", tmp_path / "heldout.jsonl"
    proc = invoke_cli(["data", "sample", str(train), "-n", "128", "--split", "0.2", "--heldout", str(held)])
    assert proc.returncode == 0, proc.stderr
    t, h = _lines(train), _lines(held)
    assert not set(t) & set(h)                       # no held-out record is a training record
    assert len(h) == len(set(h)) >= 10 and len(t) >= 90
    assert f"{len(t)} training records" in proc.stdout and f"{len(h)} held-out records" in proc.stdout
    # the default held-out path sits beside the training file
    proc = invoke_cli(["data", "sample", str(tmp_path / "chat.jsonl"), "--format", "messages", "--split", "0.1"])
    assert proc.returncode == 0 and (tmp_path / "chat-heldout.jsonl").is_file()
    assert not set(_lines(tmp_path / "chat.jsonl")) & set(_lines(tmp_path / "chat-heldout.jsonl"))


def test_data_split_of_a_file_with_duplicates_keeps_them_on_one_side(tmp_path):
    src = tmp_path / "mine.jsonl"
    records = [{"instruction": "Say", "input": str(i % 7), "output": str(i % 7)} for i in range(40)]
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = invoke_cli(["data", "split", str(src), "--fraction", "0.25", "--seed", "3"])
    assert proc.returncode == 0, proc.stderr
    t, h = _lines(tmp_path / "mine-train.jsonl"), _lines(tmp_path / "mine-heldout.jsonl")
    every = [json.dumps(r, sort_keys=True) for r in records]
    assert h and not set(t) & set(h) and set(t) | set(h) == set(every)
    assert len(h) == len(set(h)) and len(t) == len([r for r in every if r not in h])  # each copy kept in train
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{oops\n')
    proc = invoke_cli(["data", "split", str(bad), "--fraction", "0.5"])
    assert proc.returncode == 2 and f"{bad}:2" in proc.stderr
    assert not (tmp_path / "bad-train.jsonl").exists() and not (tmp_path / "bad-heldout.jsonl").exists()


def test_evaluate_warns_when_the_dataset_overlaps_the_training_data(mg_home, tiny_model, sample_data, tmp_path):
    from mg_mlflow.data.sample import write_sample
    from mg_mlflow.evaluation.runner import EvalOptions, evaluate

    trained = train_tiny(tiny_model, sample_data, max_steps=2, eval_split=0.25, register_as="tiny-ovl")
    uri = f"models:/tiny-ovl/{trained.registered_version}"
    leaky = write_sample(tmp_path / "leaky.jsonl", n=8, seed=0)       # the training sample's first records
    res = evaluate(uri, EvalOptions(str(leaky), max_new_tokens=2, carbon=False))
    (note,) = [n for n in res.notes if "memorisation" in n]
    assert note.startswith("8 of 8 evaluation records are also training records of this model")
    import mlflow

    assert "8 of 8" in mlflow.tracking.MlflowClient().get_run(res.run_id).data.tags["mg.eval.overlap"]
    # records the training never saw: no warning
    novel = tmp_path / "novel.jsonl"
    novel.write_text("".join(json.dumps({"instruction": "Reverse the word.", "input": w, "output": w[::-1]}) + "\n"
                             for w in ("zebra", "quartz")))
    assert not [n for n in evaluate(uri, EvalOptions(str(novel), max_new_tokens=2, carbon=False)).notes
                if "memorisation" in n]
