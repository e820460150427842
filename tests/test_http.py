"""The `--http` page with plain HTTP clients: the real daemon serves its events as Server-Sent Events (schema-valid,
`hello` first), the annotated frames as MJPEG (JPEGs, at most 960 wide and 15 a second), a snapshot, the page's
files and /healthz; a password when configured; stalled clients slow nothing and do not hold up SIGTERM; every
refusal is one line and exit 2. In-process: a stalled /events client loses its oldest events and is told, the
stream cap, the non-loopback warning. The page in a real browser: tests/test_http_browser.py."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from socket_clients import assert_gaps_announced
from socket_clients import wait_for as wait_until

from benchmarks.http import MjpegReader, SseReader, free_port, get, stalled, wait_up
from runtime import http_preview
from runtime.errors import UserError
from runtime.events import EventBuilder, encode
from runtime.http_preview import HttpPreview
from runtime.live import LiveView

TIMEOUT = 120
PASSWORD = "viewer:s3cret pass"


def wait_for(predicate, timeout: float = 30.0) -> bool:
    return wait_until(predicate, timeout)


def daemon(emotiond: Path, model_dir: Path, clip: Path, http: str, *args: str) -> subprocess.Popen:
    cmd = [str(emotiond), "run", "--source", str(clip), "--model", str(model_dir), "--http", http, *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=clip.parent)


def config(folder: Path, auth_file: Path | None = None) -> str:
    path = folder / "emotiond.yaml"
    text = "events:\n  stats_interval_s: 0.5\n"
    if auth_file is not None:
        text += f"output:\n  http_auth_file: {auth_file}\n"
    path.write_text(text)
    return str(path)


def clean(err: str, port: int, online: bool = True) -> list[str]:
    """stderr's lines after the page's own (said once the daemon is online; `online=False`: it may have been
    stopped before); none may be a traceback."""
    assert "Traceback" not in err and "Exception" not in err, err
    lines = err.splitlines()
    page = f"emotiond: live page at http://127.0.0.1:{port}/"
    assert lines[0] == page or (not online and page not in err), err
    return lines[1:] if lines[0] == page else lines


def fps(stderr: str) -> float:
    return float(re.search(r"\(([\d.]+) frames/s\)", stderr).group(1))


# --- one daemon for the module: a clip wider than the stream's cap, played at its own pace -------------------------


@pytest.fixture(scope="module")
def wide_clip(test_video, tmp_path_factory) -> Path:
    """The test clip four times over, scaled up to 1280x960 (12.8 s at 25 frames/s): wider than MAX_WIDTH."""
    cap = cv2.VideoCapture(str(test_video.path))
    frames = []
    while (grabbed := cap.read())[0]:
        frames.append(cv2.resize(grabbed[1], (1280, 960)))
    cap.release()
    path = tmp_path_factory.mktemp("wide") / "wide.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (1280, 960))
    for frame in frames * 4:
        writer.write(frame)
    writer.release()
    return path


@dataclass
class Served:
    proc: subprocess.Popen
    port: int

    @property
    def name(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def served(emotiond, model_dir, detector_model, wide_clip, tmp_path_factory):
    port = free_port()
    proc = daemon(emotiond, model_dir, wide_clip, str(port), "--realtime", "--config", config(wide_clip.parent))
    wait_up(port, proc)
    assert wait_for(lambda: json.loads(get(port, "/healthz")[2])["status"] == "ok", TIMEOUT), "no frame came"
    yield Served(proc, port)
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


@pytest.mark.slow
def test_events_are_the_daemons_events_as_server_sent_events_hello_first(served, test_video, event_validator):
    reader = SseReader(served.port)
    assert wait_for(lambda: len(reader.of_type("frame")) >= 40 and reader.of_type("stats"))
    reader.stop()
    assert reader.status == 200 and reader.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    events = list(reader.events)
    assert events[0]["type"] == "hello" and events[0]["queue"] == http_preview.QUEUE
    assert events[1]["type"] == "status" and events[1]["state"] == "online", "the latest status comes first"
    for event in events:
        assert not list(event_validator.iter_errors(event)), event
    seqs = [e["seq"] for e in events[1:]]
    first_frame = next(i for i, e in enumerate(events) if e["type"] == "frame")
    live = [e["seq"] for e in events[first_frame:]]
    assert seqs == sorted(set(seqs)) and live == list(range(live[0], live[0] + len(live))), "in order, no gap"
    frames = reader.of_type("frame")
    found = [len(e["faces"]) for e in frames]
    expected = [test_video.faces[e["frame"] % len(test_video.faces)] for e in frames]
    assert sum(f == n for f, n in zip(found, expected, strict=True)) >= 0.9 * len(frames), (found, expected)
    assert frames[0]["size"] == {"width": 1280, "height": 960}, "events describe the source, not the stream"
    figures = reader.of_type("stats")[-1]["outputs"][served.name]
    assert figures["subscribers"] >= 1 and figures["dropped_total"] == 0, figures


@pytest.mark.slow
def test_mjpeg_parts_are_jpegs_at_most_960_wide_and_15_a_second(served):
    reader = MjpegReader(served.port)
    assert wait_for(lambda: len(reader.parts) >= 20)
    reader.stop()
    assert reader.status == 200 and reader.headers["Content-Type"].startswith("multipart/x-mixed-replace; boundary=")
    for part in reader.parts:
        image = cv2.imdecode(np.frombuffer(part, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (720, 960, 3), "scaled down from 1280x960"
    rate = (len(reader.times) - 2) / (reader.times[-1] - reader.times[1])  # from the 2nd: the 1st is the latest
    assert 5 <= rate <= http_preview.MAX_FPS * 1.15, f"{rate:.1f} parts/s from a 25 frames/s clip"


@pytest.mark.slow
def test_snapshot_page_and_its_files_are_served(served):
    status, headers, body = get(served.port, "/snapshot.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (720, 960, 3)
    status, headers, body = get(served.port, "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'src="stream.mjpg"' in body and b'src="app.js"' in body
    assert "default-src 'self'" in headers["Content-Security-Policy"], "the page loads nothing from elsewhere"
    for path, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
        status, headers, body = get(served.port, path)
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
    assert get(served.port, "/nothing-here")[0] == 404
    assert get(served.port, "/../pyproject.toml")[0] == 404


@pytest.mark.slow
def test_healthz_is_200_while_frames_flow(served):
    status, headers, body = get(served.port, "/healthz")
    answer = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert answer["status"] == "ok" and 0 <= answer["frame_age_s"] < 1.0


@pytest.mark.slow
def test_sigterm_ends_the_daemon_within_2_s_despite_stalled_clients(served):
    # The module's last test: it stops the module's daemon.
    stuck = [stalled(served.port, path) for path in ("/events", "/stream.mjpg") for _ in range(2)]
    time.sleep(1.0)  # the stream's buffers fill within a few parts; the events' later
    t0 = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    _, err = served.proc.communicate(timeout=TIMEOUT)
    took = time.monotonic() - t0
    assert served.proc.returncode == 0 and took < 2.0, f"exit {served.proc.returncode} after {took:.2f} s: {err}"
    assert clean(err, served.port)[-1].startswith("emotiond: stopped: ")
    with pytest.raises(ConnectionRefusedError):
        get(served.port, "/healthz")
    for sock in stuck:
        sock.close()


# --- a daemon each ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_healthz_is_503_before_the_first_frame_and_gone_after_exit(emotiond, model_dir, detector_model, test_video):
    port = free_port()
    proc = daemon(emotiond, model_dir, test_video.path, str(port))
    wait_up(port, proc)  # the page is up before the models have loaded
    answers = []
    while proc.poll() is None:
        with contextlib.suppress(ConnectionError):  # the daemon may close its port between check and request
            status, _, body = get(port, "/healthz")
            answers.append((status, json.loads(body)["status"]))
        time.sleep(0.005)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0 and clean(err, port)[-1].startswith("emotiond: eos: ")
    assert answers[0] == (503, "starting"), answers[:3]
    assert (200, "ok") in answers and set(answers) <= {(503, "starting"), (200, "ok")}
    with pytest.raises(ConnectionRefusedError):
        get(port, "/healthz")


@pytest.mark.slow
def test_stalled_clients_do_not_slow_the_daemon(emotiond, model_dir, detector_model, long_clip):
    def run(stalling: bool) -> float:
        port = free_port()
        proc = daemon(emotiond, model_dir, long_clip, str(port))
        wait_up(port, proc)  # before the first frame: they stall over the whole run
        stuck = [stalled(port, p) for p in ("/events", "/stream.mjpg") for _ in range(2)] if stalling else []
        _, err = proc.communicate(timeout=TIMEOUT)
        for sock in stuck:
            sock.close()
        assert proc.returncode == 0 and clean(err, port)[-1].startswith("emotiond: eos: 360 frames"), err
        return fps(err)

    alone, with_stalled = run(stalling=False), run(stalling=True)
    assert with_stalled / alone > 0.5, f"{with_stalled:.1f} frames/s with stalled clients, {alone:.1f} without"


@pytest.mark.slow
def test_the_password_is_asked_for_except_by_healthz(emotiond, model_dir, detector_model, test_video, tmp_path):
    auth = tmp_path / "http.auth"
    auth.write_text(PASSWORD + "\n")
    port = free_port()
    proc = daemon(emotiond, model_dir, test_video.path, str(port), "--realtime", "--config", config(tmp_path, auth))
    try:
        wait_up(port, proc)
        for path in ("/", "/events", "/stream.mjpg", "/snapshot.jpg", "/app.js"):
            status, headers, _ = get(port, path)
            assert status == 401 and headers["WWW-Authenticate"].startswith('Basic realm="emotiond"'), path
            assert get(port, path, auth="viewer:wrong")[0] == 401, path
        assert get(port, "/", auth=PASSWORD)[0] == 200
        reader = SseReader(port, auth=PASSWORD)
        assert wait_for(lambda: reader.events) and reader.events[0]["type"] == "hello"
        reader.stop()
        assert get(port, "/healthz")[0] in (200, 503), "probes carry no password"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0 and clean(err, port, online=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("busy port", "is in use"),
        ("malformed address", "port must be 1..65535"),
        ("missing password file", "cannot read it: No such file or directory"),
        ("empty password file", "expected one line USER:PASSWORD"),
        ("password file without a colon", "expected one line USER:PASSWORD"),
    ],
)
def test_refusals_are_one_line_and_exit_2(emotiond, model_dir, test_video, tmp_path, kind, words):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        http, auth = str(busy.getsockname()[1]) if kind == "busy port" else str(free_port()), None
        if kind == "malformed address":
            http = "localhost:http"
        elif "password" in kind:
            auth = tmp_path / "http.auth"
            if kind != "missing password file":
                auth.write_text("" if kind == "empty password file" else "viewer s3cret\n")
        args = ["--config", config(tmp_path, auth)] if auth else []
        proc = daemon(emotiond, model_dir, test_video.path, http, *args)
        _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 2 and err.count("\n") == 1 and err.startswith("error: output.http"), err
    assert words in err and "s3cret" not in err, err


# --- in-process -------------------------------------------------------------------------------------------------


def test_a_non_loopback_address_is_warned_about_with_the_password_state(tmp_path, capsys):
    auth = tmp_path / "http.auth"
    auth.write_text(PASSWORD)
    for auth_file, words in ((None, "with no password"), (str(auth), "behind the password")):
        HttpPreview(f"0.0.0.0:{free_port()}", LiveView(), auth_file).close()
        (warning,) = capsys.readouterr().err.splitlines()
        assert warning.startswith("emotiond: warning: output.http ") and "not loopback" in warning
        assert "reachable from other machines" in warning and words in warning, warning


def test_a_stalled_events_client_loses_its_oldest_events_and_is_told(event_validator):
    builder = EventBuilder("s" * 32, source="test", model_id="m")
    port = free_port()
    preview = HttpPreview(str(port), LiveView())
    preview.set_hello(builder.hello)
    fast, slow = SseReader(port), stalled(port, "/events")
    assert wait_for(lambda: preview.stats()["subscribers"] == 2, 5)
    took = []
    for i in range(1500):
        t0 = time.perf_counter()
        preview.publish(encode(builder.status("online", "x" * 500)))
        took.append(time.perf_counter() - t0)
        time.sleep(0.0002)
        # The fast reader keeps up: never more than a quarter of its queue behind (on a loaded CI box its thread
        # can miss a turn; the slow one never reads at all)
        assert wait_for(lambda i=i: i + 2 - len(fast.events) < http_preview.QUEUE // 4, 5), (
            "the fast reader fell behind"
        )
    figures = preview.stats()
    received = bytearray()

    def read_again() -> None:  # gets the notice, then the newest events
        while chunk := slow.recv(65536):
            received.extend(chunk)

    reading = threading.Thread(target=read_again, daemon=True)
    reading.start()
    assert wait_for(lambda: b'"seq":1499' in received, 10)
    t0 = time.monotonic()
    preview.close()
    assert time.monotonic() - t0 < 1.0
    reading.join(timeout=5)
    fast.join(timeout=5)
    assert [e["seq"] for e in fast.events[1:]] == list(range(1500)), "the fast one lost nothing"
    body = bytes(received).split(b"\r\n\r\n", 1)[1].decode()
    lines = [json.loads(x.removeprefix("data: ")) for x in body.split("\n\n") if x and not x.startswith(":")]
    notices = assert_gaps_announced(lines, event_validator)
    dropped = notices[-1]["dropped_total"]
    assert len(lines) - 1 - len(notices) + dropped == 1500
    assert figures == {"subscribers": 2, "viewers": 0, "dropped_total": dropped}
    took.sort()  # a blocked write would stall every publish after the queue filled; a busy CPU stalls a few
    assert took[len(took) // 2] < 0.001 and took[int(len(took) * 0.98)] < 0.02, "publish() waited for a client"


def test_streams_beyond_the_cap_get_503_and_close_ends_the_rest(monkeypatch):
    monkeypatch.setattr(http_preview, "MAX_STREAMS", 2)
    port = free_port()
    preview = HttpPreview(str(port), LiveView())
    readers = [SseReader(port), MjpegReader(port)]
    assert [r.status for r in readers] == [200, 200]
    status, headers, _ = get(port, "/events")
    assert status == 503 and headers["Retry-After"]
    assert get(port, "/")[0] == 200, "the page itself is not a stream"
    t0 = time.monotonic()
    preview.close()
    preview.close()  # idempotent: the outputs and the daemon's exit stack both close it
    for reader in readers:
        reader.join(timeout=2)
        assert not reader.is_alive()
    assert time.monotonic() - t0 < 1.5
    with pytest.raises(ConnectionRefusedError):
        get(port, "/healthz")


def test_bad_addresses_and_password_files_are_user_errors(tmp_path):
    for spec in ("", "host:", "[::1", "a:b:8080", "99999"):
        with pytest.raises(UserError, match=r"^output\.http "):
            HttpPreview(spec, LiveView())
    (tmp_path / "user-only").write_text("viewer:\n")
    with pytest.raises(UserError, match="expected one line USER:PASSWORD"):
        HttpPreview(str(free_port()), LiveView(), str(tmp_path / "user-only"))


def test_a_mistake_found_after_the_page_is_up_is_still_the_only_line(emotiond, model_dir, tmp_path):
    proc = daemon(emotiond, model_dir, tmp_path / "no-such-clip.mp4", str(free_port()))
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "no-such-clip.mp4" in err
