"""A worker process of a sweep with ``parallel > 1``: ``python -m mg_mlflow.experiment.parallel
PARENT_RUN_ID``.

Workers are Optuna's multi-process pattern: each one opens the same study in the shared RDB storage
and asks for trials until the budget is used (:func:`mg_mlflow.experiment.sweep.trial_loop`); the main
process starts them (:func:`mg_mlflow.experiment.sweep.run_trials`) and records the parent run.
Where GPUs exist, worker i sees only GPU i (``CUDA_VISIBLE_DEVICES``); on a CPU machine they share it.
"""

from __future__ import annotations

import os
import sys

from mg_mlflow.env import setup_env
from mg_mlflow.experiment.sweep import reopen_for_worker, trial_loop
from mg_mlflow.tracking.run import use_tracking_uri


def worker(parent_id: str) -> None:
    """A worker process: the same study, trials only (the main process records the parent)."""
    import optuna

    setup_env()
    use_tracking_uri()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sweep = reopen_for_worker(parent_id, lambda text: print(f"[worker {os.getpid()}] {text}", flush=True))
    try:
        trial_loop(sweep)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    worker(sys.argv[1])
