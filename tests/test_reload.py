"""SIGHUP reloads the config file, checked from outside the process: live settings change in the same session
with subscribers kept, a changed source rebuilds the stages it needs, an invalid file is one line and the daemon
runs on; systemd hears RELOADING=1 (with MONOTONIC_USEC) and READY=1 again."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


class Daemon:
    """`emotiond run --config PATH` on a stream, its events collected as they come."""

    def __init__(self, emotiond: Path, config: Path, env: dict | None = None) -> None:
        self.proc = subprocess.Popen(
            [str(emotiond), "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=REPO, env=env,
        )  # fmt: skip
        self.events: list[dict] = []
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.events.extend(map(json.loads, self.proc.stdout)), daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(l.decode() for l in self.proc.stderr), daemon=True).start()  # noqa: E741

    def wait_for(self, test, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in list(self.events):
                if test(event):
                    return event
            assert time.monotonic() < deadline and self.proc.poll() is None, (self.events[-3:], self.stderr)
            time.sleep(0.05)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


def write(path: Path, url: str, **events) -> None:
    lines = [f"source:\n  uri: {url}\nevents:"] + [f"  {k}: {v}" for k, v in events.items()] or ["  {}"]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def stream(mjpeg):
    return mjpeg(frames=100_000, interval_s=0.02)


def test_sighup_changes_live_settings_in_the_same_session(emotiond, stream, mjpeg, tmp_path):
    config = tmp_path / "c.yaml"
    write(config, stream.url, emit="all", stats_interval_s=0)
    daemon = Daemon(emotiond, config)
    try:
        daemon.wait_for(lambda e: e["type"] == "frame")
        write(config, stream.url, emit="all", stats_interval_s=0.3)  # live: stats on
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(lambda e: e.get("state") == "reloading")
        daemon.wait_for(lambda e: e["type"] == "stats")
        other = mjpeg(frames=100_000, interval_s=0.02)
        write(config, other.url, emit="all", stats_interval_s=0.3)  # a new source: rebuilt
        last = max(e["frame"] for e in daemon.events if e["type"] == "frame")
        daemon.proc.send_signal(signal.SIGHUP)
        # the new stream's frames count from 0 again (a kept source would go on from `last`)
        daemon.wait_for(lambda e: e["type"] == "frame" and e["source"] == other.url and e["frame"] < last)
        config.write_text("source:\n  uri: [not, a, source]\n")  # invalid: logged, the old one runs on
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(lambda e: e.get("state") == "error" and "reload failed" in e["detail"])
        count = len(daemon.events)
        daemon.wait_for(lambda e: e["type"] == "frame" and e["seq"] > daemon.events[count - 1]["seq"])
    finally:
        assert daemon.stop() == 0, daemon.stderr
    events = daemon.events
    assert len({e["session"] for e in events}) == 1 and [e["seq"] for e in events] == list(range(len(events)))
    assert sum("reload failed" in line for line in daemon.stderr) == 1
    assert [e["state"] for e in events if e.get("state") == "reloading"] == ["reloading"] * 3


def test_sighup_tells_systemd_reloading_then_ready(emotiond, stream, tmp_path):
    config = tmp_path / "c.yaml"
    write(config, stream.url, stats_interval_s=0)
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        daemon = Daemon(emotiond, config, env={**os.environ, "NOTIFY_SOCKET": address})
        try:
            messages = [sock.recv(4096).decode()]
            while not messages[-1].startswith("READY=1"):
                messages.append(sock.recv(4096).decode())
            daemon.proc.send_signal(signal.SIGHUP)
            while not messages[-1].startswith("READY=1") or not any(m.startswith("RELOADING=1") for m in messages):
                messages.append(sock.recv(4096).decode())
        finally:
            assert daemon.stop() == 0
    reloading = next(m for m in messages if m.startswith("RELOADING=1"))
    usec = int(reloading.split("MONOTONIC_USEC=")[1])
    assert abs(usec - time.monotonic_ns() // 1000) < 60e6  # CLOCK_MONOTONIC, as systemd wants it


def test_a_reload_adds_an_output_and_keeps_the_subscribers_of_the_others(emotiond, stream, tmp_path):
    sock_a, sock_b = tmp_path / "a.sock", tmp_path / "b.sock"
    config = tmp_path / "c.yaml"
    config.write_text(f"source:\n  uri: {stream.url}\noutput:\n  publishers: ['unix:{sock_a}']\n")
    daemon = Daemon(emotiond, config)
    try:
        deadline = time.monotonic() + 30
        while not sock_a.exists():
            assert time.monotonic() < deadline and daemon.proc.poll() is None, daemon.stderr
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as sub:
            sub.connect(str(sock_a))
            lines = sub.makefile("rb")
            assert json.loads(lines.readline())["type"] == "hello"
            config.write_text(
                f"source:\n  uri: {stream.url}\noutput:\n  publishers: ['unix:{sock_a}', 'unix:{sock_b}']\n"
            )
            daemon.proc.send_signal(signal.SIGHUP)
            seen = []
            while not sock_b.exists() or len([e for e in seen if e["type"] == "frame"]) < 20:
                seen.append(json.loads(lines.readline()))  # the same connection goes on across the reload
            states = [e.get("state") for e in seen]
            assert "online" in states[states.index("reloading") :]
            assert [e["seq"] for e in seen] == list(range(seen[0]["seq"], seen[0]["seq"] + len(seen)))
    finally:
        assert daemon.stop() == 0, daemon.stderr
    assert not sock_a.exists() and not sock_b.exists()


def test_a_reload_says_the_viewers_change_at_the_next_start_each_time_they_differ(emotiond, stream, tmp_path):
    """The page and the window are built once: a reload that asks for another page warns (every time, since the
    running page is still the old one), and one that asks again for the running page does not."""
    config = tmp_path / "c.yaml"
    write(config, stream.url, emit="all")
    daemon = Daemon(emotiond, config)
    warning = "output.show, output.http and output.http_auth_file change at the next start"
    try:
        daemon.wait_for(lambda e: e["type"] == "frame")
        for http, warned in (("'8123'", 1), ("'8123'", 2), ("null", 2)):
            config.write_text(f"source:\n  uri: {stream.url}\noutput:\n  http: {http}\n")
            reloads = sum("reloaded" in line for line in daemon.stderr)
            daemon.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while sum("reloaded" in line for line in daemon.stderr) == reloads and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sum(warning in line for line in daemon.stderr) == warned, daemon.stderr
    finally:
        assert daemon.stop() == 0, daemon.stderr
