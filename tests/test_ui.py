"""What a person sees in the MLflow UI, read from the rendered page of a real `mlflow server` started by
`model-garden ui` on 127.0.0.1, in headless Chromium: the training-runs table, the compare view of two
runs, a registered version's page. Screenshots are kept under the test's tmp dir (paths printed)."""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.request

import pytest

from chromium_support import CHROMIUM, dump_and_shot, scrolled_text, text_when_shown
from compare_support import pair_store  # noqa: F401 - fixture
from conftest import BIN, isolated_home
from procs import free_port, stop_process
# In CI (.ci/test installs Chromium) a missing browser fails the tests instead of skipping them.
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                reason="headless Chromium is not installed")


@pytest.fixture(scope="module")
def ui(pair_store):
    """Two runs + evaluations (the session's pair store), and `model-garden ui --compare A --compare B` serving it."""
    with isolated_home(pair_store[0]) as home:
        pair = pair_store[1]
        port = free_port()
        log = home / "ui.log"
        cmd = [str(BIN / "model-garden"), "ui", "--port", str(port), "--open",
               "--compare", pair.run_ids["lr-3e-3"], "--compare", pair.run_ids["lr-1e-4"]]
        # --open goes through Python's webbrowser, which runs $BROWSER: a script noting the URL
        opened = home / "opened.txt"
        browser = home / "browser.sh"
        browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
        browser.chmod(0o755)
        with open(log, "w") as fh:
            # one uvicorn worker (MLflow's own MLFLOW_WORKERS; default 4 processes) is plenty for one browser
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "BROWSER": str(browser), "MLFLOW_WORKERS": "1"})
        try:
            deadline, healthy = time.time() + 300, False
            while not healthy and time.time() < deadline:
                assert proc.poll() is None, log.read_text()[-3000:]
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                        healthy = True
                except OSError:
                    time.sleep(0.5)
            assert healthy, f"mlflow server did not answer /health within 300 s:\n{log.read_text()[-3000:]}"
            links = dict(line.split(": ", 1) for line in log.read_text().splitlines()
                         if line.startswith(("training runs of", "compare 2 runs")))
            yield {"pair": pair, "port": port, "links": links, "base": f"http://127.0.0.1:{port}", "opened": opened}
        finally:
            stop_process(proc, timeout=30, group=True)


def _chromium(tmp_path, url: str, shot: str) -> str:
    dom = dump_and_shot(tmp_path, url, shot)
    png = tmp_path / shot
    assert png.is_file() and png.stat().st_size > 10_000
    return dom


def test_ui_prints_direct_links(ui):
    p = ui["pair"]
    assert ui["links"]["training runs of 'model-garden'"] == (
        f"{ui['base']}/#/experiments/{p.experiment_id}/runs?workflowType=machine_learning"
        "&searchFilter=tags.%60mg.run_kind%60%20%3D%20%27training%27")
    compare = ui["links"]["compare 2 runs"]
    assert compare.startswith(f"{ui['base']}/#/compare-runs?runs=")
    assert p.run_ids["lr-3e-3"] in compare and p.run_ids["lr-1e-4"] in compare


def test_open_opens_the_compare_link_once_the_server_answers(ui):
    deadline = time.time() + 60
    while not ui["opened"].is_file() and time.time() < deadline:
        time.sleep(0.5)
    assert ui["opened"].read_text().strip() == ui["links"]["compare 2 runs"]


def test_links_only_prints_and_returns(ui):
    from click.testing import CliRunner

    from mg_mlflow.cli import cli

    res = CliRunner().invoke(cli, ["ui", "--links-only", "--port", str(ui["port"])])
    assert res.exit_code == 0 and res.output.strip() == (
        f"training runs of 'model-garden': {ui['links']['training runs of ' + repr('model-garden')]}")


def test_runs_table_shows_the_runs(ui, tmp_path):
    from mg_mlflow.tracking.ui_links import runs_url

    dom = _chromium(tmp_path, runs_url(ui["base"], ui["pair"].experiment_id), "runs.png")
    p = ui["pair"]
    for name in ("lr-3e-3", "lr-1e-4", f"eval tiny-cmp v{p.versions['lr-3e-3']} on {p.dataset}"):
        assert name in dom


def test_training_runs_link_lists_training_runs_only(ui, tmp_path):
    text = text_when_shown(tmp_path, ui["links"]["training runs of 'model-garden'"], ["lr-3e-3", "lr-1e-4"])
    assert "eval tiny-cmp v" not in text  # evaluation runs (mg.run_kind evaluation) are filtered out
    assert "tags.`mg.run_kind` = 'training'" in text  # in the table's search box, where a person can change it


def test_printed_links_open_on_the_model_training_sidebar(ui, tmp_path):
    """A fresh browser (no localStorage) opened on a link Model Garden prints shows MLflow's "Model
    training" sidebar (Runs, Models, Model registry), not the GenAI one (Judges, Evaluation runs)."""
    from mg_mlflow.tracking.ui_links import run_url

    p = ui["pair"]
    for url, shown, shot in ((ui["links"]["training runs of 'model-garden'"], ["lr-3e-3", "lr-1e-4"], "runs.png"),
                             (run_url(ui["base"], p.experiment_id, p.run_ids["lr-3e-3"]), ["lr-3e-3", "Overview"],
                              "run.png")):
        text = text_when_shown(tmp_path, url, [*shown, "Settings"], shot=shot)  # Settings: the sidebar's foot
        assert "Model registry" in text and "Judges" not in text and "Evaluation runs" not in text, text[:2000]


# Every leaf element of the page whose text is one line, with its place: chart titles and chart labels.
LEAVES = """[...document.querySelectorAll('body *')]
  .filter(e => e.children.length === 0 && e.innerText && e.innerText.trim() && !e.innerText.includes('\\n'))
  .map(e => { const r = e.getBoundingClientRect();
              return {text: e.innerText.trim(), top: r.top, left: r.left, bottom: r.bottom}; })
  .filter(l => l.bottom > 0)"""


def _page_leaves(tmp_path, url: str, shown: list[str], shot: str) -> tuple[list[dict], float]:
    """The page's one-line leaves (text, place) once ``shown`` is rendered, its window height, a screenshot."""
    import json

    from chromium_support import DevToolsPage

    with DevToolsPage(tmp_path, url, shot.removesuffix(".png")) as page:
        page.wait_until(f"{json.dumps(shown)}.every(s => document.body.innerText.includes(s))", 300,
                        f"the text {shown}")
        time.sleep(3)  # the rest of the first screen's charts render
        page.screenshot(tmp_path / shot)
        leaves, height = page.evaluate(LEAVES), page.evaluate("window.innerHeight")
    (tmp_path / shot).with_suffix(".json").write_text(json.dumps(leaves, indent=1))
    return leaves, height


def _charts(leaves: list[dict], logged: set[str]) -> list[dict]:
    """The chart titles of a run's metrics tab in page order, each with its full metric name: a section
    header reads ``eval (3)``, and the charts under it are titled without the section's prefix."""
    section, charts, previous = "", [], ""
    for leaf in leaves:
        if re.fullmatch(r"\S+ \(\d+\)", leaf["text"]):
            section = leaf["text"].split(" ")[0]
        elif re.fullmatch(r"\(\d+\)", leaf["text"]):  # the count in an element of its own
            section = previous
        elif f"{section}/{leaf['text']}" in logged:
            charts.append({**leaf, "metric": f"{section}/{leaf['text']}"})
        elif leaf["text"] in logged:
            charts.append({**leaf, "metric": leaf["text"]})
        previous = leaf["text"]
    return charts


def test_run_page_opens_on_loss_charts_and_keeps_carbon_on_the_system_tab(ui, tmp_path):
    """MLflow shows sections of prefixed names first and sorts sections and charts by name, three a
    row: the first screen of a run is the eval section (eval/loss first) and the train section, whose
    grad_norm, learning_rate and loss charts come before the rest. Carbon and the trainer's epoch and
    timings are on the System metrics tab."""
    from mlflow.tracking import MlflowClient

    import mg_mlflow.metric_names as mn
    from mg_mlflow.tracking.ui_links import run_url

    run_id = ui["pair"].run_ids["lr-3e-3"]

    def url(tab):
        return run_url(ui["base"], ui["pair"].experiment_id, run_id, tab)

    logged = set(MlflowClient().get_run(run_id).data.metrics)
    leaves, height = _page_leaves(tmp_path, url("model-metrics"), [f"({mn.EVAL_LOSS})", f"({mn.LOSS})"],
                                  "model-metrics.png")  # each chart's legend: "<run name> (<metric>)"
    charts = _charts(leaves, logged)
    first_screen = [c["metric"] for c in charts if c["top"] < height]
    print("charts of the first screen:", [(c["metric"], round(c["top"])) for c in charts if c["top"] < height])
    assert charts and charts[0]["metric"] == mn.EVAL_LOSS, charts[:8]  # the first chart of the first section
    assert mn.LOSS in first_screen, charts[:8]
    order = [c["metric"] for c in charts]
    assert order.index(mn.EVAL_LOSS) < order.index(mn.LOSS)  # page order: the eval section, then train
    assert not any(m.startswith("system/") for m in first_screen), first_screen
    system = text_when_shown(tmp_path, url("system-metrics"), ["System metrics", "emissions_mg", "energy_j"],
                             shot="system-metrics.png")
    assert "system/carbon" in system  # the section of the carbon charts


# The value label of each run's bar in the chart titled by a name starting with each of PREFIXES (in page
# order), once the chart has rendered: MLflow draws a metric logged once (a total) as a bar chart labelled
# value.toFixed(2). The page renders the cards near the screen only, so it is scrolled down, as a person
# would, until the title shows; the chart's card is the nearest ancestor of its title that holds one plotly
# chart (its own).
BAR_LABELS = """(async (prefixes) => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const find = prefix => [...document.querySelectorAll('body *')].find(
    e => e.children.length === 0 && (e.innerText || '').trim().startsWith(prefix));
  const scrollers = () => [...document.querySelectorAll('body *')].filter(
    e => e.scrollHeight > e.clientHeight + 20 && /(auto|scroll)/.test(getComputedStyle(e).overflowY));
  const out = {};
  for (const prefix of prefixes) {
    let title = find(prefix);
    for (let i = 0; i < 200 && !title; i++) {
      for (const s of scrollers()) s.scrollTop += 250;
      await sleep(250);
      title = find(prefix);
    }
    if (!title) { out[prefix] = null; continue; }
    title.scrollIntoView({block: 'center'});
    let labels = [];
    for (let i = 0; i < 120 && !labels.length; i++) {
      await sleep(500);
      let card = title.parentElement;
      while (card && card.querySelectorAll('.js-plotly-plot').length === 0) card = card.parentElement;
      if (card && card.querySelectorAll('.js-plotly-plot').length === 1)
        labels = [...card.querySelectorAll('.trace.bars text')].map(t => t.textContent.trim()).filter(t => t);
    }
    out[prefix] = {title: title.innerText.trim(), labels};
  }
  return out;
})"""


def test_run_page_shows_a_short_runs_carbon_totals_as_numbers_with_their_unit(ui, tmp_path):
    """The run page's System metrics tab draws each carbon total (logged once) as a bar labelled with two
    decimals and no unit: a run of 6 steps on CPU emits micrograms to milligrams of CO2eq and tens of
    joules, so its totals must be logged in units where they read as numbers ("0.00" in kg and kWh), and
    the chart's title, the metric name, says the unit."""
    import json

    from mlflow.tracking import MlflowClient

    from chromium_support import DevToolsPage
    from mg_mlflow.tracking.ui_links import run_url

    run_id = ui["pair"].run_ids["lr-3e-3"]
    logged = MlflowClient().get_run(run_id).data.metrics
    url = run_url(ui["base"], ui["pair"].experiment_id, run_id, "system-metrics")
    prefixes = ["total_emissions_", "total_energy_"]
    with DevToolsPage(tmp_path, url, "carbon-totals") as page:
        page.wait_until("['system/carbon', 'cpu_power_w'].every(s => document.body.innerText.includes(s))", 300,
                        "the carbon section")
        shown = page.evaluate(f"{BAR_LABELS}({json.dumps(prefixes)})", timeout=240)
        page.screenshot(tmp_path / "carbon-totals.png")
    print("carbon totals shown:", shown)
    units = {"total_emissions_": "mg", "total_energy_": "j"}
    for prefix, unit in units.items():
        assert shown[prefix], f"no chart titled {prefix}* on the System metrics tab"
        title, labels = shown[prefix]["title"], shown[prefix]["labels"]
        assert labels == [f"{logged['system/carbon/' + title]:.2f}"], (title, labels)  # the run's one bar
        assert float(labels[0]) > 0 and labels[0] != "0.00", (title, labels)
        assert title == f"{prefix}{unit}", title  # the unit in the chart's title


def test_compare_view_shows_differing_params_and_eval_metrics(ui, tmp_path):
    from mlflow.tracking import MlflowClient

    url = ui["links"]["compare 2 runs"]
    dom = _chromium(tmp_path, url, "compare.png")
    assert "lr-3e-3" in dom and "lr-1e-4" in dom
    assert "learning_rate" in dom and "0.003" in dom and "0.0001" in dom
    # the metrics table is a 300 px virtualized grid: scroll it in the browser and read what it renders
    text = scrolled_text(tmp_path, url)
    assert "eval/loss_final" in text and "train/loss_final" in text
    client = MlflowClient()
    for run_id in ui["pair"].run_ids.values():
        assert f"{client.get_run(run_id).data.metrics['eval/loss_final']:.4g}" in text


def test_registered_version_page_renders(ui, tmp_path):
    from mg_mlflow.tracking.ui_links import version_url

    dom = _chromium(tmp_path, version_url(ui["base"], "tiny-cmp", "1"), "version.png")
    assert "tiny-cmp" in dom and "Version 1" in dom
    assert ui["pair"].run_ids["lr-3e-3"] in dom or "lr-3e-3" in dom  # the source run is linked
