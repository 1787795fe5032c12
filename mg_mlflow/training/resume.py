"""Fault tolerance of a training run: stop cleanly on SIGTERM/Ctrl-C (checkpoint, then KILLED), and
resume the SAME MLflow run from its last checkpoint (``--resume RUN_ID``).

transformers' ``Trainer.train(resume_from_checkpoint=...)`` restores the weights, optimizer,
scheduler, RNG states and the data order; this module adds what MLflow needs: the earlier metric
history (no duplicate steps, ``loss_first`` from the first segment), carbon figures that continue
from where the first segment stopped, and the checkpoint itself (local, or downloaded from the run's
artifacts when ``checkpoint_artifacts`` was on).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from mg_mlflow import metric_names as mn
from mg_mlflow.errors import MGError
from mg_mlflow.tracking.spool import send_kept
from mg_mlflow.training.distributed import any_rank

HISTORY_KEYS = (mn.LOSS, mn.EVAL_LOSS)
STAGING = ".partial"  # checkpoints are written under <output dir>/.partial, then renamed
FULL_BELOW_BYTES = 1 << 20  # a failed write with less free space than this is a full disk
CARBON_CUMULATIVE = (mn.EMISSIONS_MG, mn.ENERGY_J)  # carbon figure names


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
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)
                        or client.get_metric_history(run_id, mn.old_name(key)))  # a run begun before the prefixes
        if points:
            earlier.history[key] = points
    if earlier.history.get(mn.LOSS):
        earlier.logged_through = earlier.history[mn.LOSS][-1][0]
    for name in CARBON_CUMULATIVE:  # a segment logged before the mg/J names: its kg/kWh, converted
        found = mn.carbon_key(run.data.metrics, name)
        points = client.get_metric_history(run_id, found[0]) if found else []
        if points:
            earlier.carbon[mn.carbon(name)] = max(points, key=lambda m: m.step).value * found[1]
    return earlier


def with_spooled_points(earlier: Earlier, output_dir: Path) -> Earlier:
    """``earlier`` after sending what the earlier segment kept in its local spool and never sent: the
    resumed segment then neither leaves a gap nor logs a step twice. The store holds the spool's points in
    the order they were written, up to somewhere after its last loss step: only what follows is sent."""
    sent = send_kept(output_dir, earlier.run_id, from_step=earlier.logged_through)
    return earlier_segment(earlier.run_id) if sent else earlier


def is_complete(folder: Path) -> bool:
    """A checkpoint folder the trainer finished: its ``trainer_state.json`` (written last) reads back and
    its weights are there."""
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest complete ``checkpoint-N`` in ``folder`` (an incomplete newer one is skipped)."""
    if not folder.is_dir():
        return None
    found = [(int(p.name.split("-", 1)[1]), p) for p in folder.iterdir()
             if p.is_dir() and p.name.startswith("checkpoint-") and p.name.split("-", 1)[1].isdigit()]
    for _, path in sorted(found, reverse=True):
        if is_complete(path):
            return str(path)
    return None


def _looks_disk_full(exc: BaseException, folder: Path) -> bool:
    """ENOSPC, said or not: torch's zip writer reports a full disk as "unexpected pos" or "file write
    failed", so a failed write with (almost) no space left counts too."""
    seen: BaseException | None = exc
    while seen is not None:
        if getattr(seen, "errno", None) == errno.ENOSPC or "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW_BYTES
    except OSError:
        return False


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def write_checkpoints_atomically(trainer) -> None:
    """Every checkpoint is written under ``<output dir>/.partial/checkpoint-N`` and renamed to
    ``checkpoint-N`` once complete, so a checkpoint cut short (full disk, SIGKILL) never looks like one
    to resume from. A full disk ends the run with "disk full", the folder and its free space.

    A hook on the trainer's ``_save_checkpoint`` (transformers writes the model, optimizer, scheduler,
    RNG states and, last, ``trainer_state.json`` into ``_get_output_dir()/checkpoint-N``): the output
    folder it sees is the staging folder for the duration of the save."""
    from transformers.trainer_utils import rotate_checkpoints

    save = trainer._save_checkpoint

    def atomic_save(model, trial=None):
        run_dir = Path(trainer._get_output_dir(trial=trial))
        staging = run_dir / STAGING
        name = f"checkpoint-{trainer.state.global_step}"
        if trainer.args.should_save:
            shutil.rmtree(staging / name, ignore_errors=True)
            staging.mkdir(parents=True, exist_ok=True)
        trainer.accelerator.wait_for_everyone()  # no rank writes before the staging folder is fresh
        trainer._get_output_dir = lambda trial=None: str(staging)
        try:
            save(model, trial)
        except Exception as exc:  # noqa: BLE001 - a full disk surfaces as many exception types
            if not _looks_disk_full(exc, run_dir):
                raise
            free = shutil.disk_usage(run_dir).free
            shutil.rmtree(staging / name, ignore_errors=True)
            newest = last_complete_checkpoint(run_dir)
            raise MGError(f"disk full (No space left on device) while writing {name} under {run_dir}: "
                          f"{_mib(free)} free; the partial checkpoint was removed"
                          + (f", {Path(newest).name} is the newest complete one" if newest else ""),
                          hint="free space (or point --output-dir at a disk with room), then continue with "
                               "`model-garden train --resume RUN_ID`") from None
        finally:
            del trainer._get_output_dir  # the class's method again
        trainer.accelerator.wait_for_everyone()  # every rank's files are in the staging folder
        if trainer.args.should_save:
            final = run_dir / name
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging / name, final)
            try:
                staging.rmdir()
            except OSError:  # another rank's leftovers, or not empty: removed by the next save
                pass
            if trainer.state.best_global_step:
                best = run_dir / f"checkpoint-{trainer.state.best_global_step}"
                trainer.state.best_model_checkpoint = str(best) if best.is_dir() else None
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=trainer.args.save_total_limit,
                               best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True)
        trainer.accelerator.wait_for_everyone()

    trainer._save_checkpoint = atomic_save


def checkpoint_to_resume(run_id: str, output_dir: Path) -> str:
    """The newest complete checkpoint of the run: the local one, else the newest logged as a run artifact."""
    local = output_dir / "checkpoints"
    newest = last_complete_checkpoint(local)
    if newest:
        return newest
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
