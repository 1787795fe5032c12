"""Atomic port and name claims, so two deploys started at once never launch two servers on one port.

A claim is an exclusive ``flock`` on a small file, held by the deploying process from the moment it
picks a port (or name) until its server is healthy or has failed; by then vLLM itself holds the port.
Port claims live in a per-user folder of the machine's temp dir (so deployments of different MG_HOMEs
see each other); name claims live beside the state records. The kernel drops a claim when its holder
dies, so a crashed deploy never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from mg_mlflow.deploy.net import port_free
from mg_mlflow.deploy.private import private_dir
from mg_mlflow.errors import AlreadyExistsError, MGError

PORT_RANGE = range(8000, 8100)


def locks_dir() -> Path:
    return private_dir(Path(tempfile.gettempdir()) / f"model-garden-{os.getuid()}" / "ports")


class Claim:
    """An exclusive, non-blocking flock on ``path``; ``holder`` is the pid written by whoever holds it."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip()
            os.close(self.fd)
            self.fd = None
            raise ClaimTaken(holder) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class ClaimTaken(Exception):
    def __init__(self, holder: str):
        self.holder = holder or "?"
        super().__init__(self.holder)


def claim_name(folder: Path, name: str) -> Claim:
    try:
        return Claim(folder / f"{name}.lock")
    except ClaimTaken as taken:
        raise AlreadyExistsError(f"deployment {name!r} is being started or updated by another process (pid {taken.holder})",
                      hint="wait for it to finish, then check `model-garden deployments list`") from None


def claim_port(host: str, wanted: int | None, reserved: set[int], start: int = PORT_RANGE.start) -> tuple[int, Claim]:
    """(port, claim): ``wanted`` if nobody claims, records or binds it (else MGError), or the first such
    port from ``start`` (in the default range, wrapping around; outside it, the next 100 ports)."""
    def attempt(port: int) -> Claim | None:
        claim = Claim(locks_dir() / f"{port}.lock")
        if port in reserved or not port_free(host, port):
            claim.release()
            return None
        return claim

    if wanted:
        try:
            claim = attempt(wanted)
        except ClaimTaken as taken:
            raise AlreadyExistsError(f"port {wanted} is already in use: another deployment (pid {taken.holder}) is "
                          "starting on it", hint="choose another with --port") from None
        if claim is None:
            raise _port_in_use(host, wanted)
        return wanted, claim
    if start in PORT_RANGE:
        candidates = [p for p in PORT_RANGE if p >= start] + [p for p in PORT_RANGE if p < start]
    else:  # next to a port outside the default range (an update beside it), not back to 8000
        candidates = list(range(start, min(start + len(PORT_RANGE), 65536))) or list(PORT_RANGE)
    for port in candidates:
        try:
            claim = attempt(port)
        except ClaimTaken:
            continue
        if claim is not None:
            return port, claim
    raise MGError(f"no free port between {candidates[0]} and {candidates[-1]} on {host}", hint="pass --port")


def _port_in_use(host: str, port: int) -> AlreadyExistsError:
    return AlreadyExistsError(f"port {port} on {host} is already in use",
                              hint="choose another with --port, or stop what holds it "
                                   "(`model-garden deployments list` shows Model Garden's servers)")


def pick_port(host: str, wanted: int | None, reserved: set[int]) -> int:
    """``wanted`` if free (else a clear error), or the first free port of PORT_RANGE; nothing claimed
    (dry runs: the port is only planned)."""
    if wanted:
        if wanted in reserved or not port_free(host, wanted):
            raise _port_in_use(host, wanted)
        return wanted
    for port in PORT_RANGE:
        if port not in reserved and port_free(host, port):
            return port
    raise MGError(f"no free port between {PORT_RANGE.start} and {PORT_RANGE.stop - 1} on {host}", hint="pass --port")
