"""The README's first command, ``bash .ci/demo``: the main job on the embedded default (a sqlite store
under $MG_HOME, a tiny model built offline).

It runs with ``--no-deploy``: the demo's serving steps are the commands the README's Quick start
pastes on the same kind of model (a tiny LoRA adapter registered by `model-garden train`):
`deploy models:/NAME@champion`, `generate`, `deployments stop`, which tests/test_readme.py runs against
a real vLLM and checks that nothing is left serving. What only the demo shows is asserted here:
the held-out exact match before and after training, read back from `model-garden evaluate`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT


def test_ci_demo_trains_registers_and_evaluates(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["MG_HOME"] = str(home)
    proc = subprocess.run(["bash", ".ci/demo", "--no-deploy"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "done" in out and "$ model-garden deploy" not in out  # --no-deploy: no serving step
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

