"""The `--http` page in a real headless Chromium (Debian's `chromium`, driven by Playwright): the page loads, the
stream shows, each face on screen gets a row of seven expression bars holding exactly the probabilities of the
event the page says it shows (compared with the same event read from /events), status and figures fill in; a
screenshot is kept (in pytest's tmp dir and as test-artifacts/http-page.png); and SIGTERM with the page open still
ends the daemon within 2 s."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.http import SseReader, free_port, wait_up
from runtime.labels import LABELS

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACT = REPO / "test-artifacts" / "http-page.png"

# What the page shows, read in one go (the page redraws up to 60 times a second): null until a face is on screen.
SHOWN = """() => {
  const faces = document.getElementById("faces");
  const rows = [...faces.querySelectorAll(".face")];
  const stream = document.getElementById("stream");
  if (!rows.length || !stream.naturalWidth || document.getElementById("fps").textContent === "–") return null;
  return {
    seq: Number(faces.dataset.seq),
    faces: rows.map((row) => ({
      id: row.dataset.faceId,
      bars: [...row.querySelectorAll(".bar")].map((bar) => ({
        label: bar.dataset.label,
        prob: Number(bar.dataset.prob),
        width: bar.querySelector(".fill").getBoundingClientRect().width,
        track: bar.querySelector(".track").getBoundingClientRect().width,
      })),
    })),
    state: document.getElementById("state").textContent,
    connection: document.getElementById("connection").textContent,
    streamWidth: stream.naturalWidth,
  };
}"""


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Root (CI, containers) cannot use Chromium's sandbox; the page is our own.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        yield chromium
        chromium.close()


@pytest.mark.slow
def test_the_page_shows_the_stream_and_each_faces_expression_bars(
    browser, emotiond, model_dir, detector_model, long_clip, tmp_path
):
    config = tmp_path / "emotiond.yaml"
    config.write_text("events:\n  stats_interval_s: 0.5\n")
    port = free_port()
    cmd = [str(emotiond), "run", "--source", str(long_clip), "--model", str(model_dir), "--realtime"]
    cmd += ["--http", str(port), "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_up(port, proc)
        events = SseReader(port)  # the same events, to compare the page with
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page_errors: list[str] = []
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.goto(f"http://127.0.0.1:{port}/")
        shown = page.wait_for_function(SHOWN, timeout=60_000).json_value()
        page.screenshot(path=tmp_path / "http-page.png")
        ARTIFACT.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "http-page.png", ARTIFACT)
        end = time.monotonic() + 10
        while not (event := next((e for e in events.events if e.get("seq") == shown["seq"]), None)):
            assert time.monotonic() < end, f"event {shown['seq']} never came on /events"
            time.sleep(0.01)
        assert event["type"] == "frame" and event["faces"], event
        assert [face["id"] for face in shown["faces"]] == [str(face["id"]) for face in event["faces"]]
        for row, face in zip(shown["faces"], event["faces"], strict=True):
            assert [bar["label"] for bar in row["bars"]] == list(LABELS), "one bar per expression, in label order"
            for bar in row["bars"]:
                assert bar["prob"] == face["probs"][bar["label"]], (bar, face)
                assert bar["width"] == pytest.approx(bar["prob"] * bar["track"], abs=1.0), "drawn to its length"
        assert shown["state"] == "online" and shown["connection"] == "live"
        assert shown["streamWidth"] == 640, "the annotated stream is showing"
        assert not page_errors, page_errors
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # with the page's two streams open
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and took < 2.0, f"exit {proc.returncode} after {took:.2f} s"
    assert "Traceback" not in err and err.splitlines()[-1].startswith("emotiond: stopped: "), err
