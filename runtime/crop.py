"""Face crops that look like FER2013's: eyes level, face filling a 48x48 gray square.

Geometry comes from the detector's keypoints, not from its box. MediaPipe clips boxes to the
frame (on the wild-faces photos 162 of 208 boxes were clipped), and a box does not turn with a
tilted head; the eyes and mouth do both right. For an upright face, unclipped, BlazeFace's box
side is 2.19x the eye-to-mouth distance and 2.34x the eye distance (median over wild-faces), so
the face size below is "the box BlazeFace would draw", measured in a way clipping cannot shrink.

FER2013 faces (MediaPipe run on 400 upscaled PublicTest faces): eye distance ~17.5 px, eyes-to-mouth
~18.7 px of 48, crop centre ~0.27 of the way from the eyes' midpoint to the mouth: tightly framed,
forehead to chin. `margin` and `center` are tuned on wild-faces by benchmarks/crop_margin.py.

Where a crop reaches past the frame's edge, it is filled with the mean gray of the face's pixels inside the frame,
as the trainer's augmentation fills what its shifts and turns uncover (zero, the mean, after standardization);
FER2013 has no smeared edges. A median 16% of each wild-faces crop lies outside its tightly framed photo; the
mean fill scores 0.603 there against 0.593 for repeating the edge (mean over benchmarks.crop_margin's 28 settings).
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from runtime.frames import Detection

# Keypoint order of BlazeFace (subject's right eye first, i.e. the eye on the image's left).
RIGHT_EYE, LEFT_EYE, MOUTH = 0, 1, 3
BOX_PER_EYE_MOUTH = 2.19  # BlazeFace box side / eye-to-mouth distance, upright faces
BOX_PER_EYE_DIST = 2.34  # BlazeFace box side / eye distance, upright faces
DEFAULT_MARGIN = 0.1  # benchmarks/results/crop_margin.json: its rule (log-loss, then likeness to FER2013) on wild-faces
DEFAULT_CENTER = 0.2  # crop centre as a fraction of the way from the eyes' midpoint to the mouth


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
        height, width = image.shape[:2]
        for i, det in enumerate(detections):
            m = self.matrix(det)
            # dst=out[i]: a contiguous view of the right size and type, so OpenCV writes in place, no copy.
            dst = face_bgr if color else out[i]
            cv2.warpAffine(image, m, (s, s), dst=dst, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            if color:
                cv2.cvtColor(face_bgr, cv2.COLOR_BGR2GRAY, dst=out[i])
            if not self._inside(m, width, height):
                self._fill_outside(out[i], m, width, height)
        return out

    def _inside(self, m: np.ndarray, width: int, height: int) -> bool:
        """Whether the whole crop samples the frame (the usual case: then nothing is filled). Plain float maths on
        the crop's four corners, as in matrix(): this runs for every face. The frame spans the centres of its
        outermost pixels, [0, width - 1]: a sample in the outer half of an edge pixel counts as outside (the
        benchmarks measured this rule)."""
        (a, b, c0), (_, _, c1) = m.tolist()  # m = [[a, b, c0], [-b, a, c1]]: turn and scale, then shift
        det = a * a + b * b
        last = self.size - 1
        for x, y in ((0, 0), (last, 0), (0, last), (last, last)):
            dx, dy = x - c0, y - c1
            sx, sy = (a * dx - b * dy) / det, (b * dx + a * dy) / det
            if not (0 <= sx <= width - 1 and 0 <= sy <= height - 1):
                return False
        return True

    def _fill_outside(self, face: np.ndarray, m: np.ndarray, width: int, height: int) -> None:
        """Pixels whose source lies outside the frame take the mean of those inside it."""
        source = cv2.invertAffineTransform(m) @ self._grid  # (2, size*size) frame coordinates of the crop's pixels
        outside = ((source[0] < 0) | (source[1] < 0) | (source[0] > width - 1) | (source[1] > height - 1)).reshape(
            face.shape
        )
        if outside.all():
            return  # nothing of the face in the frame: nothing to take the mean of
        face[outside] = int(face[~outside].mean() + 0.5)

    @functools.cached_property
    def _grid(self) -> np.ndarray:
        ys, xs = np.mgrid[0 : self.size, 0 : self.size]
        return np.stack([xs.ravel(), ys.ravel(), np.ones(self.size * self.size)]).astype(np.float64)
