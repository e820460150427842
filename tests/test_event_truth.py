"""What the daemon reports is what happened, checked against the real stages run again by hand.

Each test kills a mutation of the code that the rest of the suite let live (the docstrings name it): the
classifier fed all-zero crops, probability rows swapped between two faces, the latest-frame slot keeping the
older frame, the stall watchdog firing late, `load_classifier` loading another precision's file, the finisher
losing an error on the last frame, and no WATCHDOG=1 for systemd while frames flow. Real clips, photos, MediaPipe
and the exported classifier throughout; the wrappers below only record what passes through them.
"""

from __future__ import annotations

import errno
import io
import json
import os
import queue
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.crop import FaceCropper
from runtime.detector import FaceDetector, detector_input
from runtime.errors import UserError
from runtime.events import EventBuilder
from runtime.frames import Frame
from runtime.labels import LABELS
from runtime.pipeline import Pipeline
from runtime.publishers import Publisher, StdoutPublisher
from runtime.sources import LatestSlot, SourceStalled, open_source
from runtime.tracker import Tracker

BOX_TOLERANCE_PX = 3  # an event's box is the detection's, rounded to whole pixels
PROB_TOLERANCE = 2e-4  # events round probabilities to 4 decimals


class ListPublisher(Publisher):
    """Keeps the encoded lines; `delay_s` makes it a slow consumer."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.lines: list[bytes] = []
        self.delay_s = delay_s

    def publish(self, line: bytes) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        self.lines.append(line)

    @property
    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]


class RecordingSource:
    """The real source, noting each frame the pipeline takes from it and how old the frame was then."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.frames: dict[int, Frame] = {}
        self.ages_ms: list[float] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def _note(self, item):
        if isinstance(item, Frame):
            self.ages_ms.append((time.monotonic_ns() - item.capture_ns) / 1e6)
            self.frames[item.index] = item
        return item

    def read(self, timeout=None):
        return self._note(self.inner.read(timeout))

    def poll(self, timeout):
        return self._note(self.inner.poll(timeout))


class RecordingDetector:
    """A real FaceDetector, noting the detections it returned for each prepared frame (keyed by its id; the
    prepared frame is kept, so the id stays its own)."""

    def __init__(self, inner: FaceDetector, seen: dict) -> None:
        self.inner, self.seen = inner, seen

    def prepare(self, image):
        return self.inner.prepare(image)

    def detect_input(self, prepared, timestamp_ms=None):
        detections = self.inner.detect_input(prepared, timestamp_ms)
        self.seen[id(prepared)] = (prepared, list(detections))
        return detections


@pytest.fixture(scope="module")
def classifier(model_dir):
    from runtime.classifier import load_classifier

    return load_classifier(model_dir)


def face_probs(face: dict) -> np.ndarray:
    return np.array([face["probs"][label] for label in LABELS])


def match_by_box(faces: list[dict], detections: list) -> list[int]:
    """For each event face, the index of the detection with its box (one to one)."""
    assert len(faces) == len(detections)
    order = []
    for face in faces:
        b = face["box"]
        corners = np.array([b["x"], b["y"], b["x"] + b["w"], b["y"] + b["h"]])
        dist = [np.abs(corners - np.array([x, y, x + w, y + h])).max() for x, y, w, h in (d.box for d in detections)]
        best = int(np.argmin(dist))
        assert dist[best] <= BOX_TOLERANCE_PX, (b, [d.box for d in detections])
        order.append(best)
    assert sorted(order) == list(range(len(detections)))
    return order


def check_events_against_reference(events, reference, classifier) -> int:
    """reference(event) -> (BGR frame, the detections the pipeline had for it). Each face's probabilities must be
    the classifier's output on the crop the cropper makes of that very face; returns the frames with two faces.
    Two faces of one frame must differ, so a swap or identical (e.g. all-zero) inputs would show."""
    pairs = 0
    cropper = FaceCropper()  # the pipeline's own settings
    for event in events:
        image, detections = reference(event)
        faces = event["faces"]
        if not detections:
            assert faces == []
            continue
        expected = classifier.predict(cropper.crop(image, detections))
        for face, i in zip(faces, match_by_box(faces, detections), strict=True):
            np.testing.assert_allclose(face_probs(face), expected[i], atol=PROB_TOLERANCE, err_msg=f"{event['frame']}")
        if len(faces) == 2:
            pairs += 1
            assert np.abs(expected[0] - expected[1]).max() > 0.1, "two different faces, near identical outputs"
    return pairs


def test_stream_events_carry_the_classifiers_output_on_each_faces_own_crop(pair_video, detector_model, classifier):
    """Kills: crops zeroed (or otherwise altered) before the classifier; probability rows swapped between faces
    (in the pipeline or the tracker). Two detectors overlapped, as the daemon runs; smoothing 0 makes the tracker's
    output its input."""
    seen: dict = {}
    source = RecordingSource(open_source(str(pair_video.path), prepare=detector_input))
    publisher = ListPublisher()
    with FaceDetector(detector_model, "video") as a, FaceDetector(detector_model, "video") as b:
        pipeline = Pipeline(
            source=source, detector=[RecordingDetector(a, seen), RecordingDetector(b, seen)], cropper=FaceCropper(),
            classifier=classifier, tracker=Tracker(smoothing=0.0),
            builder=EventBuilder("truth", str(pair_video.path), classifier.model_id), publisher=publisher,
        )  # fmt: skip
        with source.inner:
            assert pipeline.run() == "eos"
    events = publisher.events
    assert [e["frame"] for e in events] == list(range(len(pair_video.faces)))

    def reference(event):
        frame = source.frames[event["frame"]]
        return frame.image, seen[id(frame.detector_input)][1]

    pairs = check_events_against_reference(events, reference, classifier)
    assert pairs >= 0.8 * sum(n == 2 for n in pair_video.faces)
    both = [e["faces"] for e in events if len(e["faces"]) == 2]
    assert any(f[0]["emotion"] != f[1]["emotion"] for f in both)  # different expressions, told apart
    assert all(f["id"] is not None for e in events for f in e["faces"])  # the tracker did run


def test_stills_events_carry_the_classifiers_output_on_each_faces_own_crop(
    tmp_path, pair_video, detector_model, classifier
):
    """Kills the same mutations for stills (no tracker): here the reference is independent of the pipeline,
    a fresh image-mode detector on the image file as written."""
    cap = cv2.VideoCapture(str(pair_video.path))
    frames = [image for ok, image in iter(cap.read, (False, None)) if ok]
    cap.release()
    for k, segment in enumerate(pair_video.segments):
        cv2.imwrite(str(tmp_path / f"pair{k}.png"), frames[segment.start])
    publisher = ListPublisher()
    source = open_source(str(tmp_path))
    with FaceDetector(detector_model, "image") as detector:
        pipeline = Pipeline(source, detector, FaceCropper(), classifier, Tracker(smoothing=0.0),
                            EventBuilder("truth", str(tmp_path), classifier.model_id), publisher)  # fmt: skip
        with source:
            assert pipeline.run() == "eos"
    events = publisher.events
    assert [Path(e["file"]).name for e in events] == [f"pair{k}.png" for k in range(len(pair_video.segments))]

    with FaceDetector(detector_model, "image") as detector:

        def reference(event):
            image = cv2.imread(event["file"], cv2.IMREAD_COLOR)
            return image, detector.detect(image)

        assert check_events_against_reference(events, reference, classifier) == len(events)
    assert all(f["id"] is None for e in events for f in e["faces"])


def test_latest_slot_hands_over_the_newest_frame_and_counts_the_one_it_replaced():
    """Kills: the slot keeping the older frame."""
    slot = LatestSlot()
    slot.put("a")
    slot.put("b")
    assert slot.get(timeout=0.1) == "b"
    assert slot.dropped == 1
    slot.put("c")
    assert slot.get(timeout=0.1) == "c"
    with pytest.raises(queue.Empty):
        slot.get(timeout=0.05)


def test_a_live_source_with_a_slow_consumer_delivers_the_newest_frames(test_video, detector_model, classifier):
    """Kills: the latest-frame slot keeping the older frame. A file played live at its own 25 fps through the
    overlapped pipeline, whose publisher takes 0.3 s an event: every frame taken must be a fresh one (a slot
    keeping the older frame hands over one ~0.3 s old), in increasing order, and every frame is either taken or
    counted as dropped."""
    source = RecordingSource(open_source(str(test_video.path), live=True, realtime=True, prepare=detector_input))
    publisher = ListPublisher(delay_s=0.3)
    with FaceDetector(detector_model, "video") as a, FaceDetector(detector_model, "video") as b:
        pipeline = Pipeline(source, [a, b], FaceCropper(), classifier, Tracker(),
                            EventBuilder("live", str(test_video.path), classifier.model_id), publisher)  # fmt: skip
        with source.inner:
            assert pipeline.run() == "eos"
    frames = [e["frame"] for e in publisher.events]
    assert frames == sorted(set(frames)) and 5 <= len(frames) < len(test_video.faces) // 2
    assert pipeline.counters.frames + pipeline.counters.dropped == len(test_video.faces)
    ages = source.ages_ms
    assert len(ages) == len(frames)
    assert statistics.median(ages) < 100, [round(a) for a in ages]  # ~0-40 ms: a frame comes every 40 ms


def write_mjpeg_avi(path: Path, frames: list[np.ndarray]) -> bytes:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, frames[0].shape[1::-1])
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path.read_bytes()


def test_a_source_that_goes_silent_is_reported_stalled_on_time(tmp_path, pair_video, detector_model, classifier):
    """Kills: the stall watchdog firing late (or early). A real video written into a FIFO whose writer then stays
    open and silent, as a stuck camera or pipe does: SourceStalled must come between stall_timeout_s and 1.5x
    that after the last frame was captured."""
    cap = cv2.VideoCapture(str(pair_video.path))
    frames = [image for ok, image in iter(cap.read, (False, None)) if ok][:12]
    cap.release()
    data = write_mjpeg_avi(tmp_path / "clip.avi", frames)
    fifo = tmp_path / "camera.avi"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # a writer that never closes: the reader waits instead of seeing the end
    writer = threading.Thread(target=_write_all, args=(fd, data), daemon=True)
    writer.start()
    stall_s = 0.5
    publisher = ListPublisher()
    source = open_source(str(fifo), stall_timeout_s=stall_s, prepare=detector_input)
    try:
        with FaceDetector(detector_model, "video") as detector:
            pipeline = Pipeline(source, detector, FaceCropper(), classifier, Tracker(),
                                EventBuilder("stall", str(fifo), classifier.model_id), publisher)  # fmt: skip
            source.start()
            with pytest.raises(SourceStalled, match="stalled"):
                pipeline.run()
            raised_ns = time.monotonic_ns()
    finally:
        os.close(fd)  # the end of the stream: the capture thread's blocked read returns
        source.close()
    events = publisher.events
    assert [e["frame"] for e in events] == list(range(len(frames)))
    silent_s = (raised_ns - events[-1]["mono_ms"] * 1e6) / 1e9
    assert stall_s <= silent_s <= 1.5 * stall_s, f"stalled {silent_s:.2f} s after the last frame, timeout {stall_s}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@pytest.fixture(scope="module")
def reference_engines(model_dir):
    """(backend, precision) -> that variant's model files loaded straight into the backend, beside the loader."""
    from runtime.backends import get_backend
    from runtime.manifest import load_manifest

    manifest, folder = load_manifest(model_dir)
    cache: dict = {}

    def engine(backend: str, precision: str):
        if (backend, precision) not in cache:
            _, variant = manifest.find(backend, precision)
            cache[backend, precision] = get_backend(backend)([folder / rel for rel in variant.files], 1)
        return cache[backend, precision]

    return manifest, engine


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_load_classifier_loads_the_file_of_the_precision_asked_for(
    backend, precision, model_dir, image_dir, reference_engines
):
    """Kills: load_classifier picking one precision (its name or its file) whatever is asked. The logits of the
    loaded classifier are those of the asked variant's file, not the other precision's."""
    from runtime.classifier import load_classifier
    from runtime.preprocess import preprocess

    manifest, engine = reference_engines
    clf = load_classifier(model_dir, backend=backend, precision=precision, threads=1)
    name, _ = manifest.find(backend, precision)
    assert (clf.backend, clf.precision, clf.variant_name) == (backend, precision, name)

    photos = sorted(image_dir.glob("*.jpg"))[:8]
    faces = np.stack([cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (48, 48), interpolation=cv2.INTER_AREA)
                      for p in photos])  # fmt: skip
    x = preprocess(faces, clf.spec)
    other = "fp32" if precision == "int8" else "int8"
    mine, theirs = engine(backend, precision).run(x), engine(backend, other).run(x)
    assert np.abs(mine - theirs).max() > 1e-3  # the two files do differ on these faces
    np.testing.assert_allclose(clf.logits(x), mine, atol=1e-5)


class DiskFillsUp(io.BytesIO):
    """A stream whose device is full from write number `full_at` on (/dev/full is full from the first)."""

    def __init__(self, full_at: int) -> None:
        super().__init__()
        self.full_at, self.writes = full_at, 0

    def write(self, data) -> int:
        self.writes += 1
        if self.writes >= self.full_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


class BreaksOnLine(ListPublisher):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def publish(self, line: bytes) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("publisher broke on the last frame")
        super().publish(line)


def run_pipeline(clip, detector_model, classifier, publisher) -> Pipeline:
    source = open_source(str(clip.path), prepare=detector_input)
    with FaceDetector(detector_model, "video") as a, FaceDetector(detector_model, "video") as b:
        pipeline = Pipeline(source, [a, b], FaceCropper(), classifier, Tracker(),
                            EventBuilder("last", str(clip.path), classifier.model_id), publisher)  # fmt: skip
        with source:
            pipeline.result = pipeline.run()
    return pipeline


def test_a_user_error_on_the_last_frame_reaches_the_caller(pair_video, detector_model, classifier):
    """Kills: the finisher swallowing an error raised after the last frame was handed over. Events go to stdout,
    whose disk fills up on the very last event: that must reach the caller (as the one-line UserError the command
    line prints, or at least as the OSError itself), not end the run as if all went well."""
    stream = DiskFillsUp(full_at=len(pair_video.faces))
    with pytest.raises((UserError, OSError), match="No space left on device"):
        run_pipeline(pair_video, detector_model, classifier, StdoutPublisher(stream))
    assert stream.writes == len(pair_video.faces)


def test_an_unexpected_error_on_the_last_frame_is_raised_or_counted_and_reported(
    pair_video, detector_model, classifier, capsys
):
    """Kills: the finisher losing an unexpected error on the last frame. Either run() raises it, or (the pipeline
    that leaves a failed frame out) it is counted in Pipeline.counters and said on stderr: never lost silently."""
    publisher = BreaksOnLine(at=len(pair_video.faces))
    try:
        pipeline = run_pipeline(pair_video, detector_model, classifier, publisher)
    except RuntimeError as e:
        assert "publisher broke on the last frame" in str(e)
        return
    assert pipeline.result == "eos" and publisher.calls == len(pair_video.faces)
    assert getattr(pipeline.counters, "errors", 0) == 1, f"the error was lost: {pipeline.counters}"
    assert "publisher broke on the last frame" in capsys.readouterr().err


def test_the_daemon_tells_systemd_ready_then_watchdog_while_frames_flow_then_stopping(
    tmp_path, monkeypatch, test_video, model_dir, detector_model, capfd
):
    """Kills: no WATCHDOG=1 (or just one) while frames flow. The daemon on a clip played at its own 25 fps (~2.9 s),
    a real sd_notify datagram socket listening: READY=1 first, WATCHDOG=1 about once a second between that and
    STOPPING=1, which comes last."""
    from runtime import service
    from runtime.config import load_config

    folder = tmp_path if len(str(tmp_path)) < 90 else Path(tempfile.mkdtemp(prefix="notify"))  # sun_path: 108 bytes
    address = str(folder / "notify")
    received: list[tuple[float, str]] = []
    done = threading.Event()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(0.05)

        def listen() -> None:
            while not done.is_set():
                try:
                    received.append((time.monotonic(), sock.recv(4096).decode()))
                except TimeoutError:
                    continue

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        config = load_config(
            None,
            {
                "source.uri": str(test_video.path),
                "source.realtime": True,
                "classifier.model": str(model_dir),
                "detector.model_path": str(detector_model),
            },
        )
        result = service.run(config, log=None)
        time.sleep(0.2)  # the last datagram is in the socket already; let the listener take it
        done.set()
        listener.join()
    assert result.reason == "eos" and result.counters.frames == len(test_video.faces)
    events = [json.loads(line) for line in capfd.readouterr().out.splitlines()]  # the events went to stdout
    assert sum(e["type"] == "frame" for e in events) == len(test_video.faces)

    messages = [m for _, m in received if not m.startswith("STATUS=")]  # STATUS= lines: the state, in short
    assert messages[0].startswith("READY=1"), messages
    assert messages[-1] == "STOPPING=1", messages
    assert [i for i, m in enumerate(messages) if m.startswith(("READY=1", "STOPPING=1"))] == [0, len(messages) - 1]
    pings = [t for t, m in received if m == "WATCHDOG=1"]
    assert len(pings) >= 2, messages  # ~2.9 s of frames: one at the first frame, then one a second
    assert pings[-1] - pings[0] >= 0.9  # still pinging well after the start, while frames flow
