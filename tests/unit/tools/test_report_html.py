"""`segpipe report`: the HTML page of a real (tiny) pipeline run, opened in a real browser.

A module fixture runs the sample's pipeline on 40 demo files (convert, split, a tiny training,
evaluate, report) in tmp_path. Headless Chromium, driven over its DevTools protocol (a pipe,
no extra package), loads the page with the network off, and the tests check what a person
would: no failed request, no console error, the tables on screen, the numbers of
metrics.json in the DOM, and the rejected file's picture and message.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import segpipe
from PIL import Image

from pipeline.params import load_params
from pipeline.tools.report_html import Sources, gather
from pipeline.tools.report_page import render

PARAMS = """\
classes: [background, circle, square, triangle, star]
aliases: {tri: triangle, box: square}
convert: {jobs: 1}
split: {group_pattern: '(?P<group>scene\\d+)_'}
train: {steps: 8, patch: 32, batch_size: 4, depth: 2, base_width: 4, val_every: 4,
        threads: 1, device: cpu}
evaluate: {device: cpu, workers: 1, worst_k: 3}
"""
REJECTED = "scene00_000000.json"  # the demo's file with a misspelt label ("stra"): rejected


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of the pipeline's stages on the demo data (the tiny training takes a few
    seconds), ending with `segpipe report`."""
    root = tmp_path_factory.mktemp("run")
    (root / "params.yaml").write_text(PARAMS)
    for args in (["demo-data", "data/raw", "--n", "40"], ["convert"], ["split"], ["train"],
                 ["evaluate"], ["report"]):
        done = segpipe(*args, cwd=root)
        assert done.returncode == 0, (args, done.stderr)
    return root


# ---------------------------------------------------------------- the page itself


def test_the_rejected_file_is_shown_with_its_picture_and_message(run_dir: Path) -> None:
    page = (run_dir / "reports/report.html").read_text()
    entry = next(e for e in json.loads((run_dir / "reports/validation.json").read_text())
                 if e["file"] == REJECTED)
    assert entry["severity"] == "error" and entry["check"] == "unknown_label"
    row = page.split(f'<tr data-file="{REJECTED}">', 1)[1].split("</tr>", 1)[0]
    assert f'<span class="message">{html.escape(entry["message"])}</span>' in row
    src = row.split('<img src="data:image/jpeg;base64,', 1)[1].split('"', 1)[0]
    with Image.open(io.BytesIO(base64.b64decode(src))) as thumb:
        assert max(thumb.size) == 200  # report.thumbnail_size
        rgb = np.asarray(thumb.convert("RGB")).astype(int)
    # the offending shape is outlined in red: many strongly red pixels
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)
    assert red.sum() > 50


def test_the_page_is_self_contained(run_dir: Path) -> None:
    page = (run_dir / "reports/report.html").read_text()
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<script" not in page and "@import" not in page
    assert page.count("<img ") == page.count('<img src="data:image/')


def test_a_missing_review_queue_is_said_and_a_present_one_is_shown(run_dir: Path) -> None:
    params = load_params(run_dir / "params.yaml")
    sources = Sources.of(params)
    cwd = Path.cwd()
    os.chdir(run_dir)
    try:
        absent = render(gather(params, sources))
        review = run_dir / "reports/review"
        (review / "overlays").mkdir(parents=True)
        (review / "review.csv").write_text(
            "id,annotation,shape,label,kind,score,area,confidence\n"
            "scene03_000012,scene03_000012.json,2,circle,polygon,0.91,340,0.88\n"
            "scene05_000001,scene05_000001.json,0,star,polygon,0.40,120,0.51\n")
        Image.new("RGB", (60, 20), (200, 0, 0)).save(review / "overlays/01_scene03_000012.png")
        present = render(gather(params, sources))
    finally:
        os.chdir(cwd)
        shutil.rmtree(run_dir / "reports/review", ignore_errors=True)
    assert ("No label-review queue: reports/review/review.csv not found (the review stage "
            "writes it).") in absent
    queue = present.split('<table class="review">', 1)[1].split("</table>", 1)[0]
    rows = queue.split("<tr>")[2:]
    assert rows[0].startswith('<td class="n">1</td><td>scene03_000012</td>'
                              "<td>scene03_000012.json</td><td>2</td><td>circle</td>")
    assert '<img src="data:image/png;base64,' in rows[0]
    assert '<span class="muted">–</span>' in rows[1]  # no overlay for the second row


# ---------------------------------------------------------------- in a real browser


def chromium() -> str:
    for name in (os.environ.get("SEGPIPE_CHROMIUM", ""), "chromium", "chromium-browser",
                 "google-chrome"):
        if name and shutil.which(name):
            return str(shutil.which(name))
    pytest.skip("no Chromium found (Debian: apt-get install chromium; .ci/run installs it): "
                "the HTML report's browser test needs a real browser")


class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe: JSON messages ending in
    NUL, commands on the browser's fd 3, answers and events from its fd 4."""

    def __init__(self, exe: str, profile: Path) -> None:
        chrome_r, ours_w = os.pipe()  # our commands, read by Chromium on its fd 3
        ours_r, chrome_w = os.pipe()  # its answers and events, written on its fd 4
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 # any request that escapes the page would fail here, and show as failed
                 "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
                 "--remote-debugging-pipe", "--window-size=1280,900", "about:blank"]
        # the browser reads fd 3 and writes fd 4: a two-line Python trampoline puts the pipe
        # ends there (a POSIX shell's redirections know single-digit descriptors only)
        trampoline = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4);"
                      " os.execv(sys.argv[3], sys.argv[3:])")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", trampoline, str(chrome_r), str(chrome_w), exe, *flags],
            pass_fds=(chrome_r, chrome_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(chrome_r)
        os.close(chrome_w)
        self._w, self._r, self._buffer, self._id = ours_w, ours_r, b"", 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self._w, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._next(timeout)
            if reply.get("id") == self._id:
                assert "error" not in reply, (method, reply["error"])
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        while True:
            found = next((e for e in self.events if e.get("method") == method), None)
            if found:
                return found
            self.events.append(self._next(timeout))

    def _next(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise ConnectionError("Chromium closed the pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def close(self) -> None:
        try:
            os.write(self._w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


def open_offline(page: Path, profile: Path) -> tuple[DevTools, list[str], list[str]]:
    """Load `page` with the network emulated offline; returns the browser, the URLs
    requested and the problems seen (failed requests, console errors, exceptions)."""
    browser = DevTools(chromium(), profile)
    target = next(t for t in browser.send("Target.getTargets")["targetInfos"]
                  if t["type"] == "page")
    browser.session = browser.send("Target.attachToTarget", {"targetId": target["targetId"],
                                                             "flatten": True})["sessionId"]
    for domain in ("Page", "Network", "Runtime", "Log"):
        browser.send(f"{domain}.enable")
    browser.send("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                      "downloadThroughput": 0,
                                                      "uploadThroughput": 0})
    browser.send("Page.navigate", {"url": page.as_uri()})
    browser.wait_for("Page.loadEventFired")
    browser.send("Runtime.evaluate", {"expression": "1", "returnByValue": True})  # drain
    urls = [e["params"]["request"]["url"] for e in browser.events
            if e.get("method") == "Network.requestWillBeSent"]
    problems = [json.dumps(e["params"])[:300] for e in browser.events if (
        e.get("method") in ("Network.loadingFailed", "Runtime.exceptionThrown")
        or (e.get("method") == "Runtime.consoleAPICalled"
            and e["params"]["type"] in ("error", "warning", "assert"))
        or (e.get("method") == "Log.entryAdded"
            and e["params"]["entry"]["level"] in ("error", "warning")))]
    return browser, urls, problems


_READ_DOM = """JSON.stringify({
  metrics: Array.from(document.querySelectorAll('table.metrics')).map(t => ({
    split: t.dataset.split,
    rows: Array.from(t.querySelectorAll('tr[data-class]')).map(r => ({
      cls: r.dataset.class,
      cells: Object.fromEntries(Array.from(r.querySelectorAll('td[data-metric]'))
        .map(c => [c.dataset.metric, c.textContent]))}))})),
  miou: Array.from(document.querySelectorAll('h3 [data-metric=miou]'))
    .map(e => [e.dataset.split, e.textContent]),
  rejected: document.querySelector('td[data-count=rejected]').textContent,
  visible: Array.from(document.querySelectorAll('table')).filter(
    t => t.getBoundingClientRect().height > 0).length,
  tables: document.querySelectorAll('table').length,
  images: Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length,
  all_images: document.images.length,
  charts: document.querySelectorAll('svg polyline').length,
  height: document.documentElement.scrollHeight})"""


def test_the_report_in_a_real_browser_offline(run_dir: Path, tmp_path: Path) -> None:
    page = run_dir / "reports/report.html"
    browser, urls, problems = open_offline(page, tmp_path / "profile")
    try:
        dom = json.loads(browser.send("Runtime.evaluate", {"expression": _READ_DOM,
                                                           "returnByValue": True})
                         ["result"]["value"])
        height = min(dom["height"], 16000)
        shot = browser.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1}})
    finally:
        browser.close()
    screenshot = tmp_path / "report.png"
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    if os.environ.get("SEGPIPE_SCREENSHOT"):  # to look at it: SEGPIPE_SCREENSHOT=path.png
        shutil.copy(screenshot, os.environ["SEGPIPE_SCREENSHOT"])

    # nothing but the page itself was requested, nothing failed, nothing complained
    assert [u for u in urls if not u.startswith("data:")] == [page.as_uri()]
    assert problems == []
    # every table and picture is on screen, the charts are drawn
    assert dom["visible"] == dom["tables"] >= 8
    assert dom["images"] == dom["all_images"] > 0
    assert dom["charts"] >= 3
    with Image.open(screenshot) as image:
        assert image.size == (1280, height)
        assert len(np.unique(np.asarray(image.convert("L")))) > 20  # not a blank page

    # the numbers a person reads are those of metrics.json
    metrics = json.loads((run_dir / "reports/metrics.json").read_text())
    val = next(t for t in dom["metrics"] if t["split"] == "val")
    assert [r["cls"] for r in val["rows"]] == list(metrics["iou"])
    for row in val["rows"]:
        for key in ("iou", "dice", "precision", "recall"):
            value = metrics[key][row["cls"]]
            assert row["cells"][key] == ("–" if value is None else f"{value:.4f}"), (row, key)
        assert row["cells"]["support"] == f"{metrics['support'][row['cls']]:,}"
    expected_miou = "–" if metrics["miou"] is None else f"{metrics['miou']:.4f}"
    assert dom["miou"][0] == ["val", expected_miou]
    data = json.loads((run_dir / "reports/data.json").read_text())
    assert dom["rejected"] == str(data["files"]["rejected"]) == "5"


def test_a_run_with_nothing_yet_still_gets_a_page_that_says_what_is_missing(
        tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("classes: [background, circle]\n")
    done = segpipe("report", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[:2] == ["warning: reports/data.json not found",
                                            "warning: reports/validation.json not found"]
    page = (tmp_path / "reports/report.html").read_text()
    assert '<p class="notice">reports/metrics.json not found</p>' in page
    assert "metrics.json not found: run `segpipe evaluate`" in page
    assert "plan.json not found: run `segpipe train`" in page
