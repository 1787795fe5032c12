"""``model-garden demo``: the main job end to end, offline, through the real CLI commands.

tiny model + sample data of one learnable task -> train (LoRA) -> register with alias -> evaluate
the base and the adapter on held-out records (exact match before and after) -> deploy with vLLM ->
one chat completion on a held-out record -> stop -> carbon report. Each step prints the command it
runs, so the demo doubles as a walkthrough.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import click

from mg_mlflow.cli.base import console
from mg_mlflow.data.sample import unseen_describe_records
from mg_mlflow.env import mg_home, setup_env
from mg_mlflow.tracking.run import use_tracking_uri

# The demo's task, "describe" (copy an animal and a colour into a fixed sentence), is one the tiny
# model learns within the default steps on 2 CPU cores; DEMO_PROMPT's pair is not in the training sample.
DEMO_LR = "3e-3"
DEMO_PROMPT = "Describe the animal in one sentence.\na white cat"
DEMO_ANSWER = "The cat is white and it is happy."


def _step(title: str, args: list[str], check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    con = console()
    con.rule(f"[bold]{title}")
    con.print("$ model-garden " + " ".join(shlex.quote(a) if "\n" not in a else "$" + repr(a) for a in args))
    proc = subprocess.run([sys.executable, "-m", "mg_mlflow", *args], stdout=subprocess.PIPE if capture else None,
                          text=True)
    if check and proc.returncode != 0:
        raise click.ClickException(f"step '{title}' failed (exit {proc.returncode})")
    return proc


def _exact_match(title: str, uri: str, heldout: Path) -> float:
    """eval/exact_match of ``uri`` on ``heldout`` through `model-garden evaluate` (greedy answers)."""
    proc = _step(title, ["evaluate", uri, "--dataset", str(heldout), "--max-new-tokens", "16", "--json"],
                 capture=True)
    value = float(json.loads(proc.stdout)["metrics"]["eval/exact_match"])
    console().print(f"held-out exact match of {uri}: [bold]{value:.2f}[/]")
    return value


def _base_uri(name: str, alias: str) -> str:
    """The registry URI of the base a registered adapter names (its mg.base_model tag)."""
    import mlflow

    use_tracking_uri()
    return mlflow.MlflowClient().get_model_version_by_alias(name, alias).tags["mg.base_model"]


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="where the tiny model and data go (default: $MG_HOME/demo)")
@click.option("--max-steps", type=int, default=200, show_default=True,
              help="training steps (the tiny model answers the held-out pairs after ~150 at this learning rate)")
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
    tiny, data, heldout = work / "demo-tiny", work / "data.jsonl", work / "heldout.jsonl"
    _step("1. build a tiny model offline", ["dev", "tiny-model", str(tiny)])
    _step("2. write a sample dataset of one task the tiny model can learn",
          ["data", "sample", str(data), "-n", "64", "--task", "describe"])
    seen = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    held = unseen_describe_records(seen)
    heldout.write_text("".join(json.dumps(rec) + "\n" for rec in held))
    console().print(f"held-out set: the {len(held)} animal/colour pairs absent from {data.name} -> {heldout}")
    _step("3. fine-tune with LoRA, log to MLflow, register models:/demo-lora@champion",
          ["train", "--base-model", str(tiny), "--dataset", str(data), "--max-steps", str(max_steps),
           "--learning-rate", DEMO_LR, "--eval-split", "0.1", "--register-as", "demo-lora",
           "--alias", "champion", "--carbon-interval-steps", "10"])
    _step("4. read the run back from MLflow", ["runs", "list", "--max", "3"])
    before = _exact_match("5. evaluate the base model on the held-out set", _base_uri("demo-lora", "champion"),
                          heldout)
    after = _exact_match("6. evaluate the trained adapter on the held-out set", "models:/demo-lora@champion",
                         heldout)
    con = console()
    con.print(f"[bold]what training changed:[/] held-out exact match {before:.2f} (base) -> {after:.2f} (trained)")
    if deploy:
        deploy_args = ["deploy", "models:/demo-lora@champion", "--name", "demo"]
        if port:
            deploy_args += ["--port", str(port)]
        try:
            _step("7. deploy the registered adapter with vLLM", deploy_args)
            _step("8. ask the deployment about a held-out record", ["generate", "demo", "-p", DEMO_PROMPT,
                                                                    "--max-tokens", "16"])
            con.print(f"expected: {DEMO_ANSWER}")
        finally:
            _step("9. stop the deployment (no process left behind)", ["deployments", "stop", "demo"], check=False)
    _step("10. what it cost", ["carbon", "report", "--model", "demo-lora"], check=False)
    con.rule("[bold green]done")
    con.print("Open the MLflow UI to compare runs and promote versions: [bold]model-garden ui[/]")


def register(group: click.Group) -> None:
    group.add_command(demo_cmd)
