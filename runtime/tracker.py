"""Tracker: stable face ids across the frames of a stream, and temporal smoothing of each face's probabilities.

Matching is greedy by IoU, highest overlap first: with the handful of faces a camera sees this gives the same
pairs as the Hungarian method in all but contrived cases, in a few lines of numpy and without scipy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.frames import Detection, Face
from runtime.labels import NUM_CLASSES


@dataclass(slots=True)
class _Track:
    id: int
    box: np.ndarray  # (4,) x0, y0, x1, y1 of the last matched detection
    probs: np.ndarray  # (7,) float64 smoothed probabilities
    missed: int = 0  # consecutive frames without a match


def _corners(boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    xywh = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N,4 corners) with every box in b (M,4 corners): (N, M)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def greedy_match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col), highest IoU first, each row and column used once, only pairs with IoU >= threshold."""
    rows, cols = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r, used_c, pairs = set(), set(), []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
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
        probs = np.asarray(probs, dtype=np.float64).reshape(-1, NUM_CLASSES)
        if len(detections) != len(probs):
            raise ValueError(f"{len(detections)} detections but {len(probs)} probability rows")
        boxes = _corners([d.box for d in detections])
        track_of = [None] * len(detections)
        if self._tracks and detections:
            iou = iou_matrix(np.stack([t.box for t in self._tracks]), boxes)
            for t, d in greedy_match(iou, self.iou_threshold):
                track_of[d] = self._tracks[t]

        s = self.smoothing
        matched = set()
        for d, track in enumerate(track_of):
            if track is None:
                track = _Track(id=self._next_id, box=boxes[d], probs=probs[d].copy())
                self._next_id += 1
                self._tracks.append(track)
                track_of[d] = track
            else:
                track.box = boxes[d]
                track.missed = 0
                smoothed = s * track.probs + (1.0 - s) * probs[d]
                track.probs = smoothed / smoothed.sum()  # exact in maths; keeps float drift from accumulating
            matched.add(track.id)

        for track in self._tracks:
            if track.id not in matched:
                track.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= self.max_missed]

        return [
            Face(detection=det, probs=track.probs.astype(np.float32), id=track.id)
            for det, track in zip(detections, track_of, strict=True)
        ]

    @property
    def active(self) -> int:
        """Tracks currently kept (matched or within max_missed)."""
        return len(self._tracks)
