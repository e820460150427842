"""A capture that hands out malformed frames (a broken camera driver): the real VideoSource capture loop, fed by a
double of cv2.VideoCapture put where the source opens its capture, skips and counts them, warns once, and a source
that gives nothing else is a stall (or a reconnect), not a silent loop."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from runtime import sources
from runtime.errors import UserError
from runtime.reconnect import Backoff
from runtime.sources import NOTHING, SourceStalled, open_source

BAD = {
    "empty": np.zeros((0, 0, 3), np.uint8),
    "gray": np.full((480, 640), 7, np.uint8),
    "bgra": np.full((480, 640, 4), 7, np.uint8),
    "uint16": np.full((480, 640, 3), 7, np.uint16),
    "float32": np.full((480, 640, 3), 7, np.float32),
}


def good(value: int) -> np.ndarray:
    return np.full((480, 640, 3), value, np.uint8)


class FakeCapture:
    """cv2.VideoCapture's read() / get() / release(): `frames` in order, then `then` for ever (paced like a
    camera), or, without `then`, a failed read (a camera unplugged)."""

    def __init__(self, frames: list[np.ndarray], then: np.ndarray | None = None, interval_s: float = 0.002) -> None:
        self.frames, self.then, self.interval_s = list(frames), then, interval_s
        self.released = False

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(self.interval_s)
        if self.frames:
            return True, self.frames.pop(0)
        if self.then is not None:
            return True, self.then.copy()
        return False, None

    def get(self, prop: int) -> float:
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.released = True


@pytest.fixture
def cameras(monkeypatch: pytest.MonkeyPatch) -> list[FakeCapture]:
    """The captures that successive opens of camera "0" get (the first open, then each reconnect)."""
    queue: list[FakeCapture] = []

    def open_capture(uri: str, kind: str, opts: dict, shown: str | None = None) -> FakeCapture:
        assert (uri, kind) == ("0", "webcam")
        if not queue:
            raise UserError("cannot open source 0 (no such camera)")
        return queue.pop(0)

    monkeypatch.setattr(sources, "_open_capture", open_capture)
    return queue


def test_malformed_frames_are_skipped_counted_and_warned_once(cameras, capsys):
    goods = [good(i) for i in range(1, 6)]
    bad = list(BAD.values())
    feed = [goods[0], bad[0], goods[1], bad[1], bad[2], goods[2], bad[3], goods[3], bad[4], goods[4]]
    cameras.append(FakeCapture(feed))
    # live=False: a lossless hand-off, so every good frame must come out (a live one may drop stale frames)
    with open_source("0", live=False, stall_timeout_s=5.0) as src:
        frames = [src.read(timeout=5) for _ in goods]
        with pytest.raises(UserError, match="ended or was lost"):  # after them the camera is gone: no more frames
            src.read(timeout=5)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 2, 3, 4, 5]
    assert all(f.image is g for f, g in zip(frames, goods, strict=True))
    assert src.skipped == len(BAD) and src.captured == len(goods)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "malformed" in line]
    assert len(warnings) == 1, warnings
    assert "source 0" in warnings[0] and "(0, 0, 3) uint8" in warnings[0]  # the first one seen


def test_only_malformed_frames_are_a_stall_not_a_silent_loop(cameras, capsys):
    cameras.append(FakeCapture([good(1)], then=BAD["bgra"], interval_s=0.01))
    with open_source("0", stall_timeout_s=0.5) as src:
        assert src.read(timeout=5).index == 0
        start = time.monotonic()
        # A long read: the capture thread's own report must come first, and tell what it got
        with pytest.raises(SourceStalled, match=r"no usable frame for 0\.5 s.*\(480, 640, 4\) uint8"):
            src.read(timeout=10)
        assert time.monotonic() - start < 5
    assert src.skipped >= 10 and cameras == []
    assert sum("malformed" in line for line in capsys.readouterr().err.splitlines()) == 1


def test_only_malformed_frames_on_a_reconnecting_camera_reopen_it(cameras):
    first = FakeCapture([good(1)], then=BAD["float32"], interval_s=0.01)
    second = FakeCapture([], then=good(2), interval_s=0.01)
    cameras.extend([first, second])
    statuses: list[tuple[str, str]] = []
    source = open_source(
        "0", stall_timeout_s=0.5, reconnect=Backoff(0.05, 0.1),
        on_status=lambda state, detail, **f: statuses.append((state, detail)),
    )  # fmt: skip
    with source:
        assert source.read(timeout=5).index == 0
        deadline, frame = time.monotonic() + 10, NOTHING
        while frame is NOTHING and time.monotonic() < deadline:
            frame = source.poll(0.1)
        assert frame is not NOTHING, statuses
        assert frame.index == 1 and int(frame.image[0, 0, 0]) == 2  # from the reopened camera
    assert first.released and cameras == []
    assert [s for s, _ in statuses] == ["offline", "reconnecting", "online"]
    assert "no usable frame" in statuses[0][1] and "float32" in statuses[0][1]


def test_waiting_on_a_slow_consumer_is_not_a_stall(cameras):
    """The stall clock runs while the capture reads, not while it waits to hand a frame over (a reload's pause)."""
    goods = [good(i) for i in range(1, 6)]
    cameras.append(FakeCapture([*goods[:4], BAD["gray"], goods[4]]))
    with open_source("0", live=False, stall_timeout_s=0.3) as src:
        frames = [src.read(timeout=5)]
        time.sleep(0.8)  # the capture thread fills the queue and waits, longer than the stall timeout
        frames += [src.read(timeout=5) for _ in goods[1:]]
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 2, 3, 4, 5]
    assert src.skipped == 1
