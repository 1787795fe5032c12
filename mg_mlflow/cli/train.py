"""``model-garden train``: one text fine-tuning run, tracked and registered in MLflow."""

from __future__ import annotations

import click

from mg_mlflow.cli.base import config_options, console, print_kv
from mg_mlflow.config import TrainConfig


@click.command("train", context_settings={"max_content_width": 110})
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML recipe whose keys are the option names below (e.g. projects/tiny-lora/config.yaml)")
@click.option("--set", "set_args", multiple=True, metavar="KEY=VALUE",
              help="override any option, repeatable: --set lora_r=8 --set learning_rate=1e-4")
@click.option("--progress/--no-progress", default=None, help="live progress bar (default: when on a terminal)")
@config_options(TrainConfig)
def train_cmd(config_file, set_args, progress, **options):
    """Fine-tune a text model, log it to MLflow and register the result.

    Precedence: defaults < --config YAML < options < --set. Every problem in the configuration and
    every bad dataset record is reported before a model is loaded.

    \b
    Examples:
      model-garden train --base-model ./tiny --dataset data.jsonl --max-steps 50
      model-garden train --config projects/tiny-lora/config.yaml --set learning_rate=1e-3
      model-garden train --base-model Qwen/Qwen2.5-0.5B-Instruct --dataset data.jsonl \\
          --save-method merged_16bit --register-as qwen-support --alias champion

    Under `mlflow run . -e train`, the run MLflow created (MLFLOW_RUN_ID) is used.
    """
    from mg_mlflow.config import build_config
    from mg_mlflow.env import setup_env
    from mg_mlflow.training.text import train_text

    setup_env()
    cfg = build_config(TrainConfig, config_file, options, set_args)
    result = train_text(cfg, show_progress=progress)
    import mlflow

    rows = [("run id", result.run_id), ("tracking URI", mlflow.get_tracking_uri()),
            ("loss", f"{result.metrics.get('loss_first', float('nan')):.4f} -> {result.metrics.get('loss_final', float('nan')):.4f}"),
            ("eval loss", f"{result.metrics['eval_loss_final']:.4f}" if "eval_loss_final" in result.metrics else None),
            ("model folder", result.model_dir), ("logged model", result.model_uri)]
    curve = result.output_dir / "loss_curve.png"
    if curve.is_file():
        rows.append(("loss curve", f"{curve} (MLflow artifact plots/loss_curve.png)"))
    if result.registered_name:
        rows.append(("registered", f"models:/{result.registered_name}/{result.registered_version}"))
        if cfg.alias:
            rows.append(("alias", f"models:/{result.registered_name}@{cfg.alias}"))
    for key in ("carbon/emissions_kg", "carbon/energy_kwh"):
        if key in result.metrics:
            rows.append((key, f"{result.metrics[key]:.3g}"))
    print_kv("training finished", rows)
    console().print("Compare runs in the MLflow UI: [bold]model-garden ui[/]")


def register(group: click.Group) -> None:
    group.add_command(train_cmd)
