"""Process environment: caches and offline switches, set before any Hugging Face import.

Model Garden keeps everything it writes inside one home folder, ``$MG_HOME`` (default
``./.model-garden`` of the current directory), so nothing lands in ``~`` unless the user asks:
the Hugging Face cache, the embedded MLflow store (``mlflow.db`` + ``mlartifacts/``), the download
cache of deployments and their state files.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PYTHONWARNINGS": "ignore::FutureWarning",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def mg_home() -> Path:
    """The folder Model Garden writes into (``$MG_HOME``, default ``./.model-garden``)."""
    return Path(os.environ.get("MG_HOME") or Path.cwd() / ".model-garden").absolute()


def run_outputs(run_id: str, output_dir: str | Path = "") -> Path:
    """Where a training run writes its checkpoints, model and metric spool: ``output_dir`` when given, else
    ``mg_home()/outputs/<run id>``."""
    return Path(output_dir or mg_home() / "outputs" / run_id).absolute()


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the embedded sqlite store in ``mg_home()``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{mg_home() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


def private_sqlite_file(uri: str) -> None:
    """Create the file of a sqlite store that does not exist yet with mode 0600 (owner only), so that the
    database, which sqlite then opens as it is, never is world-readable; other stores are left alone."""
    path = sqlite_path(uri)
    if path is None or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.touch(mode=0o600, exist_ok=False)
    except FileExistsError:  # created meanwhile by another process
        return
    os.chmod(path, 0o600)


def default_artifact_root() -> str:
    return (mg_home() / "mlartifacts").as_uri()


def setup_env() -> Path:
    """Set cache and telemetry variables (only those the user has not set) and return MG_HOME.

    Call before importing transformers, datasets, huggingface_hub, vllm or codecarbon.
    """
    home = mg_home()
    home.mkdir(parents=True, exist_ok=True)
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MG_HOME", str(home))
    os.environ.setdefault("HF_HOME", str(home / "hf"))
    os.environ.setdefault("HF_DATASETS_CACHE", str(home / "hf" / "datasets"))
    os.environ.setdefault("VLLM_CACHE_ROOT", str(home / "vllm-cache"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(home / "inductor-cache"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(home / "triton-cache"))
    os.environ.setdefault("MPLCONFIGDIR", str(home / "matplotlib"))
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", str(home / "unsloth_compiled_cache"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", default_tracking_uri())
    return home


@contextmanager
def scoped_env(**values: str | None):
    """Set environment variables for the duration of a block and restore each one afterwards (unset
    again if it was unset); a ``None`` value leaves that variable as it is."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
