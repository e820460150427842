"""Measure how blurred the training images are compared with the images a model will be scored on.

The shared FER2013 edition's Training split is Gaussian-blurred (median Laplacian variance 5.97, as
PublicTest blurred with sigma 2.75 px at 48x48) while PublicTest is sharp (2,071). The same weights
scored 40.9% on sharp PublicTest and 44.8% on PublicTest blurred to match, so the blur the training
images carry is part of the preprocessing contract (`PreprocessSpec.blur_sigma`): every other face
(evaluation, the daemon's crops) is blurred to match before it is standardized.
"""

from __future__ import annotations

import numpy as np

from runtime.preprocess import blur

SIGMAS = np.round(np.arange(0.0, 5.01, 0.25), 2)
SAMPLE = 2000


def sharpness(faces: np.ndarray) -> float:
    """Median over faces of the variance of the 4-neighbour Laplacian (what cv2.Laplacian computes)."""
    x = faces[:SAMPLE].astype(np.float32)
    lap = x[:, 1:-1, :-2] + x[:, 1:-1, 2:] + x[:, :-2, 1:-1] + x[:, 2:, 1:-1] - 4 * x[:, 1:-1, 1:-1]
    return float(np.median(lap.var(axis=(1, 2))))


def matching_sigma(train_faces: np.ndarray, eval_faces: np.ndarray) -> tuple[float, dict]:
    """The blur that makes `eval_faces` as sharp as `train_faces` (0 when they already match)."""
    target = sharpness(train_faces)
    report = {"train_sharpness": round(target, 2), "eval_sharpness": round(sharpness(eval_faces), 2)}
    if report["eval_sharpness"] <= 1.5 * target:  # same domain: leave the faces alone
        return 0.0, report | {"sigma": 0.0}
    sample = eval_faces[:SAMPLE]
    errors = [abs(np.log(sharpness(blur(sample, s)) / target)) if s else np.inf for s in SIGMAS]
    sigma = float(SIGMAS[int(np.argmin(errors))])
    report["sigma"] = sigma
    report["eval_sharpness_blurred"] = round(sharpness(blur(sample, sigma)), 2)
    return sigma, report
