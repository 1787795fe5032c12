"""The lanes of tests/conftest.py (LANES) name tests that exist, with marks `bash .ci/test --fast` leaves
out: a renamed test or module would otherwise fall silently into the fast lane."""

from __future__ import annotations

import ast
import os
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


def test_the_vllm_scope_is_every_module_with_a_vllm_test():
    """`.ci/test` runs the modules of VLLM_MODULES on one worker, one after another: a module with a real
    vLLM server left out of it would start its server beside another worker's."""
    import subprocess
    import sys

    from workers import VLLM_MODULES

    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", "-m", "vllm"],
                          capture_output=True, text=True, cwd=ROOT)
    with_vllm = {line.split("::")[0].removeprefix("tests/") for line in proc.stdout.splitlines() if "::" in line}
    assert with_vllm, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert with_vllm == VLLM_MODULES, f"add {sorted(with_vllm - VLLM_MODULES)}, remove {sorted(VLLM_MODULES - with_vllm)}"


PROBE = '''
import os
import time


def test_{name}_{i}():
    with open(os.environ["PROBE_LOG"], "a") as log:
        log.write("{name} {i} " + os.environ["PYTEST_XDIST_WORKER"] + "\\n")
    time.sleep(0.2)
'''


def test_two_workers_keep_the_vllm_modules_on_one_worker_in_order(tmp_path):
    """Under `-n 2 --dist loadscope` the modules of VLLM_MODULES run on one worker, in collection order,
    the others' tests of a module on one worker each (a real xdist run of a scratch suite)."""
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    for helper in ("conftest.py", "workers.py", "services_support.py", "procs.py"):
        shutil.copy2(TESTS / helper, repo / "tests" / helper)
    shutil.copy2(ROOT / "pyproject.toml", repo / "pyproject.toml")
    names = {"test_demo": "demo", "test_readme": "readme", "test_alpha": "alpha", "test_beta": "beta"}
    for module, name in names.items():
        (repo / "tests" / f"{module}.py").write_text("\n".join(PROBE.format(name=name, i=i) for i in range(3)))
    log = tmp_path / "probe.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MG_HOME"))},
           "PYTHONPATH": str(ROOT), "PROBE_LOG": str(log)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2", "--dist", "loadscope",
                           "--no-loadscope-reorder"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "12 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = [line.split() for line in log.read_text().splitlines()]
    worker_of = {}
    for name, _, worker in ran:
        worker_of.setdefault(name, set()).add(worker)
    assert all(len(workers) == 1 for workers in worker_of.values()), ran
    assert worker_of["demo"] == worker_of["readme"], ran
    on_it = [(name, int(i)) for name, i, worker in ran if worker in worker_of["demo"] and name in ("demo", "readme")]
    assert on_it == [("demo", 0), ("demo", 1), ("demo", 2), ("readme", 0), ("readme", 1), ("readme", 2)], ran
