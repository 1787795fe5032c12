"""The ``model-garden`` command: a thin click shell over the library.

Each command parses options, calls one library function and prints the result with rich.
"""

from __future__ import annotations

import click

from mg_mlflow.cli import (carbon, compare, data, demo, deploy, dev, evaluate, jobs, promote, runs, server, sweep,
                           train, vision)
from mg_mlflow.cli.base import MGGroup


@click.group(cls=MGGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="model-garden-mlflow", prog_name="model-garden")
def cli() -> None:
    """Model Garden: fine-tune LLMs on MLflow, register the result, deploy it with vLLM.

    \b
    Quick start (offline, tiny model, local sqlite store in ./.model-garden):
      model-garden dev tiny-model ./tiny
      model-garden data sample ./data.jsonl
      model-garden train --base-model ./tiny --dataset ./data.jsonl --max-steps 30 --alias champion
      model-garden runs list
      model-garden ui

    Set MLFLOW_TRACKING_URI to use a tracking server instead of the local store.
    """


COMMAND_MODULES = (train, data, runs, dev, demo, deploy, carbon, vision, evaluate, compare, sweep, promote, server,
                   jobs)  # each has a ``register(group)``


def _register() -> None:
    for module in COMMAND_MODULES:
        module.register(cli)


_register()


def main() -> None:
    cli(prog_name="model-garden")


if __name__ == "__main__":
    main()
