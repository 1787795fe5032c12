"""``model-garden train`` and ``model-garden train-vision``: two thin front ends over the one training
path (:func:`mg_mlflow.training.recipe.train`); the config class picks the modality."""

from __future__ import annotations

import click

from mg_mlflow import metric_names as mn
from mg_mlflow.cli.base import console, print_kv
from mg_mlflow.config import TrainConfig
from mg_mlflow.env import setup_env
from mg_mlflow.options import MlflowParamsCommand, build_config, click_options, recipe_options
from mg_mlflow.tracking.run import use_tracking_uri
from mg_mlflow.training import distributed
from mg_mlflow.training.recipe import train
from mg_mlflow.vision_config import VisionTrainConfig

TEXT_HELP = """Fine-tune a text model, log it to MLflow and register the result.

    Precedence: defaults < --config YAML < options < --set. Every problem in the configuration
    and every bad dataset record is reported before a model is loaded.

    \b
    Examples:
      model-garden train --base-model ./tiny --dataset data.jsonl --max-steps 50
      model-garden train --config projects/tiny-lora/config.yaml --set learning_rate=1e-3
      model-garden train --base-model Qwen/Qwen2.5-0.5B-Instruct --dataset data.jsonl \\
          --save-method merged_16bit --register-as qwen-support --alias champion
      model-garden train --config recipe.yaml --trainer-arg optim=adamw_torch --trainer-arg max_grad_norm=0.5

    Under `mlflow run . -e train`, the run MLflow created (MLFLOW_RUN_ID) is used.

    \b
    Several GPUs of one machine (data parallel under torchrun: one MLflow run, one version):
      model-garden train --config recipe.yaml --num-gpus 2
    """

VISION_HELP = """Fine-tune a vision-language model (Qwen2.5-VL family), log it to MLflow and register it.

    Records are {"text", "image", "response"} or chat messages with image parts; image paths are
    absolute or relative to the dataset file. Every bad record and every missing or unreadable image
    is reported as file:line before a model is loaded. Same path, options and MLflow record as
    `model-garden train`, plus image options and sample answers before/after training.

    \b
    Examples:
      model-garden dev tiny-model --vision ./tiny-vl && model-garden data sample --vision shapes/data.jsonl
      model-garden train-vision --base-model ./tiny-vl --dataset shapes/data.jsonl --max-steps 60
      model-garden train-vision --base-model Qwen/Qwen2.5-VL-3B-Instruct --dataset data.jsonl \\
          --max-pixels 200704 --finetune-vision-layers --alias champion

    Under `mlflow run . -e train_vision`, the run MLflow created (MLFLOW_RUN_ID) is used.
    """


def train_options(cls: type, example_yaml: str):
    """The options every training front end takes (train, train-vision, sweep, submit): --config,
    --set and one option per config field, generated from ``cls`` (values arrive as text; the merge
    coerces and validates them all at once)."""
    def decorate(func):
        return recipe_options(example_yaml)(click_options(cls, typed=False)(func))
    return decorate


def config_from_cli(cls: type, config_file, set_args, options):
    """The validated config: defaults < YAML < options < --set."""
    return build_config(cls, config_file, options, set_args)


def _summary_rows(result, cfg) -> list[tuple[str, object]]:
    import mlflow

    m = result.metrics
    rows = [("run id", result.run_id), ("tracking URI", mlflow.get_tracking_uri()),
            ("loss", f"{m.get(mn.LOSS_FIRST, float('nan')):.4f} -> {m.get(mn.LOSS_FINAL, float('nan')):.4f}"),
            ("eval loss", f"{m[mn.EVAL_LOSS_FINAL]:.4f}" if mn.EVAL_LOSS_FINAL in m else None),
            ("sample answers right", f"{m['samples/exact_match_before']:.0%} -> {m['samples/exact_match_after']:.0%}"
             if "samples/exact_match_after" in m else None),
            ("model folder", result.model_dir), ("logged model", result.model_uri)]
    curve = result.output_dir / "loss_curve.png"
    if curve.is_file():
        rows.append(("loss curve", f"{curve} (MLflow artifact plots/loss_curve.png)"))
    if result.registered_name:
        rows.append(("registered", f"models:/{result.registered_name}/{result.registered_version}"))
        if cfg.alias:
            rows.append(("alias", f"models:/{result.registered_name}@{cfg.alias}"))
    for key, unit in ((mn.carbon(mn.TOTAL_EMISSIONS_MG), "mg CO2eq"), (mn.carbon(mn.TOTAL_ENERGY_J), "J")):
        if key in m:
            rows.append((key, f"{m[key]:.3g} {unit}"))
    return rows


class TrainCommand(MlflowParamsCommand):
    """A training command that also takes ``mlflow run``'s ``--key value`` parameters; ``--help``
    lists the options under the config's groups."""

    config_class: type = TrainConfig


def make_train_command(name: str, cls: type, help_text: str, example_yaml: str) -> click.Command:
    command_class = type(f"{cls.__name__}Command", (TrainCommand,), {"config_class": cls})

    @click.command(name, cls=command_class, help=help_text, context_settings={"max_content_width": 110})
    @click.option("--progress/--no-progress", default=None, help="live progress bar (default: when on a terminal)")
    @train_options(cls, example_yaml)
    def command(config_file, set_args, progress, **options):
        setup_env()
        if options.get("resume") and not config_file:  # the interrupted run's own config is the base
            from mg_mlflow.training.resume import config_of_run

            use_tracking_uri()
            config_file = config_of_run(options["resume"])
        cfg = config_from_cli(cls, config_file, set_args, options)
        if distributed.needs_launch(cfg):  # --num-gpus N: N ranks under torchrun, this process waits
            click.get_current_context().exit(distributed.launch(cfg, name, progress))
        result = train(cfg, show_progress=progress)
        if not distributed.is_main():
            return  # a rank > 0 of --num-gpus N: rank 0 prints the summary
        print_kv(f"{name} finished", _summary_rows(result, cfg))
        console().print("Compare runs in the MLflow UI: [bold]model-garden ui[/]")

    return command


train_cmd = make_train_command("train", TrainConfig, TEXT_HELP, "projects/tiny-lora/config.yaml")
train_vision_cmd = make_train_command("train-vision", VisionTrainConfig, VISION_HELP,
                                      "projects/tiny-vision/config.yaml")


def register(group: click.Group) -> None:
    group.add_command(train_cmd)
    group.add_command(train_vision_cmd)
