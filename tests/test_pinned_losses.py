"""The first training losses of every CPU recipe under projects/, and of the quick start that runs on
the defaults alone, are pinned (tests/data/pinned_losses.json).

Each recipe runs its own MLproject command (tiny model, sample data, `train --config config.yaml`) with
max_steps=10 and nothing registered; ``defaults`` runs the `model-garden --help` quick start (no config
file, so every training default counts). The per-step ``loss`` MLflow logged must match the pinned
values within the measured tolerance: a changed default, data order, chat template or loss mask shows
here. Refresh on purpose (and say why in the commit):

    MG_UPDATE_PINNED=1 bash .ci/test tests/test_pinned_losses.py
"""

from __future__ import annotations

import json
import os
import platform
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

PINNED = ROOT / "tests" / "data" / "pinned_losses.json"
RECIPES = ["tiny-lora", "tiny-full-merged", "tiny-vision", "tiny-dpo"]
DEFAULTS = "defaults"  # the quick start: options given on the command line, every other one a default
STEPS = 10
# Added to the recipe's own train command: short, and nothing registered (registering comes after the
# last step and changes no loss).
OVERRIDES = [f"max_steps={STEPS}", "register_as=none", "carbon=false", "system_metrics=false"]


def recipe_commands(recipe: str, workdir: Path) -> list[list[str]]:
    """The recipe's MLproject `main` command as model-garden argument lists, for ``workdir``."""
    if recipe == DEFAULTS:
        return [["dev", "tiny-model", f"{workdir}/tiny"], ["data", "sample", f"{workdir}/data.jsonl"],
                ["train", "--base-model", f"{workdir}/tiny", "--dataset", f"{workdir}/data.jsonl", "--no-progress",
                 *(item for o in OVERRIDES for item in ("--set", o))]]
    entry = yaml.safe_load((ROOT / "projects" / recipe / "MLproject").read_text())["entry_points"]["main"]
    params = {name: str(spec.get("default", "")) for name, spec in entry.get("parameters", {}).items()}
    command = entry["command"].format(**{**params, "workdir": str(workdir)}).replace("$W", str(workdir))
    steps = []
    for part in command.split("&&"):
        args = shlex.split(part.strip())
        if args[:3] != ["python", "-m", "mg_mlflow"]:
            continue  # the shell's workdir default
        steps.append(args[3:])
    assert steps and steps[-1][0] in ("train", "train-vision"), f"{recipe}: no train step in {command!r}"
    for args in steps:  # an earlier train step (tiny-dpo's SFT) registers what the last one starts from
        if args[0] in ("train", "train-vision"):
            args += [item for o in OVERRIDES if args is steps[-1] or not o.startswith("register_as")
                     for item in ("--set", o)]
    return steps


def recipe_losses(recipe: str, workdir: Path) -> list[float]:
    """Run ``recipe`` in-process from its folder, as `mlflow run` does (the MLflow store of the current
    MG_HOME); its logged losses by step."""
    import mlflow
    from click.testing import CliRunner

    from mg_mlflow.cli import cli

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir.parent if recipe == DEFAULTS else ROOT / "projects" / recipe)
        for args in recipe_commands(recipe, workdir):
            result = CliRunner().invoke(cli, args, catch_exceptions=False)
            assert result.exit_code == 0, f"model-garden {shlex.join(args)}\n{result.output[-3000:]}"
    client = mlflow.tracking.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=1)
    history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    return [m.value for m in history]


def _pinned() -> dict:
    return json.loads(PINNED.read_text()) if PINNED.is_file() else {"recipes": {}}


@pytest.mark.parametrize("recipe", [*RECIPES, DEFAULTS])
def test_recipe_losses_match_the_pinned_values(mg_home, tmp_path, recipe):
    losses = recipe_losses(recipe, tmp_path / "work")
    assert len(losses) == STEPS, f"{recipe}: {len(losses)} loss points for {STEPS} steps"
    if os.environ.get("MG_UPDATE_PINNED") == "1":
        data = _pinned()
        data["recipes"][recipe] = {"steps": STEPS, "overrides": OVERRIDES, "loss": losses,
                                   "machine": f"{platform.machine()} CPU, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"}
        PINNED.write_text(json.dumps(data, indent=2) + "\n")
        pytest.skip(f"pinned losses of {recipe} rewritten in {PINNED.name}")
    data = _pinned()
    assert recipe in data["recipes"], f"{recipe} has no pinned losses: MG_UPDATE_PINNED=1 bash .ci/test {__file__}"
    pinned = data["recipes"][recipe]
    tolerance = data["tolerance"]["abs"]
    diffs = [abs(a - b) for a, b in zip(losses, pinned["loss"])]
    assert max(diffs) <= tolerance, (
        f"{recipe}: first {STEPS} losses moved (max |diff| {max(diffs):.3g} > {tolerance:g})\n"
        f"  pinned {pinned['loss']}\n  now    {losses}\n"
        f"if the change is meant, refresh: MG_UPDATE_PINNED=1 bash .ci/test tests/test_pinned_losses.py")
