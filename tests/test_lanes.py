"""The lanes of tests/conftest.py (LANES) name tests that exist, with marks `bash .ci/test --fast` leaves
out: a renamed test or module would otherwise fall silently into the fast lane."""

from __future__ import annotations

import ast
import re
import tomllib

import pytest

from conftest import FIXTURE_LANES, LANES, ROOT, TESTS


def _test_functions(module: str) -> set[str]:
    tree = ast.parse((TESTS / module).read_text())
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


@pytest.mark.parametrize("lane", sorted(LANES))
def test_every_lane_entry_names_an_existing_module_or_test(lane):
    missing = []
    for entry in LANES[lane]:
        module, _, function = entry.partition("::")
        if not (TESTS / module).is_file():
            missing.append(f"{entry}: no module tests/{module}")
        elif function and function not in _test_functions(module):
            missing.append(f"{entry}: tests/{module} has no function {function}")
    assert not missing, f"LANES[{lane!r}] in tests/conftest.py:\n" + "\n".join(missing)


def test_the_fast_lane_leaves_out_every_lane_and_each_lane_is_a_declared_marker():
    fast = re.search(r'^FAST_LANE="([^"]+)"', (ROOT / ".ci" / "test").read_text(), re.M)
    assert fast, ".ci/test sets no FAST_LANE"
    left_out = set(re.findall(r"not (\w+)", fast.group(1)))
    lanes = set(LANES) | set(FIXTURE_LANES.values())
    assert lanes <= left_out, f"--fast would run the {sorted(lanes - left_out)} lane(s)"
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert left_out <= {m.split(":")[0].strip() for m in declared}


def test_the_marks_select_the_listed_tests():
    """`-m slow` picks a test LANES lists and a test using a FIXTURE_LANES fixture, `--fast`'s expression
    neither (a real collection by pytest)."""
    import subprocess
    import sys

    def collected(expr: str) -> set[str]:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                               "-m", expr, "tests/test_cli.py", "tests/test_deploy_errors.py"],
                              capture_output=True, text=True, cwd=ROOT)
        return {line.split("[")[0] for line in proc.stdout.splitlines() if "::" in line}

    listed = "tests/test_cli.py::test_runs_list_and_show_read_back_from_mlflow"
    by_fixture = "tests/test_deploy_errors.py::test_unknown_name_and_alias"  # uses trained_lora
    unit = "tests/test_cli.py::test_data_validate_reports_bad_lines"
    slow = collected("slow")
    assert listed in slow and by_fixture in slow and unit not in slow
    fast = collected(re.search(r'^FAST_LANE="([^"]+)"', (ROOT / ".ci" / "test").read_text(), re.M).group(1))
    assert unit in fast and listed not in fast and by_fixture not in fast
