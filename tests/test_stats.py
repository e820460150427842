"""`stats` events: every interval, what the pipeline did over it (frames, faces, drops, per-stage latency
percentiles), summing to the run's totals; and the figures' arithmetic on known numbers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from runtime.stats import Stats, status_line

REPO = Path(__file__).resolve().parents[1]


def test_stats_take_the_interval_and_start_anew():
    stats = Stats()
    for ms in (1.0, 2.0, 3.0, 4.0, 100.0):
        stats.record({"detect": ms, "total": ms + 1}, faces=2)
    first = stats.take(dropped_total=3)
    assert first["frames"] == 5 and first["faces"] == 10 and first["dropped"] == 3
    assert first["latency_ms"]["detect"]["p50"] == 3.0 and first["latency_ms"]["detect"]["max"] == 100.0
    assert first["latency_ms"]["total"]["p95"] == pytest.approx(81.8)
    stats.record({"detect": 5.0}, faces=0)
    second = stats.take(dropped_total=4, skipped_total=2)
    assert second["frames"] == 1 and second["dropped"] == 1 and second["frames_total"] == 6
    assert first["skipped_total"] == 0 and second["skipped_total"] == 2
    assert "total" not in second["latency_ms"]
    assert status_line(first).endswith("10 faces, 3 dropped, p95 82 ms")


def test_the_daemon_publishes_stats_that_add_up(emotiond, test_video, tmp_path, event_validator):
    config = tmp_path / "c.yaml"
    config.write_text("events:\n  stats_interval_s: 0.5\n")
    run = subprocess.run(
        [str(emotiond), "run", "--config", str(config), "--source", str(test_video.path), "--realtime"],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    stats = [e for e in events if e["type"] == "stats"]
    frames = [e for e in events if e["type"] == "frame"]
    assert len(stats) >= 3, stats  # the clip plays for several seconds at its own rate
    for event in stats:
        event_validator.validate(event)
        assert event["interval_s"] >= 0.45  # never early (a busy machine may make it late: timing is benchmarks')
    uptimes = [e["uptime_s"] for e in stats]
    assert uptimes == sorted(uptimes) and sum(e["interval_s"] for e in stats) == pytest.approx(uptimes[-1], abs=0.5)
    assert sum(e["frames"] for e in stats) <= len(frames)
    assert stats[-1]["frames_total"] == sum(e["frames"] for e in stats)
    busy = [e for e in stats if e["frames"]]
    assert busy and all(e["fps"] > 0 and {"detect", "classify", "total"} <= set(e["latency_ms"]) for e in busy)
    assert sum(e["faces"] for e in stats) <= sum(len(f["faces"]) for f in frames)


def test_a_stalled_subscribers_drops_show_in_stats(emotiond, test_video, tmp_path):
    from socket_clients import Reader, connect_when_up

    path = tmp_path / "ev.sock"
    spec = f"unix:{path}?queue=8"
    config = tmp_path / "c.yaml"
    config.write_text("events:\n  stats_interval_s: 0.3\n")
    proc = subprocess.Popen(
        [str(emotiond), "run", "--config", str(config), "--source", str(test_video.path), "--realtime",
         "--output", spec], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip

    healthy = Reader(connect_when_up(str(path)))
    stalled = connect_when_up(str(path), rcvbuf=4096)  # connected, never reads
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    healthy.join(timeout=10)
    stalled.close()
    stats = [e for e in healthy.lines if e["type"] == "stats"]
    outputs = stats[-1]["outputs"][spec]
    assert outputs["subscribers"] == 2 and outputs["dropped_total"] > 0, stats[-1]
