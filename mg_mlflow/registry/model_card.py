"""A registered version's description: a short model card shown on its page in the MLflow UI."""

from __future__ import annotations

from typing import Any

from mg_mlflow import metric_names as mn


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(name: str, version: str, tags: dict[str, Any], summary: dict[str, float],
               evaluations: dict[str, float] | None = None, params: dict[str, str] | None = None) -> str:
    """Markdown: what was trained from what data, how it did, what it cost, how to deploy it;
    ``params``: the training run's params (how batches were built)."""
    lines = [f"**{tags.get('mg.modality', 'text')} {tags.get('mg.kind', 'model')}** trained by Model Garden "
             f"({tags.get('mg.method')}, backend {tags.get('mg.backend')}) in run `{tags.get('mg.run_id')}`.",
             "",
             *([f"- {tags.get('mg.objective', 'sft').upper()} on `{tags['mg.parent_model']}`"]
               if tags.get("mg.parent_model") else
               [f"- objective: {tags['mg.objective'].upper()}"] if tags.get("mg.objective", "sft") != "sft" else []),
             f"- base: `{tags.get('mg.base_model')}`",
             f"- data digest: `{tags.get('mg.dataset_digest')}`"]
    if (params or {}).get("batching_resolved"):
        bucket = params.get("pad_to_multiple_of_resolved", "0")
        bucket = f", padded to a multiple of {bucket}" if bucket not in ("0", "", None) else ""
        lines.append(f"- batching: {params['batching_resolved']}{bucket} (asked: {params.get('batching', '?')})")
    losses = [f"{label} {_fmt(summary[key])}" for key, label in
              ((mn.LOSS_FINAL, "train loss"), (mn.EVAL_LOSS_FINAL, "eval loss")) if key in summary]
    if losses:
        lines.append("- final " + ", ".join(losses))
    for key, value in sorted((evaluations or {}).items()):
        lines.append(f"- {key}: {_fmt(value)}")
    carbon = [f"{_fmt(summary[key])} {unit}" for key, unit in
              ((mn.carbon(mn.TOTAL_EMISSIONS_MG), "mg CO2eq"), (mn.carbon(mn.TOTAL_ENERGY_J), "J")) if key in summary]
    if carbon:
        lines.append("- training footprint: " + ", ".join(carbon))
    lines.append(f"- verified: reload max |logit diff| {tags.get('mg.verify_max_logit_diff')}")
    if tags.get("mg.merge_rule"):
        against = tags.get("mg.merge_vs_cast_max_logit_diff") or tags.get("mg.merge_max_logit_diff")
        cast = f"; the cast alone moves them by {tags['mg.merge_cast_drift']}" if tags.get("mg.merge_cast_drift") else ""
        lines.append(f"- merge verified: {tags['mg.merge_rule']}: {against} <= {tags.get('mg.merge_tolerance')}{cast}")
    if tags.get("mg.git_commit"):
        lines.append(f"- code: `{tags['mg.git_commit']}`")
    lines += ["", f"Deploy: `model-garden deploy models:/{name}/{version}`"]
    return "\n".join(lines)


def refresh_description(name: str, version: str, evaluations: dict[str, float]) -> None:
    """Rewrite a Model Garden version's card with its latest evaluation results (versions registered
    by other tools keep their own description)."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    mv = client.get_model_version(name, version)
    tags = mv.tags or {}
    if "mg.run_id" not in tags:
        return
    run = client.get_run(tags["mg.run_id"]).data
    client.update_model_version(name, version, description=model_card(name, version, tags, run.metrics, evaluations,
                                                                       run.params))


def describe_version(name: str, version: str, tags: dict[str, Any], summary: dict[str, float]) -> None:
    import mlflow

    client = mlflow.tracking.MlflowClient()
    params = client.get_run(tags["mg.run_id"]).data.params if tags.get("mg.run_id") else {}
    client.update_model_version(name, version, description=model_card(name, version, tags, summary, params=params))
