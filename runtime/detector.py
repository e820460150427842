"""Face detection: MediaPipe BlazeFace (short range) through the MediaPipe Tasks API.

Video mode for streams (MediaPipe tracks state between frames and needs strictly increasing
timestamps), image mode for stills (each image independent). Boxes and keypoints come back in
pixels of the frame, best score first.

The detector is fed the frame halved by area averaging towards BlazeFace short-range's own 128 px input
(`detector_input`, which sources run in their capture thread). The model sees a 128x128 tensor whatever it is
given, so nothing it could use is lost, and two things are won: MediaPipe's own resize of a large frame aliases
(on 640x480 frames holding 8 faces of 150 px it found 3.1 per frame; halved to 160x120 first, 5.7), and
MediaPipe's work on the detector's thread shrinks with its input (3.9 -> 3.6 ms per 640x480 frame here).

A face that fills the picture is beyond the short-range model's range: on the wild-faces photos (350 px, the face
about 0.87 of the side) it scores a median 0.78 and 2 of 210 fall under 0.5; zoomed in by 8% a side, 7% of them
are lost. With a black border of a fifth of the side around the picture every one is found (median 0.88), but
the same border loses small faces (8 faces of 150 px in 640x480: 6.1 found per frame, 2.6 with it). So a still in
which nothing is found is looked at once more with the border (`STILL_BORDER`). A video frame is not: every empty
frame would pay for a second detection, and in a 4:3 frame a face as tall as the frame is still found (the same
photos zoomed into 640x480: all found until the face is about 1.3x the frame's height).
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
from runtime.frames import Detection, DetectorInput

_vision = mp.tasks.vision
_MODES = {"video": _vision.RunningMode.VIDEO, "image": _vision.RunningMode.IMAGE}
INPUT_SIDE = 128  # BlazeFace short-range's input: frames are halved towards it before MediaPipe sees them
STILL_BORDER = 0.2  # of the longer side, each side: the second look at a still in which no face was found


def detector_input(image_bgr: np.ndarray, input_side: int | None = INPUT_SIDE) -> DetectorInput:
    """The frame as the detector takes it: RGB, halved (area averaging) while its longer side stays at least
    `input_side` (None: full size): 640x480 -> 160x120. Thread-safe, no MediaPipe: sources call it in their capture
    thread. Halving is OpenCV's fast path (0.1 ms for 640x480; other factors take 0.6-1.2 ms), and it leaves
    MediaPipe a gentle last step; the last (< 2**halvings) columns and rows of an odd-sized frame are left out.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"expected a BGR uint8 image (H, W, 3), got {image_bgr.dtype} {image_bgr.shape}")
    h, w = image_bgr.shape[:2]
    halvings = 0
    while input_side and max(h, w) >> (halvings + 1) >= input_side and min(h, w) >> (halvings + 1) >= 1:
        halvings += 1  # the second condition: never down to 0 rows
    if halvings:
        k = 1 << halvings
        h, w = h // k * k, w // k * k  # the part of the frame the detector sees: whole 2x2 blocks at every step
        image_bgr = image_bgr[:h, :w]
        for _ in range(halvings):
            image_bgr = cv2.resize(image_bgr, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    # A fresh array per frame: the frame before it may still be in the detector.
    return DetectorInput(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB), w, h)


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
        input_side: int | None = INPUT_SIDE,
    ) -> None:
        if mode not in _MODES:
            raise UserError(f"face detector mode must be 'video' or 'image', not {mode!r}")
        if not 0.0 <= min_confidence <= 1.0:
            raise UserError(f"face detector min confidence must be within [0, 1], not {min_confidence}")
        if max_faces < 1:
            raise UserError(f"face detector max faces must be at least 1, not {max_faces}")
        if input_side is not None and input_side < INPUT_SIDE:
            raise UserError(f"face detector input side must be at least {INPUT_SIDE} px, not {input_side}")
        self.mode = mode
        self.input_side = input_side
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
        self._last_ts = -1

    def prepare(self, image_bgr: np.ndarray) -> DetectorInput:
        return detector_input(image_bgr, self.input_side)

    def detect(self, image_bgr: np.ndarray, timestamp_ms: int | None = None) -> list[Detection]:
        """Faces in a BGR uint8 frame, best score first, at most `max_faces`: prepare() then detect_input()."""
        return self.detect_input(self.prepare(image_bgr), timestamp_ms)

    def detect_input(self, prepared: DetectorInput, timestamp_ms: int | None = None) -> list[Detection]:
        """Faces in a prepared frame (`detector_input`), in pixels of the frame itself.

        Video mode: `timestamp_ms` should increase strictly (our own monotonic clock); None uses the
        monotonic clock, and an equal or earlier timestamp is bumped to last + 1 ms, because MediaPipe
        rejects it with an exception that would otherwise stop the pipeline. Image mode ignores it.
        """
        if self._task is None:
            raise RuntimeError("FaceDetector is closed")
        if self.mode == "video":
            ts = time.monotonic_ns() // 1_000_000 if timestamp_ms is None else int(timestamp_ms)
            ts = max(ts, self._last_ts + 1)
            self._last_ts = ts
            return self._kept(self._task.detect_for_video(_mp_image(prepared.rgb), ts).detections, prepared)
        found = self._kept(self._task.detect(_mp_image(prepared.rgb)).detections, prepared)
        if found:
            return found
        # Perhaps a face filling the still: look again with a border around it (module docstring).
        border = round(STILL_BORDER * max(prepared.rgb.shape[:2]))
        framed = cv2.copyMakeBorder(prepared.rgb, *(border,) * 4, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        return self._kept(self._task.detect(_mp_image(framed)).detections, prepared, border)

    def _kept(self, detections, prepared: DetectorInput, border: int = 0) -> list[Detection]:
        """Ours, above the confidence, best first, at most max_faces."""
        found = [_to_detection(d, prepared, border) for d in detections]
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


def _mp_image(rgb: np.ndarray) -> mp.Image:
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)


def _to_detection(d, prepared: DetectorInput, border: int = 0) -> Detection | None:
    """MediaPipe detection -> ours, in pixels of the frame: box clipped to it (MediaPipe already mostly does);
    keypoints come normalised, so they are exact at any input scale (the box is in whole pixels of the input).
    `border`: the input's pixels MediaPipe saw around `prepared` on every side (STILL_BORDER)."""
    b = d.bounding_box
    ih, iw = prepared.rgb.shape[:2]
    x0, y0 = max(0, b.origin_x - border), max(0, b.origin_y - border)
    x1, y1 = min(iw, b.origin_x - border + b.width), min(ih, b.origin_y - border + b.height)
    if x1 <= x0 or y1 <= y0:
        return None  # entirely outside the frame: nothing a consumer could use
    w, h = prepared.width, prepared.height
    sx, sy = w / iw, h / ih
    seen_w, seen_h = iw + 2 * border, ih + 2 * border
    kp = [((k.x * seen_w - border) * sx, (k.y * seen_h - border) * sy) for k in d.keypoints]
    kp = np.array(kp, dtype=np.float32).reshape(-1, 2)
    score = float(d.categories[0].score) if d.categories else 0.0
    return Detection(box=(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy), score=score, keypoints=kp)
