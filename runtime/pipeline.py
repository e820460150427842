"""The pipeline: source -> detector -> cropper -> classifier -> tracker -> event -> publisher(s).

It only wires stages together; building them and closing them is runtime.service's job. Three threads overlap:
the source decodes (and scales for the detector) ahead in its own thread, the calling thread runs only the face
detector on frame N+1 while a finisher thread crops, classifies, tracks and publishes frame N. The detector is
the critical path, so the two helpers run at a lower priority (runtime.priority); onnxruntime, OpenVINO and
MediaPipe release the GIL. Frames stay in order: the finisher takes them from a short FIFO. Crop and classify are
skipped when no face was found.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from runtime.crop import FaceCropper
from runtime.events import EventBuilder, encode
from runtime.frames import Face, Frame
from runtime.priority import lower_this_thread
from runtime.publishers import Publisher, ReaderGone
from runtime.sources import Source, SourceStalled
from runtime.tracker import Tracker

_NO_PROBS = np.zeros((0, 7), np.float32)
POLL_S = 0.1  # longest a stop request waits for a silent source
HEARTBEAT_S = 1.0  # how often on_heartbeat runs (the systemd watchdog ping) while frames flow
HANDOFF = 2  # detected frames waiting for the finisher: enough to keep it busy, few enough to stay fresh


@dataclass
class Counters:
    """Figures for stats events and the final summary; written by one thread only (the finisher, or the calling
    thread when run without overlap), read after run() returns."""

    frames: int = 0  # frames processed
    events: int = 0  # events published
    faces: int = 0  # faces reported (sum over frames)
    dropped: int = 0  # stale frames the source dropped (live sources), copied from the source
    skipped: int = 0  # non-image files skipped (image directories), copied from the source


class Detected(NamedTuple):
    """A frame between the two halves of the pipeline: faces found, not yet cropped or classified."""

    frame: Frame
    detections: list
    picked_ns: int
    detect_ms: float


class _Finisher:
    """The second half on its own thread: `submit(item)` in order; errors and ReaderGone surface in the caller."""

    def __init__(self, finish: Callable[[Detected], object]) -> None:
        self.finish = finish
        self.queue: queue.Queue = queue.Queue(maxsize=HANDOFF)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="pipeline:finish", daemon=True)

    def __enter__(self) -> _Finisher:
        self.thread.start()
        return self

    def _run(self) -> None:
        lower_this_thread()
        while (item := self.queue.get()) is not None:
            if self.error is None:  # after an error: drain, so a blocked submit() returns
                try:
                    self.finish(item)
                except BaseException as e:  # handed to the pipeline thread, which raises it
                    self.error = e

    def _put(self, item: Detected | None) -> None:
        while self.thread.is_alive():
            try:
                self.queue.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def submit(self, item: Detected) -> None:
        if self.error is not None:
            raise self.error
        self._put(item)

    def __exit__(self, exc_type, *exc: object) -> None:
        self._put(None)
        self.thread.join()
        if exc_type is None and self.error is not None:
            raise self.error


class Pipeline:
    """`Pipeline(...).run()` processes frames until the end of the stream, a stop request or the reader leaving.

    Returns why it stopped: "eos", "stopped" or "reader_gone". Stills (source.stills) are independent: the
    detector must be in image mode, and no tracker runs (faces get no id and unsmoothed probabilities).
    """

    def __init__(
        self,
        source: Source,
        detector,  # runtime.detector.FaceDetector, or anything with its prepare(image), detect_input(prepared, ts)
        cropper: FaceCropper,
        classifier,  # runtime.classifier.Classifier, or anything with .predict(faces_u8) -> (N, 7)
        tracker: Tracker | None,
        builder: EventBuilder,
        publisher: Publisher,
        annotator=None,  # runtime.annotate.Annotator or None
        stop: threading.Event | None = None,
        on_heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.detector = detector
        self.cropper = cropper
        self.classifier = classifier
        self.tracker = None if source.stills else tracker
        self.builder = builder
        self.publisher = publisher
        self.annotator = annotator
        self.stop = stop or threading.Event()
        self.on_heartbeat = on_heartbeat
        self.counters = Counters()

    def run(self, overlap: bool = True) -> str:
        """overlap=False runs both halves on the calling thread, one frame at a time."""
        if not overlap:
            return self._loop(self.finish)
        try:
            with _Finisher(self.finish) as finisher:
                return self._loop(finisher.submit)
        except ReaderGone:
            return "reader_gone"

    def _loop(self, hand_off: Callable[[Detected], object]) -> str:
        next_beat = time.monotonic()
        stall_s = self.source.stall_timeout_s
        poll_s = min(POLL_S, stall_s)
        last_frame = time.monotonic()
        while not self.stop.is_set():
            # Short polls instead of one long wait: a stop request is seen within POLL_S even from a silent source,
            # and the stall watchdog still fires after stall_s without a frame.
            try:
                frame = self.source.read(timeout=poll_s)
            except SourceStalled:
                if time.monotonic() - last_frame < stall_s:
                    continue
                raise SourceStalled(f"source {self.source.uri} stalled: no frame for {stall_s:g} s") from None
            if frame is None:
                return "eos"
            last_frame = time.monotonic()
            try:
                hand_off(self.detect(frame))
            except ReaderGone:
                return "reader_gone"
            if self.on_heartbeat is not None and last_frame >= next_beat:
                self.on_heartbeat()
                next_beat = last_frame + HEARTBEAT_S
        return "stopped"

    def process(self, frame: Frame) -> dict | None:
        """One frame through every stage on the calling thread; returns its event (None if not emitted)."""
        return self.finish(self.detect(frame))

    def detect(self, frame: Frame) -> Detected:
        """First half: the faces (MediaPipe), on a frame the source prepared for it in its capture thread."""
        picked_ns = time.monotonic_ns()
        t0 = time.perf_counter_ns()
        prepared = frame.detector_input if frame.detector_input is not None else self.detector.prepare(frame.image)
        timestamp_ms = None if self.source.stills else frame.capture_ns // 1_000_000
        detections = self.detector.detect_input(prepared, timestamp_ms)
        return Detected(frame, detections, picked_ns, (time.perf_counter_ns() - t0) / 1e6)

    def finish(self, item: Detected) -> dict | None:
        """Second half: crop, classify, track, annotate, build and publish the event."""
        frame, detections = item.frame, item.detections
        h, w = frame.image.shape[:2]
        n = len(detections)
        t1 = time.perf_counter_ns()
        if n:
            crops = self.cropper.crop(frame.image, detections)
            t2 = time.perf_counter_ns()
            probs = self.classifier.predict(crops)
        else:
            t2, probs = t1, _NO_PROBS
        t3 = time.perf_counter_ns()
        if self.tracker is not None:
            faces = self.tracker.update(detections, probs)
        else:
            faces = [Face(detection=d, probs=p) for d, p in zip(detections, probs, strict=True)]
        t4 = time.perf_counter_ns()
        latency = {
            "decode": frame.decode_ms,
            "queue": max(0.0, (item.picked_ns - frame.capture_ns) / 1e6),  # waiting for pick-up from the source
            "detect": item.detect_ms,
            "crop": (t2 - t1) / 1e6,
            "classify": (t3 - t2) / 1e6,
            "track": (t4 - t3) / 1e6,
            "total": 0.0,
        }
        c = self.counters
        c.frames += 1
        c.faces += n
        c.dropped = self.source.dropped
        c.skipped = self.source.skipped
        if self.annotator is not None:
            self.annotator.write(frame, faces)
        latency["total"] = max(0.0, (time.monotonic_ns() - frame.capture_ns) / 1e6)
        event = self.builder.frame(frame, faces, w, h, latency)
        if event is not None:
            self.publisher.publish(encode(event))
            c.events += 1
        return event
