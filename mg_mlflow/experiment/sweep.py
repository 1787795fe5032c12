"""Hyperparameter sweeps as nested MLflow runs, driven by Optuna.

One parent run (``mg.run_kind=sweep``) holds the search; each trial is a nested child run that is a
full training run (:mod:`mg_mlflow.experiment.trial`). Optuna samples (GridSampler for ``--grid``, TPE
for ``--space``), prunes (MedianPruner on the eval loss reported at each evaluation) and keeps its
study in an RDB storage next to the MLflow store, so an interrupted sweep resumes without re-running
finished trials. The parent records the objective per trial, the best trial, plots, and the summed
energy/CO2 of its children; ``max_emissions_kg`` stops new trials once the sum would pass it.
With ``parallel > 1``, worker processes (:mod:`mg_mlflow.experiment.parallel`) run trials of the same
study beside this one.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mg_mlflow.config import TrainConfig, build_config
from mg_mlflow.env import default_tracking_uri, mg_home, setup_env
from mg_mlflow.errors import MGError
from mg_mlflow.experiment import record, space as sp
from mg_mlflow.experiment.trial import run_trial, train_function
from mg_mlflow.proc import wait_interruptibly
from mg_mlflow.tracking.run import use_tracking_uri
from mg_mlflow.vision_config import VisionTrainConfig

FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


@dataclass
class SweepSpec:
    """Everything a sweep needs, stored with its study so ``--resume`` needs nothing else."""

    options: dict[str, Any] = field(default_factory=dict)   # train options given (None = not given)
    config_file: str = ""
    set_args: list[str] = field(default_factory=list)
    modality: str = "text"
    grid: list[str] = field(default_factory=list)
    space: list[str] = field(default_factory=list)
    trials: int = 0                  # 0 = the grid's size
    objective: str = "eval_loss_final"
    direction: str = ""
    sampler: str = "tpe"
    pruner: str = "median"
    pruner_startup_trials: int = 2
    pruner_warmup_steps: int = 0
    parallel: int = 1
    register: str = "best"
    max_emissions_kg: float = 0.0    # 0 = no budget
    seed: int = 42


@dataclass
class SweepResult:
    parent_run_id: str
    study_name: str
    outcomes: list = field(default_factory=list)   # trial.Outcome of this session
    best: dict | None = None
    stopped_reason: str = ""
    registered: str = ""
    plots: list[Path] = field(default_factory=list)
    total_emissions_kg: float = 0.0
    total_energy_kwh: float = 0.0


def config_class(modality: str):
    if modality == "vision":
        return VisionTrainConfig
    if modality != "text":
        raise MGError(f"--modality {modality!r}: use text or vision")

    return TrainConfig


def optuna_storage() -> str:
    """An Optuna RDB storage beside the MLflow store: ``sqlite:///<dir of mlflow.db>/optuna.db``, else
    ``$MG_HOME/optuna.db`` (``MG_OPTUNA_STORAGE`` overrides). Not the tracking database itself: Optuna
    and MLflow both keep an ``alembic_version`` table, and they would collide."""
    if os.environ.get("MG_OPTUNA_STORAGE"):
        return os.environ["MG_OPTUNA_STORAGE"]
    uri = default_tracking_uri()
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).absolute().parent / 'optuna.db'}"
    return f"sqlite:///{mg_home().absolute() / 'optuna.db'}"


def validate(spec: SweepSpec):
    """Parse the dimensions and check a first configuration; raise before anything is created."""
    cls = config_class(spec.modality)
    grid, space = sp.parse_grid(spec.grid, cls), sp.parse_space(spec.space, cls)
    sp.check_dimensions(grid, space)
    problems = []
    if space and spec.trials < 1:
        problems.append("--space needs --trials N (how many trials to run)")
    if spec.register not in ("best", "all", "none"):
        problems.append(f"--register {spec.register!r}: use best, all or none")
    if spec.pruner not in ("median", "none"):
        problems.append(f"--pruner {spec.pruner!r}: use median or none")
    if spec.sampler not in ("tpe", "random"):
        problems.append(f"--sampler {spec.sampler!r}: use tpe or random")
    if spec.max_emissions_kg < 0 or spec.parallel < 1:
        problems.append("--max-emissions-kg must be >= 0 and --parallel >= 1")
    overridden = sorted({d.name for d in grid + space} & {a.split("=", 1)[0].strip().replace("-", "_")
                                                         for a in spec.set_args})
    if overridden:
        problems.append(f"{', '.join(overridden)} is swept and also fixed with --set: drop one")
    if problems:
        raise MGError("bad sweep options:\n" + "\n".join(f"  - {p}" for p in problems))
    first = {d.name: (d.values[0] if d.values else (int(d.low) if "int" in d.kind else d.low)) for d in grid + space}
    cfg = build_config(cls, spec.config_file or None, {**spec.options, **first}, spec.set_args)
    direction = sp.direction_for(spec.objective, spec.direction)
    if spec.objective.startswith("eval_") and not (cfg.eval_split or cfg.eval_dataset):
        raise MGError(f"objective {spec.objective} needs an evaluation set",
                      hint="add --eval-split 0.2 (or --eval-dataset FILE), or use --objective loss_final")
    if spec.pruner == "median" and direction == "minimize" and cfg.eval_steps <= 0 and (cfg.eval_split or cfg.eval_dataset):
        raise MGError("--pruner median stops bad trials at intermediate evaluations, and eval_steps is 0",
                      hint="add --eval-steps N (e.g. a fifth of max_steps), or --pruner none")
    return cls, grid, space, cfg, direction


class Sweep:
    """The state of one running sweep (what :func:`mg_mlflow.experiment.trial.run_trial` reads)."""

    def __init__(self, spec: SweepSpec, parent_id: str, experiment_id: str, study, dims, cls, direction,
                 echo: Callable[[str], None]):
        from mlflow.tracking import MlflowClient

        self.spec, self.parent_id, self.experiment_id, self.study = spec, parent_id, experiment_id, study
        self.dims, self.config_cls, self.direction, self.echo = dims, cls, direction, echo
        self.client = MlflowClient()
        self.options = {k: v for k, v in spec.options.items() if v is not None}
        self.prune = spec.pruner == "median" and direction == "minimize" and "loss" in spec.objective
        self.trial_register_as = self.options.get("register_as", "") if spec.register == "all" else "none"
        self.train = train_function(spec.modality)

    # ------------------------------------------------------------------ bookkeeping from the study
    def trials(self, *states: str) -> list:
        return [t for t in self.study.get_trials(deepcopy=False) if t.state.name in states]

    def done(self) -> list:
        """Trials that count toward the budget: finished, except those a Ctrl-C interrupted."""
        return [t for t in self.trials(*FINISHED_STATES) if not t.user_attrs.get("interrupted")]

    def target(self) -> int:
        grid = [d for d in self.dims if d.kind == "grid"]
        return self.spec.trials or sp.grid_size(grid)

    def spent(self) -> tuple[float, float]:
        done = self.trials(*FINISHED_STATES)
        return (sum(t.user_attrs.get("emissions_kg", 0.0) for t in done),
                sum(t.user_attrs.get("energy_kwh", 0.0) for t in done))

    def budget_stop(self) -> str:
        """Why no new trial may start under the carbon budget ('' = go on)."""
        if not self.spec.max_emissions_kg:
            return ""
        done = [t for t in self.trials(*FINISHED_STATES) if "emissions_kg" in t.user_attrs]
        spent = sum(t.user_attrs["emissions_kg"] for t in done)
        expected = spent / len(done) if done else 0.0
        if spent + expected > self.spec.max_emissions_kg:
            return (f"carbon budget: {spent:.3g} kg CO2eq spent by {len(done)} trial(s); one more "
                    f"(~{expected:.3g} kg) would pass --max-emissions-kg {self.spec.max_emissions_kg:g}")
        return ""

    def best(self) -> dict | None:
        complete = self.trials("COMPLETE")
        if not complete:
            return None
        pick = min if self.direction == "minimize" else max
        t = pick(complete, key=lambda x: x.value)
        return {"number": t.number, "value": t.value, "params": dict(t.params), "run_id": t.user_attrs.get("run_id")}

    def requeue_interrupted(self) -> None:
        """A resumed sweep runs again the trials a Ctrl-C (or a crash) cut short, once each."""
        import optuna

        for t in self.trials("RUNNING"):  # left RUNNING by a process that died
            self.study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        all_trials = self.study.get_trials(deepcopy=False)
        requeued = {t.user_attrs.get("requeue_of") for t in all_trials}
        for t in self.trials("FAIL"):
            if t.user_attrs.get("interrupted") and t.number not in requeued:
                self.study.enqueue_trial(dict(t.params), user_attrs={"requeue_of": t.number})


def _sampler(spec: SweepSpec, grid):
    import optuna

    if grid:
        return optuna.samplers.GridSampler(sp.search_space_for_grid(grid), seed=spec.seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed)


def _pruner(spec: SweepSpec):
    import optuna

    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=spec.pruner_startup_trials,
                                       n_warmup_steps=spec.pruner_warmup_steps)


def _spec_from_dict(data: dict) -> SweepSpec:
    names = {f.name for f in dataclasses.fields(SweepSpec)}
    return SweepSpec(**{k: v for k, v in data.items() if k in names})


class TrialFailed(Exception):
    """A trial ended with an error (recorded FAILED in MLflow); Optuna records FAIL and goes on."""


def trial_loop(sweep, result=None) -> str:
    """Run trials with ``study.optimize`` until the budget is used; returns why it stopped early
    ('' when it did not). Pruned trials raise ``TrialPruned``, failed ones :class:`TrialFailed`."""
    import optuna

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
    """The trial loop here and, with ``parallel > 1``, in ``parallel - 1`` worker processes
    (:mod:`mg_mlflow.experiment.parallel`; where GPUs exist, worker i sees only GPU i)."""
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
        for proc in workers:
            wait_interruptibly(proc)
    return reason


def reopen_for_worker(parent_id: str, echo: Callable[[str], None]) -> Sweep:
    """The sweep of parent run ``parent_id`` as a worker process sees it: the same study (loaded,
    never created) with the sampler and pruner of its stored spec."""
    import optuna
    from mlflow.tracking import MlflowClient

    storage = optuna_storage()
    parent_id, study_name, spec = record.reopen_parent(parent_id, storage, _spec_from_dict, reopen=False)
    cls, grid, space, _, direction = validate(spec)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=_sampler(spec, grid),
                              pruner=_pruner(spec))
    experiment_id = MlflowClient().get_run(parent_id).info.experiment_id
    return Sweep(spec, parent_id, experiment_id, study, grid + space, cls, direction, echo)


def run_sweep(spec: SweepSpec | None = None, resume: str = "", echo: Callable[[str], None] = print,
              overrides: dict | None = None) -> SweepResult:
    """Run (or, with ``resume`` = the parent run id, continue) a sweep; returns what happened."""
    import optuna

    setup_env()
    use_tracking_uri()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna_storage()
    if resume:
        parent_id, study_name, spec = record.reopen_parent(resume, storage, _spec_from_dict)
        for key, value in (overrides or {}).items():
            if value is not None:
                setattr(spec, key, value)
    cls, grid, space, cfg, direction = validate(spec)
    if not resume:
        parent_id, study_name = record.create_parent(spec, cfg, grid + space, direction, storage)
    sampler, pruner = _sampler(spec, grid), _pruner(spec)
    study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=direction, load_if_exists=True)
    study.set_user_attr("mg_spec", dataclasses.asdict(spec))
    study.set_user_attr("mlflow_parent_run_id", parent_id)
    from mlflow.tracking import MlflowClient

    experiment_id = MlflowClient().get_run(parent_id).info.experiment_id
    sweep = Sweep(spec, parent_id, experiment_id, study, grid + space, cls, direction, echo)
    if resume:
        sweep.requeue_interrupted()
        echo(f"resuming sweep {parent_id}: {len(sweep.done())} of {sweep.target()} trial(s) already done")
    result = SweepResult(parent_id, study_name)
    try:
        result.stopped_reason = run_trials(sweep, result)
    except KeyboardInterrupt:
        record.interrupted(sweep)
        raise
    except BaseException as exc:
        record.failed(sweep, exc)
        raise
    return record.finish(sweep, result)
