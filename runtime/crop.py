"""Face crops that look like FER2013's: eyes level, face filling a 48x48 gray square.

Geometry comes from the detector's keypoints, not from its box. MediaPipe clips boxes to the
frame (on the wild-faces photos 162 of 208 boxes were clipped), and a box does not turn with a
tilted head; the eyes and mouth do both right. For an upright face, unclipped, BlazeFace's box
side is 2.19x the eye-to-mouth distance and 2.34x the eye distance (median over wild-faces), so
the face size below is "the box BlazeFace would draw", measured in a way clipping cannot shrink.

FER2013 faces (MediaPipe run on 400 upscaled PublicTest faces): eye distance ~17.5 px, eyes-to-mouth
~18.7 px of 48, crop centre ~0.27 of the way from the eyes' midpoint to the mouth: tightly framed,
forehead to chin. `margin` and `center` are tuned on wild-faces by benchmarks/crop_margin.py.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from runtime.frames import Detection

# Keypoint order of BlazeFace (subject's right eye first, i.e. the eye on the image's left).
RIGHT_EYE, LEFT_EYE, MOUTH = 0, 1, 3
BOX_PER_EYE_MOUTH = 2.19  # BlazeFace box side / eye-to-mouth distance, upright faces
BOX_PER_EYE_DIST = 2.34  # BlazeFace box side / eye distance, upright faces
DEFAULT_MARGIN = 0.2  # benchmarks/results/crop_margin.json: its rule (log-loss, then likeness to FER2013) on wild-faces
DEFAULT_CENTER = 0.25  # crop centre as a fraction of the way from the eyes' midpoint to the mouth


def to_gray(image_bgr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The frame in gray, once per frame for all its faces (pass `out` to reuse a buffer)."""
    return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY, dst=out)


class FaceCropper:
    """`FaceCropper().crop(frame, detections)` -> uint8 (N, size, size) gray faces, one warpAffine per face."""

    def __init__(self, margin: float = DEFAULT_MARGIN, size: int = 48, center: float = DEFAULT_CENTER) -> None:
        if not -0.5 < margin <= 3.0:
            raise ValueError(f"crop margin must be within (-0.5, 3], not {margin}")
        if size < 8:
            raise ValueError(f"crop size must be at least 8, not {size}")
        self.margin = float(margin)
        self.size = int(size)
        self.center = float(center)

    def matrix(self, det: Detection) -> np.ndarray:
        """The 2x3 affine map from frame pixels to crop pixels for one face: rotate about the face centre so the
        eye line is level, scale the face to the crop, move its centre to the crop's. Plain float maths on four
        keypoints: numpy on arrays this small costs more in calls than in arithmetic."""
        k = det.keypoints
        (rx, ry), (lx, ly), (mx, my) = k[RIGHT_EYE].tolist(), k[LEFT_EYE].tolist(), k[MOUTH].tolist()
        ex, ey = (rx + lx) / 2, (ry + ly) / 2  # the eyes' midpoint
        eye_dx, eye_dy = lx - rx, ly - ry
        eye_dist = math.hypot(eye_dx, eye_dy)
        eye_mouth = math.hypot(mx - ex, my - ey)
        # The larger estimate wins: a turned head shortens the eye distance, a nodding one the eye-mouth distance.
        face = max(BOX_PER_EYE_MOUTH * eye_mouth, BOX_PER_EYE_DIST * eye_dist)
        if face < 1.0:  # degenerate keypoints: fall back on the box
            face = max(det.box[2], det.box[3])
        scale = self.size / (face * (1.0 + self.margin))
        # Keypoints are continuous coordinates (pixel i spans [i, i+1)); warpAffine works on pixel centres.
        cx = ex + self.center * (mx - ex) - 0.5
        cy = ey + self.center * (my - ey) - 0.5
        # cv2.getRotationMatrix2D((cx, cy), angle of the eye line, scale), then the face centre -> crop centre.
        cos, sin = (eye_dx / eye_dist, eye_dy / eye_dist) if eye_dist > 0 else (1.0, 0.0)
        a, b = scale * cos, scale * sin
        mid = (self.size - 1) / 2
        return np.array([[a, b, mid - a * cx - b * cy], [-b, a, mid + b * cx - a * cy]])

    def crop(self, image: np.ndarray, detections: list[Detection], out: np.ndarray | None = None) -> np.ndarray:
        """A uint8 frame, BGR (H, W, 3) or gray (H, W), and its detections -> (N, size, size) uint8 gray faces,
        written into one array. A BGR frame is warped face by face and only the crops are turned gray: much less
        work than graying a whole frame for a few faces."""
        color = image.ndim == 3 and image.shape[2] == 3
        if image.dtype != np.uint8 or not (image.ndim == 2 or color):
            raise ValueError(f"expected a uint8 BGR (H, W, 3) or gray (H, W) image, got {image.dtype} {image.shape}")
        n, s = len(detections), self.size
        if out is None:
            out = np.empty((n, s, s), dtype=np.uint8)
        elif out.shape != (n, s, s) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a contiguous uint8 array of shape {(n, s, s)}, got {out.dtype} {out.shape}")
        face_bgr = np.empty((s, s, 3), np.uint8) if color else None
        for i, det in enumerate(detections):
            # dst=out[i]: a contiguous view of the right size and type, so OpenCV writes in place, no copy.
            dst = face_bgr if color else out[i]
            cv2.warpAffine(
                image, self.matrix(det), (s, s), dst=dst, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
            if color:
                cv2.cvtColor(face_bgr, cv2.COLOR_BGR2GRAY, dst=out[i])
        return out
