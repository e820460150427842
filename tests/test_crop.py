"""FaceCropper on real photos: shape, eye levelling, margin, FER2013-like geometry."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.crop import FaceCropper, to_gray
from runtime.detector import FaceDetector
from runtime.detector_model import resolve_detector_model
from runtime.frames import Detection

WILD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "wild-faces" / "wild-faces.zip"
PHOTO = "angry/Alejandro_Toledo_0004.jpg"  # eyes level within 1 degree as photographed


@pytest.fixture(scope="module")
def detector():
    with FaceDetector(resolve_detector_model(), "image") as det:
        yield det


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real upright frontal face, on a larger canvas so that it stays inside the frame when rotated."""
    with zipfile.ZipFile(WILD) as zf:
        img = cv2.imdecode(np.frombuffer(zf.read(PHOTO), np.uint8), cv2.IMREAD_COLOR)
    return cv2.copyMakeBorder(img, 100, 100, 100, 100, cv2.BORDER_REPLICATE)


def _map(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Frame points (continuous coordinates) -> crop pixel coordinates, through the cropper's affine map."""
    return (pts - 0.5) @ m[:, :2].T + m[:, 2]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float32), b.ravel().astype(np.float32))[0, 1])


def _eye_angle(pts: np.ndarray) -> float:
    (rx, ry), (lx, ly) = pts[0], pts[1]
    return math.degrees(math.atan2(ly - ry, lx - rx))


def test_crops_are_uint8_n_by_48_by_48_written_into_the_given_array(detector, photo):
    gray = to_gray(photo)
    dets = detector.detect(photo) * 3
    crops = FaceCropper().crop(gray, dets)
    assert crops.shape == (3, 48, 48) and crops.dtype == np.uint8
    assert crops.std() > 10  # a face, not a flat border

    out = np.zeros((3, 48, 48), np.uint8)
    assert FaceCropper().crop(gray, dets, out=out) is out
    np.testing.assert_array_equal(out, crops)


def test_no_detections_give_an_empty_batch(photo):
    crops = FaceCropper().crop(to_gray(photo), [])
    assert crops.shape == (0, 48, 48) and crops.dtype == np.uint8


def test_other_sizes_follow_the_size_argument(detector, photo):
    assert FaceCropper(size=64).crop(to_gray(photo), detector.detect(photo)).shape == (1, 64, 64)


@pytest.mark.parametrize("tilt", [20, -20])
def test_rotation_levels_a_face_tilted_by_20_degrees(detector, photo, tilt):
    (upright,) = detector.detect(photo)
    h, w = photo.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), tilt, 1.0)
    tilted = cv2.warpAffine(photo, rot, (w, h), borderMode=cv2.BORDER_REPLICATE)
    (det,) = detector.detect(tilted)
    # Ground truth: the upright photo's eyes carried through the known rotation (not the tilted detection's own).
    true_eyes = (upright.keypoints[:2] - 0.5) @ rot[:, :2].T + rot[:, 2] + 0.5
    assert abs(_eye_angle(true_eyes)) > 15  # the test face really is tilted

    cropper = FaceCropper()
    in_crop = _map(cropper.matrix(det), true_eyes)
    # BlazeFace's eye keypoints are coarse: over 69 wild-faces photos tilted by +-20 degrees the eye line's error
    # is 3.4 degrees on average (p90 7.5), whether MediaPipe gets the full frame or one shrunk towards 128 px.
    assert abs(_eye_angle(in_crop)) < 5

    # And the pixels agree: the tilted face's crop looks like the upright face's crop, much more so than
    # the upright crop turned by the tilt (what an unlevelled crop would look like).
    levelled = cropper.crop(to_gray(tilted), [det])[0]
    reference = cropper.crop(to_gray(photo), [upright])[0]
    unlevelled = cv2.warpAffine(
        reference, cv2.getRotationMatrix2D((23.5, 23.5), tilt, 1.0), (48, 48), borderMode=cv2.BORDER_REPLICATE
    )
    assert _corr(levelled, reference) > 0.8
    assert _corr(levelled, reference) > _corr(unlevelled, reference) + 0.1


def test_larger_margin_shows_a_smaller_face(detector, photo):
    (det,) = detector.detect(photo)
    eye_dist = {}
    for margin in (0.0, 0.5):
        eyes = _map(FaceCropper(margin).matrix(det), det.keypoints[:2])
        eye_dist[margin] = float(np.linalg.norm(eyes[1] - eyes[0]))
    assert eye_dist[0.5] == pytest.approx(eye_dist[0.0] / 1.5, rel=1e-6)
    gray = to_gray(photo)
    assert not np.array_equal(FaceCropper(0.0).crop(gray, [det]), FaceCropper(0.5).crop(gray, [det]))


def test_default_crop_puts_eyes_and_mouth_where_fer2013_has_them(detector, photo):
    # FER2013 (MediaPipe on 400 upscaled PublicTest faces, interquartile ranges): eye midpoint y 17-20,
    # eye distance 16-19 px, mouth y 35-39 of 48.
    (det,) = detector.detect(photo)
    k = _map(FaceCropper().matrix(det), det.keypoints[[0, 1, 3]])
    eyes_y, eye_dist, mouth_y = (k[0, 1] + k[1, 1]) / 2, np.linalg.norm(k[1] - k[0]), k[2, 1]
    assert 15 <= eyes_y <= 21 and 14 <= eye_dist <= 20 and 33 <= mouth_y <= 40
    assert abs((k[0, 0] + k[1, 0]) / 2 - 23.5) < 4  # horizontally centred


def test_face_at_the_frame_edge_is_filled_with_its_own_mean_beyond_the_edge(detector, photo):
    (det,) = detector.detect(photo)
    shifted = Detection(det.box, det.score, det.keypoints - np.float32([det.keypoints[2, 0], 0]))  # nose on x=0
    cropper = FaceCropper()
    gray = to_gray(photo)
    (crop,) = cropper.crop(gray, [shifted])
    (colour,) = cropper.crop(photo, [shifted])
    np.testing.assert_array_equal(crop, colour)
    # where each crop pixel comes from: left of x=0 is outside the frame
    ys, xs = np.mgrid[0:48, 0:48]
    source_x = cv2.invertAffineTransform(cropper.matrix(shifted))[0] @ np.stack([xs, ys, np.ones_like(xs)]).reshape(
        3, -1
    )
    outside = (source_x < 0).reshape(48, 48)
    assert 0.3 < outside.mean() < 0.7
    plain = cv2.warpAffine(gray, cropper.matrix(shifted), (48, 48), flags=cv2.INTER_LINEAR)
    assert (crop[outside] == int(crop[~outside].mean() + 0.5)).all()  # one gray: the face's own mean
    np.testing.assert_array_equal(crop[~outside], plain[~outside])  # the face itself as it is
    (whole,) = cropper.crop(gray, [det])  # a face well inside: nothing filled
    np.testing.assert_array_equal(whole, cv2.warpAffine(gray, cropper.matrix(det), (48, 48), flags=cv2.INTER_LINEAR))


def _face_at(x: float, y: float, eye_dist: float, degrees: float) -> Detection:
    """A detection whose eyes are `eye_dist` apart around (x, y), turned by `degrees`, the mouth below them."""
    t = math.radians(degrees)
    along, down = np.array([math.cos(t), math.sin(t)]), np.array([-math.sin(t), math.cos(t)])
    eyes = np.array([x, y])
    k = np.zeros((6, 2), np.float32)
    k[0], k[1] = eyes - along * eye_dist / 2, eyes + along * eye_dist / 2
    k[2], k[3] = eyes + down * eye_dist * 0.55, eyes + down * eye_dist * 1.05
    return Detection((x - eye_dist, y - eye_dist, 2 * eye_dist, 2 * eye_dist), 0.9, k)


@pytest.mark.parametrize("degrees", [0, 25, -40])
def test_every_frame_edge_is_filled_where_the_crop_leaves_the_frame(degrees):
    # a noisy frame: any pixel taken from the wrong place shows; faces across each edge and corner, turned
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (160, 200), np.uint8)
    height, width = frame.shape
    cropper = FaceCropper()
    ys, xs = np.mgrid[0:48, 0:48]
    grid = np.stack([xs, ys, np.ones_like(xs)]).reshape(3, -1).astype(np.float64)
    for x, y in [(5, 80), (195, 80), (100, 4), (100, 156), (100, 140), (3, 3), (197, 157), (100, 80)]:
        det = _face_at(x, y, eye_dist=30, degrees=degrees)
        (crop,) = cropper.crop(frame, [det])
        m = cropper.matrix(det)
        sx, sy = cv2.invertAffineTransform(m) @ grid  # where each crop pixel samples the frame
        outside = ((sx < 0) | (sy < 0) | (sx > width - 1) | (sy > height - 1)).reshape(48, 48)
        plain = cv2.warpAffine(frame, m, (48, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        np.testing.assert_array_equal(crop[~outside], plain[~outside])
        if (x, y) == (100, 80):
            assert not outside.any()
        else:
            assert 0.1 < outside.mean() < 0.9, (x, y)
            assert (crop[outside] == int(crop[~outside].mean() + 0.5)).all(), (x, y)


def test_crops_of_the_colour_frame_equal_crops_of_its_gray_version(detector, photo):
    # The pipeline crops the BGR frame and grays only the crops; it must give the faces the trainer's way would.
    dets = detector.detect(photo)
    assert np.array_equal(FaceCropper().crop(photo, dets), FaceCropper().crop(to_gray(photo), dets))


@pytest.mark.parametrize("bad", [np.zeros((48, 48, 4), np.uint8), np.zeros((48, 48), np.float32)])
def test_crop_rejects_an_image_that_is_neither_bgr_nor_gray_uint8(bad):
    with pytest.raises(ValueError, match="BGR"):
        FaceCropper().crop(bad, [])


def test_crop_map_is_opencvs_rotation_about_the_face_centre():
    # The map is written out by hand for speed; it must be what getRotationMatrix2D plus a shift would give.
    rng = np.random.default_rng(0)
    cropper = FaceCropper(margin=0.3, center=0.25)
    for _ in range(50):
        k = rng.uniform(0, 640, size=(6, 2)).astype(np.float32)
        m = cropper.matrix(Detection(box=(0.0, 0.0, 100.0, 100.0), score=0.9, keypoints=k))
        right, left, mouth = k[0].astype(np.float64), k[1].astype(np.float64), k[3].astype(np.float64)
        eyes = (right + left) / 2
        face = max(2.19 * np.linalg.norm(mouth - eyes), 2.34 * np.linalg.norm(left - right))
        cx, cy = eyes + 0.25 * (mouth - eyes) - 0.5
        angle = math.degrees(math.atan2(left[1] - right[1], left[0] - right[0]))
        expected = cv2.getRotationMatrix2D((cx, cy), angle, 48 / (face * 1.3))
        expected[:, 2] += 23.5 - np.array([cx, cy])
        # OpenCV takes the centre as float32: the shift agrees to 1e-5 px, the rest to float64 precision.
        np.testing.assert_allclose(m[:, :2], expected[:, :2], rtol=0, atol=1e-12)
        np.testing.assert_allclose(m[:, 2], expected[:, 2], rtol=0, atol=1e-4)
