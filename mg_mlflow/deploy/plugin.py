"""MLflow deployments plugin: target ``vllm`` (registered through the ``mlflow.deployments`` entry point).

    mlflow deployments create -t vllm --name chat -m models:/NAME@prod -C port=8001
    mlflow deployments predict -t vllm --name chat -I input.json
    mlflow deployments delete -t vllm --name chat

``update`` starts the new version beside the old one (next free port), switches the record once it is
healthy, then stops the old one; a new version that fails to start leaves the old one serving.
Deployments are the same records ``model-garden deployments list`` shows. Errors are
``MlflowException`` with the error code of the error's class (``ERROR_CODES``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from mlflow.deployments import BaseDeploymentClient, PredictionsResponse
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (INTERNAL_ERROR, INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS,
                                          RESOURCE_DOES_NOT_EXIST)

from mg_mlflow.deploy import state
from mg_mlflow.deploy.client import friendly_errors, openai_client, pick_model
from mg_mlflow.deploy.manager import deploy, list_all, status, stop
from mg_mlflow.deploy.options import from_plugin, plugin_keys
from mg_mlflow.deploy.plan import DeployOptions
from mg_mlflow.deploy.state import Deployment
from mg_mlflow.deploy.update import update
from mg_mlflow.errors import AlreadyExistsError, InvalidInputError, MGError, NotFoundError, ServerError

FLAVORS = (None, "vllm", "transformers", "python_function", "hf")
# error class -> MLflow error code; the first class the error is an instance of wins
ERROR_CODES: tuple[tuple[type[MGError], int], ...] = (
    (NotFoundError, RESOURCE_DOES_NOT_EXIST),
    (AlreadyExistsError, RESOURCE_ALREADY_EXISTS),
    (ServerError, INTERNAL_ERROR),
    (InvalidInputError, INVALID_PARAMETER_VALUE),
    (MGError, INVALID_PARAMETER_VALUE),
)


def error_code(err: MGError) -> int:
    return next(code for cls, code in ERROR_CODES if isinstance(err, cls))


@contextmanager
def _mlflow_errors():
    try:
        yield
    except MGError as err:
        raise MlflowException(str(err), error_code=error_code(err)) from None


def config_to_options(config: dict | None, name: str | None = None) -> dict[str, Any]:
    """``-C key=value`` strings -> DeployOptions fields (typed), with every unknown key reported.

    The keys, their types and help come from DeployOptions (``mg_mlflow.deploy.options``)."""
    with _mlflow_errors():
        return from_plugin(config, name)


def _uris(model_uri: str) -> list[str]:
    return [u.strip() for u in str(model_uri).split(",") if u.strip()]


def _public(record: Deployment, status: str | None = None) -> dict:
    keys = ("name", "status", "uris", "models", "default_model", "engine", "host", "port", "pid",
            "log_file", "started_at", "startup_s", "monitor_pid", "api_key_required", "notes", "previous")
    data = record.to_json()
    if status is not None:
        data["status"] = status
    out = {k: data[k] for k in keys if k in data}
    out["endpoint"] = record.endpoint
    out["flavor"] = "vllm"
    return out


class VLLMDeploymentClient(BaseDeploymentClient):
    """Deploys registry URIs to local vLLM servers supervised by Model Garden."""

    def _check_flavor(self, flavor):
        if flavor not in FLAVORS:
            raise MlflowException(f"flavor {flavor!r} is not served by the vllm target (use none or 'vllm')",
                                  error_code=INVALID_PARAMETER_VALUE)

    def create_deployment(self, name, model_uri, flavor=None, config=None, endpoint=None):
        self._check_flavor(flavor)
        with _mlflow_errors():
            opts = DeployOptions(**config_to_options(config, name))
            return _public(deploy(_uris(model_uri), opts, show_progress=False), status="running")

    def update_deployment(self, name, model_uri=None, flavor=None, config=None, endpoint=None):
        """Start the new version beside the old one (next free port), switch, stop the old; every option
        (the API key included) is kept unless ``config`` changes it. A failed start leaves the old serving."""
        self._check_flavor(flavor)
        changes = config_to_options(config)
        with _mlflow_errors():
            record = update(name, _uris(model_uri) if model_uri else None, changes, show_progress=False)
            return _public(record, status="running")

    def delete_deployment(self, name, config=None, endpoint=None):
        with _mlflow_errors():
            if state.read_record(name) is None:
                return None  # idempotent
            stop(name)
        return None

    def list_deployments(self, endpoint=None):
        with _mlflow_errors():
            return [_public(r) for r in list_all()]

    def get_deployment(self, name, endpoint=None):
        with _mlflow_errors():
            return _public(status(name))

    def predict(self, deployment_name=None, inputs=None, endpoint=None):
        """``inputs``: an OpenAI request dict (``prompt`` -> completions, ``messages`` -> chat) or a
        DataFrame with a ``prompt`` or ``messages`` column (one request per row; other columns are
        request parameters such as ``max_tokens``, ``temperature``, ``model``)."""
        with _mlflow_errors():
            record = state.get_record(deployment_name or endpoint)
            return PredictionsResponse({"predictions": [_one(record, r) for r in _requests(inputs)]})


def _requests(inputs) -> list[dict]:
    if isinstance(inputs, dict):
        return [inputs]
    if isinstance(inputs, list):
        return [r if isinstance(r, dict) else {"prompt": str(r)} for r in inputs]
    if hasattr(inputs, "to_dict"):
        rows = inputs.to_dict(orient="records")
        return [{k: v for k, v in row.items() if v is not None and v == v} for row in rows]
    if isinstance(inputs, str):
        return [{"prompt": inputs}]
    raise MlflowException("predict inputs must be a dict, a list of dicts or a DataFrame with a 'prompt' "
                          "or 'messages' column", error_code=INVALID_PARAMETER_VALUE)


def _one(record: Deployment, request: dict) -> dict:
    request = dict(request)
    model = pick_model(record, request.pop("model", None))
    params = {k: (int(v) if k in ("max_tokens", "seed", "n") else v) for k, v in request.items()
              if k not in ("prompt", "messages")}
    params.setdefault("max_tokens", 64)
    client = openai_client(record, params.pop("api_key", None))
    with friendly_errors(record):
        if "messages" in request:
            out = client.chat.completions.create(model=model, messages=request["messages"], **params)
            choice = out.choices[0]
            text = choice.message.content
        elif "prompt" in request:
            out = client.completions.create(model=model, prompt=request["prompt"], **params)
            choice = out.choices[0]
            text = choice.text
        else:
            raise MlflowException("each request needs 'prompt' or 'messages'", error_code=INVALID_PARAMETER_VALUE)
    return {"model": model, "text": text, "finish_reason": choice.finish_reason,
            "completion_tokens": out.usage.completion_tokens if out.usage else None}


def run_local(name, model_uri, flavor=None, config=None):
    """Serve in the foreground until Ctrl-C or SIGTERM (then the whole vLLM process group is stopped).

    MLflow calls ``plugin.run_local(name, model_uri, flavor, config)``: no target argument."""
    if flavor not in FLAVORS:
        raise MlflowException(f"flavor {flavor!r} is not served by the vllm target", error_code=INVALID_PARAMETER_VALUE)
    with _mlflow_errors():
        opts = DeployOptions(**config_to_options(config, name))

        def ready(record: Deployment):
            print(f"deployment {record.name} healthy at http://{record.host}:{record.port}/v1 "
                  f"serving {', '.join(record.served_names)}; Ctrl-C stops it", flush=True)

        deploy(_uris(model_uri), opts, foreground=True, on_ready=ready)


def target_help():
    keys = "\n".join(f"    {k:<24} {v}" for k, v in plugin_keys().items())
    return f"""Target 'vllm' (Model Garden): serve MLflow registry models with a vLLM OpenAI-compatible server.

Target URI: 'vllm' (local machine; deployments are recorded under $MG_HOME/deployments).

Model URIs: models:/NAME/VERSION, models:/NAME@ALIAS, models:/NAME/latest, runs:/RUN_ID/PATH,
models:/m-<id> or a local folder. Several LoRA adapters of one base: comma-separate them
(-m models:/a@prod,models:/b@prod); they share one server, each under its own model name.

Config keys (-C key=value), the same as `model-garden deploy` options (api_key: also MG_API_KEY):
{keys}

Examples:
    mlflow deployments create -t vllm --name chat -m models:/tiny-lora@prod -C port=8001
    mlflow deployments predict -t vllm --name chat -I request.json    # {{"prompt": ["Hello"], "max_tokens": [16]}}
    mlflow deployments get -t vllm --name chat
    mlflow deployments update -t vllm --name chat -m models:/tiny-lora/2   # new beside old, then switch
    mlflow deployments delete -t vllm --name chat
    mlflow deployments run-local -t vllm --name dev -m models:/tiny-lora@prod
"""


__all__ = ["VLLMDeploymentClient", "run_local", "target_help", "config_to_options"]
