"""GPU deployment planning on CPU: quantized folders, tensor parallel from the machine's GPUs, and the
hints given when vLLM cannot fit a model (over vLLM 0.26 logs captured on an H100, 2026-11-27).

The folders mirror what bench/gpu/serve_models.py built and served on the H100 (results in
bench/results/gpu-2026-11-27-serve/): the plans asserted here are the ones that served there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from deploy_support import llama_config, make_folder
from mg_mlflow.deploy.gpus import GPU, parse_nvidia_smi, plan_tensor_parallel
from mg_mlflow.errors import MGError
from mg_mlflow.inspect import inspect_model

DATA = Path(__file__).parent / "data"
GIB = 2**30
# compressed-tensors 0.17's FP8_DYNAMIC preset (what llm-compressor writes), as in the served checkpoint
FP8_DYNAMIC = {
    "config_groups": {"group_0": {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None, "strategy": "channel",
                    "block_structure": None, "dynamic": False, "actorder": None, "observer": "memoryless_minmax"},
        "input_activations": {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None,
                              "strategy": "token", "dynamic": True, "observer": None},
        "output_activations": None}},
    "quant_method": "compressed-tensors", "kv_cache_scheme": None, "format": "float-quantized",
    "quantization_status": "compressed", "ignore": ["lm_head"]}
# `nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader,nounits` on the 2xH100
SMI_2XH100 = "0, NVIDIA H100 80GB HBM3, 81559, 0\n1, NVIDIA H100 80GB HBM3, 81559, 0\n"


def _plan(folders, gpus=(), **opts):
    from mg_mlflow.deploy.manager import resolve_all
    from mg_mlflow.deploy.plan import DeployOptions, plan_deployment

    resolved, infos = resolve_all([str(f) for f in folders])
    return plan_deployment(resolved, infos, DeployOptions(port=8123, engine="vllm", **opts), gpus=list(gpus))


def _flag(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


def _fp8_folder(tmp_path):
    w = torch.randn(32, 16)
    scale = w.abs().amax(dim=1, keepdim=True) / 448
    return make_folder(tmp_path / "fp8", llama_config(quantization_config=FP8_DYNAMIC), {
        "model.layers.0.self_attn.q_proj.weight": (w / scale).to(torch.float8_e4m3fn),
        "model.layers.0.self_attn.q_proj.weight_scale": scale.to(torch.bfloat16),
        "lm_head.weight": torch.zeros(32, 16, dtype=torch.bfloat16)})


def test_fp8_compressed_tensors_planned_as_compressed_tensors(tmp_path):
    """FP8 tensors in a compressed-tensors checkpoint: `--quantization fp8` made vLLM refuse it on the
    H100 ("does not match the quantization method specified in the `quantization` argument (fp8)")."""
    info = inspect_model(_fp8_folder(tmp_path))
    assert info.quantization == "compressed-tensors"
    assert any("served as compressed-tensors" in n for n in info.notes)
    argv = _plan([tmp_path / "fp8"]).argv
    assert _flag(argv, "--quantization") == "compressed-tensors" and argv.count("--quantization") == 1
    assert "--hf-overrides" not in argv and "--enforce-eager" not in argv  # GPU engine: vLLM's defaults
    # vLLM's own FP8 format (quant_method fp8) keeps --quantization fp8
    native = make_folder(tmp_path / "fp8-native", llama_config(quantization_config={"quant_method": "fp8"}), {
        "l.weight": torch.zeros(4, 16).to(torch.float8_e4m3fn), "l.weight_scale_inv": torch.ones(1)})
    assert _flag(_plan([native]).argv, "--quantization") == "fp8"


def test_bnb_leftover_planned_for_gpu(tmp_path):
    """16-bit weights under a leftover bitsandbytes config: bare vLLM tried the bitsandbytes loader
    (ImportError on the H100); the planned override served the same tokens as the merged model."""
    cfg = llama_config(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True,
                                            "bnb_4bit_quant_type": "nf4"})
    folder = make_folder(tmp_path / "leftover", cfg, {"model.layers.0.mlp.up_proj.weight": torch.zeros(8, 16,
                                                                                                       dtype=torch.bfloat16)})
    info = inspect_model(folder)
    assert info.quantization is None and info.weight_bytes == 8 * 16 * 2
    plan = _plan([folder])
    assert json.loads(_flag(plan.argv, "--hf-overrides")) == {"quantization_config": None}
    assert "--quantization" not in plan.argv and plan.notes


def test_nvidia_smi_parsing_and_visible_devices():
    gpus = parse_nvidia_smi(SMI_2XH100)
    assert [g.index for g in gpus] == [0, 1] and gpus[0].memory_total == 81559 * 2**20
    assert [g.index for g in parse_nvidia_smi(SMI_2XH100, visible="1")] == [1]
    assert [g.index for g in parse_nvidia_smi(SMI_2XH100, visible="")] == [0, 1]
    assert parse_nvidia_smi("No devices were found\n") == []


def test_tensor_parallel_from_the_machine():
    h100s = parse_nvidia_smi(SMI_2XH100)
    weights = int(1.82 * GIB)  # the served 1B-shape model
    # what the 2xH100 run planned and served: 0.03 of 80 GiB cannot hold 1.82 GiB + reserve, two halves can
    tp, why = plan_tensor_parallel(weights, h100s, utilization=0.03, num_heads=32)
    assert tp == 2 and "0.91 GiB" in why and "2.39 GiB per GPU" in why
    assert plan_tensor_parallel(weights, h100s, num_heads=32)[0] == 1            # default 0.92: one GPU
    with pytest.raises(MGError, match="do not fit 1 GPU"):
        plan_tensor_parallel(weights, h100s[:1], utilization=0.03)
    assert plan_tensor_parallel(int(120 * GIB), h100s)[0] == 2                   # 120 GiB: two H100s
    with pytest.raises(MGError, match="quantize"):
        plan_tensor_parallel(int(200 * GIB), h100s)
    assert plan_tensor_parallel(weights, [], requested=None) == (None, "no NVIDIA GPU found")
    with pytest.raises(MGError, match="has 2 usable GPU"):
        plan_tensor_parallel(weights, h100s, requested=4)
    with pytest.raises(MGError, match="does not divide"):
        plan_tensor_parallel(weights, h100s, requested=2, num_heads=3)


def test_plan_passes_planned_tensor_parallel(tmp_path):
    folder = make_folder(tmp_path / "m", llama_config(num_attention_heads=2),
                         {"w": torch.zeros(64, 64, dtype=torch.bfloat16)})   # 8 KiB of weights
    h100s = parse_nvidia_smi(SMI_2XH100)
    plan = _plan([folder], gpus=h100s)                                       # fits one GPU: no flag
    assert "--tensor-parallel-size" not in plan.argv and not plan.notes
    # GPUs of 1 GiB + 6 KiB: one GPU cannot hold 8 KiB + the 1 GiB reserve, two halves fit
    small = [GPU(i, "small", GIB + 6 * 1024, 0) for i in (0, 1)]
    plan = _plan([folder], gpus=small, gpu_memory_utilization=1.0)
    assert _flag(plan.argv, "--tensor-parallel-size") == "2"
    assert "tensor parallel 2 planned from this machine's GPUs" in plan.notes[0]
    plan = _plan([folder], gpus=h100s, tensor_parallel_size=2)
    assert _flag(plan.argv, "--tensor-parallel-size") == "2" and not plan.notes
    with pytest.raises(MGError, match="has 2 usable GPU"):
        _plan([folder], gpus=h100s, tensor_parallel_size=4)


# --- memory errors: hints from vLLM's own messages -------------------------------------------------

def test_hint_from_captured_no_fit_log():
    """`--gpu-memory-utilization 0.01` for 1.82 GiB of weights on an H100: the cause sits ~90 lines above
    the end of the log, under the API server's own traceback."""
    from mg_mlflow.deploy.supervisor import failure_hint, log_tail, root_cause

    path = DATA / "vllm026_h100_no_fit.log"
    assert "No available memory" not in log_tail(path, 30)      # the last 30 lines hide the cause
    long_tail = log_tail(path, 400)
    assert "No available memory for the cache blocks" in root_cause(long_tail)
    hint = failure_hint(long_tail)
    assert hint.startswith("the weights and activations fill the whole --gpu-memory-utilization budget")
    assert "quantized (FP8/INT4)" in hint and "--tensor-parallel-size" in hint


def test_hint_from_captured_gpu_taken_log():
    """A second deployment on a GPU another server holds: vLLM's numbers give the utilization that fits."""
    from mg_mlflow.deploy.supervisor import failure_hint, log_tail

    hint = failure_hint(log_tail(DATA / "vllm026_h100_gpu_taken.log", 400))
    # "Free memory on device cuda:0 (5.22/79.18 GiB) ... (0.92, 72.84 GiB)": 5.22 / 79.18 x 0.95 = 0.062
    assert "only 5.22 of 79.18 GiB free" in hint and "--gpu-memory-utilization 0.06 or lower" in hint
    assert "wants 72.8 GiB" in hint


@pytest.mark.parametrize("line, expected", [
    ("ValueError: To serve at least one request with the model's max seq len (131072), (16.0 GiB KV cache is "
     "needed, which is larger than the available KV cache memory (4.1 GiB). Based on the available memory, the "
     "estimated maximum model length is 33456. Try increasing", "--max-model-len 33456 or lower"),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "the GPU ran out of memory"),
    ("ValueError: User-specified max_model_len (100000) is greater than the derived max_model_len "
     "(max_position_embeddings=8192 or model_max_length=None in model's config.json).", "--max-model-len 8192 or lower"),
])
def test_memory_hints(line, expected):
    from mg_mlflow.deploy.supervisor import failure_hint, memory_hint

    assert expected in failure_hint(f"INFO starting\n{line}\nRuntimeError: Engine core initialization failed.")
    assert memory_hint("INFO all good\nOSError: address already in use") is None


def test_failed_start_reports_cause_and_hint(tmp_path):
    """The real supervisor path: a process that prints the captured log and exits like vLLM did."""
    from mg_mlflow.deploy.supervisor import launch, wait_healthy

    log = tmp_path / "vllm.log"
    proc = launch([sys.executable, "-c", f"print(open({str(DATA / 'vllm026_h100_no_fit.log')!r}).read()); "
                   "raise SystemExit(1)"], {}, log, header="replayed vLLM 0.26 start")
    with pytest.raises(MGError) as err:
        wait_healthy(proc, "127.0.0.1", 9, log, timeout=60, show_progress=False)
    text = str(err.value)
    assert "vLLM exited with code 1" in text and "cause: " in text and "No available memory" in text
    assert "hint: the weights and activations fill" in text
    assert proc.poll() == 1


def _phases(path: Path) -> list[str]:
    """The phase the progress line shows after each line of a captured log, without repeats."""
    from mg_mlflow.deploy.supervisor import PHASE_WINDOW, startup_phase

    lines, seen, phase = path.read_text(errors="replace").splitlines(), [], None
    for i in range(len(lines)):
        phase = startup_phase(lines[max(0, i + 1 - PHASE_WINDOW):i + 1], phase)   # the window wait_healthy reads
        if phase and (not seen or seen[-1] != phase):
            seen.append(phase)
    return seen


def test_startup_phases_of_a_cold_h100_start():
    """vLLM 0.26 with CUDA graphs on a fresh H100 (bench/results/2026-11-28-serve): 121 s of engine init,
    of which ~90 s are silent kernel JIT after the CUDA-graph memory report. The progress names each phase,
    and names that silence, instead of showing a stale log line."""
    phases = _phases(DATA / "vllm026_h100_cold_start.log")
    jit = next(p for p in phases if p.startswith("compiling kernels"))
    expected = ["reading the model's config", "starting the engine", "loading weights", "torch.compile (cached after the first start)",
                "profiling memory", "allocating the KV cache", "autotuning kernels", "warming up kernels",
                "capturing CUDA graphs", jit, "starting the API server", "ready"]
    assert [p for p in phases if p in expected] == expected
    lines = (DATA / "vllm026_h100_cold_start.log").read_text(errors="replace").splitlines()
    silent = next(i for i, line in enumerate(lines) if "Kernel JIT monitor activated" in line)
    from mg_mlflow.deploy.supervisor import PHASE_WINDOW, startup_phase

    assert startup_phase(lines[silent - PHASE_WINDOW:silent]) == jit   # what the user sees during the 90 s


def test_startup_phases_of_a_warm_h100_start():
    """The same model started again with the caches kept: graphs load from the cache, nothing compiles."""
    phases = _phases(DATA / "vllm026_h100_warm_start.log")
    compile_at = phases.index("torch.compile (cached after the first start)")
    assert phases[compile_at + 1] == "loading compiled graphs from the cache" and phases[-1] == "ready"
    lines = (DATA / "vllm026_h100_warm_start.log").read_text(errors="replace").splitlines()
    assert not any("Compiling a graph" in line for line in lines)   # nothing compiled: it came from the cache


def test_startup_phase_keeps_the_last_one_over_unknown_lines():
    from mg_mlflow.deploy.supervisor import startup_phase

    assert startup_phase(["INFO some line vLLM prints", "another"], "loading weights") == "loading weights"
    assert startup_phase([], None) is None
