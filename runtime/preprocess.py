"""The one preprocessing contract: a 48x48 gray face crop -> the classifier's input tensor.

The trainer, the exporter (calibration, parity) and the daemon all call these functions,
and the parameters travel inside every checkpoint and model manifest as `PreprocessSpec`.
Numpy only: the runtime must not need torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class PreprocessSpec:
    size: int = 48  # side of the gray face crop handed to `preprocess` (FER2013's 48x48)
    crop: int = 44  # side of the centre crop the network sees
    channels: int = 1
    normalize: str = "per_image"  # each face: subtract its mean, divide by its std
    std_floor: float = 0.02  # keeps flat (nearly uniform) crops from blowing up
    # Gaussian blur (sigma in pixels of the 48x48 face) applied to every face before it is
    # standardized, so sharp camera crops look like the training images; 0 = none. The shared
    # FER2013 Training split is blurred while its test split is sharp: trainer/blur.py measures it.
    blur_sigma: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        spec = cls(**d)
        if (
            spec.normalize != "per_image"
            or spec.channels != 1
            or not 0 < spec.crop <= spec.size
            or not 0 <= spec.blur_sigma <= 10
        ):
            raise ValueError(f"unsupported preprocessing spec: {d}")
        return spec

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Model input shape without the batch axis (C, H, W)."""
        return (self.channels, self.crop, self.crop)


DEFAULT_SPEC = PreprocessSpec()


@lru_cache(maxsize=8)
def _blur_matrix(size: int, sigma: float) -> np.ndarray:
    """B such that B @ img @ B.T is cv2.GaussianBlur(img, (0, 0), sigma) (reflect-101 border)."""
    radius = max(1, round(3 * sigma))
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    b = np.zeros((size, size), np.float64)
    for i in range(size):
        for t, w in zip(taps, kernel, strict=True):
            j = abs(i + t)  # reflect-101: -1 -> 1, size -> size - 2
            j = 2 * (size - 1) - j if j > size - 1 else j
            b[i, j] += w
    return b.astype(np.float32)


def blur(faces: np.ndarray, sigma: float) -> np.ndarray:
    """(N, H, W) faces -> float32, Gaussian-blurred with `sigma` (two small matrix products per face)."""
    x = faces.astype(np.float32)
    if sigma <= 0:
        return x
    b = _blur_matrix(x.shape[-1], float(sigma))
    return b @ x @ b.T


def standardize(faces: np.ndarray, spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """uint8 (N, size, size) gray faces -> float32 (N, size, size), zero mean and unit std per face.

    Statistics are taken over the whole `size` x `size` face, before the centre crop, so that
    training (random crops of standardized faces) and inference (centre crop) see the same scale.
    """
    if faces.ndim != 3 or faces.shape[1:] != (spec.size, spec.size):
        raise ValueError(f"expected faces of shape (N, {spec.size}, {spec.size}), got {faces.shape}")
    x = faces.astype(np.float32, copy=False) * (1.0 / 255.0)
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = np.maximum(x.std(axis=(1, 2), keepdims=True), spec.std_floor)
    return (x - mean) / std


def center_crop(x: np.ndarray, spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """(N, size, size) -> (N, 1, crop, crop), contiguous, ready for the model."""
    off = (spec.size - spec.crop) // 2
    return np.ascontiguousarray(x[:, None, off : off + spec.crop, off : off + spec.crop])


def preprocess(faces: np.ndarray, spec: PreprocessSpec = DEFAULT_SPEC, already_blurred: bool = False) -> np.ndarray:
    """uint8 (N, size, size) gray faces -> float32 (N, 1, crop, crop) model input.

    already_blurred: the faces come from the training split, which carries the blur already.
    """
    if spec.blur_sigma > 0 and not already_blurred:
        faces = blur(faces, spec.blur_sigma)
    return center_crop(standardize(faces, spec), spec)
