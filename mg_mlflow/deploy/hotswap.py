"""Update a running deployment in place: new LoRA adapters on the same server, through vLLM's runtime LoRA API.

When an update changes only the adapters served on one base (same base, same engine and vLLM command
apart from the adapter list, same options), the running server loads the new adapters itself:
``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``, enabled by
``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` (planned for every deployment that serves adapters). Same port,
same process, no request refused: an adapter served under the same name is replaced with
``load_inplace`` (vLLM swaps the name's adapter under a lock; a request takes whichever is current),
new names are loaded first and names no longer wanted unloaded last. Anything else (a merged model,
another base, changed options, a larger LoRA rank than the server has slots for, a server started
without runtime LoRA updates) is started beside the old server and switched to (``update``).

vLLM (0.32) keeps ``load_inplace`` on the adapter's request, so it re-reads a name replaced in place
from disk whenever a batch uses it; ``deployments update --beside`` restarts the server instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

from mg_mlflow.deploy import state
from mg_mlflow.deploy.launch import resolve_all
from mg_mlflow.deploy.net import connect_host
from mg_mlflow.deploy.plan import DeployOptions, Plan, ServedModel, plan_deployment
from mg_mlflow.deploy.state import Deployment
from mg_mlflow.errors import ServerError

RUNTIME_LORA = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
ADAPTER_FLAGS = ("--lora-modules", "--max-loras", "--max-lora-rank")  # what an adapter swap may change
# an adapter's tokenizer serves when the base has no chat template: a swap keeps the running one if equal
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def split_command(command: str) -> tuple[dict[str, str], list[str]]:
    """(environment, argv) of a recorded command line (``Plan.display``)."""
    tokens = shlex.split(command or "")
    env = {}
    while tokens and _ENV.match(tokens[0]):
        key, value = tokens.pop(0).split("=", 1)
        env[key] = value
    return env, tokens


def _tokenizer_digest(folder: str) -> str:
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = Path(folder) / name
        digest.update(name.encode() + (path.read_bytes() if path.is_file() else b"-"))
    return digest.hexdigest()


def _without_adapters(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """argv without the adapter flags (``ADAPTER_FLAGS``, and ``--tokenizer``), and those flags' values."""
    out, values, current = [], {}, None
    for token in argv:
        if token.startswith("--"):
            current = token if token in (*ADAPTER_FLAGS, "--tokenizer") else None
            if current:
                values[current] = []
                continue
        if current:
            values[current].append(token)
        else:
            out.append(token)
    return out, values


def _number(values: dict[str, list[str]], flag: str) -> int:
    try:
        return int(values.get(flag, ["0"])[0])
    except (ValueError, IndexError):
        return 0


def swap_plan(old: Deployment, uris: list[str], opts: DeployOptions) -> tuple[Plan | None, str]:
    """(the plan of ``uris`` on ``old``'s server, why) when the update is an adapter swap the running
    server can do itself; (None, why not) otherwise."""
    if replace(opts, api_key=None, name=old.name) != replace(old.options, api_key=None, name=old.name):
        return None, "deployment options changed"
    if not old.models or old.models[0].kind != "base":
        return None, "the deployment serves a merged model, not adapters on a base"
    old_env, old_argv = split_command(old.command)
    if old_env.get(RUNTIME_LORA, "").lower() not in ("true", "1"):
        return None, f"the running server was started without {RUNTIME_LORA}"
    plan = plan_deployment(*resolve_all(uris), replace(opts, port=old.port))
    if plan.engine != old.engine:
        return None, f"engine {old.engine} -> {plan.engine}"
    if plan.models[0].kind != "base" or len(plan.models) < 2:
        return None, "the new version is not adapters on a base"
    if (plan.models[0].served_name, plan.models[0].local_dir) != (old.models[0].served_name, old.models[0].local_dir):
        return None, f"base {old.models[0].uri} -> {plan.models[0].uri}"
    (before, old_flags), (after, new_flags) = _without_adapters(old_argv), _without_adapters(plan.argv)
    if before and after and os.path.realpath(before[0]) == os.path.realpath(after[0]):
        after[0] = before[0]  # one interpreter by two names (python, python3, a symlinked venv)
    if plan.env != old_env or before != after:
        return None, "the vLLM command differs beyond the adapter list"
    tokenizers = [flags.get("--tokenizer") for flags in (old_flags, new_flags)]
    if tokenizers[0] != tokenizers[1] and (None in tokenizers or
                                           _tokenizer_digest(tokenizers[0][0]) != _tokenizer_digest(tokenizers[1][0])):
        return None, "the new adapters bring another tokenizer"
    for flag, what in (("--max-lora-rank", "LoRA rank"), ("--max-loras", "number of adapters")):
        if _number(new_flags, flag) > _number(old_flags, flag):
            return None, f"{what} {_number(new_flags, flag)} is above the running server's {_number(old_flags, flag)}"
    return plan, "new adapters on the same base, engine and options"


def _post(record: Deployment, path: str, body: dict, api_key: str | None) -> None:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    req = urllib.request.Request(f"http://{connect_host(record.host)}:{record.port}{path}",
                                 data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            resp.read()
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:500]
        raise ServerError(f"vLLM refused {path} for {body.get('lora_name')!r} (HTTP {err.code}): {detail}") from None
    except (urllib.error.URLError, OSError) as err:
        raise ServerError(f"vLLM did not answer {path} on port {record.port}: {err}") from None


def hot_swap(old: Deployment, uris: list[str], plan: Plan, api_key: str | None, why: str) -> Deployment:
    """Load ``plan``'s adapters into ``old``'s running server, unload the ones it no longer serves, and
    write the record (same pid and port). A refused load undoes the loads before it; the old adapters
    keep serving."""
    current = {m.served_name: m for m in old.models[1:]}
    wanted = {m.served_name: m for m in plan.models[1:]}
    done: list[tuple[ServedModel, ServedModel | None]] = []  # (loaded, what it replaced)
    started = time.monotonic()
    try:
        for name, model in wanted.items():
            before = current.get(name)
            if before is not None and before.local_dir == model.local_dir:
                continue
            _post(old, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": model.local_dir,
                                                  "load_inplace": before is not None}, api_key)
            done.append((model, before))
    except ServerError as exc:
        for model, before in reversed(done):
            if before is None:
                _post(old, "/v1/unload_lora_adapter", {"lora_name": model.served_name}, api_key)
            else:
                _post(old, "/v1/load_lora_adapter", {"lora_name": before.served_name, "lora_path": before.local_dir,
                                                      "load_inplace": True}, api_key)
        raise ServerError(f"the new adapters of {old.name!r} could not be loaded; the old ones keep serving at "
                          f"{old.endpoint}.\n{exc.message}", hint="model-garden deployments logs " + old.name) from None
    for name in current.keys() - wanted.keys():
        _post(old, "/v1/unload_lora_adapter", {"lora_name": name}, api_key)
    record = replace(old, uris=list(uris), models=[replace(m) for m in plan.models], default_model=plan.default_model,
                     updating=None, previous=state.PreviousVersion(port=old.port, pid=old.pid, uris=list(old.uris)),
                     last_update={"method": "hot-swap", "why": why, "at": time.time(),
                                  "seconds": round(time.monotonic() - started, 2)})
    state.write_record(record)
    return record
