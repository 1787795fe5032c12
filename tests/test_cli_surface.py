"""Every command and visible option of ``model-garden`` stays as released (tests/cli_surface.py)."""

from __future__ import annotations

import json

from cli_surface import surface
from conftest import ROOT


def _by_name(params: list[dict]) -> dict[str, dict]:
    return {f"{p['kind']}:{p['name']}": p for p in params}


def test_no_command_or_option_is_renamed_removed_or_retyped():
    released = json.loads((ROOT / "tests" / "data" / "cli_surface.json").read_text())
    now = surface()
    missing_commands = sorted(set(released) - set(now))
    assert missing_commands == []
    changed = []
    for command, params in released.items():
        current = _by_name(now[command])
        for key, before in _by_name(params).items():
            if current.get(key) != before:
                changed.append((command, key, before, current.get(key)))
    assert changed == []


def test_the_surface_is_read_from_the_real_cli():
    now = surface()
    assert "train" in now and "deployments stop" in now
    assert any(p["opts"] == ["--learning-rate"] for p in now["train"])
