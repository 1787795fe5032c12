"""Let torchvision's Python transforms import when its C++ operators cannot load.

vLLM's processors for Qwen2-VL-family models import ``torchvision.transforms.v2`` (transformers' image
and video processors are built on it). A torchvision built for another torch (PyPI's CUDA build beside
the CPU build of torch) cannot load its ``_C`` library, and its import then fails on the fake-tensor
kernels it registers for ``torchvision::nms`` / ``qnms`` ("operator torchvision::nms does not exist").
This hook runs before that import: when ``_C`` does not load, it declares those operators' schemas,
with no kernel. torchvision's import then succeeds, and so do the transforms vLLM's image
preprocessing calls (resize, rescale, normalise: torch operations); calling a detection operator
such as ``nms`` still fails. When ``_C`` loads, nothing is changed.

Python imports the first ``sitecustomize`` on ``sys.path``: this one runs the next one it finds too.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

# the operators torchvision registers fake kernels for unconditionally, with their schemas
SCHEMAS = {"nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
           "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"}
DECLARED: list[str] = []  # what this process declared (read by Model Garden's probe)


def _declare_missing_ops(package_dir: str) -> None:
    import glob

    import torch

    libraries = glob.glob(os.path.join(package_dir, "_C*.so")) + glob.glob(os.path.join(package_dir, "_C*.pyd"))
    try:
        if libraries:
            torch.ops.load_library(libraries[0])
            return
    except (OSError, RuntimeError):
        pass
    for name, schema in SCHEMAS.items():
        if not hasattr(torch.ops.torchvision, name):
            torch.library.define(f"torchvision::{name}", schema)
            DECLARED.append(name)


class _TorchvisionOps(importlib.abc.MetaPathFinder):
    """Runs once, just before ``torchvision`` itself is imported; torchvision then imports as usual."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.submodule_search_locations:
            try:
                _declare_missing_ops(list(spec.submodule_search_locations)[0])
            except Exception as exc:  # noqa: BLE001 - torchvision's own import reports what is wrong
                print(f"model-garden vllm_site: torchvision operators not declared: {exc!r}", file=sys.stderr)
        return spec


def _run_next_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if "torchvision" not in sys.modules:
    sys.meta_path.insert(0, _TorchvisionOps())
_run_next_sitecustomize()
