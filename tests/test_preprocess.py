"""The preprocessing contract on real FER2013 faces: the daemon's per-face OpenCV path computes exactly what the
trainer's batched NumPy functions compute, and flip TTA's mirrors are the inputs mirrored. Specs written before the
input blur contract was removed load when they carry no blur and are refused when they do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.preprocess import DEFAULT_SPEC, BlurredSpecError, PreprocessSpec, center_crop, preprocess, standardize

SPEC = DEFAULT_SPEC


@pytest.fixture(scope="module")
def faces(datasets: Path) -> np.ndarray:
    """40 real PublicTest and 40 real Training faces, uint8 (80, 48, 48)."""
    fer = datasets / "fer2013" / "fer2013.zip"
    if not fer.is_file():
        pytest.skip(f"FER2013 not found at {fer}")
    from trainer import data

    faces = data.load(fer)
    picked = []
    for split in ("PublicTest", "Training"):
        images = faces.split(split).images
        picked.append(images[np.linspace(0, len(images) - 1, 40).astype(int)])
    return np.concatenate(picked)


def test_preprocess_equals_the_trainers_batched_functions(faces: np.ndarray) -> None:
    # the daemon's path against the functions training (standardize, then crops) and export use on whole datasets,
    # with flat faces whose std falls below the floor (the two paths scale those by the floor alike)
    flat = np.full((2, 48, 48), 128, np.uint8)
    flat[1, 20:28, 20:28] += 1
    faces = np.concatenate((faces, flat))
    batched = center_crop(standardize(faces, SPEC), SPEC)
    np.testing.assert_allclose(preprocess(faces, SPEC), batched, atol=2e-5)
    # training's augmentation with every change off is that same centre crop of the standardized faces
    import torch

    from trainer.augment import augment_batch
    from trainer.config import AugmentConfig

    off = AugmentConfig(rotate_deg=0, scale=(1, 1), translate_px=0, flip=False, brightness=0, contrast=0, erase_p=0)
    x = torch.from_numpy(standardize(faces, SPEC)).unsqueeze(1)
    trained_on = augment_batch(x, SPEC.crop, off, torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_allclose(preprocess(faces, SPEC), trained_on, atol=1e-4)


def test_each_face_is_standardized_over_the_whole_face_before_the_centre_crop(faces: np.ndarray) -> None:
    f = faces.astype(np.float64)
    mean, std = f.mean(axis=(1, 2), keepdims=True), f.std(axis=(1, 2), keepdims=True)
    x = preprocess(faces, SPEC)
    assert x.shape == (len(faces), 1, 44, 44) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[:, 0], ((f - mean) / std)[:, 2:46, 2:46], atol=1e-4)
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


def test_a_spec_is_written_without_blur_and_read_back() -> None:
    assert "blur_sigma" not in SPEC.to_dict()
    assert PreprocessSpec.from_dict(SPEC.to_dict()) == SPEC


@pytest.mark.parametrize("zero", [0, 0.0])
def test_an_old_spec_without_blur_loads_as_todays(zero: float) -> None:
    assert PreprocessSpec.from_dict(SPEC.to_dict() | {"blur_sigma": zero}) == SPEC


@pytest.mark.parametrize("sigma", [2.75, 0.5, "auto", None, True])
def test_an_old_spec_with_blur_is_refused(sigma: object) -> None:
    with pytest.raises(BlurredSpecError, match=r"trained on blurred faces \(blur_sigma .*\), which this version") as e:
        PreprocessSpec.from_dict(SPEC.to_dict() | {"blur_sigma": sigma})
    assert e.value.sigma == sigma and isinstance(e.value, ValueError)


def test_an_unknown_or_unsupported_spec_is_refused() -> None:
    with pytest.raises(TypeError):
        PreprocessSpec.from_dict(SPEC.to_dict() | {"sharpen": 1.0})
    with pytest.raises(ValueError, match="unsupported preprocessing spec"):
        PreprocessSpec.from_dict(SPEC.to_dict() | {"crop": 50})
