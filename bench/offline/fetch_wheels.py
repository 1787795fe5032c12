"""Gather the wheels the GPU machine lacks (Python 3.12, x86_64) into .whl/part1, part2, ...

The device image already has torch 2.11 (CUDA), transformers 5.17, peft, accelerate and ~200 other
packages (device_packages.txt beside this script, the image's package list). This walks the
requirements of what Model Garden's GPU path needs, downloads each missing wheel once (pinned where
the pin matters), and splits them into folders .whl/part1, part2, ... (one per call) under the per-call transfer limit (64 MiB).

    python3 bench/offline/fetch_wheels.py [--set train|hf]   # then: see bench/offline/README.md
    (train: 134 MiB in 3 parts, ~75 s; the downloaded pool stays in .whl/all)
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".whl"
LIMIT = 56 * 2**20  # + the repository itself (~3 MiB, 2026-11) stays under the 64 MiB per call
HF = ["trl==1.15.0", "datasets==4.8.5", "mlflow==3.17.2", "codecarbon==3.3.2", "fsspec==2026.2.0",
      "dill==0.4.1", "multiprocess==0.70.19"]
# unsloth 2026.10.9 caps trl <= 1.15.0 and datasets < 5; bitsandbytes is required by
# Unsloth on CUDA even for 16-bit LoRA, and by QLoRA on both backends
SETS = {"train": ["unsloth==2026.10.9", "unsloth_zoo==2026.10.9", "bitsandbytes==0.50.2", "torchao==0.18.0", *HF],
        "hf": HF}  # hf: the 2-GPU run alone (`--backend hf`), one part
TOP = SETS["train"]
PINS = {"mlflow-skinny": "==3.17.2", "mlflow-tracing": "==3.17.2", "fsspec": "==2026.2.0",
        "trl": "==1.15.0", "datasets": "==4.8.5"}
# present on the device or deliberately left out (no xformers wheel matches torch 2.11+cu130;
# torch/torchvision/triton come with the image)
SKIP = {"torch", "torchvision", "torchaudio", "triton", "xformers", "transformers", "peft", "accelerate",
        "huggingface-hub", "tokenizers", "safetensors", "numpy"}
ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
       "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def device_packages() -> set[str]:
    names = (Path(__file__).parent / "device_packages.txt").read_text().split()
    return {canonicalize_name(n) for n in names}


def download(spec: str, dest: Path) -> Path:
    args = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
            "--abi", "none", "-d", str(dest)]
    for plat in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                 "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64", "any"):
        args += ["--platform", plat]
    before = set(dest.glob("*.whl"))
    subprocess.run(args + [spec], check=True, capture_output=True, text=True)
    new = set(dest.glob("*.whl")) - before
    name = canonicalize_name(Requirement(spec).name)
    for whl in (new or dest.glob("*.whl")):
        if canonicalize_name(whl.name.split("-")[0]) == name:
            return whl
    raise RuntimeError(f"no wheel for {spec}")


def requires(whl: Path) -> list[Requirement]:
    with zipfile.ZipFile(whl) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    out = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(ENV):
                out.append(req)
    return out


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", choices=sorted(SETS), default="train",
                   help="train: Unsloth + QLoRA + tracking (bench_parity.py's 1-GPU groups); hf: the 2-GPU run only")
    top = SETS[p.parse_args().set]
    pool = OUT / "all"
    pool.mkdir(parents=True, exist_ok=True)
    have = device_packages() | SKIP
    queue = [Requirement(s) for s in top]
    done: dict[str, Path] = {}
    while queue:
        req = queue.pop(0)
        name = canonicalize_name(req.name)
        if name in done or (name in have and name not in {canonicalize_name(Requirement(t).name) for t in top}):
            continue
        spec = f"{req.name}{PINS.get(name, str(req.specifier))}"
        whl = download(spec, pool)
        done[name] = whl
        print(f"{whl.stat().st_size / 2**20:7.1f} MiB  {whl.name}")
        queue += requires(whl)
    # first-fit decreasing into parts of at most LIMIT bytes (one call each)
    for old in OUT.glob("part*"):
        for whl in old.glob("*.whl"):
            whl.unlink()
        old.rmdir()
    parts: list[list[Path]] = []
    sizes: list[int] = []
    for whl in sorted(done.values(), key=lambda w: -w.stat().st_size):
        size = whl.stat().st_size
        i = next((k for k, used in enumerate(sizes) if used + size <= LIMIT), None)
        if i is None:
            parts.append([])
            sizes.append(0)
            i = len(parts) - 1
        parts[i].append(whl)
        sizes[i] += size
    for i, group in enumerate(parts, 1):
        folder = OUT / f"part{i}"
        folder.mkdir()
        for whl in group:
            (folder / whl.name).hardlink_to(whl)
        print(f"part{i}: {sizes[i - 1] / 2**20:.1f} MiB, {len(group)} wheels")

if __name__ == "__main__":
    main()
