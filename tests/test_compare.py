"""`model-garden compare` on real runs in a real sqlite store: differing params, eval metrics, PNG, formats."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from compare_support import EXACT_MATCH, pair_store  # noqa: F401 - fixture
from conftest import isolated_home


@pytest.fixture(scope="module")
def pair(pair_store):
    with isolated_home(pair_store[0]) as home:
        yield home, pair_store[1]


def _cli(args):
    from mg_mlflow.cli import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_table_shows_only_differing_params_eval_metrics_and_writes_png(pair, tmp_path):
    from mlflow.tracking import MlflowClient

    home, p = pair
    client = MlflowClient()
    before = len(client.search_runs([p.experiment_id], max_results=100))
    png = tmp_path / "compare.png"
    res = _cli(["compare", p.run_ids["lr-3e-3"], p.run_ids["lr-1e-4"][:10], "--plot", str(png)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "learning_rate" in out and "0.003" in out and "0.0001" in out
    assert "lora_r" not in out and "max_steps" not in out  # equal in both runs: not shown
    assert "eval/exact_match" in out and "0.5" in out and "0.25" in out
    assert "tiny-cmp/1" in out and "tiny-cmp/2" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(png).size == (1800, 500)  # three panels
    assert f"plot: {png}" in out and "Pareto front on eval/exact_match" in out
    assert "#/compare-runs?runs=" in out
    assert len(client.search_runs([p.experiment_id], max_results=100)) == before  # logged nowhere


def test_json_csv_markdown_and_model_uris(pair):
    home, p = pair
    res = _cli(["compare", "models:/tiny-cmp/1", "models:/tiny-cmp/2", "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["differing_params"] == ["learning_rate"]
    by_name = {r["name"]: r for r in data["runs"]}
    for name, value in EXACT_MATCH.items():
        row = by_name[name]
        assert row["run_id"] == p.run_ids[name]
        assert row["eval"]["eval/exact_match"] == pytest.approx(value)
        assert row["loss_final"] > 0 and row["eval_loss_final"] > 0
        assert row["emissions_kg"] > 0 and row["energy_kwh"] > 0 and row["tokens_per_s"] > 0
        assert row["registered"] == f"tiny-cmp/{p.versions[name]}"
    res = _cli(["compare", p.run_ids["lr-3e-3"], p.run_ids["lr-1e-4"], "--format", "csv"])
    rows = [r for r in csv.reader(io.StringIO(res.stdout)) if r]
    assert rows[0][:2] == ["run", "learning_rate"] and len(rows) == 3
    res = _cli(["compare", p.run_ids["lr-3e-3"], p.run_ids["lr-1e-4"], "--format", "markdown"])
    assert res.stdout.splitlines()[0].startswith("| run | learning_rate |")


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


def test_pareto_front_keeps_only_undominated_points():
    from mg_mlflow.experiment.compare_plot import pareto_front

    pts = [(1.0, 0.5), (2.0, 0.4), (3.0, 0.9), (4.0, 0.9)]
    assert pareto_front(pts, higher_is_better=True) == [0, 2]
    assert pareto_front([(1.0, 5.0), (2.0, 4.0), (3.0, 4.5)], higher_is_better=False) == [0, 1]
