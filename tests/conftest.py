"""Shared fixtures: an isolated Model Garden home + sqlite MLflow store, tiny models, sample data,
and session-wide trained models (adapter and merged) that deployment tests reuse.

Everything runs offline on CPU. Tests that need vLLM are marked ``vllm``.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# A suite started in the background by a non-interactive shell (`bash -c '... &'`, nohup) inherits
# SIGINT ignored (POSIX: asynchronous lists ignore SIGINT and SIGQUIT), and so would every process the
# tests start, since an ignored signal stays ignored across exec: the tests that stop a deployment or a
# training with Ctrl-C would wait on a process that cannot hear it. Put Python's own handler back; the
# processes the tests start then begin with SIGINT's default action, as under a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Before any Hugging Face / MLflow import in the test process.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Every `mlflow server` a test starts (tracking outage, UI, team server, PostgreSQL + S3) would also
# start MLflow's job runner: 8 more Python processes (Huey consumers for GenAI scorers/trace jobs,
# which Model Garden does not use) that take ~10-20 s of a 2-core machine to start and keep polling.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    """One MG_HOME (and sqlite store) for the whole session; tests that need isolation use mg_home."""
    home = tmp_path_factory.mktemp("mg-home")
    os.environ["MG_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["HF_HOME"] = str(home / "hf")
    from mg_mlflow.env import setup_env

    setup_env()
    return home


@contextmanager
def isolated_home(home: Path):
    """MG_HOME and a sqlite store in ``home`` while the block runs (env restored afterwards)."""
    import mlflow

    home.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MG_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        mp.setenv("HF_HOME", str(home / "hf"))
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
        yield home
        while mlflow.active_run():
            mlflow.end_run()


@pytest.fixture()
def mg_home(tmp_path) -> Path:
    """A fresh MG_HOME and sqlite store for one test."""
    with isolated_home(tmp_path / "mg-home") as home:
        yield home


@pytest.fixture(scope="module")
def module_home(tmp_path_factory) -> Path:
    """A fresh MG_HOME and sqlite store for one module's runs."""
    with isolated_home(tmp_path_factory.mktemp("module-home")) as home:
        yield home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from mg_mlflow.dev.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    from mg_mlflow.data.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("data") / "data.jsonl", n=64)


def train_tiny(tiny_model: Path, data: Path, **overrides):
    """Train the tiny model in-process with test-friendly defaults; returns TrainResult."""
    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.training.text import train_text

    options = {"base_model": str(tiny_model), "dataset": str(data), "max_steps": 30,
               "learning_rate": 3e-3, "batch_size": 4, "system_metrics": False, "carbon": False}
    options.update(overrides)
    cfg = build_config(TrainConfig, overrides=options)
    return train_text(cfg, show_progress=False)


@pytest.fixture(scope="session")
def trained_lora(session_home, tiny_model, sample_data):
    """A LoRA adapter registered as models:/tiny-lora/N with alias @prod (session-wide)."""
    return train_tiny(tiny_model, sample_data, register_as="tiny-lora", alias="prod",
                      save_method="lora", max_steps=60)


@pytest.fixture(scope="session")
def trained_merged(session_home, tiny_model, sample_data):
    """A merged 16-bit model registered as models:/tiny-merged/N with alias @prod (session-wide)."""
    return train_tiny(tiny_model, sample_data, register_as="tiny-merged", alias="prod",
                      save_method="merged_16bit", max_steps=60)


def run_cli(args: list[str], env: dict | None = None, cwd: Path | None = None, timeout: int = 600):
    """Run the real ``model-garden`` console script; returns CompletedProcess (text)."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(BIN / "model-garden"), *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


# Hypothesis draws the same examples on every run, so a CI result does not depend on the day's luck:
# the seed below, unless `--hypothesis-seed N` is given to explore others (the header shows which).
HYPOTHESIS_SEED = 20261204


def pytest_configure(config):
    from hypothesis import core

    if config.getoption("--hypothesis-seed") is None:
        core.global_force_seed = HYPOTHESIS_SEED


def pytest_report_header(config):
    from hypothesis import core

    fixed = "the suite's fixed seed" if core.global_force_seed == HYPOTHESIS_SEED else "from --hypothesis-seed"
    return f"hypothesis seed: {core.global_force_seed} ({fixed}; explore with --hypothesis-seed N)"


def pytest_collection_modifyitems(config, items):
    """``MG_TEST_ORDER=reverse`` or ``random[:SEED]``: run the suite in another order to catch tests
    that depend on each other. Tests of one module stay together (module-scoped servers start once);
    the modules and the tests inside each module are reordered."""
    import random

    order = os.environ.get("MG_TEST_ORDER", "")
    if not order:
        return
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(str(item.fspath), []).append(item)
    groups = list(modules.values())
    if order == "reverse":
        groups = [list(reversed(g)) for g in reversed(groups)]
    elif order.startswith("random"):
        seed = int(order.split(":", 1)[1]) if ":" in order else random.randrange(10**6)
        print(f"MG_TEST_ORDER=random:{seed}")
        rng = random.Random(seed)
        rng.shuffle(groups)
        for group in groups:
            rng.shuffle(group)
    else:
        raise pytest.UsageError(f"MG_TEST_ORDER={order!r}: use reverse or random[:SEED]")
    items[:] = [item for group in groups for item in group]


# Session-wide PostgreSQL and S3 servers for the team-server tests (one database and bucket per module).
from services_support import moto_endpoint, pg_cluster  # noqa: E402,F401 - fixtures
