"""``model-garden promote``: move an alias to the best evaluated version, with the evidence shown."""

from __future__ import annotations

import click

from mg_mlflow import metric_names as mn
from mg_mlflow.cli.base import console
from mg_mlflow.env import setup_env
from mg_mlflow.errors import MGError
from mg_mlflow.experiment import promote as pr
from mg_mlflow.names import alias_problem


@click.command("promote")
@click.argument("name")
@click.option("--alias", default="champion", show_default=True, help="the alias to move")
@click.option("--metric", default="eval/exact_match", show_default=True,
              help="evaluation metric that decides (loss, perplexity, latency: lower is better)")
@click.option("--dataset-digest", default=None, help="compare evaluations on this dataset digest "
              "(default: the one the holder was last evaluated on)")
@click.option("--min-improvement", type=float, default=0.0, show_default=True,
              help="the candidate must beat the holder by more than this (metric units)")
@click.option("--max-emissions-kg", type=float, default=None,
              help="carbon budget in kg CO2eq: skip versions whose training emitted more (version tag "
                   "mg.carbon.total_emissions_mg, in mg)")
@click.option("--dry-run", is_flag=True, help="print the decision table and change nothing")
@click.option("--redeploy", is_flag=True, help="roll deployments serving NAME@ALIAS onto the new version")
@click.option("--history", is_flag=True, help="list the recorded moves of NAME's aliases and exit")
@click.option("--json", "as_json", is_flag=True, help="print the decision (or history) as JSON")
def promote_cmd(name, alias, metric, dataset_digest, min_improvement, max_emissions_kg, dry_run, redeploy,
                history, as_json):
    """Move NAME@ALIAS to the best evaluated version, only if it beats the current holder.

    Candidates are versions evaluated (model-garden evaluate) on the same dataset digest as the
    holder; with --max-emissions-kg, only those whose training stayed under the budget. The alias
    moves when the best candidate beats the holder by more than --min-improvement; otherwise the
    command explains why and changes nothing. Each move is recorded on the version (tags
    mg.promotion.* and mg.promoted.ALIAS.*). A deployment serving NAME@ALIAS keeps its version
    until you pass --redeploy.

    \b
    Examples:
      model-garden promote tiny-lora --alias champion --metric eval/exact_match --dry-run
      model-garden promote tiny-lora --metric eval/loss --min-improvement 0.05 --max-emissions-kg 0.01
      model-garden promote tiny-lora --redeploy
      model-garden promote --history tiny-lora
    """
    import json

    setup_env()
    out = console()
    if history:
        moves = pr.history(name, None if alias == "champion" and not _alias_given() else alias)
        if as_json:
            click.echo(json.dumps(moves, indent=2))
        else:
            _print_history(out, name, moves)
        return
    problem = alias_problem(alias, "--alias")
    if problem:
        raise MGError(problem, hint="e.g. --alias champion")
    if metric.startswith("eval_"):  # a trainer name from before the eval/ prefix: eval_loss is eval/loss
        click.echo(f"--metric {metric}: read as {mn.canonical(metric)}", err=True)
        metric = mn.canonical(metric)
    decision = pr.promote(name, alias, metric, dataset_digest, min_improvement, max_emissions_kg, dry_run)
    rolled, serving = [], pr.deployments_serving(name, alias) if decision.applied else []
    if decision.applied and redeploy and serving:
        rolled = pr.redeploy_serving(name, alias)
    if as_json:
        click.echo(json.dumps({**decision.to_dict(), "dry_run": dry_run, "redeployed": rolled}, indent=2))
        return
    _print_decision(out, decision, dry_run)
    if decision.applied:
        out.print(f"[green]moved[/] {name}@{alias}: v{decision.holder or '-'} -> v{decision.best}")
        for item in rolled:
            how = ("hot-swapped in the running server" if item["method"] == "hot-swap"
                   else f"started beside ({item['why']})")
            moved = f", port {item['previous_port']} -> {item['port']}" if item["previous_port"] != item["port"] else ""
            out.print(f"[green]redeployed[/] {item['deployment']}: v{item['from_version']} -> v{item['to_version']} "
                      f"(port {item['port']}, pid {item['pid']}; {how}{moved})")
        if redeploy and not serving:
            out.print(f"no running deployment serves models:/{name}@{alias}: nothing to redeploy")
        if serving and not redeploy:
            names = ", ".join(r["name"] for r in serving)
            out.print(f"[yellow]note:[/] deployment(s) {names} still serve the previous version "
                      "(the alias was resolved at start); roll them with --redeploy")


def _alias_given() -> bool:
    ctx = click.get_current_context()
    return ctx.get_parameter_source("alias") != click.core.ParameterSource.DEFAULT


def _print_decision(out, d, dry_run: bool) -> None:
    from rich.table import Table

    arrow = "lower is better" if d.lower_is_better else "higher is better"
    out.print(f"[bold]{d.name}@{d.alias}[/] by {d.metric} ({arrow}) on dataset digest {d.digest}"
              + ("  [dim](dry run: nothing changes)[/]" if dry_run else ""), soft_wrap=True)
    table = Table()
    for col in ("version", d.metric, "training kg CO2", "evaluation run", "status"):
        table.add_column(col)
    for c in d.candidates:
        mark = " *" if c.version == d.best else ""
        table.add_row(f"v{c.version}{mark}", "-" if c.value is None else f"{c.value:.4g}",
                      "-" if c.emissions_kg is None else f"{c.emissions_kg:.3g}", c.eval_run_id or "-", c.note)
    out.print(table)
    verdict = "would move" if dry_run and d.move else "move" if d.move else "no change"
    out.print(f"[bold]{verdict}:[/] {d.reason}", soft_wrap=True)


def _print_history(out, name: str, moves: list[dict]) -> None:
    from rich.table import Table

    if not moves:
        out.print(f"no recorded promotion for {name}")
        return
    table = Table(title=f"promotions of {name}", title_justify="left")
    for col in ("time", "alias", "from", "to", "metric", "values", "dataset digest", "reason"):
        table.add_column(col, overflow="fold")
    for m in moves:
        prev = m.get("previous_value")
        values = f"{m.get('value'):.4g}" + ("" if prev is None else f" vs {prev:.4g}")
        table.add_row(m["time"], m["alias"], f"v{m['previous']}" if m.get("previous") else "-", f"v{m['version']}",
                      m["metric"], values, m["dataset_digest"], m["reason"])
    out.print(table)


def register(group) -> None:
    group.add_command(promote_cmd)
