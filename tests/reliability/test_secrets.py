"""Planted secrets (HF token, API key, AWS keys, a password inside the tracking URI) never reach the
MLflow store, artifacts, logs, training outputs, command output or the process list."""

from __future__ import annotations

import base64
import subprocess
import time

import psutil

from reltrain_support import MlflowServer, client, run_cli, runs, start_training, stop

PASSWORD = "Pl4ntedPassw0rd77"
SECRETS = {
    "HF_TOKEN": "hf_PlantedHuggingFaceToken1234",
    "HUGGING_FACE_HUB_TOKEN": "hf_PlantedHuggingFaceToken1234",
    "MG_API_KEY": "mg-planted-api-key-0987654321",
    "AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEY0987654",
    "AWS_SECRET_ACCESS_KEY": "planted/AwsSecretAccessKey+0987654321",
}


def _needles() -> dict[str, bytes]:
    needles = {name: value.encode() for name, value in SECRETS.items()}
    needles["tracking password"] = PASSWORD.encode()
    needles["basic auth header"] = base64.b64encode(f"mguser:{PASSWORD}".encode())
    return needles


def _leaks(files, texts: dict[str, str]) -> list[str]:
    found = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += [f"{name} in {path}" for name, needle in _needles().items() if needle in data]
    for where, text in texts.items():
        found += [f"{name} in {where}" for name, needle in _needles().items() if needle.decode() in text]
    return found


def _process_list() -> str:
    return subprocess.run(["ps", "-eo", "pid,args", "-ww"], capture_output=True, text=True).stdout


def test_no_planted_secret_leaks_from_train_deploy_or_evaluate(tiny_model, sample_data, tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    home = tmp_path / "home"
    env = {**SECRETS, "MG_HOME": str(home), "MLFLOW_RUN_ID": None,
           "MLFLOW_TRACKING_URI": f"http://mguser:{PASSWORD}@127.0.0.1:{server.port}"}
    texts = {}
    try:
        proc = start_training(["--base-model", str(tiny_model), "--dataset", str(sample_data), "--max-steps", "12",
                               "--register-as", "secret-test", "--alias", "prod"], cwd=tmp_path, env=env)
        # the process list while the training (and any child it starts) runs
        seen = []
        while proc.poll() is None:
            seen.append(_process_list())
            try:
                seen += [" ".join(c.cmdline()) for c in psutil.Process(proc.pid).children(recursive=True)]
            except psutil.Error:
                pass
            time.sleep(1)
        texts["ps during training"] = "\n".join(seen)
        train_log = (tmp_path / "train.log").read_text()
        assert proc.returncode == 0, train_log[-3000:]
        assert len(seen) >= 3  # the process list was sampled while training ran
        dry = run_cli(["deploy", "models:/secret-test@prod", "--dry-run", "--name", "secret-test"],
                      cwd=tmp_path, env=env)
        assert dry.returncode == 0, dry.stderr
        texts["deploy --dry-run output"] = dry.stdout + dry.stderr
        held = tmp_path / "held.jsonl"
        held.write_text("".join(sample_data.read_text().splitlines(keepends=True)[:4]))
        evaluated = run_cli(["evaluate", "models:/secret-test@prod", "--dataset", str(held), "--max-new-tokens", "2",
                             "--no-carbon"], cwd=tmp_path, env=env)
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        texts["evaluate output"] = evaluated.stdout + evaluated.stderr
        listed = run_cli(["runs", "list"], cwd=tmp_path, env=env)
        assert listed.returncode == 0, listed.stderr
        texts["runs list output"] = listed.stdout + listed.stderr
        run = next(r for r in runs(f"http://127.0.0.1:{server.port}") if r.data.tags.get("mg.run_kind") != "evaluation")
        c = client(f"http://127.0.0.1:{server.port}")
        texts["run params, tags"] = repr(run.data.params) + repr(run.data.tags)
        texts["registered version"] = repr(c.get_model_version("secret-test", "1"))
    finally:
        stop(proc) if "proc" in locals() else None
        server.stop()
    files = [p for root in (tmp_path, home) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "server.db" for p in files) and any("mlartifacts" in str(p) or "artifacts" in str(p)
                                                             for p in files)
    leaks = _leaks(files, texts)
    print(f"\nsearched {len(files)} files and {len(texts)} outputs for {len(_needles())} secrets: {len(leaks)} leak(s)")
    assert leaks == []
