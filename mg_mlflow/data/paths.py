"""Allowed data folders for jobs submitted to a shared server.

When ``MG_ALLOWED_DATA_DIRS`` is set (folders separated by ``os.pathsep``, i.e. ``:`` on Linux),
every dataset file and every image a dataset names must resolve, after following every symlink
and ``..``, inside one of those folders; a link that points outside is refused like a missing
file. Unset (the default on a personal machine): any readable path is accepted.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "MG_ALLOWED_DATA_DIRS"


def allowed_roots() -> list[Path] | None:
    """The allowed folders (resolved), or None when no restriction is configured."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    return [Path(p).expanduser().resolve() for p in value.split(os.pathsep) if p.strip()]


def outside_allowed(path: Path, what: str = "path") -> str | None:
    """A problem message when ``path`` resolves outside the allowed folders, else None."""
    roots = allowed_roots()
    if roots is None:
        return None
    real = Path(os.path.realpath(path))
    if any(real == root or real.is_relative_to(root) for root in roots):
        return None
    shown = f"{path} (resolves to {real})" if str(real) != str(path) else str(path)
    return (f"{what} {shown} is outside the allowed data folders "
            f"({ENV}={os.pathsep.join(str(r) for r in roots)})")
