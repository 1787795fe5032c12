"""``model-garden carbon report``: the footprint of training runs and deployments, read back from MLflow."""

from __future__ import annotations

import json

import click

from mg_mlflow.cli.base import console
from mg_mlflow.env import mg_home, setup_env
from mg_mlflow.tracking import report


@click.group("carbon")
def carbon_group():
    """Energy and CO2 of training runs and of served model versions."""


@carbon_group.command("report")
@click.option("--experiment", "-e", default="model-garden", show_default=True, help="training experiment to report on")
@click.option("--model", "-m", default=None, help="a registered model: report its versions (training + serving)")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json", "boamps"]), default="table",
              show_default=True, help="table, JSON figures, or one BoAmps-style report per run")
@click.option("--chart", default=None, metavar="PNG",
              help="bar chart of emissions per run (default: $MG_HOME/reports/carbon_emissions.png)")
@click.option("--no-chart", is_flag=True, help="do not write the chart")
@click.option("--output", "-o", default=None, metavar="FILE", help="write json/boamps output here instead of stdout")
def report_cmd(experiment, model, fmt, chart, no_chart, output):
    """Per run and per model version: emissions, energy, duration, tokens, and a PNG bar chart.

    Figures marked "*" are estimates (no RAPL/NVML counter was read on that machine).

    \b
    Examples:
      model-garden carbon report
      model-garden carbon report --model tiny-lora --format json
      model-garden carbon report -e model-garden -f boamps -o boamps.json
    """
    setup_env()
    data = report.collect(experiment, model)
    err = console(stderr=True)
    if fmt == "table":
        report.print_tables(data, console())
        if not data["runs"]:
            console().print("no runs with carbon data yet: train with --carbon (the default)")
    else:
        doc = data if fmt == "json" else {"reports": report.boamps_reports(data), "note": data["note"]}
        text = json.dumps(doc, indent=2, default=str)
        if output:
            with open(output, "w") as fh:
                fh.write(text + "\n")
            err.print(f"wrote {output}")
        else:
            click.echo(text)
    if not no_chart:
        path = report.bar_chart(data, chart or mg_home() / "reports" / "carbon_emissions.png")
        if path:
            (console() if fmt == "table" else err).print(f"chart: {path}")


def register(group: click.Group) -> None:
    group.add_command(carbon_group)
