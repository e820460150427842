"""Tracker: stable ids by IoU across frames, and the EMA of each face's probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.frames import Detection
from runtime.tracker import Tracker, greedy_match, iou_matrix

UNIFORM = np.full(7, 1 / 7)
HAPPY = np.eye(7)[3]
SAD = np.eye(7)[4]


def det(x: float, y: float, w: float = 100, h: float = 100) -> Detection:
    return Detection(box=(x, y, w, h), score=0.9, keypoints=np.zeros((6, 2), np.float32))


def step(tracker: Tracker, boxes: list[tuple[float, float]], probs=None) -> list:
    probs = np.tile(UNIFORM, (len(boxes), 1)) if probs is None else np.asarray(probs)
    return tracker.update([det(x, y) for x, y in boxes], probs)


def ids(faces) -> list[int]:
    return [f.id for f in faces]


def test_iou_of_half_overlapping_boxes_is_one_third():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    np.testing.assert_allclose(iou_matrix(a, b), [[1 / 3, 0.0, 1.0]])


def test_greedy_match_takes_the_highest_overlap_first():
    iou = np.array([[0.6, 0.5], [0.7, 0.0]])
    assert sorted(greedy_match(iou, 0.3)) == [(0, 1), (1, 0)]
    assert greedy_match(iou, 0.65) == [(1, 0)]


def test_still_face_keeps_its_id():
    tracker = Tracker()
    seen = [ids(step(tracker, [(200 + (i % 3), 100 - (i % 2))])) for i in range(30)]  # detector jitter
    assert seen == [[1]] * 30


def test_new_face_gets_a_new_id_and_the_old_one_keeps_its_own():
    tracker = Tracker()
    assert ids(step(tracker, [(50, 50)])) == [1]
    assert ids(step(tracker, [(50, 50), (400, 60)])) == [1, 2]
    assert ids(step(tracker, [(400, 60), (52, 50)])) == [2, 1]  # ids follow faces, not list positions


def test_id_survives_an_occlusion_shorter_than_max_missed():
    tracker = Tracker(max_missed=5)
    step(tracker, [(100, 100), (400, 100)])
    for _ in range(5):  # the first face is hidden for 5 frames
        assert ids(step(tracker, [(400, 100)])) == [2]
    assert ids(step(tracker, [(100, 100), (400, 100)])) == [1, 2]


def test_track_is_dropped_after_more_than_max_missed_frames():
    tracker = Tracker(max_missed=5)
    step(tracker, [(100, 100)])
    for _ in range(6):
        step(tracker, [])
    assert tracker.active == 0
    assert ids(step(tracker, [(100, 100)])) == [2]


def test_two_faces_moving_apart_never_swap_ids():
    tracker = Tracker()
    first = step(tracker, [(200, 100), (260, 100)])  # overlapping at the start: IoU 0.25 with each other
    left_id, right_id = ids(first)
    for k in range(1, 25):
        faces = step(tracker, [(260 + 9 * k, 100), (200 - 9 * k, 100)])  # given right first, moving apart
        assert ids(faces) == [right_id, left_id]


def test_ema_follows_the_formula_by_hand():
    tracker = Tracker(smoothing=0.75)
    np.testing.assert_allclose(step(tracker, [(0, 0)], [HAPPY])[0].probs, HAPPY)  # a new track starts from its probs
    p = step(tracker, [(0, 0)], [SAD])[0].probs  # 0.75 * happy + 0.25 * sad
    np.testing.assert_allclose(p[[3, 4]], [0.75, 0.25], atol=1e-6)
    p = step(tracker, [(0, 0)], [SAD])[0].probs  # 0.75 * (0.75, 0.25) + 0.25 * (0, 1)
    np.testing.assert_allclose(p[[3, 4]], [0.5625, 0.4375], atol=1e-6)
    assert p.dtype == np.float32 and abs(p.sum() - 1) < 1e-6


def test_smoothing_zero_passes_probabilities_through():
    tracker = Tracker(smoothing=0.0)
    step(tracker, [(0, 0)], [HAPPY])
    np.testing.assert_allclose(step(tracker, [(0, 0)], [SAD])[0].probs, SAD)


def test_smoothed_probabilities_stay_normalised_over_many_frames():
    rng = np.random.default_rng(0)
    tracker = Tracker(smoothing=0.9)
    for _ in range(500):
        raw = rng.dirichlet(np.ones(7), size=2).astype(np.float32)
        faces = step(tracker, [(0, 0), (300, 0)], raw)
    for face in faces:
        assert abs(float(face.probs.sum()) - 1.0) < 1e-6 and (face.probs >= 0).all()


def test_reset_forgets_tracks_but_never_reuses_an_id():
    tracker = Tracker()
    step(tracker, [(0, 0), (300, 0)])
    tracker.reset()
    assert ids(step(tracker, [(0, 0)])) == [3]


def test_no_detections_give_no_faces():
    assert Tracker().update([], np.zeros((0, 7), np.float32)) == []


def test_mismatched_detections_and_probabilities_are_refused():
    with pytest.raises(ValueError, match="2 detections but 1"):
        Tracker().update([det(0, 0), det(200, 0)], np.tile(UNIFORM, (1, 1)))


@pytest.mark.parametrize("kwargs", [{"smoothing": 1.0}, {"smoothing": -0.1}, {"iou_threshold": 0}, {"max_missed": -1}])
def test_out_of_range_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        Tracker(**kwargs)
