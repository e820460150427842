"""The `--http` page against careless and hostile clients, in-process: a request head past its size or line count
gets 431 (a huge request line alone, no answer); a head sent slowly is cut off at its deadline; slow heads from one
address lock out neither /healthz nor the viewers already in; a Host naming another site (DNS rebinding) gets 421;
HEAD has no body; close() with no viewer is quick. And beside it: LiveView's cache never goes back to an older
frame, and a password file may start with a byte order mark."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import pytest

from benchmarks.http import MjpegReader, SseReader, free_port, get
from runtime import http_guard, live
from runtime.frames import Frame
from runtime.http_preview import HttpPreview, read_credentials
from runtime.live import LiveView


@pytest.fixture
def preview():
    preview = HttpPreview(str(free_port()), LiveView())
    yield preview
    preview.close()


def ask(port: int, head: bytes) -> tuple[int, bytes]:
    """(status, body) of the answer to `head` sent as is; status 0 if the connection closed unanswered."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        answer = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    head, _, body = bytes(answer).partition(b"\r\n\r\n")
    return (int(head.split(b" ")[1]) if head else 0), body


def test_a_request_head_past_16_kb_or_64_lines_gets_431(preview):
    port = preview.address.port
    start = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    assert ask(port, start + b"X-Filler: " + b"a" * 12_000 + b"\r\n\r\n")[0] == 200, "a big cookie is fine"
    big = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(20))  # 20 KB, each line legal alone
    many = b"".join(b"X-%d: a\r\n" % i for i in range(80))  # 80 lines, under the stdlib's 100
    for head in (big, many):
        assert ask(port, start + head + b"\r\n")[0] == 431
    assert ask(port, b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n")[0] == 0, "a huge request line: closed"


def test_a_slowly_sent_request_head_is_cut_off_at_its_deadline(preview, monkeypatch):
    monkeypatch.setattr(http_guard, "HEAD_TIMEOUT_S", 1.0, raising=False)
    with socket.create_connection(("127.0.0.1", preview.address.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Slow: ")
        sock.settimeout(0.2)
        t0 = time.monotonic()
        closed = False
        while not closed and time.monotonic() - t0 < 3.0:
            try:
                closed = sock.recv(1024) == b""
            except TimeoutError:
                sock.sendall(b"a")  # a byte in each 0.2 s: no read ever times out
            except ConnectionResetError:
                closed = True
        assert closed and time.monotonic() - t0 < 2.0, "still open after the head's deadline"


def test_slow_heads_from_one_address_lock_out_neither_healthz_nor_viewers(preview):
    port = preview.address.port
    readers = [SseReader(port) if i % 2 else MjpegReader(port) for i in range(20)]  # the benchmark's 20
    slow = []
    for _ in range(130):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET / HTTP/1.1\r\n")  # and nothing more
        slow.append(sock)
    try:
        t0 = time.monotonic()
        assert get(port, "/healthz", timeout=2)[0] == 503, "starting: no frame yet"
        assert get(port, "/", timeout=2)[0] == 200
        assert time.monotonic() - t0 < 2.0
        assert preview.stats()["subscribers"] == 10 and preview.stats()["viewers"] == 10, "no viewer was dropped"
        assert all(reader.is_alive() for reader in readers)
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.parametrize("host", [b"evil.example", b"evil.example:8080", b"127.0.0.1.evil.example"])
def test_a_host_naming_another_site_gets_421_except_on_healthz(preview, host):
    port = preview.address.port
    for path in (b"/", b"/app.js", b"/snapshot.jpg", b"/events", b"/stream.mjpg"):
        assert ask(port, b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host))[0] == 421, path
    assert ask(port, b"GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n" % host)[0] == 503, "probes may use any name"


def test_localhost_addresses_and_a_missing_host_are_answered(preview):
    port = preview.address.port
    for host in (b"localhost", b"LocalHost:%d" % port, b"127.0.0.1:%d" % port, b"[::1]:%d" % port, b"app.localhost"):
        assert ask(port, b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host)[0] == 200, host
    assert ask(port, b"GET / HTTP/1.0\r\n\r\n")[0] == 200, "HTTP/1.0 clients may send no Host"


def test_any_host_is_answered_on_a_network_address():
    preview = HttpPreview(f"0.0.0.0:{free_port()}", LiveView())
    try:
        assert ask(preview.address.port, b"GET / HTTP/1.1\r\nHost: emotiond.lan\r\n\r\n")[0] == 200
    finally:
        preview.close()


def test_head_of_healthz_the_page_and_a_stream_has_no_body(preview):
    port = preview.address.port
    for path, code in ((b"/healthz", 503), (b"/", 200), (b"/app.js", 200), (b"/events", 200)):
        status, body = ask(port, b"HEAD %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path)
        assert (status, body) == (code, b""), path


def test_close_with_no_viewer_is_quick():
    preview = HttpPreview(str(free_port()), LiveView())
    t0 = time.monotonic()
    preview.close()
    assert time.monotonic() - t0 < 0.3


class _Door:
    """A lock whose first taker waits at the door until it is opened, so that it comes in last."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting, self.opened = threading.Event(), threading.Event()
        self.first = True

    def __enter__(self) -> None:
        if self.first:
            self.first = False
            self.waiting.set()
            self.opened.wait(5)
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_the_live_views_cache_never_goes_back_to_an_older_frame(monkeypatch):
    drawn = []
    monkeypatch.setattr(live, "draw_faces", lambda image, faces, caption: drawn.append(caption) or image)
    view = LiveView()

    def offer(index: int) -> None:
        view.offer(Frame(np.full((48, 64, 3), index, np.uint8), index, 0, 0.0), [])

    offer(1)
    view._draw_lock = door = _Door()
    late = threading.Thread(target=view.jpeg)  # takes version 1, then waits at the door
    late.start()
    assert door.waiting.wait(5)
    offer(2)
    version, jpeg = view.jpeg()
    assert version == 2 and len(drawn) == 1
    door.opened.set()
    late.join(5)
    assert view.jpeg() == (2, jpeg) and view.jpeg()[1] is jpeg, "version 2 is still the one cached"
    assert len(drawn) == 1, "version 1 was not drawn over it, nor version 2 again"


def test_a_password_file_may_start_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "http.auth"
    path.write_text("\ufeffviewer:s3cret pass\n", encoding="utf-8")  # as Notepad saves it
    assert read_credentials(str(path)) == b"viewer:s3cret pass"


def test_the_password_file_may_name_systemds_credentials_directory(tmp_path, monkeypatch):
    (tmp_path / "http").write_text("viewer:s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))  # LoadCredential=http:/etc/emotiond/http-password
    assert read_credentials("$CREDENTIALS_DIRECTORY/http") == b"viewer:s3cret"
