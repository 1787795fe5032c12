"""``model-garden evaluate``: score a registered model on a dataset with references, record it in MLflow."""

from __future__ import annotations

import click

from mg_mlflow.cli.base import console
from mg_mlflow.evaluation.runner import EvalOptions
from mg_mlflow.evaluation.runner import evaluate
from mg_mlflow.options import MlflowParamsCommand, click_options, from_values


@click.command("evaluate", cls=MlflowParamsCommand)  # -P tasks_dir=x -P carbon=false work under `mlflow run`
@click.argument("model_uri")
@click_options(EvalOptions, typed=False)  # numbers arrive as text: "64.0" (as `mlflow run -P` may spell it) works
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def evaluate_cmd(model_uri, as_json, **values):
    """Evaluate MODEL_URI on a dataset with reference answers and record it in MLflow.

    Metrics: eval/loss and eval/perplexity (teacher forcing on the answers, the training masking),
    eval/exact_match, eval/token_f1, eval/rougeL, eval/bleu, eval/chrf (sacrebleu, 0-100),
    eval/json_valid_rate (with --json-schema), eval/latency_p50_s, eval/latency_p95_s and
    eval/output_tokens_per_s (with --deployment), system/carbon/* of the evaluation, and
    eval/<task>/<metric> for each lm-eval --task. They are logged on an evaluation run in the
    model's experiment with the model's id, so they show on the model's page; the version gets
    tags mg.eval.<dataset digest>.*. The same version, data and settings again reuse the earlier
    run unless --force.

    \b
    Examples:
      model-garden evaluate models:/tiny-lora@champion --dataset heldout.jsonl
      model-garden evaluate models:/tiny-lora/3 -d heldout.jsonl --deployment tiny-lora --concurrency 16
      model-garden evaluate models:/tiny-lora/3 -d heldout.jsonl --task mytask --tasks-dir ./lm_tasks
      model-garden evaluate models:/support-bot@prod -d tickets.jsonl --json-schema ticket.schema.json
      mlflow run . -e evaluate --env-manager local -P model_uri=models:/tiny-lora/3 \\
          -P dataset=$PWD/heldout.jsonl -P max_new_tokens=32 -P carbon=false
    """
    import json

    opts = EvalOptions(**from_values(EvalOptions, values, "the evaluate options"))
    out = console(stderr=as_json)
    with _Progress(enabled=not as_json) as progress:
        result = evaluate(model_uri, opts, progress=progress.update)
    if as_json:
        click.echo(json.dumps({"run_id": result.run_id, "reused": result.reused, "experiment": result.experiment,
                               "run_name": result.run_name, "model": result.model,
                               "dataset_digest": result.dataset_digest, "metrics": result.metrics,
                               "version_tags": result.version_tags, "notes": result.notes,
                               "seconds": round(result.seconds, 3)}, indent=2))
        return
    if result.reused:
        out.print(f"[yellow]already evaluated:[/] {result.model} on dataset digest {result.dataset_digest} "
                  f"with these settings: run {result.run_id} ({result.run_name}). Use --force to evaluate again.")
    _print_metrics(out, result)


def _print_metrics(out, result) -> None:
    from rich.table import Table

    out.print(f"[bold]{result.run_name}[/]  run {result.run_id}  experiment {result.experiment}  "
              f"dataset digest {result.dataset_digest}", soft_wrap=True)
    table = Table()
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for key in sorted(result.metrics):
        table.add_row(key, f"{result.metrics[key]:.4g}")
    out.print(table)
    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}")
    if not result.reused and result.seconds:
        out.print(f"[dim]{result.seconds:.1f} s; version tags: {len(result.version_tags)}[/]")


class _Progress:
    """A rich progress bar fed by the evaluation's (what, done, total) callback."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.tasks = enabled, None, {}

    def __enter__(self):
        import sys

        if self.enabled and sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(console=console(stderr=True), transient=True)
            self.bar.__enter__()
        return self

    def update(self, what: str, done: int, total: int) -> None:
        if self.bar is None:
            return
        if what not in self.tasks:
            self.tasks[what] = self.bar.add_task(what, total=total)
        self.bar.update(self.tasks[what], completed=done)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


def register(group) -> None:
    group.add_command(evaluate_cmd)
