"""Hyperparameter sweeps as nested MLflow runs, driven by Optuna.

One parent run (``mg.run_kind=sweep``) holds the search; each trial is a nested child run that is a
full training run (:mod:`mg_mlflow.experiment.trial`). Optuna samples (GridSampler for ``--grid``, TPE
for ``--space``), prunes (MedianPruner on the eval loss reported at each evaluation) and keeps its
study in an RDB storage next to the MLflow store, so an interrupted sweep resumes without re-running
finished trials. The parent records the objective per trial, the best trial, plots, and the summed
energy/CO2 of its children; ``max_emissions_kg`` stops new trials once the sum would pass it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mg_mlflow.errors import MGError
from mg_mlflow.experiment import space as sp

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
        from mg_mlflow.vision_config import VisionTrainConfig

        return VisionTrainConfig
    if modality != "text":
        raise MGError(f"--modality {modality!r}: use text or vision")
    from mg_mlflow.config import TrainConfig

    return TrainConfig


def optuna_storage() -> str:
    """An Optuna RDB storage beside the MLflow store: ``sqlite:///<dir of mlflow.db>/optuna.db``, else
    ``$MG_HOME/optuna.db`` (``MG_OPTUNA_STORAGE`` overrides). Not the tracking database itself: Optuna
    and MLflow both keep an ``alembic_version`` table, and they would collide."""
    import os

    from mg_mlflow.env import default_tracking_uri, mg_home

    if os.environ.get("MG_OPTUNA_STORAGE"):
        return os.environ["MG_OPTUNA_STORAGE"]
    uri = default_tracking_uri()
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).absolute().parent / 'optuna.db'}"
    return f"sqlite:///{mg_home().absolute() / 'optuna.db'}"


def validate(spec: SweepSpec):
    """Parse the dimensions and check a first configuration; raise before anything is created."""
    from mg_mlflow.config import build_config

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

        from mg_mlflow.experiment.trial import train_function

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


def run_sweep(spec: SweepSpec | None = None, resume: str = "", echo: Callable[[str], None] = print,
              overrides: dict | None = None) -> SweepResult:
    """Run (or, with ``resume`` = the parent run id, continue) a sweep; returns what happened."""
    import optuna

    from mg_mlflow.env import setup_env
    from mg_mlflow.experiment import record
    from mg_mlflow.tracking.run import use_tracking_uri

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
        from mg_mlflow.experiment.parallel import run_trials

        result.stopped_reason = run_trials(sweep, result)
    except KeyboardInterrupt:
        record.interrupted(sweep)
        raise
    except BaseException as exc:
        record.failed(sweep, exc)
        raise
    return record.finish(sweep, result)
