"""Registry leftovers of runs that died or failed while registering, found and cleaned by
``model-garden runs repair`` (``--fix``).

A training registers in steps (create the registered model, create the version, set the alias, write
the model card); a process killed between two steps, or a run that failed after registering, leaves:

- a registered model with no versions (killed right after "Successfully registered model");
- a version whose source run ended FAILED or KILLED (or is RUNNING with its process gone): a model
  nobody should serve, often without its alias or model card;
- a logged model still PENDING whose run is over or dead (its upload never finished).

A version that carries an alias is reported but never deleted: someone promoted it on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

from mg_mlflow.tracking.liveness import DEAD, process_state
from mg_mlflow.tracking.run import use_tracking_uri

ENDED_BADLY = ("FAILED", "KILLED")


@dataclass
class Leftover:
    kind: str      # empty-model | failed-run-version | pending-logged-model
    what: str      # models:/NAME, models:/NAME/VERSION or the logged model id
    why: str
    fixable: bool = True


def _run_state(client, run_id: str | None, cache: dict) -> tuple[str, str]:
    """(FAILED | KILLED | DEAD | OK | GONE, description) of a run; DEAD: RUNNING with its process gone."""
    if not run_id:
        return "OK", ""
    if run_id not in cache:
        try:
            run = client.get_run(run_id)
        except Exception:  # noqa: BLE001 - deleted or unknown run
            cache[run_id] = ("GONE", f"run {run_id} no longer exists")
        else:
            status = run.info.status
            if status in ENDED_BADLY:
                cache[run_id] = (status, f"run {run_id} ended {status}")
            elif status == "RUNNING" and process_state(run.data.tags)[0] == DEAD:
                cache[run_id] = ("DEAD", f"run {run_id} is RUNNING but its process is gone")
            else:
                cache[run_id] = ("OK", "")
    return cache[run_id]


def find_leftovers(client=None) -> list[Leftover]:
    """Every registry leftover of a dead or failed run in the configured store."""
    import mlflow

    use_tracking_uri()
    client = client or mlflow.tracking.MlflowClient()
    runs: dict = {}
    found: list[Leftover] = []
    for rm in client.search_registered_models(max_results=1000):
        versions = client.search_model_versions(f"name='{rm.name}'", max_results=1000)
        if not versions:
            found.append(Leftover("empty-model", f"models:/{rm.name}", "a registered model with no versions"))
        aliases: dict[str, list[str]] = {}
        for alias, version in (getattr(rm, "aliases", None) or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for mv in versions:
            state, why = _run_state(client, mv.run_id, runs)
            if state in ("OK", "GONE"):
                continue
            held = aliases.get(str(mv.version))
            found.append(Leftover("failed-run-version", f"models:/{mv.name}/{mv.version}",
                                  why + (f"; kept: alias @{', @'.join(held)} points at it" if held else ""),
                                  fixable=not held))
    experiments = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    if experiments:
        for lm in client.search_logged_models(experiments, max_results=1000):
            if str(getattr(lm.status, "value", lm.status)) != "PENDING":  # (status is not a search filter)
                continue
            state, why = _run_state(client, lm.source_run_id, runs)
            if lm.source_run_id and state == "OK":
                continue  # its run is still going (or finished and the model is being finalized)
            found.append(Leftover("pending-logged-model", lm.model_id,
                                  f"logged model {lm.name!r} still PENDING; " + (why or "no source run")))
    return found


def clean(leftovers: list[Leftover], client=None) -> list[Leftover]:
    """Delete the fixable leftovers (versions first, then the models left empty); the ones cleaned,
    with the registered models the deleted versions emptied added."""
    import mlflow

    use_tracking_uri()
    client = client or mlflow.tracking.MlflowClient()
    done = []
    emptied = set()
    for item in sorted(leftovers, key=lambda i: i.kind != "failed-run-version"):
        if not item.fixable:
            continue
        if item.kind == "failed-run-version":
            name, version = item.what[len("models:/"):].rsplit("/", 1)
            client.delete_model_version(name, version)
            emptied.add(name)
        elif item.kind == "empty-model":
            client.delete_registered_model(item.what[len("models:/"):])
        elif item.kind == "pending-logged-model":
            client.delete_logged_model(item.what)
        done.append(item)
    for name in sorted(emptied - {i.what[len("models:/"):] for i in done if i.kind == "empty-model"}):
        if not client.search_model_versions(f"name='{name}'"):
            client.delete_registered_model(name)
            done.append(Leftover("empty-model", f"models:/{name}", "left with no versions by the deletions above"))
    return done
