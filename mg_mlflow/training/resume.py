"""Fault tolerance of a training run: stop cleanly on SIGTERM/Ctrl-C (checkpoint, then KILLED), and
resume the SAME MLflow run from its last checkpoint (``--resume RUN_ID``).

transformers' ``Trainer.train(resume_from_checkpoint=...)`` restores the weights, optimizer,
scheduler, RNG states and the data order; this module adds what MLflow needs: the earlier metric
history (no duplicate steps, ``loss_first`` from the first segment), carbon figures that continue
from where the first segment stopped, and the checkpoint itself (local, or downloaded from the run's
artifacts when ``checkpoint_artifacts`` was on).
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from mg_mlflow import metric_names as mn
from mg_mlflow.errors import MGError
from mg_mlflow.training.distributed import any_rank

HISTORY_KEYS = ("loss", "eval_loss")
CARBON_CUMULATIVE = (mn.carbon(mn.EMISSIONS_KG), mn.carbon(mn.ENERGY_KWH))


@dataclass
class Earlier:
    """What the interrupted segment of a run already recorded."""

    run_id: str
    logged_through: int = -1                      # last step with a per-step loss point
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    carbon: dict[str, float] = field(default_factory=dict)  # cumulative figures to continue from


def earlier_segment(run_id: str) -> Earlier:
    import mlflow

    client = mlflow.tracking.MlflowClient()
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - MlflowException for an unknown id
        raise MGError(f"--resume {run_id}: no such MLflow run in {mlflow.get_tracking_uri()}",
                      hint="`model-garden runs list` shows the runs and their ids") from None
    if run.info.status == "FINISHED":
        raise MGError(f"--resume {run_id}: that run already FINISHED", hint="start a new run instead")
    earlier = Earlier(run_id)
    for key in HISTORY_KEYS:
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        if points:
            earlier.history[key] = points
    if earlier.history.get("loss"):
        earlier.logged_through = earlier.history["loss"][-1][0]
    for key in CARBON_CUMULATIVE:
        points = client.get_metric_history(run_id, key)
        if points:
            earlier.carbon[key] = max(points, key=lambda m: m.step).value
    return earlier


def checkpoint_to_resume(run_id: str, output_dir: Path) -> str:
    """The last checkpoint of the run: the local one, else the newest logged as a run artifact."""
    from transformers.trainer_utils import get_last_checkpoint

    local = output_dir / "checkpoints"
    if local.is_dir() and get_last_checkpoint(str(local)):
        return get_last_checkpoint(str(local))
    import mlflow

    client = mlflow.tracking.MlflowClient()
    try:
        logged = [a.path for a in client.list_artifacts(run_id, "checkpoints") if a.is_dir]
    except Exception:  # noqa: BLE001 - no artifacts
        logged = []
    if logged:
        newest = max(logged, key=lambda p: int(p.rsplit("-", 1)[-1]))
        return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=newest, dst_path=str(local))
    raise MGError(f"--resume {run_id}: the run has no checkpoint (looked in {local} and its artifacts)",
                  hint="train with --save-steps N (and --checkpoint-artifacts to keep them in MLflow); "
                       "a run stopped with Ctrl-C or SIGTERM saves one itself")


def config_of_run(run_id: str) -> str:
    """The path of the resolved config YAML the run logged (the base for ``--resume``)."""
    import mlflow

    try:
        return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config/train_config.yaml")
    except Exception:  # noqa: BLE001
        raise MGError(f"--resume {run_id}: no such run, or it has no config/train_config.yaml artifact",
                      hint="`model-garden runs list` shows the runs and their ids") from None


class LogCheckpoints(TrainerCallback):
    """``checkpoint_artifacts``: every checkpoint the trainer writes is also logged to the run."""

    def on_save(self, args, state, control, **kwargs):
        import mlflow

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            mlflow.log_artifacts(str(folder), f"checkpoints/{folder.name}")


class StopOnSignal(TrainerCallback):
    """SIGTERM or Ctrl-C during training: finish the current step, save a checkpoint, stop; the run
    then ends KILLED (and can be resumed). Outside the training loop, or on a second signal, the
    signal interrupts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self.training = False
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
        if self.training and self.requested is None:
            self.requested = name
            return
        raise KeyboardInterrupt(f"interrupted by {name}")

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_step_end(self, args, state, control, **kwargs):
        if any_rank(self.requested is not None):  # several ranks stop after the same step
            self.requested = self.requested or "a stop signal on another rank"
            control.should_save = True
            control.should_training_stop = True

    def raise_if_stopped(self, global_step: int) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"stopped by {self.requested} after saving checkpoint-{global_step}; "
                                    "continue with `model-garden train --resume RUN_ID`")
