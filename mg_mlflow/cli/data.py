"""``model-garden data``: validate a dataset and write sample data."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mg_mlflow.cli.base import console, print_kv
from mg_mlflow.data.sample import (PREFERENCE_KINDS, TASKS, write_preference_sample, write_prompt_sample,
                                   write_sample, write_split_sample)
from mg_mlflow.data.split import split_file
from mg_mlflow.config import FORMATS
from mg_mlflow.data.chat_tokens import readable
from mg_mlflow.data.preference import KINDS
from mg_mlflow.data.stats import dataset_stats, is_vision_data, truncation_warning, vision_stats
from mg_mlflow.options import parse_pairs
from mg_mlflow.vision_config import VISION_FORMATS
from mg_mlflow.data.vision_sample import write_vision_sample
from mg_mlflow.env import setup_env
from mg_mlflow.errors import MGError


VISION_ONLY = tuple(f for f in VISION_FORMATS if f not in FORMATS)
VALIDATE_FORMATS = tuple(dict.fromkeys((*FORMATS, *VISION_ONLY, *KINDS)))


@click.group("data")
def data_group():
    """Check datasets before training, or write a sample to start from."""


@data_group.command("validate")
@click.argument("dataset")
@click.option("--format", "fmt", type=click.Choice(VALIDATE_FORMATS), default="auto", show_default=True,
              help="record format; auto detects it from the records (preference and KTO data included)")
@click.option("--columns", "columns", multiple=True, metavar="FIELD=COLUMN",
              help="column map applied first, as for training: --columns instruction=question,output=answer")
@click.option("--ignore-columns", "ignore_columns", multiple=True, metavar="NAMES",
              help="columns left out on purpose (comma-separated), as for training")
@click.option("--vision/--text", "vision", default=None,
              help="image records (as train-vision reads them), or text; default: by the first record")
@click.option("--base-model", default=None, help="tokenizer (vision: Qwen2-VL-family processor folder) to count "
                                                 "tokens, trained tokens after the loss mask and visual tokens with")
@click.option("--max-seq-length", type=int, default=None,
              help="length above which examples are truncated in training (default: 512, vision 1024)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="also write the statistics to this JSON file (for scripts)")
def validate_cmd(dataset, fmt, columns, ignore_columns, vision, base_model, max_seq_length, json_out):
    """Validate every record of DATASET and print statistics, without training.

    Bad records are listed as file:line with what is wrong, and the exit code is non-zero. The
    statistics: the detected format, turns, tool calls, and with --base-model the tokens and the
    trained tokens per example after the loss mask, how many examples max length truncates and how
    many it leaves with no trained token; for images, sizes and visual tokens per example.
    More than 10% of the examples longer than max length is a warning (exit code 0).

    \b
    Examples:
      model-garden data validate data.jsonl --base-model ./tiny --max-seq-length 256
      model-garden data validate qa.csv --columns instruction=question,output=answer --json stats.json
    """
    setup_env()
    try:
        column_map = parse_pairs(list(columns))
    except ValueError as exc:
        raise MGError(f"--columns: {exc}", hint="give FIELD=COLUMN pairs, e.g. --columns instruction=question")
    if vision is None:
        vision = fmt in VISION_ONLY or (fmt == "auto" and is_vision_data(dataset))
    if vision:
        stats = vision_stats(dataset, "auto" if fmt not in VISION_FORMATS else fmt, base_model,
                             max_seq_length or 1024, column_map, ignore_columns)
    else:
        stats = dataset_stats(dataset, fmt, base_model, max_seq_length or 512, column_map, ignore_columns)
    if json_out:
        Path(json_out).write_text(json.dumps({"dataset": dataset, "valid": True, **stats}, indent=1) + "\n")
    warning = truncation_warning(stats.get("truncated_share", 0.0), stats.get("max_length", 0))
    print_kv(f"dataset {dataset}: valid" + (", with a warning" if warning else ""), readable(stats))
    if warning:
        console(stderr=True).print(f"[bold yellow]warning:[/] {warning}", soft_wrap=True)


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
@click.option("--prompts", is_flag=True, help="write prompts for reinforcement learning (grpo, evaluate --reward): "
                                             "{prompt: 'Shout the word: river', answer: 'RIVER'}")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--task", type=click.Choice(["mixed", *TASKS]), default="mixed", show_default=True,
              help="which task the records teach: reverse, add, describe, spell, or the four in turn; "
                   "describe is the one the tiny model learns in ~200 CPU steps")
@click.option("--split", "fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              metavar="FRACTION", help="hold out this share of the records in a second file that shares no record "
                                       "with PATH (for `evaluate`)")
@click.option("--heldout", default=None, metavar="FILE",
              help="with --split: the held-out file (default: PATH's name + -heldout.jsonl, beside it)")
def sample_cmd(path, records, fmt, vision, preference, prompts, seed, task, fraction, heldout):
    """Write a small sample dataset to PATH (JSONL) to start from.

    With --split, the records are divided into PATH (training) and a held-out file: every copy of a
    record goes to one side, so the held-out set never measures memorised training records.

    \b
    Examples:
      model-garden data sample data.jsonl -n 200
      model-garden data sample chat.jsonl --format messages
      model-garden data sample data.jsonl -n 160 --split 0.2 --heldout heldout.jsonl
      model-garden data sample prefs.jsonl --preference pairs
      model-garden data sample prompts.jsonl --prompts
    """
    if heldout and fraction is None:
        raise MGError("--heldout FILE needs --split FRACTION (the share of records held out)")
    if vision:
        if fraction is not None:
            raise MGError("--split is for text samples; split a vision sample with `model-garden data split`")
        out = write_vision_sample(path, records, seed=seed)
    elif fraction is not None:
        out, n_train, held, n_held = write_split_sample(path, heldout, fraction, records, fmt, seed, task)
        console().print(f"wrote {n_train} training records to [bold]{out}[/] and {n_held} held-out records "
                        f"to [bold]{held}[/] (no record in both)")
        return
    elif prompts:
        out = write_prompt_sample(path, records, seed)
    elif preference:
        out = write_preference_sample(path, records, preference, seed)
    else:
        out = write_sample(path, records, fmt, seed, task)
    console().print(f"wrote {records} records to [bold]{out}[/]")


@data_group.command("split")
@click.argument("dataset", type=click.Path(dir_okay=False))
@click.option("--fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="share of the records held out")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--train", "train_out", default=None, metavar="FILE",
              help="training records (default: DATASET's name + -train.jsonl, beside it)")
@click.option("--heldout", "heldout_out", default=None, metavar="FILE",
              help="held-out records (default: DATASET's name + -heldout.jsonl, beside it)")
def split_cmd(dataset, fraction, seed, train_out, heldout_out):
    """Split DATASET (JSONL, JSON, CSV or Parquet) into training and held-out JSONL files that share
    no record: every copy of a repeated record goes to the same side.

    \b
    Example:
      model-garden data split data.jsonl --fraction 0.2 --train train.jsonl --heldout heldout.jsonl
    """
    t_path, n_train, h_path, n_held = split_file(dataset, fraction, seed, train_out, heldout_out)
    console().print(f"wrote {n_train} training records to [bold]{t_path}[/] and {n_held} held-out records "
                    f"to [bold]{h_path}[/] (no record in both)")


def register(group: click.Group) -> None:
    group.add_command(data_group)
