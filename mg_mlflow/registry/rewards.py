"""Rewards of reinforcement learning (``--reward NAME[:WEIGHT]``): built-ins, a user's function, a reward model.

Every reward is a function with TRL's reward signature, ``f(prompts, completions, **columns) -> list[float]``
(one score per completion; ``completions`` are strings, or ``[{"role": "assistant", "content": ...}]`` for
conversational prompts), named for its metric ``rewards/<name>/mean``:

- built-ins that need no code: ``exact_match`` and ``contains`` (the completion against the dataset column
  ``reward_column``), ``regex`` (``reward_regex`` found in the completion), ``json_schema`` (parses and
  validates against ``reward_schema``), ``length`` (``-|chars - target| / target``), ``format``
  (``<think>...</think><answer>...</answer>``);
- ``FILE.py:FUNCTION``: loaded before any model and called once on two fake completions of the first
  dataset records, so a syntax error, a signature TRL cannot call, an exception or a wrong number of scores
  is reported with the user's ``file:line`` before any MLflow run;
- ``models:/NAME@ALIAS`` (or ``/VERSION``): a reward model trained with ``--objective reward``; its version
  is resolved and checked to be one before any run, and its weights load when training starts.

The same functions score held-out answers in ``model-garden evaluate --reward`` (which is why they live
beside the registry, below both training and evaluation).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mg_mlflow.data.prompts import check_columns
from mg_mlflow.errors import MGError
from mg_mlflow.registry.loader import is_reward_model, load_reward_dir, reward_scores, reward_text
from mg_mlflow.registry.resolve import resolve_model_uri
from mg_mlflow.tracking.run import use_tracking_uri

BUILT_INS = ("exact_match", "contains", "regex", "json_schema", "length", "format")
FORMAT = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)
# what GRPOTrainer passes to every reward function besides prompts, completions and the dataset columns
TRL_KWARGS = ("completion_ids", "trainer_state", "log_extra", "log_metric")


@dataclass
class Reward:
    name: str                      # the metric name: rewards/<name>/mean
    weight: float
    func: Callable[..., list]      # TRL's reward signature
    spec: str                      # what the user wrote
    columns: dict[str, str] = field(default_factory=dict)  # dataset column -> why it is needed


def text_of(completion: Any) -> str:
    """The text of a completion: a string, or the content of its assistant turns."""
    if isinstance(completion, list):
        return "".join(str(t.get("content", "")) for t in completion if isinstance(t, dict))
    return str(completion)


def _normalise(text: str) -> str:
    return " ".join(str(text).split())


def split_spec(spec: str) -> tuple[str, float]:
    """``NAME[:WEIGHT]`` -> (name, weight); the weight is the part after the last ``:`` when it is a number."""
    head, sep, tail = spec.strip().rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return spec.strip(), 1.0


def _named(name: str, func: Callable) -> Callable:
    def reward(prompts, completions, **kwargs):
        return func(prompts, completions, **kwargs)

    reward.__name__ = reward.__qualname__ = name  # TRL logs rewards/<__name__>/mean
    return reward


# ---------------------------------------------------------------- built-ins

def _built_in(name: str, cfg) -> tuple[Callable, dict[str, str]]:
    column = cfg.reward_column
    if name == "exact_match":
        def exact_match(prompts, completions, **kw):
            return [float(_normalise(text_of(c)) == _normalise(ref)) for c, ref in zip(completions, kw[column])]
        return exact_match, {column: "exact_match"}
    if name == "contains":
        def contains(prompts, completions, **kw):
            return [float(_normalise(ref).lower() in _normalise(text_of(c)).lower())
                    for c, ref in zip(completions, kw[column])]
        return contains, {column: "contains"}
    if name == "regex":
        if not cfg.reward_regex:
            raise MGError("--reward regex needs the pattern: --reward-regex PATTERN (Python re syntax)")
        try:
            pattern = re.compile(cfg.reward_regex)
        except re.error as exc:
            raise MGError(f"--reward-regex {cfg.reward_regex!r} is not a valid pattern: {exc}") from None
        return (lambda prompts, completions, **kw: [float(bool(pattern.search(text_of(c)))) for c in completions]), {}
    if name == "json_schema":
        if not cfg.reward_schema:
            raise MGError("--reward json_schema needs the schema: --reward-schema FILE.json")
        validator = _schema(cfg.reward_schema)

        def json_schema(prompts, completions, **kw):
            out = []
            for c in completions:
                try:
                    value = json.loads(text_of(c))
                except ValueError:
                    out.append(0.0)
                    continue
                out.append(1.0 if validator.is_valid(value) else 0.5)
            return out
        return json_schema, {}
    if name == "length":
        target = cfg.reward_length_target
        if target < 1:
            raise MGError("--reward length needs the target: --reward-length-target CHARACTERS (>= 1)")
        return (lambda prompts, completions, **kw:
                [-abs(len(text_of(c).strip()) - target) / target for c in completions]), {}
    # format
    return (lambda prompts, completions, **kw: [float(bool(FORMAT.match(text_of(c)))) for c in completions]), {}


def _schema(source: str):
    import jsonschema

    path = Path(source).expanduser()
    if not path.is_file():
        raise MGError(f"--reward-schema {source}: no such file", hint="give a JSON Schema file")
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MGError(f"{path}:{exc.lineno}: the JSON schema does not parse ({exc.msg})") from None
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise MGError(f"{path}: not a valid JSON Schema at {'/'.join(map(str, exc.path)) or '(root)'}: "
                      f"{exc.message}") from None
    return cls(schema)


# ---------------------------------------------------------------- a user's function

def _where(exc: BaseException, path: Path) -> str:
    """``file:line`` of the deepest frame of ``exc`` in the user's file (the file itself when none)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == path]
    return f"{path}:{frames[-1].lineno}" if frames else str(path)


def load_user_function(spec: str) -> Callable:
    """``FILE.py:FUNCTION`` imported from its file; any problem as an MGError naming file:line."""
    file, _, name = spec.rpartition(":")
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise MGError(f"--reward {spec}: {file} does not exist",
                      hint="give FILE.py:FUNCTION (a Python file and the reward function in it)")
    source = path.read_text(encoding="utf-8")
    try:
        compile(source, str(path), "exec")
    except SyntaxError as exc:
        raise MGError(f"{path}:{exc.lineno}: syntax error in reward file: {exc.msg}",
                      hint="fix the file; nothing was trained and no run was created") from None
    module_spec = importlib.util.spec_from_file_location(f"mg_user_reward_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code, reported with its line
        raise MGError(f"{_where(exc, path)}: importing the reward file failed: {type(exc).__name__}: {exc}",
                      hint="fix the file; nothing was trained and no run was created") from None
    func = getattr(module, name, None)
    if not callable(func):
        defined = sorted(k for k, v in vars(module).items() if inspect.isfunction(v) and v.__module__ == module.__name__)
        raise MGError(f"--reward {spec}: {path} defines no function {name!r}"
                      f" (it defines: {', '.join(defined) or 'none'})")
    return func


def check_signature(func: Callable, spec: str, columns: list[str]) -> None:
    """TRL calls ``func(prompts=..., completions=..., completion_ids=..., <columns>=..., trainer_state=...,
    log_extra=..., log_metric=...)``; refuse a function that cannot take that call."""
    names = ["prompts", "completions", *TRL_KWARGS, *columns]
    where = f"{inspect.getsourcefile(func)}:{func.__code__.co_firstlineno}" if hasattr(func, "__code__") else spec
    try:
        inspect.signature(func).bind(**{n: None for n in names})
    except TypeError as exc:
        raise MGError(f"{where}: reward function {getattr(func, '__name__', spec)} cannot take TRL's call "
                      f"({exc}): it is called with the keywords {', '.join(names)}",
                      hint=f"define it as def {getattr(func, '__name__', 'my_reward')}(prompts, completions, "
                           "**kwargs) and return one float per completion") from None


def dry_call(reward: Reward, records: list[dict]) -> None:
    """Call ``reward`` the way TRL does, on two fake completions of the first records; refuse an exception
    or an answer that is not one number (or None) per completion."""
    rows = (records * 2)[:2]
    conversational = isinstance(rows[0]["prompt"], list)
    fakes = ["42", "<think>a guess</think><answer>42</answer>"]
    completions = [[{"role": "assistant", "content": f}] for f in fakes] if conversational else fakes
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    kwargs = {**columns, "completion_ids": [[0], [0]], "trainer_state": None, "log_extra": lambda *a, **k: None,
              "log_metric": lambda *a, **k: None}
    func = getattr(reward.func, "__wrapped__", reward.func)
    path = Path(inspect.getsourcefile(func) or reward.spec).resolve() if hasattr(func, "__code__") else None
    try:
        scores = reward.func(prompts=[r["prompt"] for r in rows], completions=completions, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's code, reported with its line
        where = _where(exc, path) if path else reward.spec
        raise MGError(f"{where}: reward {reward.name} failed on a trial call with two completions: "
                      f"{type(exc).__name__}: {exc}",
                      hint="fix the function; nothing was trained and no run was created") from None
    line = f"{path}:{func.__code__.co_firstlineno}" if path else reward.spec
    if not isinstance(scores, (list, tuple)) or len(scores) != 2:
        got = f"{len(scores)} values" if isinstance(scores, (list, tuple)) else f"a {type(scores).__name__}"
        raise MGError(f"{line}: reward {reward.name} returned {got} for 2 completions: it must return a list "
                      "with one float (or None) per completion", hint="return [score for each completion]")
    bad = [s for s in scores if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)))]
    if bad:
        raise MGError(f"{line}: reward {reward.name} returned {bad[0]!r} ({type(bad[0]).__name__}): every score "
                      "must be a float (or None to skip a completion)")


# ---------------------------------------------------------------- a reward model

class RewardModelScorer:
    """A registered reward model as a TRL reward function; its weights load on the first call (in the run)."""

    def __init__(self, uri: str, folder: Path):
        self.uri, self.folder = uri, folder
        self.model = self.tokenizer = None

    def __call__(self, prompts, completions, **kwargs):
        if self.model is None:
            self.model, self.tokenizer = load_reward_dir(self.folder)
        texts = [reward_text(self.tokenizer, p, c) for p, c in zip(prompts, completions)]
        return reward_scores(self.model, self.tokenizer, texts)


def _reward_model(uri: str) -> tuple[str, Callable]:
    use_tracking_uri()
    resolved = resolve_model_uri(uri)
    if not is_reward_model(resolved.metadata or {}):
        raise MGError(f"--reward {uri}: {resolved.name or uri} is not a reward model (a model with a score head, "
                      "trained with --objective reward)",
                      hint="train one: model-garden train --objective reward --dataset pairs.jsonl ...")
    scorer = RewardModelScorer(uri, Path(resolved.local_dir))
    return resolved.name or "reward_model", scorer


# ---------------------------------------------------------------- all of them

def _metric_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "reward"


def build_rewards(cfg, specs: list[str], records: list[dict]) -> list[Reward]:
    """The rewards ``specs`` name, checked against ``records`` (columns, user functions' trial call); before
    any run and any model."""
    rewards: list[Reward] = []
    for spec in specs:
        source, weight = split_spec(spec)
        columns: dict[str, str] = {}
        if source in BUILT_INS:
            name, (func, columns) = source, _built_in(source, cfg)
        elif source.startswith(("models:/", "runs:/")):
            name, func = _reward_model(source)
        elif ":" in source and source.rpartition(":")[0].endswith(".py"):
            func = load_user_function(source)
            check_signature(func, source, [k for k in records[0] if k != "prompt"])
            name = source.rpartition(":")[2]
        else:
            raise MGError(f"--reward {spec}: not a reward Model Garden knows",
                          hint=f"use a built-in ({', '.join(BUILT_INS)}), FILE.py:FUNCTION or models:/NAME@ALIAS, "
                               "optionally followed by :WEIGHT")
        name = _metric_name(name)
        taken = {r.name for r in rewards}
        base, n = name, 2
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        reward = Reward(name, weight, _named(name, func), spec, columns)
        reward.func.__wrapped__ = func
        rewards.append(reward)
    return rewards


def check_rewards(rewards: list[Reward], data) -> None:
    """The columns the built-ins read are in ``data``; each user function passes its trial call."""
    needed = {col: f"{r.name} (--reward {r.spec})" for r in rewards for col, _ in r.columns.items()}
    check_columns(data, needed)
    for reward in rewards:
        if not isinstance(reward.func.__wrapped__, RewardModelScorer):
            dry_call(reward, data.records)


def score_completions(rewards: list[Reward], prompts: list, completions: list, columns: dict[str, list]) -> dict:
    """{name: [score per completion]} and the weighted ``total``, as in training (None counts as missing)."""
    kwargs = {**columns, "completion_ids": [[] for _ in completions], "trainer_state": None,
              "log_extra": lambda *a, **k: None, "log_metric": lambda *a, **k: None}
    out = {r.name: [s if s is not None else float("nan") for s in r.func(prompts=prompts, completions=completions,
                                                                            **kwargs)]
           for r in rewards}
    out["total"] = [sum(r.weight * out[r.name][i] for r in rewards) for i in range(len(completions))]
    return out
