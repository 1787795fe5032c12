"""Data-parallel training on several GPUs of one machine (``--num-gpus N``): one launcher, N ranks,
ONE MLflow run.

The launcher (the ``model-garden train`` process the user started) checks that N GPUs exist, writes
the resolved config to a temporary YAML file and starts ``python -m torch.distributed.run
--nproc-per-node N`` on a free port of 127.0.0.1; each rank runs the one training path
(:func:`mg_mlflow.training.recipe.train`) with that config. transformers' ``Trainer`` does the DDP
itself from the variables torchrun sets. Only global rank 0 opens (or attaches to) the MLflow run and
logs params, metrics, datasets, carbon, system metrics and the model, and registers it; the other
ranks train and touch nothing in MLflow. Rank 0 shares its output folder with the others (one
``broadcast`` before training), so checkpoints of every rank land in one folder.

``MG_DDP_CPU=1`` runs the ranks on the CPU with the gloo backend (no GPU needed): for tests and for
debugging the distributed path on a laptop.

Failures: a rank that dies makes torchrun stop the others and exit non-zero; the launcher returns
that code and makes sure rank 0's run ends FAILED (or KILLED after Ctrl-C/SIGTERM), whatever state
the killed rank 0 left it in. Nothing is registered, since registration comes after training.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mg_mlflow.config import to_yaml
from mg_mlflow.errors import MGError
from mg_mlflow.proc import wait_interruptibly
from mg_mlflow.registry.base_ref import resolve_base_model
from mg_mlflow.tracking.liveness import end_open_run
from mg_mlflow.tracking.run import use_tracking_uri

CPU_ENV = "MG_DDP_CPU"        # "1": ranks on the CPU (gloo) instead of GPUs
RUN_FILE_ENV = "MG_DDP_RUN_FILE"  # rank 0 writes its MLflow run id here, for the launcher
SOURCE_ENV = "MG_SOURCE_ARGV"     # the launcher's own argv (JSON), for the run's mlflow.source.name tag


# ------------------------------------------------------------------ inside a rank

_HOST_GROUP = None  # the host-side (gloo) group of this job, see _host_group


def launched() -> bool:
    """True inside a process started by torchrun/accelerate (they set LOCAL_RANK and WORLD_SIZE; a
    lone WORLD_SIZE=1 some schedulers export is not a launched job)."""
    return "LOCAL_RANK" in os.environ or world_size() > 1


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    """Global rank 0 (or no distributed job at all): the one process that talks to MLflow."""
    return rank() == 0


def distributed() -> bool:
    return world_size() > 1


def cpu_mode() -> bool:
    return os.environ.get(CPU_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def start_process_group() -> None:
    """Join the job's process group now (the ``Trainer`` later finds it initialised and reuses it),
    so rank 0 can hand its output folder to the other ranks before any model loads."""
    if not distributed():
        return
    import torch
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())
    _host_group()  # created now, while every rank is here


def share(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a no-op outside a distributed job)."""
    if not distributed():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (keeps a stop request consistent, so no rank
    waits in a collective that the others have left). Over the host-side group: no GPU wait."""
    if not distributed():
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_host_group())
    return bool(t.item())


def _host_group():
    """A gloo group over the job's ranks, for host-side flags: the same all_reduce on the default
    (NCCL) group would need a ``.item()`` that waits for the whole step on the GPU, every step
    (a measured cost on GPUs). Created once, by every rank (a collective)."""
    global _HOST_GROUP
    if _HOST_GROUP is None:
        import torch.distributed as dist

        _HOST_GROUP = dist.new_group(backend="gloo")
    return _HOST_GROUP


def job_gpu_ids() -> list[int | str] | None:
    """The GPUs this job trains on (for codecarbon's ``gpu_ids``, so energy is summed over exactly
    them): the first WORLD_SIZE visible devices; None outside a GPU job (codecarbon's default)."""
    if not distributed() or cpu_mode():
        return None
    n = int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        return [int(v) if v.strip().isdigit() else v.strip() for v in visible.split(",")][:n]
    return list(range(n))


def record_run_id(run_id: str) -> None:
    """Rank 0 tells the launcher which run it opened (the launcher fixes its status if a rank dies)."""
    path = os.environ.get(RUN_FILE_ENV)
    if path and is_main():
        Path(path).write_text(run_id)


def log_world_size() -> None:
    """``world_size`` as a run param (not logged again when a resumed run already has it)."""
    import mlflow

    run = mlflow.active_run()
    if run is not None and "world_size" not in mlflow.get_run(run.info.run_id).data.params:
        mlflow.log_param("world_size", world_size())


# ------------------------------------------------------------------ the launcher

def needs_launch(cfg) -> bool:
    return getattr(cfg, "num_gpus", 1) > 1 and not launched()


def check_devices(n: int) -> None:
    """N GPUs must exist, unless the CPU mode is asked for."""
    if cpu_mode():
        return
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < n:
        what = f"{found} CUDA GPU{'s' if found != 1 else ''}" if found else "no CUDA GPU"
        fits = f"--num-gpus {found} or less" if found > 1 else "--num-gpus 1 (one device)"
        raise MGError(f"--num-gpus {n} asks for {n} GPUs, but this machine has {what}",
                      hint=f"use {fits}; or {CPU_ENV}=1 to run the {n} ranks on the CPU (gloo backend), "
                           "for testing the distributed path")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(n: int, command: str, config_file: Path, progress: bool | None, port: int) -> list[str]:
    progress_flag = [] if progress is None else ["--progress" if progress else "--no-progress"]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(n),
            "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "mg_mlflow", command,
            "--config", str(config_file), *progress_flag]


def launch(cfg, command: str = "train", progress: bool | None = None) -> int:
    """Run ``command`` with ``cfg`` on ``cfg.num_gpus`` ranks; returns torchrun's exit code.
    Output streams through (rank 0 prints the summary); Ctrl-C reaches every rank (same process
    group) and torchrun stops them; SIGTERM to this process is forwarded to torchrun."""
    n = cfg.num_gpus
    check_devices(n)
    if cfg.base_model.startswith("models:/"):  # download the registered base once, not N times at once
        use_tracking_uri()
        resolve_base_model(cfg.base_model, registered_adapter_ok=True)  # checked by each rank's preflight
    with tempfile.TemporaryDirectory(prefix="mg-ddp-") as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(to_yaml(cfg))
        run_file = Path(tmp) / "run_id"
        env = {**os.environ, RUN_FILE_ENV: str(run_file), SOURCE_ENV: json.dumps(sys.argv[1:])}
        env.setdefault("OMP_NUM_THREADS", "1")  # torchrun would set it too, with a warning
        if cpu_mode():
            env["CUDA_VISIBLE_DEVICES"] = ""  # every rank on the CPU, gloo backend
        proc = subprocess.Popen(launch_command(n, command, config_file, progress, free_port()), env=env)
        stopped_by = _wait(proc)
        code = proc.returncode
        if code != 0 and run_file.is_file():
            end_failed_run(run_file.read_text().strip(), code, stopped_by)
    return code if code >= 0 else 128 - code


def _wait(proc: subprocess.Popen) -> str | None:
    """Wait for torchrun; returns the name of the signal that stopped us (None: none did)."""
    stopped_by = None

    def forward(signum, frame):
        nonlocal stopped_by
        stopped_by = signal.Signals(signum).name
        if signum != signal.SIGINT:  # Ctrl-C already reached the whole process group
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                wait_interruptibly(proc)
                return stopped_by
            except KeyboardInterrupt:  # pragma: no cover - the handler above takes SIGINT
                stopped_by = "SIGINT"
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def end_failed_run(run_id: str, code: int, stopped_by: str | None) -> None:
    """torchrun failed: rank 0's run ends KILLED when the user stopped the job (even if a rank failed
    on its way out, e.g. a peer gone mid-collective), else FAILED (a rank died: rank 0 may have been
    killed before it could say so, or ended KILLED by torchrun's stop signal). A FINISHED run keeps
    its record."""
    import mlflow

    use_tracking_uri()
    client = mlflow.tracking.MlflowClient()
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - no run to fix
        return
    target = "KILLED" if stopped_by else "FAILED"
    if run.info.status in ("FINISHED", target):
        return
    if stopped_by:
        why = f"stopped by {stopped_by}"
    else:
        why = f"a training process (rank) failed: torchrun exited with code {code}; see the console output"
    earlier = run.data.tags.get("mg.error")
    end_open_run(client, run_id, target, f"{why} ({earlier})"[:4000] if earlier and earlier != why else why)
