"""``model-garden compare``: training runs side by side, from MLflow alone."""

from __future__ import annotations

import click

from mg_mlflow.cli.base import console
from mg_mlflow.env import setup_env
from mg_mlflow.experiment.compare import collect
from mg_mlflow.experiment.compare_plot import comparison_png, loss_histories, quality_metric
from mg_mlflow.experiment.compare_table import grouped_rows, render
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
@click.option("--metric", "metric", default=None, metavar="METRIC",
              help="the quality axis of --plot: a score (eval/token_f1, eval/exact_match, eval/rougeL, eval/bleu, "
                   "eval/chrf, higher is better) or a loss (eval/loss, eval/perplexity, eval_loss_final, lower is "
                   "better); default: the first of eval/loss, eval/token_f1, eval/exact_match, eval/rougeL, "
                   "eval/chrf, eval/bleu that every run has")
@click.option("--metrics", "metrics", multiple=True, metavar="M1,M2",
              help="evaluation metrics to show (rows, and the bars of --plot), e.g. --metrics eval/loss,bleu; "
                   "default: every row, and the quality metric's bars")
@click.option("--log-to-mlflow", is_flag=True,
              help="also record the comparison (table JSON + PNG) as a run tagged mg.run_kind=comparison")
@click.option("--ui-port", type=int, default=5000, show_default=True, help="port of `model-garden ui` for the printed link")
def compare_cmd(targets, experiment, max_runs, fmt, plot, metric, metrics, log_to_mlflow, ui_port):
    """Compare runs side by side: one column per run; rows grouped into the params that differ,
    training (steps, final losses, seconds, tokens/s), evaluation per dataset (eval/* of the
    evaluation runs of each run's model, with their direction), carbon (training emissions in
    gCO2eq with their energy source, serving apart) and the registry (version, current aliases).

    \b
    Examples:
      model-garden compare 3f2a9c 81be07                       # run ids (or unique prefixes)
      model-garden compare models:/tiny-lora/1 models:/tiny-lora@champion --plot compare.png
      model-garden compare --experiment model-garden --format markdown
      model-garden compare 3f2a9c 81be07 --format json | jq '.runs[].eval_loss_final'
      model-garden compare models:/tiny-lora/1 models:/tiny-lora/2 --metrics eval/loss,token_f1 \\
          --metric eval/token_f1 --plot compare.png
    """
    setup_env()
    chosen = [m.strip() for item in metrics for m in item.split(",") if m.strip()] or None
    data = collect(list(targets), experiment, max_runs)
    if plot or metric:
        quality_metric(data, metric)  # a --metric that is no quality metric stops here, exit 2
    link = compare_url(base_url(port=ui_port), [r["run_id"] for r in data["runs"]],
                       [r["experiment_id"] for r in data["runs"]])
    drawn = None
    if plot:
        from pathlib import Path

        drawn = comparison_png(data, loss_histories([r["run_id"] for r in data["runs"]]), Path(plot).absolute(),
                               metric, chosen)
        data["plot"] = drawn
    data["ui_compare_url"] = link
    logged = _log(data, drawn) if log_to_mlflow else None
    out = console()
    if fmt != "table":
        click.echo(render(data, fmt, chosen))
    else:
        _print_table(out, data, chosen)
    err = console(stderr=True)  # the links go to stderr so json/csv output stays parseable
    if fmt != "table" and data["carbon"]["note"]:
        err.print(f"carbon: {data['carbon']['note']}", soft_wrap=True)
    if drawn:
        front = ", ".join(drawn["pareto"]) or "-"
        way = "" if drawn["higher_is_better"] is None else (
            " (higher is better)" if drawn["higher_is_better"] else " (lower is better)")
        err.print(f"plot: {drawn['path']} (Pareto front on {drawn['quality'] or '-'}{way} against training "
                  f"emissions: {front})", soft_wrap=True)
    err.print(f"MLflow UI compare view (with `model-garden ui`): {link}", soft_wrap=True)
    if logged:
        err.print(f"logged as run {logged}")


def _print_table(out, data: dict, chosen: list[str] | None) -> None:
    """Runs in columns, grouped rows; the column of row labels never wraps."""
    from rich.table import Table

    runs = data["runs"]
    table = Table(title=f"{len(runs)} runs; params shown: those that differ", title_justify="left")
    table.add_column("", no_wrap=True, style="bold")
    for r in runs:
        table.add_column(r["name"], overflow="fold", min_width=8)
    for title, rows in grouped_rows(data, chosen):
        table.add_section()
        table.add_row(f"[cyan]{title}[/]", *([""] * len(runs)))
        for row in rows:
            table.add_row(*row)
    out.print(table)
    if data["carbon"]["note"]:
        out.print(f"carbon: {data['carbon']['note']}", soft_wrap=True)


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
