"""The records that travel between pipeline stages (source -> detector -> classifier -> tracker -> events)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


class DetectorInput(NamedTuple):
    """A frame made ready for the face detector (runtime.detector.detector_input), in the capture thread."""

    rgb: np.ndarray  # RGB uint8 (h, w, 3), contiguous: the frame scaled down to the detector's input side
    width: int  # of the part of the frame it shows, from the top left corner: all of it, or all but a few
    height: int  # right and bottom edge pixels (runtime.detector.detector_input); detections map back through it


@dataclass(slots=True)
class Frame:
    image: np.ndarray  # BGR uint8 (H, W, 3), as OpenCV decodes it
    index: int  # 0-based position in the source (for stills: position in the sorted list)
    capture_ns: int  # time.monotonic_ns() when the frame was read: for latency maths
    wall_time: float  # time.time() when the frame was read: for people
    file: str | None = None  # stills: the image's path; None for streams
    decode_ms: float = 0.0  # time spent reading/decoding (and preparing) this frame in the capture thread
    detector_input: DetectorInput | None = None  # prepared in the capture thread, if the source was given a prepare


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
