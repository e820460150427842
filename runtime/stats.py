"""Figures for `stats` events: what the finisher did over the last interval, taken every N seconds by a ticker
thread that publishes them (and a short form as systemd's STATUS= line)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from runtime.errors import say

STAGES = ("decode", "queue", "detect", "crop", "classify", "track", "publish", "total")


class Stats:
    """record() on the finisher thread (a few list appends), take() on the ticker thread; one lock between."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = self._since = time.monotonic()
        self._frames = self._faces = self._errors = 0
        self._latency: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self.frames_total = self.faces_total = 0
        self._dropped_before = 0

    def record(self, latency_ms: dict[str, float], faces: int) -> None:
        with self._lock:
            self._frames += 1
            self._faces += faces
            for stage, ms in latency_ms.items():
                if stage in self._latency:
                    self._latency[stage].append(ms)

    def take(self, dropped_total: int, errors_total: int = 0, skipped_total: int = 0) -> dict:
        """The fields of a stats event for the interval since the last take (EventBuilder.stats(**fields))."""
        now = time.monotonic()
        with self._lock:
            frames, faces, latency = self._frames, self._faces, self._latency
            self._frames = self._faces = 0
            self._latency = {stage: [] for stage in STAGES}
            interval, self._since = now - self._since, now
        self.frames_total += frames
        self.faces_total += faces
        dropped, self._dropped_before = dropped_total - self._dropped_before, dropped_total
        return {
            "interval_s": round(interval, 3),
            "frames": frames,
            "dropped": max(0, dropped),
            "fps": round(frames / interval, 2) if interval > 0 else 0.0,
            "faces": faces,
            "frames_total": self.frames_total,
            "dropped_total": dropped_total,
            "errors_total": errors_total,
            "skipped_total": skipped_total,  # malformed frames of a capture, non-images of a directory
            "uptime_s": round(now - self._started, 3),
            "latency_ms": {stage: _percentiles(values) for stage, values in latency.items() if values},
        }


def _percentiles(values: list[float]) -> dict:
    p50, p95, p99, top = np.percentile(np.asarray(values, np.float64), (50, 95, 99, 100))
    return {key: round(float(v), 3) for key, v in zip(("p50", "p95", "p99", "max"), (p50, p95, p99, top), strict=True)}


def status_line(fields: dict) -> str:
    """The short form for `systemctl status`: frames/s, faces, drops, p95 total latency."""
    total = fields["latency_ms"].get("total", {})
    p95 = f", p95 {total['p95']:.0f} ms" if total else ""
    return f"{fields['fps']:.1f} frames/s, {fields['faces']} faces, {fields['dropped']} dropped{p95}"


class Ticker:
    """Calls `tick()` every `interval_s` on its own daemon thread until closed (interval 0: never)."""

    def __init__(self, interval_s: float, tick: Callable[[], None]) -> None:
        self.interval_s, self.tick = interval_s, tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats", daemon=True)

    def __enter__(self) -> Ticker:
        if self.interval_s > 0:
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s or 1.0):
            if self.interval_s > 0:
                try:
                    self.tick()
                except Exception as e:  # one failed figure must not end the stats for good
                    say(f"emotiond: a stats event was left out: {type(e).__name__}: {e}", "warning")

    def retune(self, interval_s: float) -> None:
        """A new interval (a reload), taking effect after the current wait."""
        self.interval_s = interval_s
        if interval_s > 0 and self._thread.ident is None and not self._stop.is_set():  # a thread starts once
            self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
