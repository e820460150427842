"""The records that travel between pipeline stages (source -> detector -> classifier -> tracker -> events)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class Frame:
    image: np.ndarray  # BGR uint8 (H, W, 3), as OpenCV decodes it
    index: int  # 0-based position in the source (for stills: position in the sorted list)
    capture_ns: int  # time.monotonic_ns() when the frame was read: for latency maths
    wall_time: float  # time.time() when the frame was read: for people
    file: str | None = None  # stills: the image's path; None for streams
    decode_ms: float = 0.0  # time spent reading/decoding this frame in the capture thread


@dataclass(slots=True)
class Detection:
    box: tuple[float, float, float, float]  # x, y, width, height in pixels of the frame
    score: float
    keypoints: np.ndarray  # (6, 2) pixels: right eye, left eye, nose tip, mouth, right ear, left ear (subject's)


@dataclass(slots=True)
class Face:
    detection: Detection
    probs: np.ndarray  # (7,) float32 probabilities in runtime.labels.LABELS order (smoothed if tracking)
    id: int | None = None  # stable across frames of a stream; None for stills
    extra: dict = field(default_factory=dict)
