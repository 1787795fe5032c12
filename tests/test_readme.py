"""The README's Quick start (and its "Choosing a model" section, where the README has one) run as
written when pasted into a shell on a fresh clone: every shell block of those sections, in order, in
a copy of the checkout's files with a fresh ./.model-garden, the real CLI, MLflow Projects and vLLM.

The one line changed is the last: `model-garden ui` serves until Ctrl-C, so the test runs it with
`--links-only` (prints the same links and returns)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import BIN, ROOT
from test_docs import README, shell_blocks

SECTIONS = ("Quick start", "Choosing a model")


def section(markdown: str, title: str) -> str | None:
    """The text under ``## title`` up to the next ``## `` heading (None when there is no such heading)."""
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    return found.group(1) if found else None


def pasted_script(markdown: str) -> str:
    bodies = [body for title in SECTIONS if (text := section(markdown, title)) is not None
              for body in shell_blocks(text)]
    assert bodies, "no shell block under the README's Quick start"
    script = "\n".join(bodies)
    assert re.search(r"^model-garden ui\b.*$", script, re.M), "the Quick start no longer ends with `model-garden ui`"
    return re.sub(r"^model-garden ui\b", "model-garden ui --links-only", script, flags=re.M)


def test_pasted_script_is_the_readme_but_for_the_ui_server():
    readme = README.read_text()
    blocks = [b for title in SECTIONS if (text := section(readme, title)) for b in shell_blocks(text)]
    written, pasted = "\n".join(blocks).splitlines(), pasted_script(readme).splitlines()
    assert not [line for line in written if re.search(r"<[^<>]+>", line.split("#")[0])], \
        "a <placeholder> a pasted shell cannot fill in"
    changed = [(a, b) for a, b in zip(written, pasted) if a != b]
    assert len(written) == len(pasted) and len(changed) == 1 and "--links-only" in changed[0][1], changed


def _fresh_clone(dest):
    """The checkout's tracked files (as they are in the working tree), as a fresh clone has them."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for rel in filter(None, files.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.mark.vllm  # the Quick start deploys with vLLM
def test_quick_start_runs_when_pasted(tmp_path):
    clone = _fresh_clone(tmp_path / "clone")
    script = pasted_script(README.read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "MG_", "HF_HOME"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # model-garden and mlflow of this environment
    log = tmp_path / "quickstart.log"
    try:
        with log.open("w") as out:
            proc = subprocess.run(["bash", "-euo", "pipefail", "-xc", script], cwd=clone, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=1800)
        text = log.read_text()
        assert proc.returncode == 0, text[-6000:]
    finally:
        subprocess.run([str(BIN / "model-garden"), "deployments", "stop", "tiny-lora"], cwd=clone, env=env,
                       capture_output=True, timeout=300)

    home = clone / ".model-garden"  # the default MG_HOME of a shell in the clone
    assert (home / "mlflow.db").is_file() and (clone / "compare.png").stat().st_size > 10_000
    code = ("import json, mlflow; c = mlflow.MlflowClient(); v = lambda n: sorted(int(x.version) for x in "
            "c.search_model_versions(f\"name='{n}'\")); print(json.dumps([v('tiny-lora'), "
            "int(c.get_model_version_by_alias('tiny-lora', 'champion').version), v('tiny-merged')]))")
    check = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, timeout=120,
                           env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"})
    # the Quick start's two trainings, the recipe's third (which takes the champion alias), one merged
    assert json.loads(check.stdout) == [[1, 2, 3], 3, [1]], check.stdout + check.stderr
    assert "Traceback" not in text
    stopped = subprocess.run([str(BIN / "model-garden"), "deployments", "list", "--json"], cwd=clone, env=env,
                             capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0 and '"running"' not in stopped.stdout, stopped.stdout  # nothing left serving
