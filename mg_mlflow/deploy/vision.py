"""What a vLLM server needs to serve a vision-language model, checked before it starts.

vLLM builds the model's Hugging Face processor, and transformers' image and video processors for the
Qwen2-VL family (and most others) import ``torchvision.transforms.v2``. So the Python that runs vLLM
must import torchvision:

- it imports as is (a torchvision built for that torch, as the official vLLM images and PyTorch's CPU
  index ship): nothing to do;
- it is installed but its C++ operators do not load (PyPI's CUDA build beside the CPU build of torch):
  vLLM is started with ``vllm_site`` first on its ``PYTHONPATH``, whose start-up hook declares the
  missing operator schemas so that torchvision's Python transforms import (they are all vLLM's image
  preprocessing uses); the deployment's notes say so;
- it is missing, or fails otherwise: :class:`InvalidInputError` naming the interpreter, before anything
  starts.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from mg_mlflow.errors import InvalidInputError

SITE_DIR = Path(__file__).resolve().parent / "vllm_site"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

PROBE = """
import json, sys
out = {"ok": False}
try:
    import torch
    out["torch"] = torch.__version__
    import torchvision.transforms.v2.functional
    import torchvision
    out.update(ok=True, torchvision=torchvision.__version__,
               declared=list(getattr(sys.modules.get("sitecustomize"), "DECLARED", []) or []))
except BaseException as exc:
    out.update(error=f"{type(exc).__name__}: {exc}".strip().splitlines()[-1][:400],
               missing=getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None)
print(json.dumps(out))
"""


def with_site(pythonpath: str | None) -> str:
    """``pythonpath`` with :data:`SITE_DIR` first."""
    parts = [p for p in (pythonpath or "").split(os.pathsep) if p and p != str(SITE_DIR)]
    return os.pathsep.join([str(SITE_DIR), *parts])


def probe(python: str, env: dict[str, str]) -> dict:
    """Import torchvision's transforms in ``python`` with the start-up hook on its path; the probe's report."""
    run_env = {**env, "PYTHONPATH": with_site(env.get("PYTHONPATH"))}
    try:
        proc = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, env=run_env, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"ok": False, "error": f"cannot run {python}: {exc}"}
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"ok": False, "error": (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]}


def _pairing(torch_version: str | None) -> str:
    """The torchvision release series built with ``torch_version`` (torch 2.N pairs with torchvision 0.N+15)."""
    try:
        major, minor = (int(x) for x in (torch_version or "").split("+")[0].split(".")[:2])
    except ValueError:
        return "the torchvision release built for your torch"
    return f"torchvision=={major - 2}.{minor + 15}.*" if major == 2 else "the torchvision release built for your torch"


def prepare_vision_runtime(python: str, env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """(extra environment for the vLLM process, notes) for serving a vision model from ``python``;
    InvalidInputError when torchvision cannot be imported there."""
    report = probe(python, env)
    if report.get("ok"):
        if not report.get("declared"):
            return {}, []
        note = (f"torchvision {report.get('torchvision')} cannot load its C++ operators beside torch "
                f"{report.get('torch')}: vLLM runs with its Python transforms (start-up hook {SITE_DIR.name} "
                "on PYTHONPATH); image preprocessing needs no C++ operator")
        return {"PYTHONPATH": with_site(env.get("PYTHONPATH"))}, [note]
    pairing = _pairing(report.get("torch"))
    cpu = "+cpu" in str(report.get("torch"))
    install = f"pip install '{pairing}'" + (f" --index-url {CPU_INDEX}" if cpu else "")
    if report.get("missing") == "torchvision":
        raise InvalidInputError(
            f"serving a vision model needs torchvision in {python}: vLLM builds the model's image processor "
            "with transformers, which imports torchvision.transforms; it is not installed there",
            hint=f"install it beside torch {report.get('torch')} ({install}), or point --vllm-python at an "
                 "environment that has it")
    raise InvalidInputError(
        f"serving a vision model needs torchvision in {python}, and it does not import there: {report.get('error')}",
        hint=f"install the torchvision built for torch {report.get('torch')} ({install}), or point "
             "--vllm-python at an environment where `import torchvision` works")
