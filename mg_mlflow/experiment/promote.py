"""Move a registry alias to the best *evaluated* version, only when the evidence says so.

A version is a candidate when it was evaluated (``model-garden evaluate``) on the same dataset
digest as the current holder, and, with a carbon budget (in kg), its training emissions (version tag
``mg.carbon.total_emissions_mg``; ``..._kg`` on versions registered before) fit the budget. The alias
moves to the best candidate only if it beats the holder on the metric by more than ``min_improvement``
(direction: the declared one of :mod:`mg_mlflow.tracking.directions`; loss, perplexity, latency, energy
and emissions are better lower). Otherwise nothing changes and the decision says why. Each move is
recorded on the new holder as a ``mg.promotion.<ms>`` tag (JSON: alias, previous holder, metric values,
digest, time, reason) plus ``mg.promoted.<alias>.*`` tags for the latest move; :func:`history` reads
them back.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from mg_mlflow import metric_names as mn
from mg_mlflow.deploy import state
from mg_mlflow.deploy.manager import redeploy
from mg_mlflow.errors import MGError
from mg_mlflow.evaluation.record import version_metric
from mg_mlflow.registry.resolve import known_models
from mg_mlflow.tracking.directions import direction as metric_direction, lower_is_better
from mg_mlflow.tracking.run import use_tracking_uri

HISTORY_PREFIX = "mg.promotion."


@dataclass
class Candidate:
    version: str
    value: float | None
    emissions_kg: float | None
    eval_run_id: str | None
    eligible: bool
    note: str


@dataclass
class Decision:
    name: str
    alias: str
    metric: str
    digest: str
    lower_is_better: bool
    holder: str | None
    holder_value: float | None
    best: str | None
    best_value: float | None
    move: bool
    reason: str
    candidates: list[Candidate] = field(default_factory=list)
    applied: bool = False
    recorded: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _client():
    import mlflow

    use_tracking_uri()
    return mlflow.tracking.MlflowClient()


def _emissions_kg(tags: dict) -> float | None:
    """The training emissions a version's tags carry, in kg (tags in mg or, registered before, kg)."""
    try:
        return mn.carbon_value(tags, mn.TOTAL_EMISSIONS_KG, prefixes=(mn.CARBON_TAG_PREFIX,))
    except ValueError:
        return None


def _versions(client, name: str) -> list:
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
    except MlflowException:
        raise MGError(f"no registered model named {name!r}", hint=f"registered models: {known_models(client)}") from None
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    return rm, versions


def _pick_digest(versions, holder_tags: dict | None, given: str | None) -> str:
    evaluated = Counter()
    for mv in versions:
        for key in mv.tags or {}:
            if key.startswith("mg.eval.") and key.endswith(".run_id") and key != "mg.eval.last_run_id":
                evaluated[key[len("mg.eval."):-len(".run_id")]] += 1
    if given:
        if given not in evaluated:
            known = ", ".join(f"{d} ({n} version(s))" for d, n in evaluated.most_common()) or "none"
            raise MGError(f"no version was evaluated on dataset digest {given!r}", hint=f"evaluated digests: {known}")
        return given
    if not evaluated:
        raise MGError("no version of this model has been evaluated yet",
                      hint="model-garden evaluate models:/NAME/VERSION --dataset FILE (for each version to compare)")
    last = (holder_tags or {}).get("mg.eval.last_dataset_digest")
    if last in evaluated:
        return last
    return evaluated.most_common(1)[0][0]


def missing_reason(client, tags: dict, digest: str, metric: str) -> str:
    """Why a version has no ``metric`` on ``digest``: never evaluated there, or evaluated without it
    (e.g. through a vLLM deployment of an adapter, which gives no teacher-forced loss), from the
    evaluation run's mode and notes."""
    run_id = tags.get(f"mg.eval.{digest}.run_id")
    if not run_id:
        return f"not evaluated on {digest}"
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - a deleted evaluation run
        return f"no {metric} on {digest} (its evaluation run {run_id} is gone)"
    rtags = run.data.tags
    how = (f"evaluated through deployment {rtags.get('mg.eval.deployment') or '?'}"
           if rtags.get("mg.eval.mode") == "deployment" else "evaluated locally")
    family = ("eval/loss",) if metric in ("eval/loss", "eval/perplexity", "eval/answer_tokens") else (metric,)
    notes = (rtags.get("mg.eval.notes") or "").strip()
    if notes and any(name in notes for name in family):
        why = notes[:600]
    elif metric.count("/") >= 2:
        why = f"the lm-eval task {metric.split('/')[1]} was not run (add --task {metric.split('/')[1]})"
    elif metric.startswith(("eval/latency", "eval/output_tokens_per_s")):
        why = "latency is measured only through a deployment (add --deployment NAME)"
    elif metric == "eval/json_valid_rate":
        why = "no --json-schema was given"
    else:
        why = "that evaluation did not measure it"
    return f"no {metric} on {digest}: {how} (run {run_id[:8]}), {why}"


def decide(name: str, alias: str = "champion", metric: str = "eval/exact_match", dataset_digest: str | None = None,
           min_improvement: float = 0.0, max_emissions_kg: float | None = None) -> Decision:
    """What ``promote`` would do, and why (reads the registry; changes nothing)."""
    if not metric.startswith("eval/"):
        metric = f"eval/{metric}"
    if metric_direction(metric).higher_is_better is None:
        raise MGError(f"--metric {metric}: a {metric_direction(metric).kind}, which ranks no model",
                      hint="promote on a score or a loss: eval/loss, eval/exact_match, eval/token_f1, eval/rougeL, ...")
    client = _client()
    rm, versions = _versions(client, name)
    aliases = getattr(rm, "aliases", {}) or {}
    holder = str(aliases[alias]) if alias in aliases else None
    by_version = {str(v.version): v for v in versions}
    holder_tags = dict(by_version[holder].tags or {}) if holder in by_version else None
    digest = _pick_digest(versions, holder_tags, dataset_digest)
    lower = lower_is_better(metric)
    if not any(version_metric(dict(v.tags or {}), digest, metric) is not None for v in versions):
        on_digest = sorted({k.split(".", 3)[3] for v in versions for k in (v.tags or {})
                            if k.startswith(f"mg.eval.{digest}.") and k.count(".") >= 3} - {"run_id", "dataset"})
        evaluated = [v for v in versions if f"mg.eval.{digest}.run_id" in (v.tags or {})]
        why = missing_reason(client, dict(evaluated[-1].tags or {}), digest, metric) if evaluated else ""
        raise MGError(f"no version of {name!r} has {metric} on dataset digest {digest}"
                      + (f" (v{evaluated[-1].version}: {why})" if why else ""),
                      hint="metrics recorded there: " + (", ".join(f"eval/{m}" for m in on_digest) or "none"))

    rows = []
    for mv in versions:
        tags = dict(mv.tags or {})
        version = str(mv.version)
        value = version_metric(tags, digest, metric)
        emissions = _emissions_kg(tags)
        run_id = tags.get(f"mg.eval.{digest}.run_id")
        eligible, note = True, "candidate"
        if version == holder:
            eligible, note = False, f"holds @{alias}" + (
                "" if value is not None else f" ({missing_reason(client, tags, digest, metric)})")
        elif value is None:
            eligible, note = False, missing_reason(client, tags, digest, metric)
        elif max_emissions_kg is not None and emissions is None:
            eligible, note = False, "training emissions unknown (trained with carbon off)"
        elif max_emissions_kg is not None and emissions > max_emissions_kg:
            eligible, note = False, f"training emitted {emissions:.3g} kg > budget {max_emissions_kg:g} kg"
        rows.append(Candidate(version, value, emissions, run_id, eligible, note))

    pool = [c for c in rows if c.eligible]
    best = (min if lower else max)(pool, key=lambda c: (c.value, -int(c.version) if lower else int(c.version)),
                                   default=None) if pool else None
    holder_value = version_metric(holder_tags or {}, digest, metric) if holder_tags is not None else None
    direction = "lower" if lower else "higher"
    decision = Decision(name, alias, metric, digest, lower, holder, holder_value,
                        best.version if best else None, best.value if best else None, False, "", rows)
    if best is None:
        decision.reason = (f"no eligible candidate: every other version lacks {metric} on {digest}"
                           + (" or over the carbon budget" if max_emissions_kg is not None else ""))
    elif holder is None:
        decision.move = True
        decision.reason = f"@{alias} is unset; v{best.version} has the best {metric} ({best.value:.4g}, {direction} is better)"
    elif holder_value is None:
        why = missing_reason(client, holder_tags or {}, digest, metric)
        if why.startswith("not evaluated"):
            decision.reason = (f"the holder v{holder} was not evaluated on {digest}, so nothing can be shown to beat "
                               f"it; evaluate it first: model-garden evaluate models:/{name}/{holder} --dataset FILE")
        else:
            decision.reason = (f"the holder v{holder} has {why}, so nothing can be shown to beat it on {metric}; "
                               f"evaluate it so that {metric} is measured, or promote on a metric it has")
    else:
        gain = (holder_value - best.value) if lower else (best.value - holder_value)
        if gain > min_improvement:
            decision.move = True
            decision.reason = (f"v{best.version} beats v{holder} on {metric}: {best.value:.4g} vs {holder_value:.4g} "
                               f"({direction} is better, improvement {gain:.4g} > {min_improvement:g})")
        else:
            decision.reason = (f"no candidate beats v{holder} on {metric} by more than {min_improvement:g}: best is "
                               f"v{best.version} with {best.value:.4g} vs {holder_value:.4g} ({direction} is better)")
    return decision


def apply(decision: Decision, max_emissions_kg: float | None = None, min_improvement: float = 0.0) -> Decision:
    """Move the alias as decided and record the move on the new holder (no-op when ``move`` is False)."""
    if not decision.move:
        return decision
    from datetime import datetime, timezone

    client = _client()
    now_ms = int(time.time() * 1000)
    entry = {"alias": decision.alias, "version": decision.best, "previous": decision.holder,
             "metric": decision.metric, "value": decision.best_value, "previous_value": decision.holder_value,
             "dataset_digest": decision.digest, "time": datetime.fromtimestamp(now_ms / 1000, timezone.utc).isoformat(),
             "reason": decision.reason, "min_improvement": min_improvement, "max_emissions_kg": max_emissions_kg}
    client.set_registered_model_alias(decision.name, decision.alias, decision.best)
    flat = {"previous": decision.holder or "none", "metric": decision.metric, "value": decision.best_value,
            "previous_value": decision.holder_value, "dataset_digest": decision.digest, "time": entry["time"],
            "reason": decision.reason}
    tags = {f"{HISTORY_PREFIX}{now_ms}": json.dumps(entry),
            **{f"mg.promoted.{decision.alias}.{k}": "" if v is None else str(v) for k, v in flat.items()}}
    for key, value in tags.items():
        client.set_model_version_tag(decision.name, decision.best, key, value[:5000])
    decision.applied, decision.recorded = True, entry
    return decision


def promote(name: str, alias: str = "champion", metric: str = "eval/exact_match", dataset_digest: str | None = None,
            min_improvement: float = 0.0, max_emissions_kg: float | None = None, dry_run: bool = False) -> Decision:
    decision = decide(name, alias, metric, dataset_digest, min_improvement, max_emissions_kg)
    if dry_run:
        return decision
    return apply(decision, max_emissions_kg, min_improvement)


def history(name: str, alias: str | None = None) -> list[dict]:
    """Every recorded move of ``name``'s aliases, oldest first."""
    client = _client()
    _, versions = _versions(client, name)
    moves = []
    for mv in versions:
        for key, value in (mv.tags or {}).items():
            if key.startswith(HISTORY_PREFIX):
                try:
                    entry = json.loads(value)
                except ValueError:
                    continue
                if alias is None or entry.get("alias") == alias:
                    moves.append({"ms": int(key[len(HISTORY_PREFIX):]), **entry})
    return sorted(moves, key=lambda m: m["ms"])


def deployments_serving(name: str, alias: str) -> list:
    """Running deployment records whose URIs include ``models:/NAME@ALIAS``."""
    uri = f"models:/{name}@{alias}"
    return [r for r in state.all_records()
            if uri in r.uris and state.status_of(r, probe=False) in ("running", "starting")]


def served_version(record, name: str) -> str | None:
    for m in record.models:
        if m.name == name:
            return str(m.version)
    return None


def redeploy_serving(name: str, alias: str, show_progress: bool | None = None) -> list[dict]:
    """Roll every deployment serving NAME@ALIAS onto the alias's new target; what was done, per deployment."""
    done = []
    for record in deployments_serving(name, alias):
        before = served_version(record, name)
        new = redeploy(record.name, None, {}, show_progress=show_progress)
        done.append({"deployment": record.name, "from_version": before, "to_version": served_version(new, name),
                     "port": new.port, "pid": new.pid, "previous_port": record.port,
                     "method": (new.last_update or {}).get("method"), "why": (new.last_update or {}).get("why")})
    return done
