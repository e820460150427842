"""Compare how sharp the training images are with the images a model is selected and scored on.

FER2013 circulates in altered editions. The shared edition was once Gaussian-blurred in Training only (median
Laplacian variance about 6 for Training against 2,071 for PublicTest), which cost about 12 points of accuracy on
sharp faces. Nothing is blurred to compensate: the trainer reports both figures and warns when they differ by more
than RATIO, so the data can be fixed before a run is spent on it.
"""

from __future__ import annotations

import numpy as np

SAMPLE = 2000  # faces measured per split, spread evenly over it (the layouts sort by class)
RATIO = 4.0  # sharp FER2013 splits agree within a few percent; the blurred Training split was ~350x blurrier


def sharpness(faces: np.ndarray) -> float:
    """Median over faces of the variance of the 4-neighbour Laplacian (what cv2.Laplacian computes)."""
    if len(faces) == 0:
        return float("nan")
    idx = np.unique(np.linspace(0, len(faces) - 1, min(SAMPLE, len(faces))).astype(int))
    x = faces[idx].astype(np.float32)
    lap = x[:, 1:-1, :-2] + x[:, 1:-1, 2:] + x[:, :-2, 1:-1] + x[:, 2:, 1:-1] - 4 * x[:, 1:-1, 1:-1]
    return float(np.median(lap.var(axis=(1, 2))))


def compare_splits(train_faces: np.ndarray, eval_faces: np.ndarray, eval_name: str = "eval") -> tuple[str, str | None]:
    """(one-line report of both splits' sharpness, a warning line when they differ by more than RATIO or None)."""
    train, other = sharpness(train_faces), sharpness(eval_faces)
    report = f"sharpness (median Laplacian variance): Training {train:.1f}, {eval_name} {other:.1f}"
    return report, sharpness_warning(train, other, eval_name)


def sharpness_warning(train: float, other: float, eval_name: str = "eval") -> str | None:
    """A warning when the Training split and `eval_name` differ in sharpness by more than RATIO, else None."""
    low, high = sorted((train, other))
    if not np.isfinite(low) or not np.isfinite(high) or high <= RATIO * max(low, 1e-6):
        return None
    blurrier = "Training" if train < other else eval_name
    return (
        f"warning: Training and {eval_name} images differ in sharpness {high / max(low, 1e-6):.0f}x "
        f"(median Laplacian variance {train:.1f} vs {other:.1f}): the {blurrier} images look blurred or resized; "
        "a model trained on one and used on the other loses accuracy, and nothing is blurred to match: "
        "use an unaltered edition of the data"
    )
