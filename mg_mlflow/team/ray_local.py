"""The embedded default for jobs: one local Ray instance, started on demand, state under $MG_HOME.

``ray start --head --block`` runs in its own POSIX session (setsid); its record (pid, dashboard URL, resources) is
``$MG_HOME/ray/cluster.json``. Ray's Unix sockets live under its temp dir and a socket path may not
exceed ~107 bytes, so a long ``$MG_HOME`` gets a short temp dir in /tmp named after it. Resources: one
custom resource ``mg_train_slot`` per concurrent training on a CPU machine (plus the GPUs Ray detects
on a GPU machine); every job asks for one slot or its GPUs, so jobs queue in Ray, not in Model Garden.
``stop()`` ends exactly the processes this start created (the tree under its pid), never others' Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mg_mlflow.env import mg_home
from mg_mlflow.errors import MGError

SLOT = "mg_train_slot"
MAX_TEMP_DIR = 40  # + "/session_YYYY-MM-DD_HH-MM-SS_ffffff_PID/sockets/plasma_store" stays < 107 bytes
OBJECT_STORE_BYTES = 80 * 2**20  # Ray's minimum is 75 MiB; jobs move no objects
START_TIMEOUT_S = 180


def state_dir() -> Path:
    return mg_home() / "ray"


def state_file() -> Path:
    return state_dir() / "cluster.json"


def temp_dir() -> Path:
    """Ray's temp dir: $MG_HOME/ray/tmp when short enough, else /tmp/mg-ray-<hash of MG_HOME>."""
    preferred = state_dir() / "tmp"
    if len(str(preferred)) <= MAX_TEMP_DIR:
        return preferred
    digest = hashlib.sha1(str(mg_home()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"mg-ray-{digest}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_count() -> int:
    """GPUs on this machine, without importing torch (nvidia-smi when present)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def read_state() -> dict | None:
    """The running local instance's record, or None (a record whose process is gone is removed)."""
    path = state_file()
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not _alive(state):
        path.unlink(missing_ok=True)
        return None
    return state


def _alive(state: dict) -> bool:
    import psutil

    try:
        proc = psutil.Process(int(state["pid"]))
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and \
            abs(proc.create_time() - float(state["create_time"])) < 1.0
    except (psutil.Error, KeyError, ValueError, TypeError):
        return False


def _dashboard_up(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=3) as resp:
            return resp.status == 200
    except OSError:
        return False


def ensure_started(slots: int = 1, num_cpus: int = 1) -> dict:
    """Start the local Ray head unless it runs already; returns its record (dashboard_url, ...)."""
    import fcntl

    state_dir().mkdir(parents=True, exist_ok=True)
    with open(state_dir() / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two submits at once start one instance
        state = read_state()
        if state is not None:
            return state
        return _start(slots, num_cpus)


def _start(slots: int, num_cpus: int) -> dict:
    import psutil

    tmp = temp_dir()
    tmp.mkdir(parents=True, exist_ok=True)
    gpus = gpu_count()
    ports = {"gcs": _free_port(), "dashboard": _free_port(), "client": _free_port(), "agent": _free_port()}
    argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1", "--port", str(ports["gcs"]),
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(ports["dashboard"]), "--ray-client-server-port", str(ports["client"]),
            "--dashboard-agent-listen-port", str(ports["agent"]),
            "--num-cpus", str(num_cpus), "--num-gpus", str(gpus), "--resources", json.dumps({SLOT: slots}),
            "--object-store-memory", str(OBJECT_STORE_BYTES), "--temp-dir", str(tmp), "--disable-usage-stats"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_RUN_ID")}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_DISABLE_DOCKER_CPU_WARNING="1")
    log = state_dir() / "ray-start.log"
    started = time.time()
    # starting Ray takes ~20 s on 2 CPU cores: say so before the wait, on stderr (stdout ends with a job id)
    print(f"starting a local Ray instance for jobs (once per MG_HOME, ~20 s; log: {log}) ...",
          file=sys.stderr, flush=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, cwd=state_dir())
    url = f"http://127.0.0.1:{ports['dashboard']}"
    deadline = started + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise MGError(f"local Ray did not start (exit {proc.returncode}):\n"
                          + "\n".join(log.read_text().splitlines()[-15:]), hint=f"full log: {log}")
        if _dashboard_up(url):
            break
        time.sleep(0.5)
    else:
        _kill_tree(proc.pid)
        raise MGError(f"local Ray's dashboard did not answer within {START_TIMEOUT_S} s", hint=f"log: {log}")
    state = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "dashboard_url": url,
             "gcs_address": f"127.0.0.1:{ports['gcs']}", "temp_dir": str(tmp), "slots": slots, "gpus": gpus,
             "num_cpus": num_cpus, "started_at": started, "start_seconds": round(time.time() - started, 1)}
    state_file().write_text(json.dumps(state, indent=2))
    print(f"local Ray started in {state['start_seconds']:.0f} s: {url}", file=sys.stderr, flush=True)
    return state


def _kill_tree(pid: int, timeout: float = 30.0) -> int:
    """SIGTERM ``pid`` (``ray start --block`` then stops Ray's processes), then SIGKILL whatever of
    its process tree is left. Returns how many processes had to be killed."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    try:
        root.terminate()
    except psutil.Error:
        pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)
    return len(alive)


def stop() -> dict | None:
    """Stop the local instance; returns its record (None when none was running)."""
    state = read_state()
    if state is None:
        return None
    state["killed_after_timeout"] = _kill_tree(int(state["pid"]))
    state_file().unlink(missing_ok=True)
    tmp = Path(state["temp_dir"])
    if tmp.name.startswith("mg-ray-") or tmp.parent == state_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    return state
