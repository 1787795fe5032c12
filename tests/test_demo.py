"""The README's first command, ``bash .ci/demo``: the main job end to end on the embedded default
(a sqlite store under $MG_HOME, a tiny model built offline, a real vLLM), with nothing left running."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from conftest import ROOT


def test_ci_demo_trains_registers_serves_and_stops(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["MG_HOME"] = str(home)
    proc = subprocess.run(["bash", ".ci/demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "$ model-garden deploy models:/demo-lora@champion" in out and "done" in out
    # the demo shows what training changed: held-out exact match of the base and of the trained adapter
    found = re.search(r"held-out exact match ([\d.]+) \(base\) -> ([\d.]+) \(trained\)", out)
    assert found, out[-4000:]
    before, after = map(float, found.groups())
    assert before == 0.0 and after >= 0.5, out[-4000:]
    assert "$ model-garden evaluate models:/demo-lora@champion" in out
    assert (home / "mlflow.db").is_file()  # the embedded default: the store under $MG_HOME

    code = ("import mlflow; c = mlflow.MlflowClient(); mv = c.get_model_version_by_alias('demo-lora', 'champion');"
            "print(mv.version, c.get_run(mv.run_id).info.status)")
    check = subprocess.run([sys.executable, "-c", code], env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"},
                           capture_output=True, text=True, timeout=120)
    assert check.stdout.split() == ["1", "FINISHED"], check.stdout + check.stderr

    listed = subprocess.run([sys.executable, "-m", "mg_mlflow", "deployments", "list", "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    records = json.loads(listed.stdout or "[]")
    assert [r.get("status") for r in records if r.get("name") == "demo"] in ([], ["stopped"]), listed.stdout
