"""``model-garden data``: validate a dataset and write sample data."""

from __future__ import annotations

import click

from mg_mlflow.cli.base import console, print_kv
from mg_mlflow.data.sample import PREFERENCE_KINDS, write_preference_sample, write_sample
from mg_mlflow.data.stats import dataset_stats
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

    Bad records are listed as file:line with what is wrong, and the exit code is non-zero.

    \b
    Example:
      model-garden data validate data.jsonl --base-model ./tiny --max-seq-length 256
    """
    setup_env()
    stats = dataset_stats(dataset, fmt, base_model, max_seq_length)
    print_kv(f"dataset {dataset}: valid", list(stats.items()))


@data_group.command("sample")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("-n", "--records", type=click.IntRange(1, 100000), default=64, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["instruction", "messages"]), default="instruction",
              show_default=True)
@click.option("--vision", is_flag=True, help="write an image question-answer dataset (coloured shapes)")
@click.option("--preference", type=click.Choice(list(PREFERENCE_KINDS)), default=None,
              help="write a learnable preference set (asked for the colour, the colour beats the animal): pairs "
                   "{prompt, chosen, rejected} for dpo/orpo/simpo, unpaired {prompt, completion, label} for kto, "
                   "or sft (the same prompts answered either way, an SFT start with no preference)")
@click.option("--seed", type=int, default=0, show_default=True)
def sample_cmd(path, records, fmt, vision, preference, seed):
    """Write a small sample dataset to PATH (JSONL) to start from.

    \b
    Examples:
      model-garden data sample data.jsonl -n 200
      model-garden data sample chat.jsonl --format messages
      model-garden data sample prefs.jsonl --preference pairs
    """
    if vision:
        out = write_vision_sample(path, records, seed=seed)
    elif preference:
        out = write_preference_sample(path, records, preference, seed)
    else:
        out = write_sample(path, records, fmt, seed)
    console().print(f"wrote {records} records to [bold]{out}[/]")


def register(group: click.Group) -> None:
    group.add_command(data_group)
