"""The CLI teaches (--help with examples), validates data, and reads jobs back from MLflow."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from conftest import train_tiny


def mg(*args: str):
    """``model-garden ARGS`` in-process (what it prints and its exit code are what the tests read)."""
    from mg_mlflow.cli import cli

    return CliRunner().invoke(cli, list(args))


def _commands():
    from mg_mlflow.cli import cli

    out = []
    for name, cmd in cli.commands.items():
        subs = getattr(cmd, "commands", None)
        out += [(name, s) for s in subs] if subs else [(name,)]
    return out


def test_import_and_help_stay_fast():
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "import mg_mlflow.cli, sys; "
                           "heavy = [m for m in ('torch', 'transformers', 'vllm', 'trl') if m in sys.modules]; "
                           "print(heavy)"], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
    assert time.perf_counter() - start < 15


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p))
def test_every_command_help_has_an_example(path):
    from mg_mlflow.cli import cli

    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output or "example" in result.output, result.output


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p))
def test_no_command_declares_an_option_twice(path):
    # click keeps only one of two same-named parameters: the other's value would be silently lost
    from mg_mlflow.cli import cli

    cmd = cli
    for name in path:
        cmd = cmd.commands[name]
    names = [p.name for p in cmd.params]
    flags = [o for p in cmd.params for o in [*p.opts, *p.secondary_opts]]
    assert len(names) == len(set(names)) and len(flags) == len(set(flags)), sorted(names)


def test_data_sample_then_validate_prints_stats(tmp_path, tiny_model):
    out = tmp_path / "d.jsonl"
    assert mg("data", "sample", str(out), "-n", "20", "--format", "messages").exit_code == 0
    proc = mg("data", "validate", str(out), "--base-model", str(tiny_model), "--max-seq-length", "20")
    assert proc.exit_code == 0, proc.output
    assert "records" in proc.stdout and "20" in proc.stdout and "messages" in proc.stdout
    assert "truncated at 20" in proc.stdout


def test_data_validate_reports_bad_lines(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": 1, "output": "b"}\n')
    proc = mg("data", "validate", str(bad))
    assert proc.exit_code == 2 and f"{bad}:2: field 'instruction' must be a non-empty string" in proc.stderr


def test_runs_list_and_show_read_back_from_mlflow(mg_home, tiny_model, sample_data):
    result = train_tiny(tiny_model, sample_data, register_as="listed", max_steps=5, alias="prod")
    proc = mg("runs", "list")
    assert proc.exit_code == 0, proc.output
    assert result.run_id[:12] in proc.stdout and "FINISHED" in proc.stdout and "models:/listed/1" in proc.stdout
    proc = mg("runs", "show", result.run_id[:10])
    assert proc.exit_code == 0, proc.output
    for text in ("FINISHED", "models:/listed/1", str(tiny_model), "loss_final", "data ("):
        assert text in proc.stdout, text
    proc = mg("runs", "show", "ffffffffff")
    assert proc.exit_code == 2 and "no run 'ffffffffff'" in proc.stderr
