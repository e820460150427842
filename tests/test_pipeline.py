"""Pipeline behaviour with real stages: stills are independent (no ids, no smoothing), a stop request ends a run
promptly, a stalled source is reported instead of hanging, a vanished reader ends the run quietly."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.crop import FaceCropper
from runtime.detector import FaceDetector
from runtime.events import EventBuilder
from runtime.publishers import Publisher, StdoutPublisher
from runtime.sources import SourceStalled, open_source
from runtime.tracker import Tracker


class ListPublisher(Publisher):
    """Keeps the encoded lines: a real Publisher whose transport is a list."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def publish(self, line: bytes) -> None:
        self.lines.append(line)


@pytest.fixture(scope="module")
def classifier(model_dir):
    from runtime.classifier import load_classifier

    return load_classifier(model_dir)


def make_pipeline(source, detector_model: Path, classifier, publisher, emit_empty: bool = True, stop=None):
    from runtime.pipeline import Pipeline

    detector = FaceDetector(detector_model, mode="image" if source.stills else "video")
    pipeline = Pipeline(
        source=source,
        detector=detector,
        cropper=FaceCropper(),
        classifier=classifier,
        tracker=Tracker(smoothing=0.5),
        builder=EventBuilder("test", source.uri, classifier.model_id, emit_empty=emit_empty),
        publisher=publisher,
        stop=stop,
    )
    return pipeline, detector


def run_events(source, detector_model, classifier, **kw) -> tuple[str, list[dict], object]:
    import json

    publisher = ListPublisher()
    pipeline, detector = make_pipeline(source, detector_model, classifier, publisher, **kw)
    with source, detector:
        reason = pipeline.run()
    return reason, [json.loads(line) for line in publisher.lines], pipeline.counters


def test_stills_get_no_ids_and_no_smoothing_between_images(tmp_path, image_dir, detector_model, classifier):
    photo = sorted(image_dir.glob("*.jpg"))[0]
    other = sorted(image_dir.glob("*.jpg"))[5]
    # The same photo before and after another one: with smoothing across stills its probabilities would differ.
    for name, src in (("a.jpg", photo), ("b.jpg", other), ("c.jpg", photo)):
        shutil.copy(src, tmp_path / name)
    reason, events, counters = run_events(open_source(str(tmp_path)), detector_model, classifier)
    assert reason == "eos" and counters.frames == 3
    assert [Path(e["file"]).name for e in events] == ["a.jpg", "b.jpg", "c.jpg"]
    assert all(face["id"] is None for e in events for face in e["faces"])
    assert events[0]["faces"] and events[0]["faces"] == events[2]["faces"]


def test_stream_events_carry_every_stage_latency(test_video, detector_model, classifier):
    reason, events, counters = run_events(open_source(str(test_video.path)), detector_model, classifier)
    assert reason == "eos" and counters.frames == len(events) == len(test_video.faces)
    stages = {"decode", "queue", "detect", "crop", "classify", "track", "total"}
    assert all(set(e["latency_ms"]) == stages for e in events)
    assert counters.faces == sum(len(e["faces"]) for e in events)
    with_face = [e for e in events if e["faces"]]
    assert all(e["latency_ms"]["total"] >= e["latency_ms"]["detect"] for e in with_face)


def test_emit_faces_skips_frames_without_faces(test_video, detector_model, classifier):
    _, events, counters = run_events(open_source(str(test_video.path)), detector_model, classifier, emit_empty=False)
    assert events and all(e["faces"] for e in events)
    assert counters.frames == len(test_video.faces) > len(events)
    assert [e["seq"] for e in events] == list(range(len(events)))  # no seq gaps for frames not emitted


def test_stop_event_ends_a_run_promptly(test_video, detector_model, classifier):
    stop = threading.Event()
    source = open_source(str(test_video.path), realtime=True)  # 6 s at 25 fps if nobody stops it
    publisher = ListPublisher()
    pipeline, detector = make_pipeline(source, detector_model, classifier, publisher, stop=stop)
    threading.Timer(0.5, stop.set).start()
    start = time.monotonic()
    with source, detector:
        reason = pipeline.run()
    assert reason == "stopped"
    assert 0.4 < time.monotonic() - start < 1.0
    assert 5 <= pipeline.counters.frames < len(test_video.faces)


def test_stop_event_is_seen_while_the_source_is_silent(mjpeg, detector_model, classifier):
    server = mjpeg(frames=3, interval_s=0.01)  # then silence, well within the stall timeout
    stop = threading.Event()
    source = open_source(server.url, stall_timeout_s=2.0)
    pipeline, detector = make_pipeline(source, detector_model, classifier, ListPublisher(), stop=stop)
    threading.Timer(0.5, stop.set).start()
    start = time.monotonic()
    with source, detector:
        assert pipeline.run() == "stopped"
        assert time.monotonic() - start < 1.0  # the pipeline saw the stop at once
    # Closing waits for the blocked read, which FFmpeg's read timeout (the stall timeout) ends.
    assert time.monotonic() - start < 2.0 + 1.5


def test_stalled_source_does_not_hang(mjpeg, detector_model, classifier):
    server = mjpeg(frames=5, interval_s=0.01)
    source = open_source(server.url, stall_timeout_s=0.5)
    pipeline, detector = make_pipeline(source, detector_model, classifier, ListPublisher())
    start = time.monotonic()
    with pytest.raises(SourceStalled, match="stalled"), source, detector:
        pipeline.run()
    assert time.monotonic() - start < 3.0
    assert pipeline.counters.frames + pipeline.counters.dropped == 5


def test_reader_gone_ends_the_run_quietly(test_video, detector_model, classifier):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first event
    with os.fdopen(write_end, "wb") as stream:
        source = open_source(str(test_video.path))
        pipeline, detector = make_pipeline(source, detector_model, classifier, StdoutPublisher(stream))
        with source, detector:
            assert pipeline.run() == "reader_gone"
    assert pipeline.counters.frames == 1


def test_probabilities_are_finite_and_sum_to_one(test_video, detector_model, classifier):
    _, events, _ = run_events(open_source(str(test_video.path)), detector_model, classifier, emit_empty=False)
    probs = np.array([list(f["probs"].values()) for e in events for f in e["faces"]])
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1.0, atol=2e-3)


def test_overlapped_run_publishes_every_frame_in_order_like_a_sequential_run(test_video, detector_model, classifier):
    _, overlapped, counters = run_events(open_source(str(test_video.path)), detector_model, classifier)
    assert [e["frame"] for e in overlapped] == list(range(len(test_video.faces)))
    assert [e["seq"] for e in overlapped] == list(range(len(overlapped)))
    assert counters.frames == counters.events == len(overlapped)

    import json

    publisher = ListPublisher()
    source = open_source(str(test_video.path))
    pipeline, detector = make_pipeline(source, detector_model, classifier, publisher)
    with source, detector:
        assert pipeline.run(overlap=False) == "eos"
    sequential = [json.loads(line) for line in publisher.lines]
    assert [len(e["faces"]) for e in overlapped] == [len(e["faces"]) for e in sequential]


class FailingClassifier:
    """A real classifier that breaks on the given calls (1-based; `always` from that call on)."""

    def __init__(self, inner, fail_on: int = 5, always: bool = False) -> None:
        self.inner, self.calls, self.model_id = inner, 0, inner.model_id
        self.fail_on, self.always = fail_on, always

    def predict(self, faces):
        self.calls += 1
        if self.calls == self.fail_on or (self.always and self.calls > self.fail_on):
            raise RuntimeError("classifier broke")
        return self.inner.predict(faces)


class FailingDetector:
    """A real detector that raises on the frame_index-th frame it sees (0-based)."""

    def __init__(self, inner, frame_index: int) -> None:
        self.inner, self.frame_index, self.seen = inner, frame_index, 0

    def prepare(self, image):
        return self.inner.prepare(image)

    def detect_input(self, prepared, timestamp_ms):
        self.seen += 1
        if self.seen == self.frame_index + 1:
            raise ValueError("detector broke")
        return self.inner.detect_input(prepared, timestamp_ms)


@pytest.mark.parametrize("overlap", [True, False])
def test_one_failing_frame_is_left_out_and_the_run_goes_on(test_video, detector_model, classifier, overlap, capfd):
    publisher = ListPublisher()
    source = open_source(str(test_video.path))
    pipeline, detector = make_pipeline(source, detector_model, FailingClassifier(classifier), publisher)
    with source, detector:
        assert pipeline.run(overlap=overlap) == "eos"
    assert pipeline.counters.errors == 1
    assert pipeline.counters.frames == len(test_video.faces) - 1 == len(publisher.lines)
    err = capfd.readouterr().err
    assert err.count("classify failed (RuntimeError: classifier broke)") == 1


def test_a_detector_failing_once_loses_only_that_frame(test_video, detector_model, classifier):
    publisher = ListPublisher()
    source = open_source(str(test_video.path))
    pipeline, detector = make_pipeline(source, detector_model, classifier, publisher)
    pipeline.detectors = [FailingDetector(detector, frame_index=10)]
    with source, detector:
        assert pipeline.run() == "eos"
    assert pipeline.counters.errors == 1
    import json

    assert 10 not in [json.loads(line)["frame"] for line in publisher.lines]
    assert len(publisher.lines) == len(test_video.faces) - 1


def test_a_stage_failing_on_every_frame_ends_the_run(test_video, detector_model, classifier, capfd):
    from runtime.errors import FatalError
    from runtime.pipeline import MAX_FAILED_IN_A_ROW

    failing = FailingClassifier(classifier, fail_on=3, always=True)
    source = open_source(str(test_video.path))
    pipeline, detector = make_pipeline(source, detector_model, failing, ListPublisher())
    with source, detector, pytest.raises(FatalError, match=f"classify failed on {MAX_FAILED_IN_A_ROW} frames in a row"):
        pipeline.run()
    assert pipeline.counters.errors == MAX_FAILED_IN_A_ROW
    assert capfd.readouterr().err.count("classifier broke") == 1  # reported once, then counted


class PriorityRecordingClassifier:
    """The real classifier, noting the nice value of the thread that calls it (the finisher)."""

    def __init__(self, inner) -> None:
        self.inner, self.model_id, self.nice = inner, inner.model_id, None

    def predict(self, faces):
        self.nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return self.inner.predict(faces)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_capture_prepares_frames_and_helpers_run_below_the_detector_thread(test_video, detector_model, classifier):
    from runtime.detector import detector_input
    from runtime.priority import HELPER_NICE

    capture: dict[str, int] = {}

    def prepare(image):
        capture.setdefault("thread", threading.get_native_id())
        capture.setdefault("nice", os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return detector_input(image)

    own_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    recorder = PriorityRecordingClassifier(classifier)
    source = open_source(str(test_video.path), prepare=prepare)
    pipeline, detector = make_pipeline(source, detector_model, recorder, ListPublisher())
    with source, detector:
        assert pipeline.run() == "eos"
    assert capture["thread"] != threading.get_native_id()  # prepared in the capture thread, not the detector's
    assert capture["nice"] == recorder.nice == min(19, own_nice + HELPER_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own_nice  # the caller keeps its own
    assert pipeline.counters.faces >= 0.98 * sum(test_video.faces)


def test_two_detectors_give_the_faces_of_one_in_frame_order(test_video, detector_model, classifier):
    import json

    from runtime.pipeline import Pipeline

    def run(n_detectors: int, overlap: bool) -> list[dict]:
        publisher = ListPublisher()
        source = open_source(str(test_video.path))
        detectors = [FaceDetector(detector_model, "video") for _ in range(n_detectors)]
        pipeline = Pipeline(source, detectors, FaceCropper(), classifier, Tracker(), EventBuilder("t", "c", "m"),
                            publisher)  # fmt: skip
        with source:
            assert pipeline.run(overlap=overlap) == "eos"
        for d in detectors:
            d.close()
        return [json.loads(line) for line in publisher.lines]

    one, two = run(1, overlap=False), run(2, overlap=True)
    assert [e["frame"] for e in two] == list(range(len(test_video.faces)))
    assert [e["seq"] for e in two] == list(range(len(two)))
    for a, b in zip(one, two, strict=True):  # MediaPipe's video mode keeps no state that splitting frames changes
        assert [f["box"] for f in a["faces"]] == [f["box"] for f in b["faces"]]
        assert [f["id"] for f in a["faces"]] == [f["id"] for f in b["faces"]]


def test_errors_on_detector_threads_lose_only_their_frames(test_video, detector_model, classifier):
    import json

    from runtime.pipeline import Pipeline

    source = open_source(str(test_video.path))
    publisher = ListPublisher()
    with FaceDetector(detector_model, "video") as a, FaceDetector(detector_model, "video") as b:
        detectors = [FailingDetector(a, frame_index=2), FailingDetector(b, frame_index=2)]
        pipeline = Pipeline(source, detectors, FaceCropper(), classifier, Tracker(), EventBuilder("t", "c", "m"),
                            publisher)  # fmt: skip
        with source:
            assert pipeline.run() == "eos"
    assert pipeline.counters.errors == 2
    frames = [json.loads(line)["frame"] for line in publisher.lines]
    assert len(frames) == len(test_video.faces) - 2 and frames == sorted(frames)


def test_a_long_run_does_not_grow_in_memory(datasets, tmp_path, detector_model, classifier):
    """2,000 frames of 4 faces through the overlapped pipeline, new faces every 15 frames (new tracks, old ones
    forgotten): resident memory after the first 400 frames stays within a few MB, so nothing is kept per frame or
    per face (a leaked crop batch would be 18 KB a frame, a leaked frame 900 KB)."""
    from benchmarks.latency import build_clip
    from runtime.detector import detector_input
    from runtime.pipeline import Pipeline

    page = os.sysconf("SC_PAGE_SIZE")

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page / 2**20

    class Sampling(StdoutPublisher):
        """Samples resident memory every 200 events: by frames, not seconds, so a fast machine samples as often."""

        def __init__(self, stream) -> None:
            super().__init__(stream)
            self.lines, self.samples = 0, []

        def publish(self, line: bytes) -> None:
            super().publish(line)
            self.lines += 1
            if self.lines % 200 == 0:
                self.samples.append(rss_mb())

    clip = build_clip(tmp_path / "long.mp4", faces=4, frames=2000)
    with open(os.devnull, "wb") as devnull, FaceDetector(detector_model) as one, FaceDetector(detector_model) as two:
        source = open_source(str(clip), prepare=detector_input)
        publisher = Sampling(devnull)
        pipeline = Pipeline(
            source=source, detector=[one, two], cropper=FaceCropper(), classifier=classifier, tracker=Tracker(),
            builder=EventBuilder("test", str(clip), classifier.model_id), publisher=publisher,
        )  # fmt: skip
        with source:
            assert pipeline.run() == "eos"
    samples = publisher.samples
    assert pipeline.counters.frames == 2000 and pipeline.counters.faces > 4000
    assert len(samples) == 10, samples
    assert samples[-1] - samples[1] < 8, [round(s, 1) for s in samples]  # after the first 400 frames: flat
