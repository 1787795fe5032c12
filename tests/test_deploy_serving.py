"""serving/: the files parse, container and manifest run the same command, and it is the CLI's plan."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from conftest import ROOT, run_cli

SERVING = ROOT / "serving"


def _k8s_command() -> list[str]:
    docs = list(yaml.safe_load_all((SERVING / "k8s" / "vllm.yaml").read_text()))
    assert {d["kind"] for d in docs} == {"Deployment", "Service"}
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {"MODEL_URI", "MLFLOW_TRACKING_URI", "TENSOR_PARALLEL_SIZE"} <= set(env)
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    return container["command"]


def _container_command() -> list[str]:
    text = (SERVING / "Containerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    script = entry[2].removeprefix("exec ").replace('"$@"', "").replace('"', "")
    names = {"$MODEL_URI": "$(MODEL_URI)", "$TENSOR_PARALLEL_SIZE": "$(TENSOR_PARALLEL_SIZE)", "$PORT": "8000"}
    return [names.get(tok, tok) for tok in script.split()]


def test_container_and_manifest_run_the_cli_plan(tiny_model, session_home):
    command = _k8s_command()
    assert command == _container_command()
    args = [str(tiny_model) if a == "$(MODEL_URI)" else "1" if a == "$(TENSOR_PARALLEL_SIZE)" else a
            for a in command[2:]]
    key = "sk-from-the-secret-0123"  # the container's MG_API_KEY (the manifest's Secret)
    res = run_cli(["deploy", *args, "--dry-run"], env={"MG_API_KEY": key})
    assert res.returncode == 0, res.stderr
    planned = res.stdout.strip().splitlines()[-1]
    assert "vllm.entrypoints.openai.api_server" in planned
    assert f"--model {tiny_model}" in planned and "--host 0.0.0.0 --port 8000" in planned
    assert "--middleware mg_mlflow.deploy.keyguard.RequireKey" in planned and key not in res.stdout + res.stderr
    # without a key the same command refuses to expose the server
    res = run_cli(["deploy", *args, "--dry-run"], env={"MG_API_KEY": ""})
    assert res.returncode == 2 and "--allow-unauthenticated" in res.stderr


def test_presets_parse_with_vllm():
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    presets = yaml.safe_load((SERVING / "presets.yaml").read_text())
    assert {"tiny-cpu", "small-1b", "medium-7b", "large-13b", "xl-70b"} <= set(presets)
    parser = make_arg_parser(FlexibleArgumentParser())
    for name, preset in presets.items():
        args = parser.parse_args(["--model", "/m", *preset["vllm_args"]])
        assert args.max_model_len, name
