"""Headless Chromium for UI tests: the rendered DOM and a screenshot through the command line, and,
through the DevTools protocol in real time, the rendered text of a page whose long tables are
virtualized (MLflow's compare view shows ~7 rows of a 300 px grid at a time: scroll each grid and
collect what it renders) or whose charts load their data after the page boots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from procs import stop_process

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

SCROLL_GRIDS = """(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  for (let i = 0; i < 120 && !document.querySelector('.ReactVirtualized__Grid'); i++) await sleep(500);
  await sleep(1000);
  const seen = [];
  for (const g of document.querySelectorAll('.ReactVirtualized__Grid')) {
    for (let top = 0; top <= g.scrollHeight; top += 100) {
      g.scrollTop = top; g.dispatchEvent(new Event('scroll')); await sleep(150);
      seen.push(g.innerText);
    }
  }
  return document.body.innerText + '\\n' + seen.join('\\n');
})()"""


def _common(profile: Path) -> list[str]:
    return [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}"]


def dump_and_shot(tmp_path: Path, url: str, shot: str) -> str:
    """``--dump-dom`` of ``url`` (kept as ``<shot>.html``) and a 1600x1000 screenshot ``tmp_path/shot``."""
    common = [*_common(tmp_path / f"profile-{shot}"), "--virtual-time-budget=15000"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    (tmp_path / shot).with_suffix(".html").write_text(dom)
    png = tmp_path / shot
    subprocess.run([*common, f"--screenshot={png}", "--window-size=1600,1000", url], capture_output=True, timeout=180)
    print(f"screenshot: {png}")
    return dom


def scrolled_text(tmp_path: Path, url: str, timeout: float = 120) -> str:
    """The page's text plus everything its virtualized grids render while scrolled top to bottom."""
    return evaluate_in_page(tmp_path, url, SCROLL_GRIDS, timeout, "cdp")


def text_when_shown(tmp_path: Path, url: str, shown: list[str], timeout: float = 150, settle_ms: int = 3000) -> str:
    """The page's rendered text (and the values of its input boxes) once every string of ``shown`` is in
    its text, waiting in real time (metric charts load their data by fetch after the page boots: under
    --virtual-time-budget they stay spinners), then ``settle_ms`` more for the rest to render."""
    wait = """(async () => {
      const sleep = ms => new Promise(r => setTimeout(r, ms));
      const shown = %s;
      for (let i = 0; i < %d && !shown.every(s => document.body.innerText.includes(s)); i++) await sleep(500);
      await sleep(%d);
      const inputs = [...document.querySelectorAll('input')].map(i => i.value).filter(v => v);
      return document.body.innerText + '\\n' + inputs.join('\\n');
    })()""" % (json.dumps(shown), int(timeout * 2), settle_ms)
    text = evaluate_in_page(tmp_path, url, wait, timeout + settle_ms / 1000 + 30, f"wait-{abs(hash(url))}")
    missing = [s for s in shown if s not in text]
    assert not missing, f"{url}: never showed {missing}; the page read:\n{text[:3000]}"
    return text


def evaluate_in_page(tmp_path: Path, url: str, expression: str, timeout: float, profile: str) -> str:
    """Open ``url`` in headless Chromium (real time, window 1600x1000) and return the value of the
    JavaScript ``expression`` (a promise is awaited), through the DevTools protocol."""
    from websockets.sync.client import connect

    proc = subprocess.Popen([*_common(tmp_path / f"profile-{profile}"), "--remote-debugging-port=0",
                             "--window-size=1600,1000", url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        port = None
        deadline = time.time() + 60
        while port is None and time.time() < deadline:
            line = proc.stderr.readline()
            match = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
            port = int(match.group(1)) if match else None
        assert port, "chromium did not open its DevTools port"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            end = time.time() + timeout
            for attempt in range(1, 30):  # the app navigates while it boots: evaluate again when it did
                ws.send(json.dumps({"id": attempt, "method": "Runtime.evaluate", "params": {
                    "expression": expression, "awaitPromise": True, "returnByValue": True}}))
                msg = {}
                while msg.get("id") != attempt and time.time() < end:
                    msg = json.loads(ws.recv(timeout=max(1.0, end - time.time())))
                if "result" in msg and "exceptionDetails" not in msg["result"]:
                    return msg["result"]["result"].get("value", "")
                time.sleep(1)
        raise AssertionError("the page did not answer in time")
    finally:
        stop_process(proc)
