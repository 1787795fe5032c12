"""The process Ray runs for a job: ``python -m mg_mlflow.team.entry COMMAND [OPTIONS]``.

It runs ``model-garden COMMAND OPTIONS`` in a child process and makes both sides agree on the end:

- Ray stops a job with SIGTERM to the whole process tree (then SIGKILL after
  ``RAY_JOB_STOP_WAIT_TIME_S``). The child turns SIGTERM into KeyboardInterrupt, the path on which
  the training run ends KILLED (Ctrl-C); this wrapper waits for it.
- If the child dies without ending its runs (killed, out of memory), the wrapper ends every run of
  this job (found by the ``mg.job_id`` tag that ``MLFLOW_RUN_CONTEXT`` put on it) as FAILED, or
  KILLED when a stop was asked, and exits non-zero, so Ray reports FAILED as well.
- A stop that arrives before the child started (a job cancelled while it was queued) starts nothing.
"""

from __future__ import annotations

import os
import signal
import sys

from mg_mlflow.cli import cli
from mg_mlflow.proc import wait_interruptibly
from mg_mlflow.tracking.liveness import end_open_run


def _unblock() -> None:
    # Ray blocks SIGINT in its processes and children inherit the mask: let both signals through.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def child_main(argv: list[str]) -> None:
    def interrupt(signum, _frame):
        # once: Ray signals the whole tree and the wrapper forwards, and a second KeyboardInterrupt
        # must not cut short the run's own KILLED ending
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # SIGTERM -> KeyboardInterrupt -> the run ends KILLED
    signal.signal(signal.SIGINT, interrupt)
    try:
        # The wrapper started this process with both signals blocked: a stop that came while it
        # started up was held, and is delivered here.
        _unblock()
    except KeyboardInterrupt:  # stopped while starting up: nothing ran, no run exists
        print("stopped before it started", flush=True)
        sys.exit(130)
    cli.main(args=argv, prog_name="model-garden")


def end_open_runs(job_id: str, status: str, reason: str) -> list[str]:
    """Set every still-RUNNING run tagged ``mg.job_id=job_id`` to ``status``; returns their ids."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    ended = []
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    if not exp_ids:
        return ended
    for run in client.search_runs(exp_ids, filter_string=f"tags.`mg.job_id` = '{job_id}'"):
        if run.info.status == "RUNNING":
            end_open_run(client, run.info.run_id, status, reason)
            ended.append(run.info.run_id)
    return ended


def main(argv: list[str]) -> int:
    import subprocess

    _unblock()
    stop = {"asked": False}
    child: list[subprocess.Popen] = []

    def on_stop(signum, _frame):
        stop["asked"] = True  # Ray signals the child too; without a child yet, nothing will start
        for proc in child:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    job_id = os.environ.get("MG_JOB_ID", "")
    # Hold both signals while deciding and starting: a stop that lands between the check and the
    # Popen would otherwise find no child to forward to, and the child would train unstopped. A held
    # signal is delivered on unblock, once the child is in the list (the child unblocks its own mask).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        if stop["asked"]:
            print(f"[model-garden job {job_id}] stopped before it started", flush=True)
            return 143
        print(f"[model-garden job {job_id}] model-garden {' '.join(argv)}", flush=True)
        child.append(subprocess.Popen([sys.executable, "-m", "mg_mlflow.team.entry", "--child", *argv]))
    finally:
        _unblock()
    code = wait_interruptibly(child[0])
    # A child that exited by itself ended its runs (FINISHED, FAILED on an error, KILLED on a stop);
    # one that was killed by a signal could not: end them here.
    if code < 0 and job_id:
        if stop["asked"]:
            status, reason = "KILLED", "job cancelled (Ray stopped it)"
        else:
            status, reason = "FAILED", f"the job's process died (signal {signal.Signals(-code).name})"
        try:
            ended = end_open_runs(job_id, status, reason)
        except Exception as exc:  # noqa: BLE001 - the tracking store may be what failed
            print(f"[model-garden job {job_id}] could not close its runs: {exc}", file=sys.stderr, flush=True)
            ended = []
        if ended:
            print(f"[model-garden job {job_id}] {reason}: run(s) {', '.join(ended)} ended {status}", flush=True)
    if code < 0:
        return 128 + (-code)
    return code if not (stop["asked"] and code == 0) else 143


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--child"]:
        child_main(args[1:])
    else:
        sys.exit(main(args))
