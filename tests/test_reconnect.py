"""A live source that is lost comes back: the capture thread reopens it with backoff, reports each step, and frames
flow again; files and a source that never opened are not retried."""

from __future__ import annotations

import threading
import time

import pytest

from runtime.errors import UserError
from runtime.reconnect import Backoff, reopen
from runtime.sources import NOTHING, open_source


def test_backoff_doubles_up_to_its_cap():
    delays = Backoff(0.5, 3).delays()
    assert [next(delays) for _ in range(6)] == [0.5, 1, 2, 3, 3, 3]


def test_reopen_reports_each_attempt_and_stops_when_asked():
    seen, calls = [], []

    def failing():
        calls.append(1)
        raise UserError("refused")

    stop = threading.Event()
    threading.Timer(0.25, stop.set).start()
    assert reopen(failing, Backoff(0.02, 0.08), stop, lambda s, d, **f: seen.append((s, f)), "lost") is None
    states = [s for s, _ in seen]
    assert states[0] == "offline" and set(states[1:]) == {"reconnecting"}
    retries = [f["retry_s"] for s, f in seen if s == "reconnecting"]
    assert retries[:4] == [0.02, 0.04, 0.08, 0.08] and len(calls) >= 3


def test_a_stream_that_goes_away_and_returns_is_reopened(mjpeg):
    first = mjpeg(frames=10_000, interval_s=0.01)
    statuses: list[tuple[str, dict]] = []
    source = open_source(
        first.url, stall_timeout_s=1.0, reconnect=Backoff(0.1, 0.4),
        on_status=lambda state, detail, **f: statuses.append((state, f)),
    )  # fmt: skip
    with source:
        assert source.read(timeout=5) is not None
        first.close()  # the server is gone: the connection drops, new ones are refused
        time.sleep(1.0)
        assert ("offline" in [s for s, _ in statuses]) and ("reconnecting" in [s for s, _ in statuses])
        mjpeg(frames=10_000, interval_s=0.01, port=first.port)  # it comes back on its address
        deadline, frame = time.monotonic() + 15, NOTHING
        while time.monotonic() < deadline and statuses[-1][0] != "online":
            time.sleep(0.05)
        assert statuses[-1][0] == "online", statuses
        while frame is NOTHING and time.monotonic() < deadline:
            frame = source.poll(0.1)
        assert frame is not None and frame is not NOTHING
    attempts = [f["attempt"] for s, f in statuses if s == "reconnecting"]
    assert attempts == list(range(1, len(attempts) + 1))


def test_a_file_is_not_reopened_at_its_end(test_video):
    with open_source(str(test_video.path), reconnect=Backoff()) as source:
        assert not source.reconnects
        assert sum(1 for _ in source) == len(test_video.faces)


def test_a_source_that_never_opened_is_an_error_not_a_retry():
    with pytest.raises(UserError, match="cannot open source"):
        open_source("http://127.0.0.1:9/none.mjpg", reconnect=Backoff())


def test_the_daemon_reports_the_loss_and_carries_on_in_the_same_session(emotiond, mjpeg, tmp_path, event_validator):
    """From outside: a stream server that goes away and returns gives offline / reconnecting / online status
    events and then frames again, with one session and seq going on."""
    import json
    import signal
    import subprocess

    first = mjpeg(frames=100_000, interval_s=0.02)
    config = tmp_path / "c.yaml"
    config.write_text("source:\n  stall_timeout_s: 1.0\n  reconnect_initial_s: 0.2\n  reconnect_max_s: 0.5\n")
    proc = subprocess.Popen(
        [str(emotiond), "run", "--config", str(config), "--source", first.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    events: list[dict] = []
    reader = threading.Thread(target=lambda: events.extend(json.loads(line) for line in proc.stdout), daemon=True)
    reader.start()

    def wait_for(test, timeout=30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(test(e) for e in list(events)):
            assert time.monotonic() < deadline and proc.poll() is None, (events[-3:], proc.poll())
            time.sleep(0.05)

    try:
        wait_for(lambda e: e["type"] == "frame")
        first.close()
        wait_for(lambda e: e.get("state") == "reconnecting")
        second = mjpeg(frames=100_000, interval_s=0.02, port=first.port)
        wait_for(lambda e: e.get("state") == "online" and "reconnected" in e["detail"])
        seen = len(events)
        wait_for(lambda e: e["type"] == "frame" and e["seq"] > events[seen - 1]["seq"])
        second.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        reader.join(timeout=5)
    assert proc.returncode == 0, proc.stderr.read().decode()
    states = [e["state"] for e in events if e["type"] == "status"]
    assert states[:2] == ["starting", "online"] and "offline" in states and states[-1] == "stopping"
    assert len({e["session"] for e in events}) == 1
    assert [e["seq"] for e in events] == list(range(len(events)))
    for event in events:
        event_validator.validate(event)


def test_the_watchdog_hears_the_loop_while_a_source_reconnects():
    """No frames while a camera is away must not look like a hung daemon to systemd (WatchdogSec=)."""
    from runtime.pipeline import Pipeline
    from runtime.sources import Source

    class Away(Source):
        reconnects = True

        def _capture(self) -> None:
            self._stop.wait(30)  # reconnecting, for longer than the test

    beats: list[float] = []
    stop = threading.Event()
    source = Away("away", live=True, stall_timeout_s=0.5)
    pipeline = Pipeline(source, [None], None, None, None, None, None, stop=stop, on_heartbeat=lambda: beats.append(1))
    threading.Timer(2.6, stop.set).start()
    with source:
        assert pipeline.run(overlap=False) == "stopped"  # not "stalled": it reconnects
    assert len(beats) >= 3  # about one a second


def test_backoff_goes_on_while_a_reopened_source_fails_at_once():
    from runtime.reconnect import reopen

    delays = Backoff(0.01, 1.0).delays()
    waits = []
    for _ in range(3):  # opens, then fails on its first read, three times: no frame in between
        reopen(lambda: "cap", delays, threading.Event(), lambda s, d, **f: waits.append(f.get("retry_s")), "lost")
    assert [w for w in waits if w is not None] == [0.01, 0.02, 0.04]


def test_an_open_that_succeeds_after_it_was_given_up_is_freed():
    from runtime.sources import run_bounded

    freed, release = [], threading.Event()

    def slow_open() -> str:
        release.wait(5)
        return "capture"

    with pytest.raises(UserError, match="no answer within"):
        run_bounded(slow_open, "cannot open source x", 0.2, discard=freed.append)
    release.set()  # the open completes after all, with nobody to read it
    deadline = time.monotonic() + 5
    while not freed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert freed == ["capture"]
