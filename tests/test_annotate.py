"""Annotator: readable videos and stills of what the daemon saw, drawn on wild-faces photos."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.annotate import COLORS, Annotator, draw_faces
from runtime.errors import UserError
from runtime.frames import Detection, Face, Frame

WILD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "wild-faces" / "wild-faces.zip"
PROBS_HAPPY = np.array([0.02, 0.01, 0.03, 0.81, 0.05, 0.03, 0.05], np.float32)
PROBS_SAD = np.array([0.05, 0.02, 0.10, 0.03, 0.60, 0.02, 0.18], np.float32)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    """Three wild-faces photos (about 350x350, the face filling most of it), by file name."""
    if not WILD.is_file():
        pytest.skip(f"shared dataset missing: {WILD}")
    with zipfile.ZipFile(WILD) as zf:
        names = [n for n in sorted(zf.namelist()) if n.startswith(("happy/", "sad/")) and n.endswith(".jpg")]
        picked = names[:2] + names[-1:]
        return {n: cv2.imdecode(np.frombuffer(zf.read(n), np.uint8), cv2.IMREAD_COLOR) for n in picked}


def face(box, probs, face_id=None) -> Face:
    return Face(Detection(box=box, score=0.9, keypoints=np.zeros((6, 2), np.float32)), probs=probs, id=face_id)


def canvas_frames(photo: np.ndarray, count: int) -> list[tuple[Frame, list[Face]]]:
    """The photo on a 640x480 canvas, sliding right 4 px per frame, with its face box."""
    small = cv2.resize(photo, (240, 240), interpolation=cv2.INTER_AREA)
    out = []
    for i in range(count):
        canvas = np.full((480, 640, 3), 70, np.uint8)
        x = 100 + 4 * i
        canvas[120:360, x : x + 240] = small
        frame = Frame(image=canvas, index=i, capture_ns=time.monotonic_ns(), wall_time=time.time())
        out.append((frame, [face((x + 40, 150, 160, 190), PROBS_HAPPY, face_id=1)]))
    return out


def test_video_is_readable_with_every_frame_and_the_boxes_drawn(tmp_path, photos):
    path = tmp_path / "seen.mp4"
    frames = canvas_frames(next(iter(photos.values())), 12)
    with Annotator(path, stills=False, fps=10) as annotator:
        for frame, faces in frames:
            annotator.write(frame, faces)
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    decoded = []
    while (ok := cap.read())[0]:
        decoded.append(ok[1])
    cap.release()
    assert len(decoded) == 12 and decoded[0].shape == (480, 640, 3)
    # The box's left edge (x = 140 in frame 0) carries the colour of "happy", which the plain canvas does not.
    edge = decoded[0][200:300, 139:142].reshape(-1, 3).mean(axis=0)
    assert np.abs(edge - COLORS["happy"]).max() < 60, edge


def test_annotating_leaves_the_pipelines_frame_untouched(tmp_path, photos):
    frame, faces = canvas_frames(next(iter(photos.values())), 1)[0]
    before = frame.image.copy()
    with Annotator(tmp_path / "seen.avi", stills=False) as annotator:
        annotator.write(frame, faces)
    assert np.array_equal(frame.image, before)
    assert (tmp_path / "seen.avi").stat().st_size > 0


def test_stills_are_written_under_their_own_file_names(tmp_path, photos):
    out = tmp_path / "seen"
    with Annotator(out, stills=True) as annotator:
        for i, (name, photo) in enumerate(photos.items()):
            frame = Frame(image=photo, index=i, capture_ns=time.monotonic_ns(), wall_time=time.time(), file=name)
            h, w = photo.shape[:2]
            probs = PROBS_HAPPY if name.startswith("happy/") else PROBS_SAD
            annotator.write(frame, [face((0.15 * w, 0.12 * h, 0.7 * w, 0.8 * h), probs)])
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(n).name for n in photos)
    for name, photo in photos.items():
        written = cv2.imread(str(out / Path(name).name))
        assert written.shape == photo.shape
        assert np.abs(written.astype(int) - photo).mean() > 3  # something was drawn on it


def test_stills_with_the_same_file_name_are_both_kept(tmp_path, photos):
    photo = next(iter(photos.values()))
    with Annotator(tmp_path, stills=True) as annotator:
        for i, name in enumerate(["a/face.jpg", "b/face.jpg"]):
            frame = Frame(image=photo, index=i, capture_ns=0, wall_time=0.0, file=name)
            annotator.write(frame, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.jpg", "face_1.jpg"]


def test_drawing_copes_with_small_frames_and_boxes_past_the_border(photos):
    tiny = cv2.resize(next(iter(photos.values())), (64, 48))
    faces = [face((-20, -10, 70, 80), PROBS_SAD, face_id=7), face((50, 30, 40, 40), PROBS_HAPPY, face_id=8)]
    assert draw_faces(tiny, faces).shape == (48, 64, 3)


def test_bad_annotate_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"\.mp4 or \.avi"):
        Annotator(tmp_path / "seen.gif", stills=False)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        Annotator(tmp_path / "file.txt", stills=True)


def test_two_faces_side_by_side_get_charts_that_do_not_cover_each_other():
    """As in the sample clip's last frames: the right face's chart does not fit to its right, and to its left it
    would cover its neighbour's chart, so it goes inside its box."""
    canvas = np.full((480, 640, 3), 255, np.uint8)
    draw_faces(canvas, [face((60, 170, 195, 190), PROBS_HAPPY, 1), face((368, 172, 237, 236), PROBS_SAD, 2)])
    darkened_once = np.all(np.abs(canvas.astype(int) - round(255 * 0.3)) <= 1, axis=2)
    darkened_twice = np.all(np.abs(canvas.astype(int) - round(255 * 0.3 * 0.3)) <= 1, axis=2)
    assert darkened_once.sum() > 2 * 5000  # two charts' backgrounds (about 100 x 100 px each)
    assert darkened_twice.sum() == 0, "one chart drawn over the other"
