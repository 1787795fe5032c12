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


def scrolled_text(tmp_path: Path, url: str, timeout: float = 300) -> str:
    """The page's text plus everything its virtualized grids render while scrolled top to bottom."""
    with DevToolsPage(tmp_path, url, "cdp") as page:
        page.wait_until("!!document.querySelector('.ReactVirtualized__Grid')", timeout, "a virtualized grid")
        time.sleep(1)
        return page.evaluate(SCROLL_GRIDS, timeout=timeout)


def text_when_shown(tmp_path: Path, url: str, shown: list[str], timeout: float = 300, settle_s: float = 3,
                    shot: str | None = None) -> str:
    """The page's rendered text (and the values of its input boxes) once every string of ``shown`` is in
    its text, waiting in real time (metric charts load their data by fetch after the page boots: under
    --virtual-time-budget they stay spinners), then ``settle_s`` more for the rest to render. With
    ``shot``, a screenshot of what a person sees then is kept as ``tmp_path/shot``."""
    with DevToolsPage(tmp_path, url, f"wait-{abs(hash(url))}") as page:
        page.wait_until(f"{json.dumps(shown)}.every(s => document.body.innerText.includes(s))", timeout,
                        f"the text {shown}")
        time.sleep(settle_s)
        if shot:
            page.screenshot(tmp_path / shot)
        return page.evaluate(PAGE_TEXT)


PAGE_TEXT = """document.body.innerText + '\\n' +
  [...document.querySelectorAll('input')].map(i => i.value).filter(v => v).join('\\n')"""


class DevToolsPage:
    """``url`` in headless Chromium (fresh profile, real time, window 1600x1000), driven through the
    DevTools protocol: evaluate JavaScript, wait for a condition of the DOM, take a screenshot."""

    def __init__(self, tmp_path: Path, url: str, profile: str, start_timeout: float = 120):
        self.tmp_path, self.url, self.profile, self.start_timeout = tmp_path, url, profile, start_timeout
        self._id = 0

    def __enter__(self) -> "DevToolsPage":
        from websockets.sync.client import connect

        self.proc = subprocess.Popen([*_common(self.tmp_path / f"profile-{self.profile}"), "--remote-debugging-port=0",
                                      "--window-size=1600,1000", self.url], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        try:
            port = None
            deadline = time.time() + self.start_timeout
            while port is None and time.time() < deadline and self.proc.poll() is None:
                match = re.search(r"ws://127\.0\.0\.1:(\d+)/", self.proc.stderr.readline())
                port = int(match.group(1)) if match else None
            assert port, f"chromium did not open its DevTools port within {self.start_timeout:.0f} s"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as resp:
                target = next(t for t in json.load(resp) if t["type"] == "page")
            self.ws = connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=60)
        except BaseException:
            stop_process(self.proc)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.ws.close()
        finally:
            stop_process(self.proc)

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        end = time.time() + timeout
        while time.time() < end:
            try:
                msg = json.loads(self.ws.recv(timeout=max(0.1, end - time.time())))
            except TimeoutError:
                break
            if msg.get("id") == self._id:
                return msg
        raise AssertionError(f"{self.url}: chromium did not answer {method} within {timeout:.0f} s")

    def evaluate(self, expression: str, timeout: float = 60):
        """The value of ``expression`` (a promise is awaited); an AssertionError if it throws."""
        msg = self.call("Runtime.evaluate", timeout, expression=expression, awaitPromise=True, returnByValue=True)
        result = msg.get("result", {})
        assert "result" in result and "exceptionDetails" not in result, f"{self.url}: {expression[:80]}: {msg}"
        return result["result"].get("value", "")

    def wait_until(self, condition: str, timeout: float, what: str) -> None:
        """Poll the JavaScript ``condition`` every half second until it is true. While the app boots or
        navigates an evaluation may fail: the next poll asks again, until ``timeout`` s have passed."""
        end = time.time() + timeout
        while time.time() < end:
            try:
                if self.evaluate(condition, timeout=max(1.0, min(30.0, end - time.time()))):
                    return
            except AssertionError:
                pass  # the page was between documents
            time.sleep(0.5)
        try:
            text = self.evaluate(PAGE_TEXT, timeout=30)
        except AssertionError as exc:
            text = f"(unreadable: {exc})"
        raise AssertionError(f"{self.url}: {what} not shown after {timeout:.0f} s; the page read:\n{str(text)[:3000]}")

    def screenshot(self, path: Path) -> None:
        import base64

        msg = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(msg["result"]["data"]))
        print(f"screenshot: {path}")
