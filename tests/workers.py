"""How the suite is spread over pytest-xdist workers (`.ci/test` runs `-n 2 --dist loadscope`): the worker
id, the scope each test runs in, and the order the scopes go out. The hooks that use them are in conftest.py."""

from __future__ import annotations


def xdist_worker(config) -> str | None:
    """The pytest-xdist worker id (gw0, gw1, ...) of this process, None in the controller or without xdist."""
    workerinput = getattr(config, "workerinput", None)
    return workerinput["workerid"] if workerinput else None


# Under pytest-xdist (`.ci/test` runs `-n 2 --dist loadscope`), a scope runs whole on one worker, in
# order, and the scope of a test is its module (its module-scoped servers start once) but for the
# modules with a real vLLM server (the `vllm` lane, the session's `merged_server`): they are one scope,
# so one worker starts their servers one after another (two vLLM servers at once would each take a core
# and gigabytes) and `merged_server` starts once. tests/test_lanes.py checks that VLLM_MODULES are
# exactly the modules with a `vllm` test. The scopes go out longest first (vLLM, then the slow and
# service modules), so the other worker fills in with short modules at the end.
VLLM_MODULES = {
    "reliability/test_deploy_update.py", "test_demo.py", "test_deploy_hotswap.py", "test_deploy_plugin.py",
    "test_deploy_serving.py", "test_deploy_vllm.py", "test_evaluate.py", "test_readme.py", "test_vision_serve.py",
}
VLLM_SCOPE = "vllm servers"


def worker_scope(nodeid: str) -> str:
    """The scope (as above) of the test ``nodeid`` (``tests/x.py::test_y[...]``)."""
    module = nodeid.split("::", 1)[0]
    return VLLM_SCOPE if module.removeprefix("tests/") in VLLM_MODULES else module


def order_for_workers(items) -> None:
    """Scopes in the order they go out: the vLLM one, then those with a slow or services test, then
    the rest (each in collection order)."""
    def rank(item) -> int:
        if worker_scope(item.nodeid) == VLLM_SCOPE:
            return 0
        return 1 if {m.name for m in item.iter_markers()} & {"slow", "services"} else 2

    scopes: dict[str, list] = {}
    for item in items:
        scopes.setdefault(worker_scope(item.nodeid), []).append(item)
    ranked = sorted(scopes.values(), key=lambda scope: min(rank(item) for item in scope))
    items[:] = [item for scope in ranked for item in scope]


def make_scheduler(config, log):
    """`--dist loadscope` with the scopes of ``worker_scope``."""
    from xdist.scheduler import LoadScopeScheduling

    class ModelGardenScopes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_scope(nodeid)

    return ModelGardenScopes(config, log)
