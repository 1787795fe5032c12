"""``model-garden compare``: training runs side by side, from MLflow alone."""

from __future__ import annotations

import click

from mg_mlflow.cli.base import console
from mg_mlflow.env import setup_env
from mg_mlflow.experiment.compare import collect, flat_rows, render
from mg_mlflow.experiment.compare_plot import comparison_png, loss_histories
from mg_mlflow.tracking.ui_links import base_url, compare_url


@click.command("compare", context_settings={"max_content_width": 110})
@click.argument("targets", nargs=-1, metavar="[RUN_ID|MODEL_URI]...")
@click.option("--experiment", "-e", default="model-garden", show_default=True,
              help="with no RUN_ID/MODEL_URI: compare this experiment's latest finished training runs")
@click.option("--max", "max_runs", type=int, default=10, show_default=True, help="runs taken from --experiment")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json", "csv", "markdown"]), default="table",
              show_default=True)
@click.option("--plot", "plot", default=None, metavar="PNG",
              help="write loss curves, eval-metric bars and quality vs footprint (Pareto front) to this PNG")
@click.option("--log-to-mlflow", is_flag=True,
              help="also record the comparison (table JSON + PNG) as a run tagged mg.run_kind=comparison")
@click.option("--ui-port", type=int, default=5000, show_default=True, help="port of `model-garden ui` for the printed link")
def compare_cmd(targets, experiment, max_runs, fmt, plot, log_to_mlflow, ui_port):
    """Compare runs: only the params that differ, final train/eval loss, evaluation metrics
    (eval/* of evaluation runs linked to each run's model), energy, CO2, duration, tokens/s and
    the registered version.

    \b
    Examples:
      model-garden compare 3f2a9c 81be07                       # run ids (or unique prefixes)
      model-garden compare models:/tiny-lora/1 models:/tiny-lora@champion --plot compare.png
      model-garden compare --experiment model-garden --format markdown
      model-garden compare 3f2a9c 81be07 --format json | jq '.runs[].eval_loss_final'
    """
    setup_env()
    data = collect(list(targets), experiment, max_runs)
    link = compare_url(base_url(port=ui_port), [r["run_id"] for r in data["runs"]],
                       [r["experiment_id"] for r in data["runs"]])
    drawn = None
    if plot:
        from pathlib import Path

        drawn = comparison_png(data, loss_histories([r["run_id"] for r in data["runs"]]), Path(plot).absolute())
        data["plot"] = drawn
    data["ui_compare_url"] = link
    logged = _log(data, drawn) if log_to_mlflow else None
    out = console()
    if fmt != "table":
        click.echo(render(data, fmt))
    else:
        from rich.table import Table

        header, body = flat_rows(data)
        table = Table(title=f"{len(body)} runs; params shown: those that differ", title_justify="left")
        for col in header:
            table.add_column(col, overflow="fold")
        for row in body:
            table.add_row(*row)
        out.print(table)
    err = console(stderr=True)  # the links go to stderr so json/csv output stays parseable
    if drawn:
        front = ", ".join(drawn["pareto"]) or "-"
        err.print(f"plot: {drawn['path']} (Pareto front on {drawn['quality'] or '-'}: {front})", soft_wrap=True)
    err.print(f"MLflow UI compare view (with `model-garden ui`): {link}", soft_wrap=True)
    if logged:
        err.print(f"logged as run {logged}")


def _log(data: dict, drawn: dict | None) -> str:
    """Record the comparison as its own run (never inside the compared runs)."""
    import json
    import tempfile
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp_id = data["runs"][0]["experiment_id"]
    names = ", ".join(r["name"] for r in data["runs"])[:200]
    run = client.create_run(exp_id, run_name=f"compare {names}", tags={"mg.run_kind": "comparison",
                                                                       "mg.compared_runs": json.dumps([r["run_id"] for r in data["runs"]])})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "comparison.json"
        path.write_text(json.dumps(data, indent=2))
        client.log_artifact(run.info.run_id, str(path), "comparison")
    if drawn:
        client.log_artifact(run.info.run_id, drawn["path"], "comparison")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def register(group: click.Group) -> None:
    group.add_command(compare_cmd)
