"""`model-garden compare` on real runs in a real sqlite store: runs in columns with grouped rows, the
quality axis of the plot, carbon with its noise, and the machine formats."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from compare_support import pair_store  # noqa: F401 - fixture
from conftest import isolated_home


@pytest.fixture(scope="module")
def pair(pair_store):
    with isolated_home(pair_store[0]) as home:
        yield home, pair_store[1]


def _cli(args):
    from mg_mlflow.cli import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def _better(p) -> tuple[str, str]:
    """(better, worse) run name by the real held-out eval loss."""
    names = sorted(p.metrics, key=lambda n: p.metrics[n]["eval/loss"])
    return names[0], names[1]


def test_runs_in_columns_grouped_rows_current_aliases_and_no_duplicate_metrics(pair):
    from mlflow.tracking import MlflowClient

    home, p = pair
    client = MlflowClient()
    before = len(client.search_runs([p.experiment_id], max_results=100))
    res = CliRunner().invoke(__import__("mg_mlflow.cli", fromlist=["cli"]).cli,
                             ["compare", p.run_ids["lr-3e-3"], p.run_ids["lr-1e-4"][:10]],
                             catch_exceptions=False, terminal_width=100)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    header = next(line for line in lines if "lr-3e-3" in line)
    assert "lr-1e-4" in header                                    # one column per run
    for group in ("params that differ", "training", f"evaluation on {p.dataset}", "carbon (gCO2eq, Wh)",
                  "registry"):
        assert group in res.output, group
    row = next(line for line in lines if "learning_rate" in line)
    assert "0.003" in row and "0.0001" in row                       # a param is one row
    assert "lora_r" not in res.output and "max_steps" not in res.output
    assert "eval/token_f1 (higher better)" in res.output and "eval/loss (lower better)" in res.output
    assert p.digest not in res.output.replace(p.digest[:8], "")      # no eval/<digest>.x duplicates
    assert "carbon/" not in res.output                               # the evaluation's own carbon is not a row
    # both were trained with --alias champion; the registry's alias is on the second version only
    alias_row = next(line for line in lines if "aliases now" in line)
    assert alias_row.count("@champion") == 1
    assert alias_row.index("@champion") > header.index("lr-1e-4") - 2
    # every column is wide enough for whole values: no header or value broken letter by letter
    assert not any(line.strip() in ("l", "r", "-") for line in lines)
    assert len(client.search_runs([p.experiment_id], max_results=100)) == before  # logged nowhere

    res = _cli(["compare", p.run_ids["lr-3e-3"], p.run_ids["lr-1e-4"], "--metrics", "eval/loss,token_f1"])
    assert "eval/loss" in res.output and "eval/token_f1" in res.output and "eval/bleu" not in res.output
    # one unit for emissions in every text view: the carbon report prints grams too
    report = _cli(["carbon", "report", "--model", "tiny-cmp", "--no-chart"])
    assert "gCO2eq" in report.output and " kg" not in report.output


def test_json_csv_markdown_keep_every_value_once(pair):
    home, p = pair
    res = _cli(["compare", "models:/tiny-cmp/1", "models:/tiny-cmp/2", "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["differing_params"] == ["learning_rate"]
    assert data["eval_dataset"] == {"digest": p.digest, "name": p.dataset}
    by_name = {r["name"]: r for r in data["runs"]}
    for name, metrics in p.metrics.items():
        row = by_name[name]
        assert row["run_id"] == p.run_ids[name]
        assert set(row["evaluations"]) == {p.digest}
        evaluated = row["evaluations"][p.digest]["metrics"]
        assert evaluated["eval/loss"] == pytest.approx(metrics["eval/loss"], rel=1e-5)
        assert evaluated["eval/bleu"] == pytest.approx(metrics["eval/bleu"], rel=1e-5)
        assert not [k for k in evaluated if not k.startswith("eval/") or "carbon" in k or p.digest in k]
        assert row["loss_final"] > 0 and row["eval_loss_final"] > 0 and row["steps"] == 6
        assert row["emissions_kg"] > 0 and row["energy_kwh"] > 0 and row["tokens_per_s"] > 0
        assert row["energy_source"] in ("measured", "estimated")
        assert row["registered"] == f"tiny-cmp/{p.versions[name]}"
    assert by_name["lr-1e-4"]["aliases"] == ["champion"] and by_name["lr-3e-3"]["aliases"] == []
    res = _cli(["compare", p.run_ids["lr-3e-3"], p.run_ids["lr-1e-4"], "--format", "csv"])
    rows = [r for r in csv.reader(io.StringIO(res.stdout)) if r]
    assert rows[0][:3] == ["run", "run_id", "learning_rate"] and len(rows) == 3
    assert rows[0].count("eval/bleu") == 1 and "emissions_g" in rows[0]
    res = _cli(["compare", p.run_ids["lr-3e-3"], p.run_ids["lr-1e-4"], "--format", "markdown"])
    first = res.stdout.splitlines()[0]
    assert first.startswith("|  | lr-3e-3 | lr-1e-4 |") or first.startswith("|  | lr-1e-4 | lr-3e-3 |")
    assert f"| **evaluation on {p.dataset}" in res.stdout and "| learning_rate |" in res.stdout


def test_plot_quality_axis_is_the_better_model_s_metric(pair, tmp_path):
    """The default quality axis is eval/loss (not a count such as eval/answer_tokens), lower is better;
    the two runs did the same work, so their emission gap is noise and only the better model is on
    the front."""
    from PIL import Image

    home, p = pair
    better, worse = _better(p)
    assert p.metrics[better]["eval/answer_tokens"] == p.metrics[worse]["eval/answer_tokens"]
    png = tmp_path / "compare.png"
    res = _cli(["compare", p.run_ids["lr-3e-3"], p.run_ids["lr-1e-4"], "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(png).size == (1800, 500)
    assert "Pareto front on eval/loss (lower is better) against training emissions" in res.output
    assert f"emissions: {better}" in res.output and worse not in res.output.split("emissions: ")[-1]
    assert "run-to-run spread" in res.output or "runs of the same work" in res.output
    assert "#/compare-runs?runs=" in res.output

    res = _cli(["compare", p.run_ids["lr-3e-3"], p.run_ids["lr-1e-4"], "--plot", str(png),
                "--metric", "token_f1", "--metrics", "token_f1,eval/bleu", "--format", "json"])
    plot = json.loads(res.stdout)["plot"]
    assert plot["quality"] == "eval/token_f1" and plot["higher_is_better"] is True
    assert plot["bars"] == ["eval/token_f1", "eval/bleu"]
    for count in ("eval/answer_tokens", "eval/examples_per_s", "eval/generation_seconds"):
        res = _cli(["compare", p.run_ids["lr-3e-3"], p.run_ids["lr-1e-4"], "--plot", str(png), "--metric", count])
        assert res.exit_code == 2 and "not a quality metric" in res.output, res.output


def test_log_to_mlflow_records_a_comparison_run(pair, tmp_path):
    from mlflow.tracking import MlflowClient

    home, p = pair
    res = _cli(["compare", p.run_ids["lr-3e-3"], p.run_ids["lr-1e-4"], "--plot", str(tmp_path / "c.png"),
                "--log-to-mlflow", "--format", "json"])
    assert res.exit_code == 0, res.output
    client = MlflowClient()
    runs = client.search_runs([p.experiment_id], "tags.mg.run_kind = 'comparison'")
    assert len(runs) == 1
    files = {a.path for a in client.list_artifacts(runs[0].info.run_id, "comparison")}
    assert files == {"comparison/comparison.json", "comparison/c.png"}


def test_bad_targets_are_clear(pair):
    res = _cli(["compare", "nosuchrun"])
    assert res.exit_code == 2 and "no run 'nosuchrun'" in res.output
    res = _cli(["compare", "models:/tiny-cmp/9", "models:/tiny-cmp/1"])
    assert res.exit_code == 2 and "tiny-cmp" in res.output


def _row(name, quality: dict, train_g: float, serve_g: float = 0.0, work: str = "w") -> dict:
    return {"run_id": name, "name": name, "registered": "", "eval": quality, "evaluations": {},
            "emissions_kg": train_g / 1000, "serving_emissions_kg": serve_g / 1000 or None, "work": work}


def test_quality_metric_has_a_declared_direction_and_counts_are_never_quality():
    """The issue's case: eval/answer_tokens (433 for both) sorted first; it must not be the axis."""
    from mg_mlflow.errors import MGError
    from mg_mlflow.experiment.compare_plot import pareto_front, quality_metric

    worse = _row("v1", {"eval/answer_tokens": 433.0, "eval/loss": 5.43, "eval/token_f1": 0.0}, 0.004)
    better = _row("v2", {"eval/answer_tokens": 433.0, "eval/loss": 4.34, "eval/token_f1": 0.37}, 0.034)
    data = {"runs": [worse, better], "eval_metrics": sorted(worse["eval"])}
    assert quality_metric(data) == ("eval/loss", False)
    assert quality_metric(data, "token_f1") == ("eval/token_f1", True)
    with pytest.raises(MGError, match="a count, not a quality metric"):
        quality_metric(data, "eval/answer_tokens")
    pts = [(r["emissions_kg"], r["eval"]["eval/loss"]) for r in (worse, better)]
    assert pareto_front(pts, higher_is_better=False) == [0, 1]
    # the same work: a 8.5x emission gap that the spread of the same work covers ranks nothing
    assert pareto_front(pts, higher_is_better=False, x_tolerance=8.5) == [1]
    assert pareto_front([(1.0, 0.5), (2.0, 0.4), (3.0, 0.9), (4.0, 0.9)], higher_is_better=True) == [0, 2]
    assert pareto_front([(1.0, 5.0), (2.0, 4.0), (3.0, 4.5)], higher_is_better=False) == [0, 1]


def test_a_gap_equal_to_the_spread_counts_as_equal_after_the_unit_change():
    """compare measures the spread of the same work in kg and draws the front in g: two runs whose gap is
    that spread (the two compared runs are the only repeated work) must count as equal for any values, not
    only where kg -> g rounds their way (a third of random pairs did not)."""
    import random

    from mg_mlflow.experiment.compare_plot import pareto_front

    rng = random.Random(20261206)
    for _ in range(2000):
        a, b = rng.uniform(1e-7, 1e-4), rng.uniform(1e-7, 1e-4)
        spread = (max(a, b) - min(a, b)) / min(a, b)
        assert pareto_front([(a * 1000, 2.0), (b * 1000, 1.0)], False, x_tolerance=spread) == [1], (a, b)


def test_metric_directions_are_declared_once():
    from mg_mlflow.experiment.space import direction_for
    from mg_mlflow.tracking.directions import direction

    up = ["eval/exact_match", "eval/token_f1", "eval/rougeL", "eval/bleu", "eval/chrf", "eval/arc/acc_norm",
          "rewards/accuracies", "eval/json_valid_rate", "rewards/margins"]
    down = ["eval/loss", "eval/perplexity", "eval_loss_final", "loss_final"]
    never = ["eval/answer_tokens", "eval/examples", "eval/examples_per_s", "eval/generation_seconds",
             "eval/latency_p95_s", "carbon/total_emissions_kg", "eval/output_tokens_per_s", "train_steps"]
    assert [m for m in up if direction(m).is_quality and direction(m).higher_is_better] == up
    assert [m for m in down if direction(m).is_quality and direction(m).higher_is_better is False] == down
    assert [m for m in never if direction(m).is_quality] == []
    assert direction("eval/answer_tokens").higher_is_better is None
    assert direction_for("eval_loss_final") == "minimize" and direction_for("eval/token_f1") == "maximize"
    assert direction_for("tokens_per_second") == "maximize" and direction_for("train_seconds") == "minimize"


def test_footprint_axis_is_training_only_serving_counted_apart(tmp_path):
    """v1 trained for 1 g and was served for 10 g; v2 trained for 2 g, never served, same quality:
    v1 is the better model on the footprint axis (training), serving is shown apart."""
    from mg_mlflow.experiment.compare_plot import comparison_png
    from mg_mlflow.experiment.compare_table import grouped_rows

    v1 = _row("v1", {"eval/token_f1": 0.5}, 1.0, serve_g=10.0, work="a")
    v2 = _row("v2", {"eval/token_f1": 0.5}, 2.0, work="b")
    for r in (v1, v2):
        r.update(params={}, steps=6, loss_final=1.0, eval_loss_final=None, duration_s=1.0, tokens_per_s=1.0,
                 energy_kwh=1e-5, energy_source="estimated", aliases=[])
    data = {"runs": [v1, v2], "eval_metrics": ["eval/token_f1"], "differing_params": [], "datasets": [],
            "carbon": {"note": "", "spread": None, "within_noise": []}}
    drawn = comparison_png(data, {}, tmp_path / "c.png")
    assert drawn["quality"] == "eval/token_f1" and drawn["pareto"] == ["v1"]
    carbon = dict((title, rows) for title, rows in grouped_rows(data))["carbon (gCO2eq, Wh)"]
    labels = {row[0]: row[1:] for row in carbon}
    assert labels["training gCO2eq"] == ["1", "2"] and labels["serving gCO2eq (apart)"] == ["10", ""]
    assert labels["energy source"] == ["estimated", "estimated"]


def test_training_run_names_say_the_steps_or_epochs():
    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.training.common import run_name

    def name(**kw):
        cfg = build_config(TrainConfig, overrides={"base_model": "./tiny", "dataset": "d.jsonl", **kw})
        return run_name(cfg, "text", "hf")

    assert name(max_steps=60) != name(max_steps=150)
    assert "60 steps" in name(max_steps=60) and "2 epochs" in name(epochs=2)
