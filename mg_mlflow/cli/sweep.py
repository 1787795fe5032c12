"""``model-garden sweep``: a hyperparameter search as one parent MLflow run with a child per trial."""

from __future__ import annotations

import click

from mg_mlflow.cli.base import console, print_kv
from mg_mlflow.config import TrainConfig
from mg_mlflow.env import setup_env
from mg_mlflow.errors import MGError
from mg_mlflow.experiment.sweep import SweepSpec
from mg_mlflow.experiment.sweep import run_sweep
from mg_mlflow.options import MlflowParamsCommand, click_options, from_values, recipe_options
from mg_mlflow.vision_config import VisionTrainConfig

SPEC_OPTIONS = tuple(f for f, v in SweepSpec.__dataclass_fields__.items() if v.metadata.get("flags") != ())
RESUME_KNOBS = ("trials", "parallel", "max_emissions_kg")  # what may change on --resume


class SweepCommand(MlflowParamsCommand):
    """`mlflow run . -e sweep -P trials=4 -P lora_r=8`: training fields become ``--set`` (the vision
    fields too, for ``-P modality=vision``); the sweep's own options keep their names."""

    config_class = VisionTrainConfig
    config_skip = ("resume", "checkpoint_artifacts")  # --resume is the sweep's own option


@click.command("sweep", cls=SweepCommand, context_settings={"max_content_width": 110})
@recipe_options("YAML recipe with the fixed training options (as for `train`)",
                set_help="override a fixed option, repeatable")
@click_options(SweepSpec)
@click.option("--resume", default=None, metavar="SWEEP_RUN_ID", help="continue an interrupted sweep (its parent run id)")
@click_options(TrainConfig, skip=SweepCommand.config_skip, typed=False)
def sweep_cmd(config_file, set_args, resume, **values):
    """Search hyperparameters with Optuna: one parent MLflow run, one nested child run per trial.

    Every `train` option fixes a value for all trials; --grid or --space (+ --trials) say what
    varies. Each trial is a full training run (params, losses, carbon) named by its parameters,
    e.g. "trial 3 lr=3e-4 r=16". An objective measured on evaluation data holds out 0.2 of the
    dataset unless --eval-split/--eval-dataset say otherwise; a --space search prunes bad trials at
    intermediate evaluations (a grid does not); every default chosen is logged on the parent run.
    A failed trial does not stop the sweep, and only the best trial is registered. Ctrl-C marks
    the running trial and the sweep KILLED; --resume continues without re-running finished trials.

    \b
    Examples:
      model-garden sweep --base-model ./tiny --dataset data.jsonl --max-steps 60 \\
          --grid learning_rate=1e-4,3e-3 --grid lora_r=8,16
      model-garden sweep --base-model ./tiny --dataset data.jsonl --max-steps 60 --eval-split 0.2 \\
          --eval-steps 10 --trials 12 --space learning_rate=loguniform:1e-5:1e-2 \\
          --space lora_r=int:4:32 --space lr_scheduler=choice:linear,cosine --max-emissions-kg 0.01
      model-garden sweep --resume 3f2a9c...      # after Ctrl-C
      mlflow run . -e sweep --env-manager local -P base_model=$PWD/tiny -P dataset=$PWD/data.jsonl \\
          -P grid="learning_rate=1e-4,3e-3;lora_r=8,16" -P eval_split=0.2 -P eval_steps=10
    """
    setup_env()
    spec_values = {k: values.pop(k) for k in SPEC_OPTIONS}
    options = values  # the fixed training options (None = not given)
    out = console()
    if resume:
        fixed = [k for k, v in options.items() if v is not None] + (["--config"] if config_file else []) + \
            (["--set"] if set_args else []) + [f"--{k}" for k, v in spec_values.items()
                                               if v is not None and k not in RESUME_KNOBS]
        if fixed:
            raise MGError(f"--resume continues a sweep with its own settings; drop {', '.join(sorted(fixed))}",
                          hint="only --trials, --parallel and --max-emissions-kg may change on resume")
        result = run_sweep(resume=resume, echo=out.print, overrides={k: spec_values[k] for k in RESUME_KNOBS})
    else:
        seed = from_values(TrainConfig, {"seed": options.get("seed")}).get("seed", 42)
        spec = SweepSpec(options=options, config_file=config_file or "", set_args=list(set_args), seed=seed,
                         **from_values(SweepSpec, spec_values, "the sweep options"))
        result = run_sweep(spec, echo=out.print)
    best = result.best
    rows = [("sweep run id", result.parent_run_id), ("trials run now", len(result.outcomes)),
            ("best trial", f"{best['number']} {best['params']} -> {best['value']:.5g}" if best else "none completed"),
            ("best run id", best["run_id"] if best else None), ("registered", result.registered or None),
            ("stopped early", result.stopped_reason or None),
            ("emissions (all trials)", f"{result.total_emissions_kg:.3g} kg CO2eq, {result.total_energy_kwh:.3g} kWh"),
            *[("plot", str(p)) for p in result.plots]]
    print_kv("sweep finished", rows)
    out.print(f"See it in the MLflow UI: [bold]model-garden ui[/] (parent run {result.parent_run_id})")


def register(group: click.Group) -> None:
    group.add_command(sweep_cmd)
