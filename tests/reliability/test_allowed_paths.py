"""MG_ALLOWED_DATA_DIRS: dataset and image paths are resolved without following links out of the
allowed folders (a job submitted to a shared server cannot read another user's files)."""

from __future__ import annotations

import json
import os

import pytest

from reltrain_support import run_cli
from mg_mlflow.data.load import load_dataset_records
from mg_mlflow.data.sample import write_sample
from mg_mlflow.errors import DataError, MGError


@pytest.fixture()
def tree(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    write_sample(outside / "secret.jsonl", 4)
    write_sample(allowed / "mine.jsonl", 4)
    (allowed / "link.jsonl").symlink_to(outside / "secret.jsonl")
    (allowed / "linkdir").symlink_to(outside, target_is_directory=True)
    return allowed, outside


def test_links_and_dotdot_out_of_the_allowed_folder_are_refused(tree, monkeypatch):
    allowed, outside = tree
    assert len(load_dataset_records(str(allowed / "link.jsonl"))) == 4  # no restriction by default
    monkeypatch.setenv("MG_ALLOWED_DATA_DIRS", f"{allowed}{os.pathsep}{allowed / 'nonexistent'}")
    assert len(load_dataset_records(str(allowed / "mine.jsonl"))) == 4
    for escape in (allowed / "link.jsonl", allowed / "linkdir" / "secret.jsonl",
                   allowed / ".." / "outside" / "secret.jsonl", outside / "secret.jsonl"):
        with pytest.raises(MGError) as err:
            load_dataset_records(str(escape))
        assert str(escape) in str(err.value) and "outside the allowed data folders" in str(err.value)
        assert f"resolves to {outside / 'secret.jsonl'}" in str(err.value) or escape == outside / "secret.jsonl"


def test_an_image_linked_out_of_the_allowed_folder_is_a_file_line_problem(tree, monkeypatch):
    from PIL import Image

    from mg_mlflow.data.vision import load_vision_records

    allowed, outside = tree
    Image.new("RGB", (32, 32), "red").save(outside / "private.png")
    Image.new("RGB", (32, 32), "blue").save(allowed / "ok.png")
    (allowed / "stolen.png").symlink_to(outside / "private.png")
    rows = [{"text": "Colour?", "image": "ok.png", "response": "blue"},
            {"text": "Colour?", "image": "stolen.png", "response": "red"},
            {"text": "Colour?", "image": str(outside / "private.png"), "response": "red"}]
    data = allowed / "vision.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(load_vision_records(str(data))) == 3
    monkeypatch.setenv("MG_ALLOWED_DATA_DIRS", str(allowed))
    with pytest.raises(DataError) as err:
        load_vision_records(str(data))
    assert [p.split(": ")[0] for p in err.value.problems] == [f"{data}:2", f"{data}:3"]
    assert all("outside the allowed data folders" in p for p in err.value.problems)


def test_train_refuses_a_linked_dataset_before_any_run(tree, mg_home, tiny_model, tmp_path):
    allowed, _ = tree
    proc = run_cli(["train", "--base-model", str(tiny_model), "--dataset", str(allowed / "link.jsonl"),
                    "--max-steps", "2", "--no-system-metrics", "--no-carbon"], cwd=tmp_path,
                   env={"MG_ALLOWED_DATA_DIRS": str(allowed)})
    assert proc.returncode == 2 and "outside the allowed data folders" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (mg_home / "mlflow.db").exists() or _no_runs()


def _no_runs():
    from reltrain_support import runs

    return runs() == []
