""".ci/torch_index.py: PyTorch's CPU index is added (as an extra index) only when the configured
ones lack torch==2.13.0+cpu. No network: every input is a local folder or a canned pip output."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from reltrain_support import ROOT

spec = importlib.util.spec_from_file_location("torch_index", ROOT / ".ci" / "torch_index.py")
ti = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ti)

PYPI_OUTPUT = "torch (2.15.0)\nAvailable versions: 2.15.0, 2.14.1, 2.13.0, 2.12.1\n"
LOCAL_OUTPUT = "torch (2.15.0)\nAvailable versions: 2.15.0, 2.13.0+cpu, 2.13.0\n"


def test_decision_table():
    extra = ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    assert ti.decide("Linux", "x86_64", {"2.13.0+cpu"}, None)[0] == []               # this image
    assert ti.decide("Linux", "x86_64", set(), ti.index_versions(LOCAL_OUTPUT))[0] == []
    assert ti.decide("Linux", "x86_64", set(), ti.index_versions(PYPI_OUTPUT))[0] == extra  # fresh machine
    assert ti.decide("Linux", "x86_64", set(), set())[0] == extra                      # index unreachable
    assert ti.decide("Linux", "aarch64", set(), set())[0] == []
    assert ti.decide("Darwin", "arm64", set(), set())[0] == []


def test_local_wheel_folders_and_file_indexes_are_read_without_network(tmp_path):
    links, index = tmp_path / "wheels", tmp_path / "simple" / "torch"
    links.mkdir()
    index.mkdir(parents=True)
    (links / "torch-2.12.0-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    cfg = {"find-links": [str(links)], "index-url": [], "extra-index-url": [(tmp_path / "simple").as_uri()]}
    assert ti.local_versions(cfg) == {"2.12.0"}
    (index / "index.html").write_text('<a href="torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl#sha256=0">x</a>')
    assert ti.local_versions(cfg) == {"2.12.0", "2.13.0+cpu"}
    assert ti.wheel_versions(["torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl", "torchdata-0.1-py3-none-any.whl"]) == {"2.13.0+cpu"}


def test_a_machine_with_the_wheel_in_a_local_folder_adds_nothing():
    import platform

    import pytest

    local = ti.local_versions(ti.pip_config([sys.executable, "-m", "pip"]))
    if ti.WANT not in local or platform.machine() != "x86_64":
        pytest.skip("no local torch 2.13.0+cpu wheel here: the script would ask the network")
    proc = subprocess.run([sys.executable, str(ROOT / ".ci" / "torch_index.py")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == ""
    assert "2.13.0+cpu is in a local wheel folder" in proc.stderr
