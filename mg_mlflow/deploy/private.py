"""Private folders (0700) and files (0600): deployment records, logs and claims are this user's only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mg_mlflow.errors import MGError


def private_dir(path: Path) -> Path:
    """``path`` created 0700 (tightened if it exists), refused if it is a link or another user's."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise MGError(f"{path} is not a private folder of this user", hint="remove it, or set MG_HOME elsewhere")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def private_file(path: Path, mode: str = "wb"):
    """Open ``path`` for writing ("wb") or appending ("ab"), created 0600."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.chmod(path, 0o600)
    return os.fdopen(fd, mode)
