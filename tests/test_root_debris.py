"""The suite fails when a test leaves something in the repository root (an mlflow.db, mlruns/, ...)
and names the test after which it appeared; tool caches and entries that were there before are fine.
Run on a copy of tests/conftest.py and its helpers in a scratch repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import ROOT, TESTS

PROBE = '''
import os


def test_clean():
    pass


def test_writes_a_store_into_its_working_folder():
    if os.environ.get("WRITE"):
        open("mlflow.db", "w").close()
        os.makedirs(".hypothesis", exist_ok=True)  # a tool cache: allowed
'''


def _run(repo, write: bool):
    env = {k: v for k, v in os.environ.items() if k not in ("WRITE", "PYTEST_ADDOPTS")}
    env.update({"PYTHONPATH": str(ROOT), **({"WRITE": "1"} if write else {})})
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/test_probe.py"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300)


def test_a_store_left_in_the_repository_root_fails_the_session_and_names_the_test(tmp_path):
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    for helper in ("conftest.py", "workers.py", "services_support.py", "procs.py"):
        shutil.copy2(TESTS / helper, repo / "tests" / helper)
    (repo / "tests" / "test_probe.py").write_text(PROBE)
    (repo / "notes.txt").write_text("there before the run\n")

    clean = _run(repo, write=False)
    assert clean.returncode == 0 and "repository root debris" not in clean.stdout, clean.stdout + clean.stderr

    dirty = _run(repo, write=True)
    said = dirty.stdout
    assert dirty.returncode == 1 and "2 passed" in said, said + dirty.stderr
    assert f"the test run left new entries in the repository root {repo}:" in said
    assert "mlflow.db  (first seen after tests/test_probe.py::test_writes_a_store_into_its_working_folder)" in said
    assert ".hypothesis" not in said.split("repository root debris")[1] and "notes.txt" not in said

    (repo / "mlflow.db").unlink()  # a root cleaned by hand: the next run passes again
    assert _run(repo, write=False).returncode == 0
