"""The command-line surface of ``model-garden``: every command with its visible options and arguments.

``tests/data/cli_surface.json`` holds the surface as released; ``tests/test_cli_surface.py`` checks that
nothing in it was renamed, removed or retyped. Refresh it on purpose (a new option or command is an
addition, which the test allows) with::

    .venv/bin/python tests/cli_surface.py > tests/data/cli_surface.json
"""

from __future__ import annotations

import json

import click


def _param(p: click.Parameter) -> dict:
    kind = "argument" if isinstance(p, click.Argument) else "option"
    out = {"kind": kind, "name": p.name, "opts": sorted(p.opts), "secondary": sorted(getattr(p, "secondary_opts", []) or []),
           "multiple": bool(getattr(p, "multiple", False)), "is_flag": bool(getattr(p, "is_flag", False)),
           "type": p.type.name if not isinstance(p.type, click.Choice) else "choice:" + ",".join(map(str, p.type.choices))}
    return out


def surface(group: click.Group | None = None, prefix: str = "") -> dict:
    if group is None:
        from mg_mlflow.cli import cli as group
    ctx = click.Context(group)
    found = {}
    for name in sorted(group.list_commands(ctx)):
        cmd = group.get_command(ctx, name)
        if cmd is None or getattr(cmd, "hidden", False):
            continue
        path = f"{prefix}{name}"
        found[path] = sorted((_param(p) for p in cmd.params if not getattr(p, "hidden", False)),
                             key=lambda d: (d["kind"], d["name"] or ""))
        if isinstance(cmd, click.Group):
            found.update(surface(cmd, path + " "))
    return found


if __name__ == "__main__":
    print(json.dumps(surface(), indent=1, sort_keys=True))
