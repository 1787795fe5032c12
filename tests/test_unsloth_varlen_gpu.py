"""Unsloth's attention for flattened rows on a CUDA GPU (the gpu lane: skipped without CUDA and Unsloth).

``batching.unsloth_flat_attention`` opens Unsloth's one-call varlen flash path where torch's public
``varlen_attn`` lacks ``enable_gqa`` (torch 2.11). bench/gpu/unsloth_varlen_check.py compares it, on
random grouped-query tensors of a Llama-3.2-1B layer, with a float32 per-example reference and with
Unsloth's per-example SDPA path (on an H100, 2026-12-06: errors 0.19-0.31%, as the per-example path;
6.2x and 30x faster; bench/results/2026-12-06-unsloth-packing/).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "gpu"))


def test_flattened_rows_take_one_varlen_call_with_the_per_example_result():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("unsloth")
    import unsloth_varlen_check

    got = unsloth_varlen_check.check()
    assert got["takes_after"] and got["mode"].startswith("varlen flash")
    for case in ("padding_free", "packed"):
        varlen, per_example = got[case]["varlen"], got[case]["segments"]
        assert varlen["finite"] and max(varlen["out_rel_err"], *varlen["grad_rel_err"]) < 2e-2
        assert varlen["out_rel_err"] <= 1.5 * per_example["out_rel_err"]  # as close to float32 as the old path
        assert got[case]["speedup"] > 1
