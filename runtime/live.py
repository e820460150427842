"""The latest frame for people watching (`--show` window, `--http` page): the pipeline hands over each finished
frame with its faces in O(1), and viewers draw (runtime.annotate.draw_faces) and encode only the frames they
show, each at most once however many viewers there are. A slow viewer skips frames; it never slows the pipeline.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np

from runtime.annotate import draw_faces
from runtime.frames import Face, Frame

_FPS_SMOOTHING = 0.1  # weight of the newest frame interval in the frames/s shown


class LiveView:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._faces: list[Face] = []
        self.version = 0  # grows by one per frame offered
        self._interval_s: float | None = None
        self._last_offer: float | None = None  # time.monotonic() of the latest frame
        self._draw_lock = threading.Lock()
        self._drawn: tuple[int, np.ndarray] | None = None
        self._encoded: dict[tuple[int, int], tuple[int, bytes]] = {}
        self.closed = False

    def offer(self, frame: Frame, faces: list[Face]) -> None:
        """The finisher thread's call: keep a reference, wake the viewers. Nothing is drawn here."""
        now = time.monotonic()
        with self._cond:
            if self._last_offer is not None:
                dt = now - self._last_offer
                self._interval_s = dt if self._interval_s is None else (
                    (1 - _FPS_SMOOTHING) * self._interval_s + _FPS_SMOOTHING * dt
                )  # fmt: skip
            self._last_offer = now
            self._frame, self._faces = frame, faces
            self.version += 1
            self._cond.notify_all()

    def wait(self, after: int, timeout: float) -> int:
        """Block until a frame newer than version `after` is offered (or timeout, or close); the current version."""
        with self._cond:
            self._cond.wait_for(lambda: self.version > after or self.closed, timeout)
            return self.version

    @property
    def fps(self) -> float:
        interval = self._interval_s
        return 1.0 / interval if interval else 0.0

    def age_s(self) -> float | None:
        """Seconds since the latest frame; None before the first."""
        last = self._last_offer
        return None if last is None else time.monotonic() - last

    def image(self) -> tuple[int, np.ndarray | None]:
        """(version, the latest frame with boxes, expressions and a frames/s caption drawn), drawn once per version.
        The returned array is shared between viewers: do not draw on it."""
        with self._cond:
            version, frame, faces = self.version, self._frame, self._faces
        if frame is None:
            return version, None
        with self._draw_lock:
            # Not older than the cached one: a thread that took its version before another drew a newer frame
            # gets that newer one, and never puts its older frame back in the cache.
            if self._drawn is None or self._drawn[0] < version:
                # the frame may still be referenced elsewhere (annotate, a detector); drawing must not change it
                caption = f"frame {frame.index}  {self.fps:.1f} frames/s  {len(faces)} faces"
                self._drawn = (version, draw_faces(frame.image.copy(), faces, caption=caption))
            return self._drawn

    def jpeg(self, max_width: int = 960, quality: int = 80) -> tuple[int, bytes | None]:
        """(version, the latest annotated frame as JPEG, scaled down to max_width), encoded once per version."""
        version, image = self.image()
        if image is None:
            return version, None
        key = (max_width, quality)
        with self._draw_lock:
            cached = self._encoded.get(key)
            if cached is not None and cached[0] >= version:  # as in image(): never back to an older frame
                return cached
            h, w = image.shape[:2]
            if w > max_width:
                image = cv2.resize(image, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
            ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            encoded = (version, data.tobytes() if ok else None)
            self._encoded[key] = encoded
            return encoded

    def close(self) -> None:
        """Wake every waiting viewer for good (the daemon is stopping)."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
