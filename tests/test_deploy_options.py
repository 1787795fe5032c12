"""Deploy options are declared once (DeployOptions) and the CLI options and plugin keys are generated:
a field missing from `deploy`, `deployments update` or the plugin fails here."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import invoke_cli

# Fields deliberately absent from one surface, with the reason (anything else missing is a bug).
NO_CLI_OPTION = {"extra_args": "given as trailing vLLM flags after the URIs"}
NO_PLUGIN_KEY = {"name": "the plugin's --name argument"}
# Names users already type: none may change without a deprecation message.
CLI_FLAGS = {"--name", "--host", "--port", "--api-key", "--served-model-name", "--max-model-len", "--dtype",
             "--tensor-parallel-size", "-tp", "--gpu-memory-utilization", "--quantization", "--chat-template",
             "--max-lora-rank", "--limit-mm-per-prompt", "--engine", "--vllm-python", "--engine-cmd",
             "--health-timeout", "--carbon", "--no-carbon", "--skip-memory-check"}
PLUGIN_KEYS = {"port", "host", "api_key", "served_model_name", "max_model_len", "dtype", "tensor_parallel_size",
               "gpu_memory_utilization", "quantization", "chat_template", "max_lora_rank", "limit_mm_per_prompt",
               "engine", "vllm_python", "engine_cmd", "vllm_args", "health_timeout", "carbon", "check_memory"}


def _fields():
    from mg_mlflow.deploy.plan import DeployOptions

    return dataclasses.fields(DeployOptions)


def _params(command):
    return {p.name: p for p in command.params}


def test_every_field_is_documented_and_on_the_cli_and_the_plugin():
    from mg_mlflow.cli.deploy import deploy_cmd, update_cmd
    from mg_mlflow.deploy.plan import DeployOptions
    from mg_mlflow.options import plugin_key, plugin_keys

    deploy_params, update_params = _params(deploy_cmd), _params(update_cmd)
    keys = plugin_keys(DeployOptions)
    for f in _fields():
        assert f.metadata.get("help"), f"DeployOptions.{f.name} has no help"
        if f.name not in NO_CLI_OPTION:
            assert f.name in deploy_params, f"DeployOptions.{f.name} is missing from `model-garden deploy`"
            if f.name != "name":
                assert f.name in update_params, f"DeployOptions.{f.name} is missing from `deployments update`"
        if f.name not in NO_PLUGIN_KEY:
            assert plugin_key(f) in keys, f"DeployOptions.{f.name} is missing from the plugin's -C keys"
            assert keys[plugin_key(f)].startswith(f.metadata["help"])
    flags = {flag for p in deploy_cmd.params for flag in (*p.opts, *p.secondary_opts)}
    assert CLI_FLAGS <= flags, CLI_FLAGS - flags
    assert PLUGIN_KEYS <= set(keys), PLUGIN_KEYS - set(keys)
    assert len(keys) == len(_fields()) - len(NO_PLUGIN_KEY)


def test_help_texts_list_every_option(session_home):
    from mg_mlflow.deploy.plan import DeployOptions
    from mg_mlflow.options import cli_flags, plugin_keys

    deploy_help = invoke_cli(["deploy", "--help"]).stdout
    for f in _fields():
        for flag in cli_flags(DeployOptions, f):
            assert flag.split("/")[0] in deploy_help, flag
    from mg_mlflow.deploy.plugin import target_help

    text = target_help()
    for key, help_text in plugin_keys(DeployOptions).items():
        assert f"    {key:<24} {help_text}" in text


@pytest.mark.parametrize("config, expected", [
    ({"port": "8001", "carbon": "false", "max_model_len": "512"}, {"port": 8001, "carbon": False, "max_model_len": 512}),
    ({"served_model_name": "a, b", "vllm_args": "--max-num-seqs 4 --enable-prefix-caching"},
     {"served_model_name": ["a", "b"], "extra_args": ["--max-num-seqs", "4", "--enable-prefix-caching"]}),
    ({"kv_cache_gib": "2.5", "check_memory": "no", "gpu_memory_utilization": "0.8", "engine": "vllm-cpu"},
     {"kv_cache_gib": 2.5, "check_memory": False, "gpu_memory_utilization": 0.8, "engine": "vllm-cpu"}),
    ({"dtype": ""}, {}),
])
def test_plugin_values_are_typed_from_the_fields(config, expected):
    from mg_mlflow.deploy.plan import DeployOptions
    from mg_mlflow.deploy.plugin import config_to_options

    out = config_to_options(config, name="x")
    assert out == {"name": "x", **expected}
    DeployOptions(**out)  # every key is a field


def test_bad_plugin_values_are_all_reported_with_a_code():
    from mlflow.exceptions import MlflowException

    from mg_mlflow.deploy.plugin import config_to_options

    with pytest.raises(MlflowException) as err:
        config_to_options({"prot": "1", "port": "eighty", "carbon": "maybe", "engine": "tgi"})
    msg = err.value.message
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "unknown config key 'prot' (did you mean port?)" in msg
    assert "port='eighty': expected an integer" in msg and "carbon='maybe'" in msg
    assert "engine='tgi': expected one of auto, vllm, vllm-cpu" in msg


def test_cli_values_reach_the_plan_unchanged(tiny_model, session_home):
    """Generated options feed DeployOptions: the dry-run plan shows them (old flag names still work)."""
    res = invoke_cli(["deploy", str(tiny_model), "--dry-run", "--port", "8123", "--max-model-len", "256",
                      "--dtype", "float32", "--engine", "vllm-cpu", "--skip-memory-check", "--kv-cache-gib", "2",
                      "--served-model-name", "tiny-x", "--max-num-seqs", "3"])
    assert res.returncode == 0, res.stderr
    cmd = res.stdout.strip().splitlines()[-1]
    assert cmd.startswith("VLLM_CPU_KVCACHE_SPACE=2.0 ")
    for piece in ("--served-model-name tiny-x", "--host 127.0.0.1 --port 8123", "--dtype float32",
                  "--max-model-len 256"):
        assert piece in cmd, cmd
    assert cmd.endswith("--max-num-seqs 3")
    bad = invoke_cli(["deploy", str(tiny_model), "--dry-run", "--engine", "tgi"])
    assert bad.returncode == 2 and "--engine" in bad.stderr and "tgi" in bad.stderr
