"""The per-version model cache: an entry is complete only once its contents are checked. A download that
brought no model (the store's artifacts missing) is refused clearly and not cached, so the version works
again as soon as the artifacts are back; an entry an older version marked complete on an empty folder is
downloaded again."""

from __future__ import annotations

import shutil

import pytest

from reltrain_support import run_cli


def _artifact_folder(uri: str):
    """The folder of the store that holds the version's files."""
    from pathlib import Path
    from urllib.parse import urlparse

    from mg_mlflow.registry.resolve import registry_version

    client, mv = registry_version(uri)
    location = client.get_model_version_download_uri(mv.name, mv.version)
    if location.startswith("models:/"):  # an MLflow 3 logged model
        location = client.get_logged_model(location[len("models:/"):]).artifact_location
    return Path(urlparse(location).path)


def _all_runs():
    import mlflow

    client = mlflow.tracking.MlflowClient()
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


@pytest.mark.slow
def test_missing_artifacts_are_not_cached_and_come_back(mg_home, tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default experiment keeps its artifacts under ./mlruns
    from mg_mlflow.registry.publish import register_base_folder
    from mg_mlflow.registry.resolve import cache_root, resolve_model_uri

    uri = register_base_folder(tiny_model)
    name, version = uri[len("models:/"):].split("/")
    store = _artifact_folder(uri)
    aside = tmp_path / "aside"
    shutil.move(store, aside)
    store.mkdir()  # the store's folder is there, its files are not
    runs_before = len(_all_runs())
    data = tmp_path / "eval.jsonl"
    data.write_text('{"instruction": "Say hi", "output": "hi"}\n')

    for command in (["deploy", uri, "--dry-run"], ["evaluate", uri, "--dataset", str(data)]):
        proc = run_cli(command, cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        text = " ".join(proc.stderr.split())
        assert f"{uri}: the artifacts downloaded from the tracking store hold no usable model" in text
        assert "neither config.json nor adapter_config.json" in text and "Traceback" not in proc.stderr
    entry = cache_root() / name / version
    assert not (entry / ".complete").exists()  # nothing cached
    assert len(_all_runs()) == runs_before  # evaluate left no FAILED run

    shutil.rmtree(store)
    shutil.move(aside, store)  # the artifacts are back: the version works, no cache to delete by hand
    proc = run_cli(["deploy", uri, "--dry-run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (resolve_model_uri(uri).local_dir / "config.json").is_file()

    # an entry marked complete on an empty folder (as an interrupted download used to leave) is fetched again
    shutil.rmtree(entry)
    entry.mkdir()
    (entry / ".complete").write_text(uri)
    folder = resolve_model_uri(uri).local_dir
    assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))
