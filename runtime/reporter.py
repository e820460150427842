"""The daemon's own events beside the frames: a `status` event on each state change (starting, online, offline,
reconnecting, eos, stopping, error) and a `stats` event every N seconds, each also shown in short as systemd's
STATUS= line. Frames (finisher thread), status (main and capture threads) and stats (ticker thread) reach the
publishers through one lock, so lines never interleave."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

from runtime import systemd
from runtime.errors import UserError, printable
from runtime.events import EventBuilder, emotiond_version
from runtime.publishers import Publisher, ReaderGone
from runtime.stats import Stats, Ticker, status_line

SEND_WAIT_S = 0.5


class Locked(Publisher):
    """One publisher shared by threads: a publish (one event line to every output) at a time."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self._lock = threading.Lock()

    def publish(self, line: bytes) -> None:
        with self._lock:
            self.inner.publish(line)

    def publish_event(self, make: Callable[[], dict | None]) -> dict | None:
        """The seq is taken and the line sent under the one lock: events leave in seq order whichever thread
        builds them."""
        with self._lock:
            return self.inner.publish_event(make)

    def try_publish_event(self, make: Callable[[], dict | None], timeout: float) -> bool:
        """publish_event() unless another thread holds the outputs for `timeout` s (a finisher blocked on a stdout
        nobody reads): the daemon's own events must never keep it from stopping. No seq is used if it gives up."""
        if not self._lock.acquire(timeout=timeout):
            return False
        try:
            self.inner.publish_event(make)
        finally:
            self._lock.release()
        return True

    def set_hello(self, make: Callable[[], dict]) -> None:
        self.inner.set_hello(make)

    @property
    def exclusive(self) -> threading.Lock:
        """`with locked.exclusive:` no thread publishes meanwhile (a reload changing the outputs)."""
        return self._lock

    def set_status(self, report: Callable[..., None]) -> None:
        self.inner.set_status(report)

    def close(self) -> None:
        with self._lock:
            self.inner.close()

    def __getattr__(self, name: str):  # figures of the outputs (subscribers, drops) for stats
        return getattr(self.inner, name)


class Reporter:
    def __init__(
        self, builder: EventBuilder, publisher: Publisher, stats_interval_s: float, publish_status: bool = True
    ) -> None:
        self.builder, self.publisher = builder, publisher
        self.publish_status = publish_status
        self.stats = Stats()
        self.stats_interval_s = stats_interval_s
        self.state = "starting"
        publisher.set_status(self.output_status)  # outputs with a link of their own (MQTT) report it through us

    def _send(self, make: Callable[[], dict]) -> None:
        """Build (seq) and publish, waiting at most SEND_WAIT_S for the outputs; a reader that left or a full disk
        is the pipeline's to report (it publishes next)."""
        with contextlib.suppress(ReaderGone, UserError):
            if isinstance(self.publisher, Locked):
                self.publisher.try_publish_event(make, SEND_WAIT_S)
            else:
                self.publisher.publish_event(make)

    def status(self, state: str, detail: str = "", **fields) -> None:
        """Thread-safe: the capture thread reports reconnects through here."""
        self.state = state
        if self.publish_status:
            self._send(lambda: self.builder.status(state, printable(detail), **fields))
        systemd.status(f"{state}: {detail}" if detail else state)

    def output_status(self, state: str, detail: str = "", **fields) -> None:
        """A status event about one output (`output` names it: an MQTT broker lost, reconnecting, back): the
        daemon's own state, and systemd's STATUS=, stay as they are. Thread-safe."""
        if self.publish_status:
            self._send(lambda: self.builder.status(state, printable(detail), **fields))

    def starting(self, config_path: str | None) -> None:
        self.status("starting", "", version=emotiond_version(), pid=os.getpid(), config=config_path)

    def ticker(
        self, dropped: Callable[[], int], errors: Callable[[], int], skipped: Callable[[], int] = lambda: 0
    ) -> Ticker:
        """`with reporter.ticker(...)`: a stats event every stats_interval_s while the pipeline runs."""

        def tick() -> None:
            fields = self.stats.take(dropped(), errors(), skipped())
            outputs = getattr(self.publisher, "output_stats", None)
            if callable(outputs):
                fields.update(outputs())
            self._send(lambda: self.builder.stats(**fields))
            if self.state == "online":
                systemd.status(status_line(fields))

        return Ticker(self.stats_interval_s, tick)
