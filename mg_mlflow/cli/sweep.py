"""``model-garden sweep``: a hyperparameter search as one parent MLflow run with a child per trial."""

from __future__ import annotations

import click

from mg_mlflow.cli.base import MlflowParamsCommand, config_options, console, print_kv
from mg_mlflow.config import TrainConfig
from mg_mlflow.vision_config import VisionTrainConfig


class SweepCommand(MlflowParamsCommand):
    """`mlflow run . -e sweep -P trials=4 -P lora_r=8`: training fields become ``--set`` (the vision
    fields too, for ``-P modality=vision``); the sweep's own options keep their names."""

    config_class = VisionTrainConfig
    config_skip = ("resume", "checkpoint_artifacts")  # --resume is the sweep's own option


@click.command("sweep", cls=SweepCommand, context_settings={"max_content_width": 110})
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML recipe with the fixed training options (as for `train`)")
@click.option("--set", "set_args", multiple=True, metavar="KEY=VALUE", help="override a fixed option, repeatable")
@click.option("--modality", type=click.Choice(["text", "vision"]), default=None, help="what is trained [default: text]")
@click.option("--grid", multiple=True, metavar="NAME=V1,V2",
              help="try every combination: --grid learning_rate=1e-4,3e-4 --grid lora_r=8,16")
@click.option("--space", multiple=True, metavar="NAME=KIND:ARGS",
              help="search space for --trials: loguniform:LOW:HIGH, uniform:LOW:HIGH, int:LOW:HIGH[:STEP], "
                   "logint:LOW:HIGH, choice:A,B")
@click.option("--trials", type=int, default=None, help="number of trials (default with --grid: the grid's size)")
@click.option("--objective", default=None, help="metric of each trial to optimise [default: eval_loss_final]")
@click.option("--direction", type=click.Choice(["minimize", "maximize"]), default=None,
              help="only for objectives whose direction is not known (losses are minimised, eval/* scores maximised)")
@click.option("--sampler", type=click.Choice(["tpe", "random"]), default=None, help="Optuna sampler for --space [default: tpe]")
@click.option("--pruner", type=click.Choice(["median", "none"]), default=None,
              help="stop a trial whose eval loss at an evaluation is worse than the median of earlier trials [default: median]")
@click.option("--pruner-startup-trials", type=int, default=None, help="complete trials before pruning starts [default: 2]")
@click.option("--pruner-warmup-steps", type=int, default=None, help="steps of each trial never pruned [default: 0]")
@click.option("--parallel", type=int, default=None, help="trials at once (worker processes; one GPU each where GPUs exist) [default: 1]")
@click.option("--register", type=click.Choice(["best", "all", "none"]), default=None,
              help="which trials become registry versions [default: best]")
@click.option("--max-emissions-kg", type=float, default=None,
              help="carbon budget: no new trial starts once the summed emissions would pass it")
@click.option("--resume", default=None, metavar="SWEEP_RUN_ID", help="continue an interrupted sweep (its parent run id)")
@config_options(TrainConfig, skip=SweepCommand.config_skip)
def sweep_cmd(config_file, set_args, modality, grid, space, trials, objective, direction, sampler, pruner,
              pruner_startup_trials, pruner_warmup_steps, parallel, register, max_emissions_kg, resume,
              **options):
    """Search hyperparameters with Optuna: one parent MLflow run, one nested child run per trial.

    Every `train` option fixes a value for all trials; --grid or --space (+ --trials) say what
    varies. Each trial is a full training run (params, losses, carbon) named by its parameters,
    e.g. "trial 3 lr=3e-4 r=16". Bad trials are pruned at their evaluations (give --eval-steps),
    a failed trial does not stop the sweep, and only the best trial is registered. Ctrl-C marks
    the running trial and the sweep KILLED; --resume continues without re-running finished trials.

    \b
    Examples:
      model-garden sweep --base-model ./tiny --dataset data.jsonl --max-steps 60 --eval-split 0.2 \\
          --eval-steps 10 --grid learning_rate=1e-4,3e-3 --grid lora_r=8,16
      model-garden sweep --base-model ./tiny --dataset data.jsonl --max-steps 60 --eval-split 0.2 \\
          --eval-steps 10 --trials 12 --space learning_rate=loguniform:1e-5:1e-2 \\
          --space lora_r=int:4:32 --space lr_scheduler=choice:linear,cosine --max-emissions-kg 0.01
      model-garden sweep --resume 3f2a9c...      # after Ctrl-C
      mlflow run . -e sweep --env-manager local -P base_model=$PWD/tiny -P dataset=$PWD/data.jsonl \\
          -P grid="learning_rate=1e-4,3e-3;lora_r=8,16" -P eval_split=0.2 -P eval_steps=10
    """
    from mg_mlflow.env import setup_env
    from mg_mlflow.errors import MGError
    from mg_mlflow.experiment.sweep import SweepSpec, run_sweep

    setup_env()
    knobs = {"trials": trials, "parallel": parallel, "max_emissions_kg": max_emissions_kg}
    out = console()
    if resume:
        fixed = [k for k, v in options.items() if v is not None] + (["--config"] if config_file else []) + \
            (["--set"] if set_args else []) + (["--grid"] if grid else []) + (["--space"] if space else [])
        if fixed:
            raise MGError(f"--resume continues a sweep with its own settings; drop {', '.join(sorted(fixed))}",
                          hint="only --trials, --parallel and --max-emissions-kg may change on resume")
        result = run_sweep(resume=resume, echo=out.print, overrides=knobs)
    else:
        spec = SweepSpec(options=options, config_file=config_file or "", set_args=list(set_args),
                         modality=modality or "text", grid=list(grid), space=list(space), trials=trials or 0,
                         objective=objective or "eval_loss_final", direction=direction or "",
                         sampler=sampler or "tpe", pruner=pruner or "median",
                         pruner_startup_trials=2 if pruner_startup_trials is None else pruner_startup_trials,
                         pruner_warmup_steps=pruner_warmup_steps or 0, parallel=parallel or 1,
                         register=register or "best", max_emissions_kg=max_emissions_kg or 0.0,
                         seed=int(float(options.get("seed") or 42)))
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
