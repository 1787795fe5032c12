"""Layers point one way (DESIGN.md): data -> training -> registry -> deploy, with tracking beside them.
Every import is counted, at module level and inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "mg_mlflow"
# what each layer may NOT import (directly or inside a function)
FORBIDDEN = {
    "data": {"training", "registry", "deploy", "tracking", "cli"},
    "tracking": {"training", "registry", "deploy", "cli"},
    "registry": {"training", "deploy", "cli"},
    "training": {"deploy", "cli"},
    "deploy": {"training", "cli"},
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mg_mlflow" else None


def imports_by_layer() -> dict[str, set[tuple[str, str]]]:
    found: dict[str, set[tuple[str, str]]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        layer = rel.parts[1] if len(rel.parts) > 2 else None
        if layer not in FORBIDDEN:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                target = _layer(name)
                if target and target != layer:
                    found.setdefault(layer, set()).add((str(rel), target))
    return found


def test_no_layer_imports_a_layer_above_it():
    bad = sorted((src, target) for layer, edges in imports_by_layer().items()
                 for src, target in edges if target in FORBIDDEN[layer])
    assert bad == []


def test_no_import_cycle_between_layers():
    edges = {(layer, target) for layer, pairs in imports_by_layer().items() for _, target in pairs
             if target in FORBIDDEN}
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    assert [layer for layer in graph if reaches(layer, layer, {layer})] == []
    assert ("training", "registry") in edges  # the scan sees real imports (the test can fail)
