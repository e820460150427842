"""The MQTT publisher: events to a broker (Mosquitto, ...) on the topics of runtime.mqtt_topics, the pipeline never
waiting for the network.

One thread owns the connection (runtime.mqtt_link) and does all the work: connect, reconnect with capped
exponential backoff, route event lines to topics, send. The pipeline's publish() only appends the line to a bounded
deque and wakes that thread; when the broker is slow or away the deque fills and its oldest lines are dropped and
counted (stats: `dropped_total`).

At start the constructor waits up to connect_timeout_s for the first answer: a broker that refuses the credentials
(or a certificate that does not verify) is a UserError; a broker that is down is a line on stderr and the daemon
runs on, reconnecting. Each connect, loss and attempt is a `status` event carrying `output` (the spec), delivered
by a small notifier thread (the reporter's lock may be held by whoever is closing us). The Last Will sets
PREFIX/CAMERA/status to `offline` retained, so a killed daemon reads `offline`; a clean close says it itself.
close() never blocks on the network: a short grace to send what is queued, then the thread is left behind.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable

from runtime.errors import UserError, printable, say
from runtime.homeassistant import discovery_messages
from runtime.mqtt import Connection
from runtime.mqtt_link import WINDOW, Link
from runtime.mqtt_topics import Message, Router, availability_of
from runtime.publishers import Publisher
from runtime.reconnect import Backoff

CLOSE_GRACE_S = 0.5  # at close, a connected publisher sends what is queued for this long, then `offline`
CLOSE_JOIN_S = 1.0  # close() waits this long for the thread to say goodbye (a blocking connect: not at all)
_owners: dict[str, MqttPublisher] = {}  # availability topic -> the publisher speaking for it (a reload's new one)
_owners_lock = threading.Lock()


class MqttPublisher(Publisher):
    def __init__(self, conn: Connection, stop: threading.Event | None = None) -> None:
        self.conn, self.spec, self.settings = conn, conn.target.spec, conn.settings
        self.router = Router(conn.base)
        self._lock = threading.Lock()
        self._lines: deque[bytes] = deque()
        self._dropped = self._sent = self._reconnects = 0
        self._closing = self._wake_pending = self._start_over = self._republish = False
        self._availability: str | None = None  # None until the daemon says (a reload's new publisher keeps online)
        self._availability_sent: str | None = None
        self._fatal: str | None = None
        self._stop, self._started, self._notice_ready = threading.Event(), threading.Event(), threading.Event()
        self._notices: deque[tuple[str, str, dict]] = deque(maxlen=32)
        self._on_status: Callable[..., None] | None = None
        self.link = Link(conn, self.router.status, self._drained)
        with _owners_lock:
            _owners[self.router.status] = self
        self._thread = threading.Thread(target=self._run, name=f"mqtt {conn.target.host}", daemon=True)
        self._thread.start()
        # The broker's first answer (a refusal is fatal), unless the daemon is asked to stop meanwhile.
        deadline = time.monotonic() + self.settings.connect_timeout_s + 1.0
        while not self._started.wait(0.1) and time.monotonic() < deadline and not (stop and stop.is_set()):
            pass
        with self._lock:
            self._start_over, fatal = True, self._fatal
        if fatal:
            self.close()
            raise UserError(fatal)

    # --- the pipeline's side: never blocks ----------------------------------------------------------------------
    def publish(self, line: bytes) -> None:
        if line.startswith(b'{"type":"status"'):  # rare: the daemon's state -> PREFIX/CAMERA/status
            with contextlib.suppress(ValueError):
                self._availability = availability_of(json.loads(line)) or self._availability
        elif self._availability is None and line.startswith(b'{"type":"frame"'):
            self._availability = "online"  # status events switched off: frames flowing say it
        with self._lock:
            if self._closing:
                return
            if len(self._lines) >= self.settings.queue:
                self._lines.popleft()
                self._dropped += 1
            self._lines.append(line)
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            self.link.wake()

    def _drained(self) -> None:
        with self._lock:
            self._wake_pending = False

    def set_status(self, report: Callable[..., None]) -> None:
        self._on_status = report
        threading.Thread(target=self._notify, name=f"mqtt status {self.conn.target.host}", daemon=True).start()

    def stats(self) -> dict:
        """For stats events (runtime.outputs): events waiting, dropped since the start, the link, reconnects."""
        with self._lock:
            return {
                "queued": len(self._lines), "dropped_total": self._dropped, "sent_total": self._sent,
                "connected": int(self.link.connected), "reconnects": self._reconnects,
            }  # fmt: skip

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._stop.set()
        self._notice_ready.set()
        self.link.wake()
        if threading.current_thread() is not self._thread:  # a TCP/TLS connect in progress is not waited for
            self._thread.join(0.05 if self.link.in_connect else CLOSE_JOIN_S)
        with _owners_lock:
            if _owners.get(self.router.status) is self:
                del _owners[self.router.status]

    # --- the thread ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = Backoff(self.settings.reconnect_initial_s, self.settings.reconnect_max_s)
        delays, attempt, ever, outage = backoff.delays(), 0, False, None
        try:
            while not self._closing:
                failure = self.link.connect(lambda: self._closing)
                if failure is None:
                    self._reconnects += ever
                    self._notice("online", "connected to the broker", **({"attempt": attempt} if attempt else {}))
                    if outage is not None:
                        say(f"emotiond: {printable(self.spec)}: connected to the broker again")
                    delays, attempt, ever, outage = backoff.delays(), 0, True, None
                    self._republish = True
                    self.router.forget()
                    self._started.set()
                    why = self._serve()
                    if self._closing:
                        break
                    why = f"connection to the broker lost: {why[:1].lower()}{why[1:]}"
                    self._notice("offline", why)
                else:
                    why = failure.why
                    with self._lock:
                        if failure.config and not self._start_over:  # at start: the user's to fix, exit 2
                            self._fatal = f"output {printable(self.spec)!r}: {why}"
                    if self._fatal is not None:
                        return
                if outage is None:
                    outage = why
                    say(f"emotiond: {printable(self.spec)}: {why}; reconnecting in the background", "warning")
                self._started.set()
                attempt += 1
                delay = next(delays)
                self._notice("reconnecting", f"attempt {attempt} in {delay:g} s", attempt=attempt, retry_s=delay)
                if self._stop.wait(delay):
                    break
            self._goodbye()
        except Exception as e:  # a bug here must not pass silently: events would just stop
            say(f"emotiond: {printable(self.spec)}: publisher failed: {type(e).__name__}: {printable(e)}", "error")
        finally:
            self.link.close()
            self._started.set()

    def _serve(self) -> str:
        """Publish while connected; returns why the link went (or "" when closing)."""
        while not self._closing:
            self._feed()
            if not self.link.step(1.0):
                return self.link.lost
        return ""

    def _feed(self) -> None:
        if self._republish:  # a new connection: say who we are again (the broker may have restarted)
            self._republish, self._availability_sent = False, None
            if self.settings.homeassistant:
                for message in discovery_messages(self.conn.base, self.conn.camera, self.settings.discovery_prefix):
                    self.link.send(message)
        availability = self._availability
        if availability is not None and availability != self._availability_sent:
            self._availability_sent = availability
            self.link.send(Message(self.router.status, availability.encode(), 1, True))
        while self.link.inflight < WINDOW and self.link.connected:
            with self._lock:
                if not self._lines:
                    return
                line = self._lines.popleft()
                self._sent += 1
            try:
                messages = self.router.messages(line)
            except ValueError:  # not JSON: no publisher writes such a line
                continue
            for message in messages:
                self.link.send(message)

    def _goodbye(self) -> None:
        """Closing while connected: what is queued (for CLOSE_GRACE_S at most), `offline`, DISCONNECT."""
        if not self.link.connected:
            return
        deadline = time.monotonic() + CLOSE_GRACE_S
        while (self._lines or self.link.inflight) and (left := deadline - time.monotonic()) > 0:
            self._feed()
            if not self.link.step(min(left, 0.05)):
                return
        with _owners_lock:
            ours = _owners.get(self.router.status) is self
        if ours and self._availability_sent != "offline":  # else a reload's new publisher speaks for the camera
            self.link.send(Message(self.router.status, b"offline", 1, True))
        self.link.disconnect(0.25)

    def _notice(self, state: str, detail: str, **fields) -> None:
        self._notices.append((state, f"{self.spec}: {detail}", {**fields, "output": self.spec}))
        self._notice_ready.set()

    def _notify(self) -> None:
        """The status events of the link, on a thread of their own (the reporter's lock may be held by close())."""
        while not self._closing:
            self._notice_ready.wait()
            self._notice_ready.clear()
            while self._notices and not self._closing:
                state, detail, fields = self._notices.popleft()
                try:
                    self._on_status(state, detail, **fields)
                except Exception as e:  # the reporter's trouble (a reader gone) is the pipeline's to report
                    say(f"emotiond: {printable(self.spec)}: cannot report the link: {printable(e)}")
