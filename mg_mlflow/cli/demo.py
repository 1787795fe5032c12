"""``model-garden demo``: the main job end to end, offline, through the real CLI commands.

tiny model + sample data -> train (LoRA) -> register with alias -> deploy with vLLM -> one chat
completion -> stop -> carbon report. Each step prints the command it runs, so the demo doubles
as a walkthrough.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from mg_mlflow.cli.base import console
from mg_mlflow.env import mg_home, setup_env


def _step(title: str, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    con = console()
    con.rule(f"[bold]{title}")
    con.print("$ model-garden " + " ".join(a if " " not in a and "\n" not in a else repr(a) for a in args))
    proc = subprocess.run([sys.executable, "-m", "mg_mlflow", *args])
    if check and proc.returncode != 0:
        raise click.ClickException(f"step '{title}' failed (exit {proc.returncode})")
    return proc


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="where the tiny model and data go (default: $MG_HOME/demo)")
@click.option("--max-steps", type=int, default=60, show_default=True)
@click.option("--deploy/--no-deploy", default=True, show_default=True,
              help="serve the registered adapter with vLLM and query it")
@click.option("--port", type=int, default=None, help="port for the demo deployment (default: first free)")
def demo_cmd(workdir, max_steps, deploy, port):
    """Run the whole path on a tiny offline model: train -> register -> deploy -> query.

    Uses the embedded default: a sqlite MLflow store and artifacts in ./.model-garden
    (or $MG_HOME), so it needs no server and no network.

    \b
    Example:
      model-garden demo                 # ~2-3 minutes on 2 CPU cores
      model-garden demo --no-deploy     # train and register only
    """
    setup_env()
    work = Path(workdir) if workdir else mg_home() / "demo"
    work.mkdir(parents=True, exist_ok=True)
    tiny, data = work / "tiny", work / "data.jsonl"
    _step("1. build a tiny model offline", ["dev", "tiny-model", str(tiny)])
    _step("2. write a sample instruction dataset", ["data", "sample", str(data), "-n", "128"])
    _step("3. fine-tune with LoRA, log to MLflow, register models:/demo-lora@champion",
          ["train", "--base-model", str(tiny), "--dataset", str(data), "--max-steps", str(max_steps),
           "--learning-rate", "3e-3", "--eval-split", "0.1", "--register-as", "demo-lora",
           "--alias", "champion", "--carbon-interval-steps", "10"])
    _step("4. read the run back from MLflow", ["runs", "list", "--max", "3"])
    if deploy:
        deploy_args = ["deploy", "models:/demo-lora@champion", "--name", "demo"]
        if port:
            deploy_args += ["--port", str(port)]
        try:
            _step("5. deploy the registered adapter with vLLM", deploy_args)
            _step("6. ask the deployment", ["generate", "demo", "-p", "Reverse the word.\nriver",
                                            "--max-tokens", "16"])
        finally:
            _step("7. stop the deployment (no process left behind)", ["deployments", "stop", "demo"], check=False)
    _step("8. what it cost", ["carbon", "report", "--model", "demo-lora"], check=False)
    con = console()
    con.rule("[bold green]done")
    con.print("Open the MLflow UI to compare runs and promote versions: [bold]model-garden ui[/]")


def register(group: click.Group) -> None:
    group.add_command(demo_cmd)
