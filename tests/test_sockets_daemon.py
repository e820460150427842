"""Socket publishers with the real daemon on a real clip: several subscribers get every event in order, `hello`
first; a stalled subscriber neither slows the pipeline nor the others; the socket file's life cycle; every refusal
is one line and exit 2; `emotiond subscribe` follows the daemon across a restart."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from socket_clients import Reader, connect_when_up, free_port

from runtime.events import PUBLISHED_TYPES

TIMEOUT = 120


def daemon(emotiond: Path, model_dir: Path, clip: Path, *outputs: str, realtime: bool = False) -> subprocess.Popen:
    cmd = [str(emotiond), "run", "--source", str(clip), "--model", str(model_dir)]
    cmd += [arg for out in outputs for arg in ("--output", out)] + (["--realtime"] if realtime else [])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=clip.parent)


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    return out, err


def fps(stderr: str) -> float:
    return float(re.search(r"\(([\d.]+) frames/s\)", stderr).group(1))


@pytest.mark.slow
def test_every_subscriber_gets_hello_then_every_event_in_order(
    emotiond, model_dir, detector_model, test_video, tmp_path, event_validator
):
    path, port = tmp_path / "ev.sock", free_port()
    proc = daemon(emotiond, model_dir, test_video.path, f"unix:{path}", f"tcp:{port}")
    readers = [Reader(connect_when_up(str(path))) for _ in range(2)] + [Reader(connect_when_up(("127.0.0.1", port)))]
    out, err = finish(proc)
    for r in readers:
        r.join(timeout=10)
    assert out == "", "stdout is not a publisher: it stays empty"
    assert err.count("\n") == 1 and err.startswith("emotiond: eos: ")
    assert not path.exists(), "the socket file is removed at exit"
    frames = int(re.search(r"eos: (\d+) frames", err).group(1))
    hello = readers[0].lines[0]
    assert hello["type"] == "hello" and hello["source"] == str(test_video.path) and hello["queue"] == 256
    assert hello["publishes"] == {"types": list(PUBLISHED_TYPES), "emit": "all"}
    assert hello["session"] == readers[0].lines[1]["session"]
    for line in readers[0].lines:
        assert not list(event_validator.iter_errors(line)), line
    common = max(r.events()[0]["seq"] for r in readers)  # `starting` may come before a subscriber is accepted
    for r in readers:
        assert r.lines[0]["type"] == "hello" and r.contiguous() and r.frames() == list(range(frames))
        assert r.lines[-1]["type"] == "status" and r.lines[-1]["state"] == "eos"
        assert [e for e in r.events() if e["seq"] >= common] == [e for e in readers[0].events() if e["seq"] >= common]


@pytest.mark.slow
def test_a_stalled_subscriber_slows_neither_the_pipeline_nor_the_others(
    emotiond, model_dir, detector_model, long_clip, tmp_path
):
    def run(stalled: bool) -> tuple[float, Reader, Reader | None]:
        path = tmp_path / f"ev{int(stalled)}.sock"
        proc = daemon(emotiond, model_dir, long_clip, f"unix:{path}?queue=32")
        other = Reader(connect_when_up(str(path)))
        slow = Reader(connect_when_up(str(path), rcvbuf=4096), reading=False) if stalled else None
        end = time.monotonic() + 60  # a publisher that blocks on the stalled subscriber stops the run: no hang
        while slow and proc.poll() is None and len(other.lines) < 180 and time.monotonic() < end:
            time.sleep(0.002)  # stalled over more than half the run
        if slow:
            slow.go.set()  # reads again: within the daemon's close grace at the latest
        _, err = finish(proc)
        other.join(timeout=10)
        return fps(err), other, slow

    base_fps, alone, _ = run(stalled=False)
    with_fps, other, slow = run(stalled=True)
    slow.join(timeout=10)
    assert with_fps / base_fps > 0.5, f"{with_fps:.1f} frames/s with a stalled subscriber, {base_fps:.1f} without"
    assert other.contiguous() and other.frames() == alone.frames() == list(range(len(alone.frames()))), "none lost"
    assert not [e for e in other.lines if e["type"] == "dropped"]
    notices = [e for e in slow.lines if e["type"] == "dropped"]
    assert notices, "the stalled subscriber is told in-band"
    first, last = slow.events()[0]["seq"], other.events()[-1]["seq"]
    assert len(slow.events()) + notices[-1]["dropped_total"] == last - first + 1
    assert slow.events()[-1] == other.events()[-1], "it keeps the newest events"


@pytest.mark.slow
def test_a_stale_socket_file_is_replaced(emotiond, model_dir, detector_model, test_video, tmp_path):
    path = tmp_path / "ev.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # what a crashed run leaves: a socket file nobody listens on
    stale.close()
    proc = daemon(emotiond, model_dir, test_video.path, f"unix:{path}")
    reader = Reader(connect_when_up(str(path)))
    finish(proc)
    reader.join(timeout=10)
    assert reader.lines[0]["type"] == "hello" and reader.frames() == list(range(len(test_video.faces)))
    assert not path.exists()


def refusal(kind: str, tmp_path: Path, hold: list) -> str:
    if kind == "live socket":
        live = socket.socket(socket.AF_UNIX)
        live.bind(str(tmp_path / "ev.sock"))
        live.listen()
        hold.append(live)
        return f"unix:{tmp_path}/ev.sock"
    if kind == "busy port":
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        hold.append(busy)
        return f"tcp:127.0.0.1:{busy.getsockname()[1]}"
    return {
        "missing directory": f"unix:{tmp_path}/missing/ev.sock",
        "directory not writable": "unix:/proc/sys/ev.sock",
        "unknown scheme": "mqtt:localhost:1883",
        "malformed address": "tcp:127.0.0.1:port",
    }[kind]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("live socket", "in use by a running daemon"),
        ("busy port", "is in use"),
        ("missing directory", "does not exist"),
        ("directory not writable", "not writable"),
        ("unknown scheme", "unknown publisher"),
        ("malformed address", "port must be"),
    ],
)
def test_refusals_are_one_line_and_exit_2(emotiond, model_dir, test_video, tmp_path, kind, words):
    hold: list[socket.socket] = []
    spec = refusal(kind, tmp_path, hold)
    out, err = daemon(emotiond, model_dir, test_video.path, "stdout", spec).communicate(timeout=TIMEOUT)
    assert (out, err.count("\n")) == ("", 1) and err.startswith("error: output") and words in err, err
    if kind == "live socket":
        assert (tmp_path / "ev.sock").exists(), "a live daemon's socket is left alone"
    for sock in hold:
        sock.close()


@pytest.mark.slow
def test_subscribe_follows_the_daemon_across_a_restart(emotiond, model_dir, detector_model, test_video, tmp_path):
    address = f"unix:{tmp_path}/ev.sock"
    child = subprocess.Popen(
        [str(emotiond), "subscribe", address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert "cannot connect" in child.stderr.readline()  # up before the daemon: it waits for it
    lines: list[dict] = []
    threading.Thread(target=lambda: lines.extend(json.loads(line) for line in child.stdout), daemon=True).start()
    for _ in range(2):
        finish(daemon(emotiond, model_dir, test_video.path, address, realtime=True))
    deadline = time.monotonic() + 10
    while sum(e["type"] == "hello" for e in lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=10) == 0
    err = [re.sub(r"^emotiond subscribe: |unix:\S+", "", line) for line in child.stderr.read().splitlines()]
    hellos = [e for e in lines if e["type"] == "hello"]
    assert len(hellos) == 2 and hellos[0]["session"] != hellos[1]["session"], [e["type"] for e in lines]
    assert lines[0]["type"] == "hello" and {e["type"] for e in lines if e not in hellos} <= set(PUBLISHED_TYPES)
    assert any(e["session"] == hellos[1]["session"] for e in lines if e["type"] == "frame")
    lost = " the daemon closed the connection; reconnecting"
    assert err == ["connected to ", lost, "connected to ", lost], "one line per outage, one when back"
