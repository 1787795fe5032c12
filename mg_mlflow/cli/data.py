"""``model-garden data``: validate a dataset and write sample data."""

from __future__ import annotations

import click

from mg_mlflow.cli.base import console, print_kv
from mg_mlflow.data.sample import TASKS, write_sample
from mg_mlflow.data.stats import dataset_stats, truncation_warning
from mg_mlflow.data.vision_sample import write_vision_sample
from mg_mlflow.env import setup_env


@click.group("data")
def data_group():
    """Check datasets before training, or write a sample to start from."""


@data_group.command("validate")
@click.argument("dataset")
@click.option("--format", "fmt", type=click.Choice(["auto", "instruction", "messages"]), default="auto",
              show_default=True, help="record format")
@click.option("--base-model", default=None, help="tokenizer to measure token lengths with (a folder or hub id)")
@click.option("--max-seq-length", type=int, default=512, show_default=True,
              help="length above which examples are truncated in training")
def validate_cmd(dataset, fmt, base_model, max_seq_length):
    """Validate every record of DATASET and print statistics, without training.

    Bad records are listed as file:line with what is wrong, and the exit code is non-zero. With
    --base-model, more than 10% of records longer than --max-seq-length is a warning (exit code 0).

    \b
    Example:
      model-garden data validate data.jsonl --base-model ./tiny --max-seq-length 256
    """
    setup_env()
    stats = dataset_stats(dataset, fmt, base_model, max_seq_length)
    share = stats.pop("truncated share", 0.0)
    warning = truncation_warning(share, max_seq_length)
    print_kv(f"dataset {dataset}: valid" + (", with a warning" if warning else ""), list(stats.items()))
    if warning:
        console(stderr=True).print(f"[bold yellow]warning:[/] {warning}", soft_wrap=True)


@data_group.command("sample")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("-n", "--records", type=click.IntRange(1, 100000), default=64, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["instruction", "messages"]), default="instruction",
              show_default=True)
@click.option("--vision", is_flag=True, help="write an image question-answer dataset (coloured shapes)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--task", type=click.Choice(["mixed", *TASKS]), default="mixed", show_default=True,
              help="which task the records teach: reverse, add, describe, spell, or the four in turn; "
                   "describe is the one the tiny model learns in ~200 CPU steps")
def sample_cmd(path, records, fmt, vision, seed, task):
    """Write a small sample dataset to PATH (JSONL) to start from.

    \b
    Examples:
      model-garden data sample data.jsonl -n 200
      model-garden data sample chat.jsonl --format messages
    """
    if vision:
        out = write_vision_sample(path, records, seed=seed)
    else:
        out = write_sample(path, records, fmt, seed, task)
    console().print(f"wrote {records} records to [bold]{out}[/]")


def register(group: click.Group) -> None:
    group.add_command(data_group)
