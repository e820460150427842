"""The pipeline: source -> detector -> cropper -> classifier -> tracker -> event -> publisher(s).

It only wires stages together; building them and closing them is runtime.service's job. The stages overlap
(runtime.workers): the source decodes (and scales for the detector) ahead in its own thread, the calling thread
hands each frame to one of the face detectors (a thread each, working on consecutive frames at once), and a
finisher thread crops, classifies, tracks and publishes the frames in order. Detection is the critical path, so
the capture and finisher threads run at a lower priority (runtime.priority); onnxruntime, OpenVINO and MediaPipe
release the GIL. Crop and classify are skipped when no face was found.

A frame whose detection or finishing raises an unexpected error is left out (no event; `seq` is not consumed),
the error is reported once per stage and kind, then only counted; a stage that fails on MAX_FAILED_IN_A_ROW
frames in a row ends the run with FatalError. Errors a user can cause (UserError) and a reader leaving end the
run at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from runtime.crop import FaceCropper
from runtime.errors import FatalError, UserError, printable, say
from runtime.events import EventBuilder
from runtime.frames import Face, Frame
from runtime.publishers import Publisher, ReaderGone
from runtime.sources import NOTHING, Source, SourceStalled
from runtime.tracker import Tracker
from runtime.workers import DetectorPool, Finisher, Grace

_NO_PROBS = np.zeros((0, 7), np.float32)
POLL_S = 0.1  # longest a stop request waits for a silent source
HEARTBEAT_S = 1.0  # how often on_heartbeat runs (the systemd watchdog ping) while frames flow
HANDOFF = 2  # frames between the detectors and the finisher beyond one per detector: few, so they stay fresh
MAX_FAILED_IN_A_ROW = 25  # frames in a row a stage may fail on before the run ends (about a second of video)


@dataclass
class Counters:
    """Figures for stats events and the final summary; written by one thread only (the finisher, or the calling
    thread when run without overlap), read after run() returns."""

    frames: int = 0  # frames processed
    events: int = 0  # events published
    faces: int = 0  # faces reported (sum over frames)
    dropped: int = 0  # stale frames the source dropped (live sources), copied from the source
    skipped: int = 0  # non-image files (image directories) or malformed frames skipped, copied from the source
    errors: int = 0  # frames left out because a stage raised an unexpected error
    failed_in_a_row: int = 0
    reported: set = field(default_factory=set)  # (stage, error type) already reported on stderr


class StageError(Exception):
    """An unexpected error of one stage on one frame; `stage` names it."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {type(error).__name__}: {error}")
        self.stage = stage
        self.error = error


class Detected(NamedTuple):
    """A frame between the two halves of the pipeline: faces found, not yet cropped or classified."""

    frame: Frame
    detections: list
    picked_ns: int
    detect_ms: float


class Pipeline:
    """`Pipeline(...).run()` processes frames until the end of the stream, a stop request or the reader leaving.

    Returns why it stopped: "eos", "stopped" or "reader_gone". Stills (source.stills) are independent: the
    detectors must be in image mode, and no tracker runs (faces get no id and unsmoothed probabilities).
    `detector` is one detector or a list of them (each used by one thread at a time).
    """

    def __init__(
        self,
        source: Source,
        detector,  # runtime.detector.FaceDetector (or a list): prepare(image), detect_input(prepared, timestamp_ms)
        cropper: FaceCropper,
        classifier,  # runtime.classifier.Classifier, or anything with .predict(faces_u8) -> (N, 7)
        tracker: Tracker | None,
        builder: EventBuilder,
        publisher: Publisher,
        annotator=None,  # runtime.annotate.Annotator or None
        stop: threading.Event | None = None,
        on_heartbeat: Callable[[], None] | None = None,
        stats=None,  # runtime.stats.Stats or None: per-frame figures for stats events
        counters: Counters | None = None,  # to go on counting where an earlier run (before a reload) stopped
        hard_stop: threading.Event | None = None,  # a real stop, when `stop` may also be a reload's pause
        live=None,  # runtime.live.LiveView or None: the latest frame for a window or a browser page
    ) -> None:
        self.source = source
        self.detectors = list(detector) if isinstance(detector, list | tuple) else [detector]
        self.cropper = cropper
        self.classifier = classifier
        self.tracker = None if source.stills else tracker
        self.builder = builder
        self.publisher = publisher
        self.annotator = annotator
        self.live = live
        self.stop = stop or threading.Event()
        self.on_heartbeat = on_heartbeat
        self.stats = stats
        self.counters = counters or Counters()
        self.hard_stop = hard_stop or self.stop
        self.stuck: list[threading.Thread] = []  # worker threads that did not end after a stop (runtime.workers)

    def run(self, overlap: bool = True) -> str:
        """overlap=False runs every stage on the calling thread, one frame at a time, with the first detector."""
        try:
            if not overlap:
                return self._loop(self._finish_or_count)
            backlog = len(self.detectors) + HANDOFF
            # The finisher exits first: it still waits for the frames the detectors are working on.
            # One deadline for every wait once a real stop is asked; a reload's pause waits for the frames in flight.
            grace = Grace(self.hard_stop)
            pool = DetectorPool(self.detectors, self._detect_or_wrap, grace)
            finisher = Finisher(self._finish_or_count, backlog, grace)
            try:
                with pool, finisher:
                    return self._loop(lambda frame: finisher.submit(pool.submit(frame)))
            finally:
                self.stuck = pool.stuck + finisher.stuck
        except ReaderGone:
            return "reader_gone"
        finally:
            self.counters.dropped = self.source.dropped
            self.counters.skipped = self.source.skipped

    def _loop(self, hand_off: Callable[[Frame], object]) -> str:
        next_beat = time.monotonic()
        stall_s = self.source.stall_timeout_s
        poll_s = min(POLL_S, stall_s)
        last_frame = time.monotonic()
        while not self.stop.is_set():
            # Short polls instead of one long wait: a stop request is seen within POLL_S even from a silent source,
            # and the stall watchdog still fires after stall_s without a frame.
            frame = self.source.poll(poll_s)  # a failure of the capture thread (its own stall report too) raises
            now = time.monotonic()
            # The watchdog hears the loop, not the frames: a reconnecting camera is not a hung daemon (a source
            # that stalls without reconnecting ends the run below).
            if self.on_heartbeat is not None and now >= next_beat:
                self.on_heartbeat()
                next_beat = now + HEARTBEAT_S
            if frame is NOTHING:
                if time.monotonic() - last_frame < stall_s or self.source.reconnects:
                    continue  # a reconnecting source reports its own state
                raise SourceStalled(f"source {printable(self.source.uri)} stalled: no frame for {stall_s:g} s")
            if frame is None:
                return "eos"
            last_frame = time.monotonic()
            try:
                hand_off(frame)
            except ReaderGone:
                return "reader_gone"
        return "stopped"

    def _detect_or_wrap(self, frame: Frame, detector=None) -> Detected:
        try:
            return self.detect(frame, detector)
        except (UserError, FatalError, ReaderGone):
            raise
        except Exception as e:
            raise StageError("detect", e) from e

    def _finish_or_count(self, item: Detected | Future | Frame) -> None:
        """finish() one frame (a Frame is detected first, a Future is waited for); an unexpected error of a stage
        leaves the frame out and is counted (runtime errors of the user's making and ReaderGone are raised)."""
        try:
            if isinstance(item, Frame):
                item = self._detect_or_wrap(item)
            elif isinstance(item, Future):
                item = item.result()
            self.finish(item)
        except CancelledError:  # submitted while stopping and never detected
            return
        except StageError as e:
            self._count_failure(e.stage, e.error)
            return
        except (UserError, FatalError, ReaderGone):
            raise
        except Exception as e:
            self._count_failure("finish", e)
            return
        self.counters.failed_in_a_row = 0

    def _count_failure(self, stage: str, error: BaseException) -> None:
        c = self.counters
        c.errors += 1
        c.failed_in_a_row += 1
        what = f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]
        if c.failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            raise FatalError(f"{stage} failed on {c.failed_in_a_row} frames in a row ({what})")
        if (stage, type(error)) not in c.reported:
            c.reported.add((stage, type(error)))
            say(
                f"emotiond: a frame was left out: {stage} failed ({what}); further such errors are only counted",
                "warning",
            )

    def process(self, frame: Frame) -> dict | None:
        """One frame through every stage on the calling thread; returns its event (None if not emitted)."""
        return self.finish(self.detect(frame))

    def detect(self, frame: Frame, detector=None) -> Detected:
        """First half: the faces (MediaPipe; the first detector unless told), on a frame the source prepared for
        it in its capture thread."""
        detector = self.detectors[0] if detector is None else detector
        picked_ns = time.monotonic_ns()
        t0 = time.perf_counter_ns()
        prepared = frame.detector_input if frame.detector_input is not None else detector.prepare(frame.image)
        timestamp_ms = None if self.source.stills else frame.capture_ns // 1_000_000
        detections = detector.detect_input(prepared, timestamp_ms)
        return Detected(frame, detections, picked_ns, (time.perf_counter_ns() - t0) / 1e6)

    def finish(self, item: Detected) -> dict | None:
        """Second half: crop, classify, track, annotate, build and publish the event."""
        frame, detections = item.frame, item.detections
        h, w = frame.image.shape[:2]
        n = len(detections)
        t1 = time.perf_counter_ns()
        if n:
            try:
                crops = self.cropper.crop(frame.image, detections)
                t2 = time.perf_counter_ns()
                probs = self.classifier.predict(crops)
            except (UserError, FatalError):
                raise
            except Exception as e:
                raise StageError("classify", e) from e
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
            "queue": max(0.0, (item.picked_ns - frame.capture_ns) / 1e6),  # waiting for a free detector
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
        if self.live is not None:
            self.live.offer(frame, faces)
        latency["total"] = max(0.0, (time.monotonic_ns() - frame.capture_ns) / 1e6)
        t5 = time.perf_counter_ns()
        event = self.publisher.publish_event(lambda: self.builder.frame(frame, faces, w, h, latency))
        if event is not None:
            latency["publish"] = (time.perf_counter_ns() - t5) / 1e6  # for stats only: the event has left
            c.events += 1
        if self.stats is not None:
            self.stats.record(latency, n)
        return event
