"""Face detection: MediaPipe BlazeFace (short range) through the MediaPipe Tasks API.

Video mode for streams (MediaPipe tracks state between frames and needs strictly increasing
timestamps), image mode for stills (each image independent). Boxes and keypoints come back in
pixels of the frame, best score first.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import cv2
import mediapipe as mp
import numpy as np

from runtime.detector_model import read_verified
from runtime.errors import UserError
from runtime.frames import Detection

_vision = mp.tasks.vision
_MODES = {"video": _vision.RunningMode.VIDEO, "image": _vision.RunningMode.IMAGE}


class FaceDetector:
    """`with FaceDetector(path, "video") as det: det.detect(frame_bgr, timestamp_ms)` -> list[Detection].

    Close it explicitly (or use `with`): left to the garbage collector at interpreter exit,
    MediaPipe's graph can raise while Python is tearing down.
    """

    def __init__(
        self,
        model_path: str | Path,
        mode: Literal["video", "image"] = "video",
        min_confidence: float = 0.5,
        max_faces: int = 8,
    ) -> None:
        if mode not in _MODES:
            raise UserError(f"face detector mode must be 'video' or 'image', not {mode!r}")
        if not 0.0 <= min_confidence <= 1.0:
            raise UserError(f"face detector min confidence must be within [0, 1], not {min_confidence}")
        if max_faces < 1:
            raise UserError(f"face detector max faces must be at least 1, not {max_faces}")
        self.mode = mode
        self.min_confidence = float(min_confidence)
        self.max_faces = int(max_faces)
        # Load exactly the bytes whose hash was checked (no window for the file to change in between).
        model = read_verified(model_path)
        options = _vision.FaceDetectorOptions(
            base_options=mp.tasks.BaseOptions(model_asset_buffer=model),
            running_mode=_MODES[mode],
            min_detection_confidence=self.min_confidence,
        )
        try:
            self._task = _vision.FaceDetector.create_from_options(options)
        except (RuntimeError, ValueError) as e:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise UserError(f"MediaPipe cannot load face detector model {model_path}: {first[:200]}") from None
        self._rgb: np.ndarray | None = None  # reused RGB buffer while the frame size stays the same
        self._last_ts = -1

    def detect(self, image_bgr: np.ndarray, timestamp_ms: int | None = None) -> list[Detection]:
        """Faces in a BGR uint8 frame, best score first, at most `max_faces`.

        Video mode: `timestamp_ms` should increase strictly (our own monotonic clock); None uses the
        monotonic clock, and an equal or earlier timestamp is bumped to last + 1 ms, because MediaPipe
        rejects it with an exception that would otherwise stop the pipeline. Image mode ignores it.
        """
        if self._task is None:
            raise RuntimeError("FaceDetector is closed")
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 image (H, W, 3), got {image_bgr.dtype} {image_bgr.shape}")
        h, w = image_bgr.shape[:2]
        if self._rgb is None or self._rgb.shape != image_bgr.shape:
            self._rgb = np.empty_like(image_bgr)
        cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB, dst=self._rgb)
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=self._rgb)
        if self.mode == "video":
            ts = time.monotonic_ns() // 1_000_000 if timestamp_ms is None else int(timestamp_ms)
            ts = max(ts, self._last_ts + 1)
            self._last_ts = ts
            result = self._task.detect_for_video(image, ts)
        else:
            result = self._task.detect(image)
        found = [_to_detection(d, w, h) for d in result.detections]
        found = [d for d in found if d is not None and d.score >= self.min_confidence]
        found.sort(key=lambda d: d.score, reverse=True)
        return found[: self.max_faces]

    def close(self) -> None:
        """Release MediaPipe's graph; safe to call more than once."""
        task, self._task = self._task, None
        if task is not None:
            task.close()

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _to_detection(d, w: int, h: int) -> Detection | None:
    """MediaPipe detection -> ours: box clipped to the frame (MediaPipe already mostly does), keypoints in pixels."""
    b = d.bounding_box
    x0, y0 = max(0, b.origin_x), max(0, b.origin_y)
    x1, y1 = min(w, b.origin_x + b.width), min(h, b.origin_y + b.height)
    if x1 <= x0 or y1 <= y0:
        return None  # entirely outside the frame: nothing a consumer could use
    kp = np.array([(k.x * w, k.y * h) for k in d.keypoints], dtype=np.float32).reshape(-1, 2)
    score = float(d.categories[0].score) if d.categories else 0.0
    return Detection(box=(float(x0), float(y0), float(x1 - x0), float(y1 - y0)), score=score, keypoints=kp)
