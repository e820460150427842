"""The preprocessing contract on real FER2013 faces: the daemon's per-face OpenCV path computes exactly what the
trainer's batched NumPy functions compute, blur included, and flip TTA's mirrors are the inputs mirrored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.preprocess import PreprocessSpec, blur, center_crop, preprocess, standardize

SPEC = PreprocessSpec(blur_sigma=2.75)  # the shipped model's contract


@pytest.fixture(scope="module")
def faces(datasets: Path) -> np.ndarray:
    """40 real PublicTest faces, uint8 (40, 48, 48)."""
    fer = datasets / "fer2013" / "fer2013.zip"
    if not fer.is_file():
        pytest.skip(f"FER2013 not found at {fer}")
    from trainer import data

    test = data.load(fer).split("PublicTest")
    return test.images[np.linspace(0, len(test) - 1, 40).astype(int)]


def gaussian_as_matrix(size: int, sigma: float) -> np.ndarray:
    """B with B @ face @ B.T the Gaussian blur (taps to 3 sigma, reflect-101 border), built tap by tap."""
    radius = max(1, round(3 * sigma))
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (taps / sigma) ** 2)
    weights /= weights.sum()
    b = np.zeros((size, size))
    for i in range(size):
        for t, w in zip(taps, weights, strict=True):
            j = abs(i + t)  # reflect-101: -1 -> 1, size -> size - 2
            b[i, 2 * (size - 1) - j if j > size - 1 else j] += w
    return b


def test_blur_is_the_gaussian_with_a_reflected_border(faces: np.ndarray) -> None:
    b = gaussian_as_matrix(48, SPEC.blur_sigma)
    expected = b @ faces.astype(np.float64) @ b.T
    got = blur(faces, SPEC.blur_sigma)
    assert got.dtype == np.float32 and got.shape == faces.shape
    np.testing.assert_allclose(got, expected, atol=1e-3)  # pixel values 0..255
    assert np.abs(got - faces).max() > 20  # and it does blur
    np.testing.assert_array_equal(blur(faces, 0), faces.astype(np.float32))


def test_preprocess_equals_the_trainers_batched_functions(faces: np.ndarray) -> None:
    # the daemon's path against the functions training and export use on whole datasets, with flat faces whose
    # std falls below the floor (the two paths scale those by the floor alike)
    flat = np.full((2, 48, 48), 128, np.uint8)
    flat[1, 20:28, 20:28] += 1
    faces = np.concatenate((faces, flat))
    np.testing.assert_allclose(
        preprocess(faces, SPEC), center_crop(standardize(blur(faces, 2.75), SPEC), SPEC), atol=2e-5
    )
    # Training faces carry the blur already: no second blur, the trainer's standardize + centre crop exactly
    np.testing.assert_allclose(
        preprocess(faces, SPEC, already_blurred=True), center_crop(standardize(faces, SPEC), SPEC), atol=2e-5
    )


def test_each_face_is_standardized_over_the_whole_face_before_the_centre_crop(faces: np.ndarray) -> None:
    b = gaussian_as_matrix(48, SPEC.blur_sigma)
    blurred = b @ faces.astype(np.float64) @ b.T
    mean, std = blurred.mean(axis=(1, 2), keepdims=True), blurred.std(axis=(1, 2), keepdims=True)
    x = preprocess(faces, SPEC)
    assert x.shape == (len(faces), 1, 44, 44) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[:, 0], ((blurred - mean) / std)[:, 2:46, 2:46], atol=1e-4)
    # the crop's own statistics are not the whole face's: a path that standardized the crop would fail above
    assert np.abs(x.mean(axis=(1, 2, 3))).max() > 0.01


def test_a_flat_face_stays_finite_and_flat() -> None:
    flat = np.full((2, 48, 48), 128, np.uint8)
    nearly = flat.copy()
    nearly[:, 20:28, 20:28] += 1  # std far below the floor: scaled by the floor, not blown up
    x = preprocess(np.concatenate((flat, nearly)), SPEC)
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x[:2], 0, atol=1e-5)
    assert np.abs(x[2:]).max() < 1 / (255 * SPEC.std_floor) + 1e-4


def test_mirrors_follow_the_faces_as_exact_mirror_images(faces: np.ndarray) -> None:
    x = preprocess(faces, SPEC, mirrors=True)
    n = len(faces)
    assert x.shape == (2 * n, 1, 44, 44)
    np.testing.assert_array_equal(x[:n], preprocess(faces, SPEC))
    np.testing.assert_array_equal(x[n:], x[:n, :, :, ::-1])
    assert preprocess(faces[:0], SPEC, mirrors=True).shape == (0, 1, 44, 44)


def test_faces_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ValueError, match=r"expected faces of shape \(N, 48, 48\)"):
        preprocess(np.zeros((2, 44, 44), np.uint8), SPEC)
    with pytest.raises(ValueError, match="expected faces of shape"):
        preprocess(np.zeros((48, 48), np.uint8), SPEC)
    with pytest.raises(ValueError, match=r"expected faces of shape \(N, H, W\)"):
        blur(np.zeros((48, 48), np.uint8), SPEC.blur_sigma)
