"""Benchmarks through lm-evaluation-harness (``lm-eval``): harness tasks run against the model.

Through a deployment the harness's ``local-completions`` backend talks to the OpenAI endpoint;
without one the harness's ``hf`` backend loads the model folder (an adapter on its resolved base).
``tasks_dir`` is a folder of task YAML files (lm-eval's ``include_path``); a task over a local JSONL
uses ``dataset_path: json`` and ``dataset_kwargs: {data_files: {test: /abs/file.jsonl}}``, so no hub
is needed. Each task's numeric metrics are returned as ``eval/<task>/<metric>``.
"""

from __future__ import annotations

import os
from pathlib import Path

from mg_mlflow.deploy.manager import endpoint
from mg_mlflow.env import scoped_env
from mg_mlflow.errors import MGError
from mg_mlflow.registry.base_ref import resolve_base
from mg_mlflow.registry.loader import is_adapter_dir


def task_manager(tasks_dir: str | None):
    import logging

    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    if tasks_dir:
        folder = Path(tasks_dir)
        if not folder.is_dir():
            raise MGError(f"--tasks-dir {tasks_dir}: not a folder", hint="a folder of lm-eval task YAML files")
        return TaskManager(include_path=str(folder.resolve()), include_defaults=False)
    return TaskManager()


def check_tasks(tasks: list[str], tasks_dir: str | None):
    """The TaskManager, after checking that every task name is known (before any run exists)."""
    manager = task_manager(tasks_dir)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        import difflib

        near = sorted({m for t in unknown for m in difflib.get_close_matches(t, known, n=3)})
        where = f"in {tasks_dir}" if tasks_dir else "among lm-eval's built-in tasks"
        raise MGError(f"unknown lm-eval task(s) {', '.join(unknown)} {where}",
                      hint=(f"did you mean {', '.join(near)}? " if near else "")
                      + "define a task as YAML in a folder and pass --tasks-dir FOLDER")
    return manager


def api_backend_missing() -> list[str]:
    """Packages lm-eval's API backends need (its ``api`` extra) that are not installed."""
    import importlib.util

    return [p for p in ("aiohttp", "tenacity", "requests") if importlib.util.find_spec(p) is None]


def remote_backend(record: dict, served: str, tokenizer_dir: Path, concurrency: int, max_new_tokens: int):
    return "local-completions", {"model": served, "base_url": f"{endpoint(record)}/completions",
                                 "tokenizer": str(tokenizer_dir), "tokenizer_backend": "huggingface",
                                 "tokenized_requests": False, "num_concurrent": max(1, concurrency),
                                 "max_gen_toks": max_new_tokens, "max_retries": 1}


def local_backend(local_dir: Path, metadata: dict, max_new_tokens: int, batch_size: int = 8):
    args = {"device": "cpu", "batch_size": batch_size,
            "dtype": metadata.get("dtype") or "float32"}
    try:
        import torch

        if torch.cuda.is_available():
            args["device"] = "cuda"
    except ImportError:  # pragma: no cover
        pass
    if is_adapter_dir(local_dir):
        base, revision = resolve_base(metadata.get("base_model"))
        args.update(pretrained=str(base), peft=str(local_dir), tokenizer=str(local_dir))
        if revision:
            args["revision"] = revision
    else:
        args["pretrained"] = str(local_dir)
    return "hf", args


def run_tasks(tasks: list[str], manager, model: str, model_args: dict, api_key: str | None = None,
              limit: int | None = None, chat_template: bool = True) -> tuple[dict[str, float], dict]:
    """(``eval/<task>/<metric>`` numbers, lm-eval's results dict) for ``tasks``."""
    import lm_eval

    with scoped_env(OPENAI_API_KEY=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"):
        try:
            out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=list(tasks),
                                          task_manager=manager, limit=limit, log_samples=False,
                                          apply_chat_template=chat_template, bootstrap_iters=0)
        except MGError:
            raise
        except Exception as exc:  # noqa: BLE001 - the harness raises many types
            raise MGError(f"lm-eval failed on {', '.join(tasks)}: {type(exc).__name__}: {exc}") from None
    results = dict((out or {}).get("results") or {})
    metrics = {}
    for task, values in results.items():
        for key, value in values.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or "_stderr" in key:
                continue
            metric, _, filt = key.partition(",")
            name = metric if filt in ("", "none") else f"{metric}_{filt}"
            metrics[f"eval/{task}/{name}"] = float(value)
    return metrics, results
