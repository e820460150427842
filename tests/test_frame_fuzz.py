"""The frame path under fuzzing: whatever an image file holds (any size from 1x1 to 8000x8000, gray, BGR, BGRA,
8 or 16 bits, flat black or white, noise, a real face pasted anywhere, even partly outside), decoding, detection,
crop and classification give well-formed faces or none, never an exception, a crash or a hang."""

from __future__ import annotations

import zipfile

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.crop import FaceCropper
from runtime.detector import FaceDetector, detector_input
from runtime.sources import _imread

_STAGES: dict = {}


@pytest.fixture(scope="module")
def stages(detector_model, model_dir, datasets):
    from runtime.classifier import load_classifier

    with zipfile.ZipFile(datasets / "wild-faces" / "wild-faces.zip") as z:
        name = next(n for n in z.namelist() if n.lower().endswith((".jpg", ".png")))
        face = cv2.imdecode(np.frombuffer(z.read(name), np.uint8), cv2.IMREAD_COLOR)
    with FaceDetector(detector_model, mode="image") as detector:
        _STAGES.update(detector=detector, cropper=FaceCropper(), classifier=load_classifier(model_dir), face=face)
        yield _STAGES
    _STAGES.clear()


@st.composite
def images(draw) -> np.ndarray:
    h = draw(st.one_of(st.integers(1, 64), st.integers(65, 1200), st.sampled_from([1, 2, 8000])))
    w = draw(st.one_of(st.integers(1, 64), st.integers(65, 1200), st.sampled_from([1, 2, 8000])))
    if h * w > 8000 * 64:  # an 8000 side stays thin: 8000x8000 has its own test
        w = max(1, 8000 * 64 // h)
    channels = draw(st.sampled_from([1, 3, 4]))
    depth = draw(st.sampled_from([np.uint8, np.uint16]))
    fill = draw(st.sampled_from(["black", "white", "noise", "face"]))
    top = np.iinfo(depth).max
    shape = (h, w) if channels == 1 else (h, w, channels)
    if fill == "noise":
        image = np.random.default_rng(h * w).integers(0, top, shape, dtype=depth, endpoint=True)
    else:
        image = np.full(shape, top if fill == "white" else 0, depth)
    if fill == "face":  # a real face, scaled, at a drawn place (possibly partly outside)
        face = _STAGES["face"]
        side = draw(st.integers(8, max(8, min(400, 2 * max(h, w)))))
        face = cv2.resize(face, (side, side))
        y, x = draw(st.integers(-side // 2, h)), draw(st.integers(-side // 2, w))
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + side, h), min(x + side, w)
        if y1 > y0 and x1 > x0:
            patch = face[y0 - y : y1 - y, x0 - x : x1 - x]
            if channels == 1:
                patch = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY)
            elif channels == 4:
                patch = cv2.cvtColor(patch, cv2.COLOR_BGR2BGRA)
            image[y0:y1, x0:x1] = patch.astype(depth) * (257 if depth == np.uint16 else 1)
    return image


def _through_the_frame_path(path, stages) -> None:
    image = _imread(path)
    if image is None:  # OpenCV cannot decode it: the source skips it and names it
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    detections = stages["detector"].detect_input(detector_input(image), None)
    crops = stages["cropper"].crop(image, detections)
    probs = stages["classifier"].predict(crops) if len(detections) else np.zeros((0, 7))
    assert crops.shape == (len(detections), 48, 48)
    assert probs.shape == (len(detections), 7) and np.isfinite(probs).all()
    if len(probs):
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image=images(), suffix=st.sampled_from([".png", ".jpg", ".bmp", ".tiff", ".webp"]))
def test_any_image_gives_well_formed_faces_or_none(stages, tmp_path, image, suffix):
    if suffix in (".jpg", ".bmp", ".webp") and (image.dtype != np.uint8 or (image.ndim == 3 and image.shape[2] == 4)):
        image = (image >> 8).astype(np.uint8) if image.dtype == np.uint16 else image
        image = image[..., :3] if image.ndim == 3 else image
    path = tmp_path / f"fuzz{suffix}"
    if not cv2.imwrite(str(path), image):
        return  # a combination the format cannot hold
    _through_the_frame_path(path, stages)


def test_an_8000x8000_frame_and_a_1x1_frame(stages, tmp_path):
    big = np.full((8000, 8000, 3), 255, np.uint8)
    big[3000:3400, 3000:3400] = cv2.resize(stages["face"], (400, 400))
    for name, image in (("big.png", big), ("dot.png", np.zeros((1, 1, 3), np.uint8))):
        assert cv2.imwrite(str(tmp_path / name), image)
        _through_the_frame_path(tmp_path / name, stages)
