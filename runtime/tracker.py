"""Tracker: stable face ids across the frames of a stream, and temporal smoothing of each face's probabilities.

Matching is greedy by IoU, highest overlap first: with the handful of faces a camera sees this gives the same
pairs as the Hungarian method in all but contrived cases, in a few lines of Python and without scipy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.frames import Detection, Face
from runtime.labels import NUM_CLASSES

Corners = tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass(slots=True)
class _Track:
    id: int
    box: Corners  # of the last matched detection
    probs: list[float]  # smoothed probabilities
    missed: int = 0  # consecutive frames without a match


def _corners(box: tuple[float, float, float, float]) -> Corners:
    x, y, w, h = box
    return (x, y, x + w, y + h)


def iou(a: Corners, b: Corners) -> float:
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def iou_matrix(a, b) -> list[list[float]]:
    """IoU of every box in a (corners) with every box in b: rows of a, columns of b. Plain Python: with the
    handful of faces a camera sees, numpy's per-call cost is larger than the arithmetic."""
    return [[iou(x, y) for y in b] for x in a]


def greedy_match(iou_rows, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col), highest IoU first (ties in row-major order), each row and column used once, only pairs
    with IoU >= threshold."""
    candidates = [(v, r, c) for r, row in enumerate(iou_rows) for c, v in enumerate(row) if v >= threshold]
    candidates.sort(key=lambda t: -t[0])  # stable
    used_r, used_c, pairs = set(), set(), []
    for _, r, c in candidates:
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            pairs.append((r, c))
    return pairs


class Tracker:
    """update() once per frame of a stream. A track survives up to max_missed frames without a match
    (a hand passing in front of the face); its probabilities follow p = smoothing*prev + (1-smoothing)*new."""

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 10, smoothing: float = 0.5):
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {max_missed}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.smoothing = smoothing
        self._tracks: list[_Track] = []
        self._next_id = 1  # from 1: people read "face #1"

    def reset(self) -> None:
        """Forget every track (after a source reconnects). Ids keep counting: an id is never reused in a session."""
        self._tracks = []

    def update(self, detections: list[Detection], probs: np.ndarray) -> list[Face]:
        """Faces in the order of detections, each with its track id and smoothed probabilities."""
        rows = np.asarray(probs, dtype=np.float64).reshape(-1, NUM_CLASSES).tolist()
        if len(detections) != len(rows):
            raise ValueError(f"{len(detections)} detections but {len(rows)} probability rows")
        boxes = [_corners(d.box) for d in detections]
        track_of = [None] * len(detections)
        if self._tracks and detections:
            overlaps = iou_matrix([t.box for t in self._tracks], boxes)
            for t, d in greedy_match(overlaps, self.iou_threshold):
                track_of[d] = self._tracks[t]

        # Plain Python on the 7 numbers of each face: numpy's per-call cost is larger than the arithmetic.
        s = self.smoothing
        matched = set()
        for d, track in enumerate(track_of):
            if track is None:
                track = _Track(id=self._next_id, box=boxes[d], probs=rows[d])
                self._next_id += 1
                self._tracks.append(track)
                track_of[d] = track
            else:
                track.box = boxes[d]
                track.missed = 0
                smoothed = [s * old + (1.0 - s) * new for old, new in zip(track.probs, rows[d], strict=True)]
                total = sum(smoothed)  # dividing by it is exact in maths and keeps float drift from accumulating
                track.probs = [v / total for v in smoothed]
            matched.add(track.id)

        for track in self._tracks:
            if track.id not in matched:
                track.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= self.max_missed]

        return [
            Face(detection=det, probs=np.array(track.probs, np.float32), id=track.id)
            for det, track in zip(detections, track_of, strict=True)
        ]

    @property
    def active(self) -> int:
        """Tracks currently kept (matched or within max_missed)."""
        return len(self._tracks)
