"""The daemon's lifecycle in one place: build every stage from the Config, run the pipeline, close in reverse order.

Signals only set the stop event; the pipeline sees it within ~0.1 s and returns, and the ExitStack then closes
the stages in reverse order of building (detectors, annotator, source thread, publishers) whether the run ended
normally or with an error. systemd hears READY=1 once everything is up, WATCHDOG=1 while frames flow and
STOPPING=1 at the end; outside systemd those calls do nothing. A reload will slot in as: stop the pipeline,
close the stack, build again from the new Config (a new detector after every source re-open: MediaPipe's video
mode needs a fresh graph then).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runtime import systemd
from runtime.config import Config
from runtime.crop import DEFAULT_MARGIN, FaceCropper
from runtime.errors import UserError
from runtime.events import EventBuilder, new_session_id
from runtime.pipeline import Counters, Pipeline
from runtime.publishers import make_publisher
from runtime.sources import open_source
from runtime.tracker import Tracker


@dataclass
class RunResult:
    reason: str  # "eos", "stopped" or "reader_gone"
    counters: Counters
    seconds: float

    @property
    def fps(self) -> float:
        return self.counters.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        c = self.counters
        return (
            f"emotiond: {self.reason}: {c.frames} frames in {self.seconds:.2f} s ({self.fps:.1f} frames/s), "
            f"{c.faces} faces, {c.dropped} dropped, {c.skipped} skipped"
        )


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set `stop` (nothing else happens in a handler). A second SIGINT while stopping raises
    KeyboardInterrupt: the way out if a stage hangs. Only the main thread may install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _load_classifier(config: Config):
    from runtime.classifier import DEFAULT_MODEL_DIR, load_classifier  # heavy: onnxruntime / openvino

    c = config.classifier
    model = Path(c.model).expanduser() if c.model else DEFAULT_MODEL_DIR
    if not model.exists():  # named as given: the loader would report the manifest path it derived from it
        raise UserError(f"model not found: {model} (expected a model set folder with manifest.json)")
    return load_classifier(model, backend=c.backend, precision=c.precision, threads=c.threads, tta_flip=c.tta_flip)


def run(config: Config, stop: threading.Event | None = None, log=sys.stderr) -> RunResult:
    """Build, run until the end of the stream / a stop / the reader leaving, and close everything.

    Stages that a user's mistake can break (publisher spec, source, model, annotate path) are built before the
    face detector, so such an error surfaces before MediaPipe starts (and prints its own log lines).
    """
    from runtime.detector import FaceDetector, detector_input  # imports mediapipe: only when running
    from runtime.detector_model import resolve_detector_model

    stop = stop or threading.Event()
    with stop_on_signals(stop), contextlib.ExitStack() as stack:
        publisher = stack.enter_context(make_publisher(config.output.publishers))
        s, d = config.source, config.detector
        source = open_source(
            s.uri, live=s.live, realtime=s.realtime, width=s.width, height=s.height, fps=s.fps,
            stall_timeout_s=s.stall_timeout_s, prepare=functools.partial(detector_input, input_side=d.input_side),
        )  # fmt: skip
        stack.callback(source.close)
        classifier = _load_classifier(config)
        detector_model = resolve_detector_model(d.model_path, allow_fetch=True)
        annotator = None
        if config.output.annotate:
            from runtime.annotate import Annotator

            annotator = stack.enter_context(Annotator(config.output.annotate, stills=source.stills, fps=source.fps))
        detectors = [
            stack.enter_context(
                FaceDetector(
                    detector_model,
                    mode="image" if source.stills else "video",
                    min_confidence=d.min_confidence,
                    max_faces=d.max_faces,
                    input_side=d.input_side,
                )
            )
            for _ in range(d.workers)
        ]
        t = config.tracking
        pipeline = Pipeline(
            source=source,
            detector=detectors,
            cropper=FaceCropper(margin=DEFAULT_MARGIN if config.crop.margin is None else config.crop.margin),
            classifier=classifier,
            tracker=Tracker(iou_threshold=t.iou_threshold, max_missed=t.max_missed, smoothing=t.smoothing),
            builder=EventBuilder(
                session=new_session_id(),
                source=s.uri,
                model_id=classifier.model_id,
                emit_empty=config.events.emit == "all",
            ),
            publisher=publisher,
            annotator=annotator,
            stop=stop,
            on_heartbeat=systemd.watchdog_ping,
        )
        stack.callback(systemd.stopping)  # registered last: unwinds first, before any stage closes
        source.start()
        systemd.ready(f"watching {s.uri} with {classifier.model_id} ({classifier.backend} {classifier.precision})")
        start = time.monotonic()
        reason = pipeline.run()
        seconds = time.monotonic() - start
    result = RunResult(reason, pipeline.counters, seconds)
    if log is not None:
        print(result.summary(), file=log, flush=True)
    return result
