"""The INT4 checkpoint bench/gpu/serve_models.py builds for GPU serving (``gpu-int4``), checked on CPU.

``write_w4a16`` writes a 16-bit model as compressed-tensors' W4A16 preset in its ``pack-quantized`` format
(the format vLLM's compressed-tensors loader reads): int4 weights packed into int32, one scale per group of
128 inputs. Here the tiny shape of that script (hidden 128, 2 layers) is written, decompressed with
compressed-tensors' own code, loaded by transformers, inspected and planned. Serving it on a GPU is
checked by bench/gpu/serve_gpu.py on a GPU machine.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

GPU_DIR = Path(__file__).resolve().parents[1] / "bench" / "gpu"
sys.path.insert(0, str(GPU_DIR))

import serve_models  # noqa: E402

PACKED = ("weight_packed", "weight_scale", "weight_shape")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("int4")
    base = serve_models.build_base(root / "base", "tiny", "cpu")
    return base, serve_models.write_w4a16(base, root / "int4")


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for shard in sorted(folder.glob("*.safetensors")) for k, v in load_file(shard).items()}


def _scheme(folder: Path):
    from compressed_tensors.quantization import QuantizationConfig

    cfg = json.loads((folder / "config.json").read_text())["quantization_config"]
    return QuantizationConfig.model_validate(cfg).config_groups["group_0"]


def _decompressed(folder: Path) -> dict:
    """Every projection's weight as compressed-tensors' own decompressor gives it back."""
    from compressed_tensors.compressors import PackedQuantizationCompressor

    tensors, scheme = _tensors(folder), _scheme(folder)
    return {p + "weight": PackedQuantizationCompressor.decompress({n: tensors[p + n] for n in PACKED}, scheme)["weight"]
            for p in (k[: -len("weight_packed")] for k in tensors if k.endswith(".weight_packed"))}


def _plan(folder: Path):
    from mg_mlflow.deploy.manager import resolve_all
    from mg_mlflow.deploy.plan import DeployOptions, plan_deployment

    resolved, infos = resolve_all([str(folder)])
    return plan_deployment(resolved, infos, DeployOptions(port=8123, engine="vllm"), gpus=[])


def test_projections_are_packed_int4_within_rounding(folders):
    import torch

    from mg_mlflow.inspect import safetensors_header

    base, int4 = folders
    header = safetensors_header(int4 / "model.safetensors")
    original = _tensors(base)
    projections = [k for k in original if k.endswith(".weight") and k.split(".")[-2] in serve_models.PROJ]
    assert len(projections) == 2 * 7
    for name in projections:
        p, (rows, cols) = name[: -len("weight")], original[name].shape
        assert name not in header
        found = {n: (header[p + n]["dtype"], header[p + n]["shape"]) for n in PACKED}
        assert found == {"weight_packed": ("I32", [rows, cols // 8]), "weight_scale": ("BF16", [rows, cols // 128]),
                         "weight_shape": ("I64", [2])}
    for name in ("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"):
        assert header[name]["dtype"] == "BF16"
    qc = json.loads((int4 / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["format"], qc["ignore"]) == ("compressed-tensors", "pack-quantized", ["lm_head"])
    weights = qc["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["type"], weights["symmetric"], weights["strategy"], weights["group_size"]) == \
        (4, "int", True, "group", 128)

    tensors, back = _tensors(int4), _decompressed(int4)
    assert sorted(back) == sorted(projections)
    for name in projections:
        w, d = original[name].float(), back[name].float()
        scale = tensors[name[: -len("weight")] + "weight_scale"].float().repeat_interleave(128, dim=1)
        # each weight within half a quantization step (bf16 slack), and really quantized: ~0.11 is what
        # symmetric min-max int4 per 128 leaves on Gaussian weights
        assert ((d - w).abs() <= 0.5 * scale * 1.01 + w.abs() * 2**-7).all(), name
        rel = ((d - w).norm() / w.norm()).item()
        assert 0.05 < rel < 0.13, (name, rel)
        assert torch.equal(tensors[name[: -len("weight")] + "weight_shape"], torch.tensor(w.shape))


def test_inspected_and_planned_as_compressed_tensors(folders, tmp_path):
    from mg_mlflow.errors import MGError
    from mg_mlflow.inspect import inspect_model, safetensors_header

    base, int4 = folders
    info, base_info = inspect_model(int4), inspect_model(base)
    assert info.quantization == "compressed-tensors" and not info.notes
    # parameters counted unpacked: the base's plus one scale per 128 weights of the projections
    projection_params = sum(v.numel() for k, v in _tensors(base).items() if k.split(".")[-2] in serve_models.PROJ)
    assert info.num_parameters == base_info.num_parameters + projection_params // 128
    argv = _plan(int4).argv
    assert argv[argv.index("--quantization") + 1] == "compressed-tensors" and argv.count("--quantization") == 1
    assert "--hf-overrides" not in argv
    # the planned (on-disk) weight bytes: projections at 1/4 of bf16 plus their bf16 group scales (1/128)
    rest = sum(end - start for k, v in safetensors_header(base / "model.safetensors").items()
               for start, end in [v["data_offsets"]] if k.split(".")[-2] not in serve_models.PROJ)
    ratio = (_plan(int4).weight_bytes - rest) / (_plan(base).weight_bytes - rest)
    assert 0.25 < ratio < 0.26, ratio

    # control: without its quantization_config the packed folder cannot be loaded, and is not planned
    bare = shutil.copytree(int4, tmp_path / "no-config")
    cfg = json.loads((bare / "config.json").read_text())
    del cfg["quantization_config"]
    (bare / "config.json").write_text(json.dumps(cfg))
    assert any("no quantization_config" in n for n in inspect_model(bare).notes)
    with pytest.raises(MGError, match="no quantization_config"):
        _plan(bare)
    assert "--quantization" not in _plan(base).argv


def test_transformers_loads_it_on_cpu(folders):
    import torch
    from transformers import AutoModelForCausalLM

    base, int4 = folders
    ids = torch.randint(8, 400, (2, 24), generator=torch.Generator().manual_seed(0))
    original = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    with torch.no_grad():
        want = original(ids).logits.float()
        assert not original.load_state_dict(_decompressed(int4), strict=False).unexpected_keys  # int4 projections
        fake_quantized = original(ids).logits.float()
        loaded = AutoModelForCausalLM.from_pretrained(int4, dtype=torch.bfloat16)
        got = loaded(ids).logits.float()
    assert type(loaded.model.layers[0].mlp.up_proj) is torch.nn.Linear   # compressed-tensors decompressed it
    assert torch.allclose(got, fake_quantized, atol=1e-2, rtol=0)
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0).item()
    assert 0.97 < cos < 0.9999, cos
