"""What a sweep searches: ``--grid name=v1,v2`` and ``--space name=kind:args`` parsed against the
config's fields, turned into Optuna suggestions, and the short names trials are called by.

Space kinds (Optuna's distributions): ``loguniform:LOW:HIGH``, ``uniform:LOW:HIGH``,
``int:LOW:HIGH[:STEP]``, ``logint:LOW:HIGH`` and ``choice:A,B,C``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mg_mlflow.config import coerce
from mg_mlflow.errors import ConfigError, MGError

KINDS = ("loguniform", "uniform", "int", "logint", "choice")
SHORT = {"learning_rate": "lr", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
         "lr_scheduler": "sched", "batch_size": "bs", "grad_accum": "ga", "warmup_steps": "warmup",
         "weight_decay": "wd", "max_steps": "steps"}
# metric -> direction; anything else needs --direction
MINIMIZE = ("loss", "perplexity", "emissions", "energy", "seconds", "latency")
MAXIMIZE = ("exact_match", "f1", "rouge", "bleu", "chrf", "accuracy", "acc", "tokens_per_second", "valid",
            "margin")


@dataclass
class Dimension:
    name: str
    kind: str                 # grid | loguniform | uniform | int | logint | choice
    values: tuple = ()        # grid / choice
    low: float = 0.0
    high: float = 0.0
    step: int | None = None

    def spec(self) -> str:
        if self.kind in ("grid", "choice"):
            body = ",".join(str(v) for v in self.values)
            return body if self.kind == "grid" else f"choice:{body}"
        tail = f":{self.step}" if self.step else ""
        return f"{self.kind}:{self.low:g}:{self.high:g}{tail}"


def _split(items) -> list[str]:
    """Repeated options, each possibly holding several specs separated by ';' (MLproject passes one string)."""
    return [part.strip() for item in items or () for part in str(item).split(";") if part.strip()]


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def parse_grid(items, cls) -> list[Dimension]:
    dims, problems = [], []
    for item in _split(items):
        name, sep, body = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not body.strip():
            problems.append(f"--grid {item!r}: expected name=value1,value2")
            continue
        if name not in _field_names(cls):
            problems.append(f"--grid {item!r}: {name!r} is not a training option")
            continue
        values = []
        for raw in body.split(","):
            try:
                values.append(coerce(cls, name, raw.strip()))
            except ValueError as exc:
                problems.append(f"--grid {name}: {exc}")
        dims.append(Dimension(name, "grid", tuple(values)))
    if problems:
        raise ConfigError(problems, "--grid")
    return dims


def parse_space(items, cls) -> list[Dimension]:
    dims, problems = [], []
    for item in _split(items):
        name, sep, body = item.partition("=")
        name = name.strip().replace("-", "_")
        kind, _, args = body.partition(":")
        where = f"--space {item!r}"
        if not sep or kind not in KINDS or not args:
            problems.append(f"{where}: expected name=KIND:ARGS with KIND one of {', '.join(KINDS)} "
                            "(e.g. learning_rate=loguniform:1e-5:1e-3, lora_r=int:4:32, lr_scheduler=choice:linear,cosine)")
            continue
        if name not in _field_names(cls):
            problems.append(f"{where}: {name!r} is not a training option")
            continue
        try:
            if kind == "choice":
                dims.append(Dimension(name, kind, tuple(coerce(cls, name, v.strip()) for v in args.split(","))))
                continue
            parts = args.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and kind != "int"):
                raise ValueError("expected LOW:HIGH" + (" or LOW:HIGH:STEP" if kind == "int" else ""))
            low, high = float(parts[0]), float(parts[1])
            if not low < high:
                raise ValueError(f"LOW ({low:g}) must be below HIGH ({high:g})")
            if kind in ("loguniform", "logint") and low <= 0:
                raise ValueError("a log scale needs LOW > 0")
            if kind in ("int", "logint") and not (low.is_integer() and high.is_integer()):
                raise ValueError("int bounds must be whole numbers")
            dims.append(Dimension(name, kind, low=low, high=high, step=int(parts[2]) if len(parts) == 3 else None))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise ConfigError(problems, "--space")
    return dims


def check_dimensions(grid: list[Dimension], space: list[Dimension]) -> None:
    if grid and space:
        raise MGError("give either --grid (every combination) or --space with --trials (a search), not both")
    if not grid and not space:
        raise MGError("nothing to sweep over", hint="add --grid learning_rate=1e-4,3e-4 or "
                                                    "--trials 8 --space learning_rate=loguniform:1e-5:1e-3")
    names = [d.name for d in grid + space]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MGError(f"{', '.join(repeated)} given more than once in --grid/--space")


def grid_size(grid: list[Dimension]) -> int:
    size = 1
    for d in grid:
        size *= len(d.values)
    return size


def search_space_for_grid(grid: list[Dimension]) -> dict[str, list]:
    return {d.name: list(d.values) for d in grid}


def suggest(trial, dims: list[Dimension]) -> dict[str, Any]:
    """Ask Optuna for one value per dimension (the sampler decides: GridSampler, TPE, ...)."""
    params: dict[str, Any] = {}
    for d in dims:
        if d.kind in ("grid", "choice"):
            params[d.name] = trial.suggest_categorical(d.name, list(d.values))
        elif d.kind == "loguniform":
            params[d.name] = trial.suggest_float(d.name, d.low, d.high, log=True)
        elif d.kind == "uniform":
            params[d.name] = trial.suggest_float(d.name, d.low, d.high)
        elif d.kind == "int":
            params[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high), step=d.step or 1)
        else:  # logint
            params[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high), log=True)
    return params


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}".replace("e-0", "e-").replace("e+0", "e+")
    return str(value)


def trial_name(number: int, params: dict[str, Any]) -> str:
    """``trial 3 lr=3e-4 r=16``: what the MLflow UI shows for a child run."""
    body = " ".join(f"{SHORT.get(k, k)}={fmt(v)}" for k, v in params.items())
    return f"trial {number} {body}".strip()


def direction_for(metric: str, given: str = "") -> str:
    if given:
        if given not in ("minimize", "maximize"):
            raise MGError(f"--direction {given!r}: use minimize or maximize")
        return given
    key = metric.lower()
    if any(word in key for word in MINIMIZE):
        return "minimize"
    if any(word in key for word in MAXIMIZE):
        return "maximize"
    raise MGError(f"the direction of metric {metric!r} is not known", hint="add --direction minimize|maximize")
