"""The `--http` page (output.http): a browser preview of the daemon, and two streams other programs may read.

    GET /              the page (runtime/web: static HTML, CSS and JS; no build step, nothing from other sites)
    GET /events        Server-Sent Events: one `data: {JSON event}` per event, the lines socket subscribers get:
                       `hello` first, then the latest `status` and `stats` seen (so a page is not empty until the
                       next), then every event; `dropped` notices as on sockets. A `:` comment every HEARTBEAT_S.
    GET /stream.mjpg   multipart/x-mixed-replace JPEGs of the annotated frames, at most MAX_FPS, MAX_WIDTH wide
    GET /snapshot.jpg  the latest annotated frame
    GET /healthz       200 {"status": "ok", "frame_age_s": ...} while frames flow (the latest younger than
                       HEALTHY_S), else 503; open without the password (runtime.http_page says why)

HEAD is answered too, without the body. On loopback, a Host naming neither localhost nor an IP address gets 421
(DNS rebinding; runtime.http_guard, which also caps connections and request heads).

Loopback by default; another address is warned about. Optional HTTP basic auth (output.http_auth_file). Under
socket activation the page takes up the TCP socket systemd passed for its address, or the one `systemd:NAME`
names, as the socket outputs do (runtime.addresses): the port then accepts while the daemon restarts.

Why the standard library's ThreadingHTTPServer: the daemon is threaded, and a thread per connection with plain
blocking writes (each with a timeout) is the smallest correct fit: publish() only appends to per-client queues
and wakes their threads, and close() ends a write stuck on a stalled client by shutting its socket down. An
asyncio server (aiohttp) would need its own loop thread and a hand-off per event; WSGI servers (waitress,
werkzeug) also hold a thread per streaming response, add a dependency, and cannot interrupt a stuck write.
The cost, a thread per client, is capped (MAX_STREAMS; connections: runtime.http_guard).

Slow clients lose, never slow the daemon: an /events client has a bounded queue (QUEUE events) whose oldest are
dropped and counted, as on sockets; /stream.mjpg viewers all get the newest JPEG, encoded once (one encoder
thread, at most MAX_FPS, only while someone watches), and skip the frames they were too slow for.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable

from runtime.addresses import listen, parse_http_address
from runtime.errors import UserError, printable, secret_path
from runtime.events import dropped_notice, encode
from runtime.live import LiveView
from runtime.publishers import Publisher

MAX_FPS = 15  # frames/s of /stream.mjpg, however fast the daemon runs
MAX_WIDTH = 960  # pixels; wider frames are scaled down
JPEG_QUALITY = 80
QUEUE = 256  # events an /events client's queue holds before its oldest are dropped (as on sockets)
BATCH_S = 0.04  # an /events client is written at most this often: at 300 events/s, 25 wake-ups instead of 300
HEARTBEAT_S = 15.0  # a comment (SSE) or the last frame again (MJPEG) when idle: proxies keep the stream open
HEALTHY_S = 5.0  # /healthz: frames flow while the latest is younger than this
MAX_STREAMS = 64  # /events and /stream.mjpg clients at once; more get 503
CLIENT_TIMEOUT_S = 15.0  # a client that takes nothing for this long is dropped (its request: runtime.http_guard)
CLOSE_GRACE_S = 0.25  # at close, clients that keep up get this long to take the last events (eos, stopping)


class _Subscriber:
    """One /events client's queue."""

    __slots__ = ("dropped_total", "pending_drops", "queue")

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque()
        self.pending_drops = 0  # dropped since the last notice
        self.dropped_total = 0


def read_credentials(path: str) -> bytes:
    """output.http_auth_file: one line USER:PASSWORD -> b"USER:PASSWORD"; UserError if unreadable or malformed."""
    where = f"output.http_auth_file {printable(path)!r}"
    try:
        text = secret_path(path).read_text(encoding="utf-8-sig")  # as Notepad saves it, with a byte order mark
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{where}: cannot read it: {printable(getattr(e, 'strerror', None) or e)}") from None
    line = text.splitlines()[0] if text.strip() else ""
    user, colon, password = line.partition(":")
    if not (user and colon and password):
        raise UserError(f"{where}: expected one line USER:PASSWORD")
    return line.encode("utf-8")


def _remembered(line: bytes) -> tuple[str, int] | None:
    """(kind, seq) of the lines a new /events client gets first: the latest `status` of the daemon or its source
    (not of an output's link) and the latest `stats`; None for the rest. Frames, the hot path, are told by their
    first bytes; the rest (a few lines a minute) are parsed."""
    if line.startswith(b'{"type":"frame"'):
        return None
    event = json.loads(line)
    kind = event.get("type")
    if (kind == "status" and "output" not in event) or kind == "stats":
        return kind, event.get("seq", 0)
    return None


class HttpPreview(Publisher):
    """Serves the page and its streams on `spec` ("[HOST:]PORT" or "systemd:NAME") from the frames of `live` and
    the event lines given to publish(); `passed`: the socket systemd passed that it serves on, if any. `stop` (the
    daemon's stop flag): once set, no frame is encoded and MJPEG streams end; /events goes on until close(), so its
    clients get the last status events."""

    def __init__(
        self, spec: str, live: LiveView, auth_file: str | None = None, stop: threading.Event | None = None
    ) -> None:
        from runtime.http_page import Handler, Server, load_page  # the request side; imports this module

        self.address = parse_http_address(spec)
        self.credentials = read_credentials(auth_file) if auth_file else None  # checked before anything is bound
        self.page = load_page()
        self.live = live
        self._stop = stop or threading.Event()
        password = "behind the password" if self.credentials else "with no password (output.http_auth_file)"
        where = f"output.http {printable(spec)!r}"
        exposed = f"the page is reachable from other machines (unencrypted), {password}"
        listener = listen(self.address, where, exposed, unix=False)
        self.passed = listener.passed  # no output may take it too (runtime.outputs)
        host, port = listener.sock.getsockname()[:2]
        self.name = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self._lock = threading.Condition()  # /events: subscribers, their queues, the latest status and stats
        self._subs: list[_Subscriber] = []
        self._latest: dict[str, tuple[int, bytes]] = {}  # "status"/"stats" -> (seq, line)
        self._hello: Callable[[], dict] | None = None
        self._streams = 0
        self._dropped_gone = 0  # dropped for /events clients that have left
        self._frames = threading.Condition()  # /stream.mjpg: the latest JPEG and its viewers
        self._jpeg: tuple[int, bytes | None] = (0, None)  # (number, JPEG): the number grows per encoded frame
        self._viewers = 0
        self._frames_over = False
        self._closing = threading.Event()
        self._closed = False
        self._server = Server(listener.sock, Handler, self)
        self._threads = [
            threading.Thread(target=self._server.serve_forever, args=(0.1,), name=f"http {self.name}", daemon=True),
            threading.Thread(target=self._encode_frames, name=f"http {self.name} mjpeg", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # --- the pipeline's side: never blocks ---------------------------------------------------------------------
    def publish(self, line: bytes) -> None:
        remembered = _remembered(line)
        with self._lock:
            if remembered:
                kind, seq = remembered
                self._latest[kind] = (seq, line)
            if self._closed or not self._subs:
                return
            for sub in self._subs:
                if len(sub.queue) >= QUEUE:
                    sub.queue.popleft()
                    sub.pending_drops += 1
                    sub.dropped_total += 1
                sub.queue.append(line)
            self._lock.notify_all()

    def set_hello(self, make: Callable[[], dict]) -> None:
        self._hello = make

    def stats(self) -> dict:
        """For stats events (runtime.outputs): /events subscribers and /stream.mjpg viewers now, events dropped
        for slow subscribers since the start."""
        with self._lock:
            dropped = self._dropped_gone + sum(s.dropped_total for s in self._subs)
            return {"subscribers": len(self._subs), "viewers": self._viewers, "dropped_total": dropped}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
        self._closing.set()
        with self._frames:
            self._frames.notify_all()  # the encoder, waiting for a viewer, ends now
        self._server.shutdown()  # serve_forever returns within its 0.1 s poll: no new client
        self._server.server_close()
        self._server.wait_idle(CLOSE_GRACE_S)  # /events clients that keep up take their last events
        self._server.hang_up()  # the rest, stalled in a write, are cut off: their threads end at once
        self._server.wait_idle(1.0)
        for thread in self._threads:
            thread.join(timeout=1.0)

    # --- the client threads (called by runtime.http_page.Handler) ---------------------------------------------
    def admit(self) -> bool:
        """Count a new /events or /stream.mjpg client in, False if MAX_STREAMS are already there (or closing)."""
        with self._lock:
            if self._streams >= MAX_STREAMS or self._closed:
                return False
            self._streams += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._streams -= 1

    def serve_events(self, write: Callable[[bytes], object]) -> None:
        """Write Server-Sent Events until the client leaves (OSError from write) or close()."""
        sub = _Subscriber()
        with self._lock:
            sub.queue.extend(line for _, line in sorted(self._latest.values()))
            self._subs.append(sub)
        try:
            hello = self._hello
            if hello is not None:
                write(_sse(encode({**hello(), "queue": QUEUE})))
            while True:
                with self._lock:
                    self._lock.wait_for(lambda: sub.queue or self._closed, HEARTBEAT_S)
                    lines, drops, closed = list(sub.queue), sub.pending_drops, self._closed
                    sub.queue.clear()
                    sub.pending_drops = 0
                if drops:
                    lines.insert(0, encode(dropped_notice(drops, sub.dropped_total)))
                if lines:
                    write(b"".join(map(_sse, lines)))
                elif not closed:
                    write(b": keep-alive\n\n")
                if closed:
                    return
                self._closing.wait(BATCH_S)
        finally:
            with self._lock:
                self._subs.remove(sub)
                self._dropped_gone += sub.dropped_total

    def serve_stream(self, write: Callable[[bytes], object], boundary: bytes) -> None:
        """Write multipart JPEG parts, the newest frame each time, until the client leaves or the stream ends."""
        with self._frames:
            self._viewers += 1
            self._frames.notify_all()  # the encoder starts
        try:
            sent = 0
            while True:
                with self._frames:
                    self._frames.wait_for(lambda sent=sent: self._jpeg[0] > sent or self._frames_over, HEARTBEAT_S)
                    (number, jpeg), over = self._jpeg, self._frames_over
                if over:
                    return
                if jpeg is not None:  # a new frame, or after HEARTBEAT_S the same again
                    head = b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % (boundary, len(jpeg))
                    write(head + jpeg + b"\r\n")
                sent = number
        finally:
            with self._frames:
                self._viewers -= 1

    def _encode_frames(self) -> None:
        """One encoder for every viewer: the newest frame as JPEG, at most MAX_FPS, only while someone watches."""
        version = 0
        try:
            while not self._ending():
                with self._frames:
                    if not self._frames.wait_for(lambda: self._viewers or self._ending(), 0.5) or self._ending():
                        continue  # nobody watches, or the stream ends (close() wakes this wait)
                due = time.monotonic() + 1 / MAX_FPS
                newer = self.live.wait(version, 0.2)  # short: the stop flag is looked at between waits
                if newer > version:
                    version, jpeg = self.live.jpeg(MAX_WIDTH, JPEG_QUALITY)
                    if jpeg is not None:
                        with self._frames:
                            self._jpeg = (self._jpeg[0] + 1, jpeg)
                            self._frames.notify_all()
                    self._closing.wait(max(0.0, due - time.monotonic()))
        finally:
            with self._frames:
                self._frames_over = True
                self._frames.notify_all()

    def _ending(self) -> bool:
        return self._closing.is_set() or self._stop.is_set()


def _sse(line: bytes) -> bytes:
    return b"data: " + line.rstrip(b"\n") + b"\n\n"
