"""The trial loop of a sweep, in this process and, with ``parallel > 1``, in worker processes.

Workers are Optuna's multi-process pattern: each one opens the same study in the shared RDB storage
and asks for trials until the budget is used (``python -m mg_mlflow.experiment.parallel PARENT_RUN_ID``).
Where GPUs exist, worker i sees only GPU i (``CUDA_VISIBLE_DEVICES``); on a CPU machine they share it.
"""

from __future__ import annotations

import os
import subprocess
import sys


class TrialFailed(Exception):
    """A trial ended with an error (recorded FAILED in MLflow); Optuna records FAIL and goes on."""


def trial_loop(sweep, result=None) -> str:
    """Run trials with ``study.optimize`` until the budget is used; returns why it stopped early
    ('' when it did not). Pruned trials raise ``TrialPruned``, failed ones :class:`TrialFailed`."""
    import optuna

    from mg_mlflow.experiment import record
    from mg_mlflow.experiment.trial import run_trial

    stop = {"reason": ""}
    outcomes = {}

    def objective(trial):
        done = len(sweep.done())
        sweep.echo(f"trial {trial.number} started ({done + 1}/{sweep.target()})")
        outcome = run_trial(sweep, trial)
        outcomes[trial.number] = outcome
        if result is not None:
            result.outcomes.append(outcome)
        if outcome.state == "PRUNED":
            raise optuna.TrialPruned(outcome.error or "pruned")
        if outcome.state == "FAIL":
            raise TrialFailed(outcome.error)
        return outcome.value

    def after(study, frozen):
        outcome = outcomes.get(frozen.number)
        if outcome is None:
            return
        best = record.after_trial(sweep, outcome)
        shown = f"{outcome.value:.4g}" if outcome.value is not None else "-"
        best_text = (f"best so far: trial {best['number']} {sweep.spec.objective}={best['value']:.4g}"
                     if best else "no complete trial yet")
        sweep.echo(f"{outcome.name}: {outcome.state} {sweep.spec.objective}={shown}"
                   f"{' (' + outcome.error + ')' if outcome.error else ''} | {best_text}")
        if len(sweep.done()) + len(sweep.trials("RUNNING")) >= sweep.target():  # others' included
            study.stop()
            return
        stop["reason"] = sweep.budget_stop()
        if stop["reason"]:
            study.stop()

    remaining = sweep.target() - len(sweep.done()) - len(sweep.trials("RUNNING"))
    if remaining <= 0:
        return ""
    stop["reason"] = sweep.budget_stop()
    if stop["reason"]:
        return stop["reason"]
    sweep.study.optimize(objective, n_trials=remaining, catch=(TrialFailed,), callbacks=[after])
    return stop["reason"]


def _gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def run_trials(sweep, result) -> str:
    workers = []
    gpus = _gpus()
    for i in range(1, sweep.spec.parallel):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        workers.append(subprocess.Popen([sys.executable, "-m", "mg_mlflow.experiment.parallel", sweep.parent_id],
                                        env=env))
    if gpus and workers:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
    try:
        reason = trial_loop(sweep, result)
    finally:
        from mg_mlflow.proc import wait_interruptibly

        for proc in workers:
            wait_interruptibly(proc)
    return reason


def worker(parent_id: str) -> None:
    """A worker process: the same study, trials only (the main process records the parent)."""
    import optuna

    from mg_mlflow.env import setup_env
    from mg_mlflow.experiment import record
    from mg_mlflow.experiment.sweep import Sweep, _spec_from_dict, optuna_storage, validate
    from mg_mlflow.tracking.run import use_tracking_uri

    setup_env()
    use_tracking_uri()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna_storage()
    parent_id, study_name, spec = record.reopen_parent(parent_id, storage, _spec_from_dict, reopen=False)
    cls, grid, space, _, direction = validate(spec)
    from mg_mlflow.experiment.sweep import _pruner, _sampler

    study = optuna.load_study(study_name=study_name, storage=storage, sampler=_sampler(spec, grid),
                              pruner=_pruner(spec))
    from mlflow.tracking import MlflowClient

    experiment_id = MlflowClient().get_run(parent_id).info.experiment_id
    sweep = Sweep(spec, parent_id, experiment_id, study, grid + space, cls, direction,
                  lambda text: print(f"[worker {os.getpid()}] {text}", flush=True))
    try:
        trial_loop(sweep)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    worker(sys.argv[1])
