"""The one preprocessing contract: a 48x48 gray face crop -> the classifier's input tensor.

The trainer, the exporter (calibration, parity) and the daemon all call these functions,
and the parameters travel inside every checkpoint and model manifest as `PreprocessSpec`.
NumPy and OpenCV only (runtime dependencies both): the runtime must not need torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PreprocessSpec:
    size: int = 48  # side of the gray face crop handed to `preprocess` (FER2013's 48x48)
    crop: int = 44  # side of the centre crop the network sees
    channels: int = 1
    normalize: str = "per_image"  # each face: subtract its mean, divide by its std
    std_floor: float = 0.02  # keeps flat (nearly uniform) crops from blowing up

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        """The spec a checkpoint or manifest wrote. Older ones may carry `blur_sigma` (a Gaussian blur every face
        got before standardization, to match blurred training images): 0 is no blur and is dropped; any other
        value raises BlurredSpecError, since this version never blurs and would feed such a model sharp faces."""
        d = dict(d)
        if "blur_sigma" in d:
            sigma = d.pop("blur_sigma")
            if isinstance(sigma, bool) or sigma != 0:
                raise BlurredSpecError(sigma)
        spec = cls(**d)
        if spec.normalize != "per_image" or spec.channels != 1 or not 0 < spec.crop <= spec.size:
            raise ValueError(f"unsupported preprocessing spec: {d}")
        return spec

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Model input shape without the batch axis (C, H, W)."""
        return (self.channels, self.crop, self.crop)


class BlurredSpecError(ValueError):
    """A spec written when faces were blurred to match blurred training images (`blur_sigma` > 0): unsupported.

    The message completes a sentence that names the model: "model set X was <message>: <what to do>"."""

    def __init__(self, sigma: object) -> None:
        self.sigma = sigma
        super().__init__(f"trained on blurred faces (blur_sigma {sigma}), which this version no longer supports")


DEFAULT_SPEC = PreprocessSpec()


def _as_cv(faces: np.ndarray) -> np.ndarray:
    """uint8 or float32 with contiguous rows, as OpenCV takes them (other dtypes become float32)."""
    if faces.dtype not in (np.uint8, np.float32):
        faces = faces.astype(np.float32)
    return np.ascontiguousarray(faces)


def _check_faces(faces: np.ndarray, spec: PreprocessSpec) -> None:
    if faces.ndim != 3 or faces.shape[1:] != (spec.size, spec.size):
        raise ValueError(f"expected faces of shape (N, {spec.size}, {spec.size}), got {faces.shape}")


def standardize(faces: np.ndarray, spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """uint8 (N, size, size) gray faces -> float32 (N, size, size), zero mean and unit std per face.

    Statistics are taken over the whole `size` x `size` face, before the centre crop, so that
    training (random crops of standardized faces) and inference (centre crop) see the same scale.
    """
    _check_faces(faces, spec)
    x = faces.astype(np.float32, copy=False) * (1.0 / 255.0)
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = np.maximum(x.std(axis=(1, 2), keepdims=True), spec.std_floor)
    return (x - mean) / std


def center_crop(x: np.ndarray, spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """(N, size, size) -> (N, 1, crop, crop), contiguous, ready for the model."""
    off = (spec.size - spec.crop) // 2
    return np.ascontiguousarray(x[:, None, off : off + spec.crop, off : off + spec.crop])


def preprocess(faces: np.ndarray, spec: PreprocessSpec = DEFAULT_SPEC, mirrors: bool = False) -> np.ndarray:
    """uint8 (N, size, size) gray faces -> float32 (N, 1, crop, crop) model input.

    The same maths as center_crop(standardize(faces)), one face at a time in OpenCV: with the few faces a
    frame holds, numpy's per-call cost over a whole batch was 3x the arithmetic (tests check both agree).
    mirrors: append each input's mirror image (2N inputs: the faces, then their mirrors) for flip TTA.
    """
    _check_faces(faces, spec)
    faces = _as_cv(faces)
    n, c = len(faces), spec.crop
    off = (spec.size - c) // 2
    out = np.empty((2 * n if mirrors else n, 1, c, c), np.float32)
    floor = spec.std_floor * 255.0  # std_floor is in units of [0, 1] pixel values, the faces are in [0, 255]
    for i, face in enumerate(faces):
        mean, std = cv2.meanStdDev(face)  # over the whole face, as standardize
        scale = 1.0 / max(float(std[0, 0]), floor)
        roi = face[off : off + c, off : off + c]
        # (roi - mean) * scale, written straight into the batch
        cv2.addWeighted(roi, scale, roi, 0.0, -float(mean[0, 0]) * scale, dst=out[i, 0], dtype=cv2.CV_32F)
        if mirrors:
            cv2.flip(out[i, 0], 1, dst=out[n + i, 0])
    return out
