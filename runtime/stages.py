"""The pipeline's stages as one Config builds them, and a reload's rebuild of only the ones whose settings changed.

Stages that a user's mistake can break (source, model, annotate path) are built before the face detectors, so
such an error surfaces before MediaPipe starts. Closing goes in reverse order of building.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field, replace
from pathlib import Path

from runtime.config import Config
from runtime.crop import DEFAULT_MARGIN, FaceCropper
from runtime.errors import UserError, printable, user_path
from runtime.reconnect import Backoff, StatusCallback
from runtime.sources import Source, open_source
from runtime.tracker import Tracker


@dataclass
class Stages:
    source: Source
    classifier: object  # runtime.classifier.Classifier
    detectors: list
    annotator: object | None  # runtime.annotate.Annotator
    cropper: FaceCropper
    tracker: Tracker
    started: bool = False
    owned: list = field(default_factory=list)  # what close() closes: stages this object built

    def close(self) -> None:
        for stage in reversed(self.owned):
            with contextlib.suppress(Exception):  # closing one must not keep the others open
                stage.close()
        self.owned.clear()


def load_classifier(config: Config):
    from runtime.classifier import load_classifier as load  # heavy: onnxruntime / openvino
    from runtime.manifest import model_dir

    c = config.classifier
    return load(model_dir(c.model), backend=c.backend, precision=c.precision, threads=c.threads, tta_flip=c.tta_flip)


def check_annotate_target(target: str, source: Source) -> None:
    """Refuse an --annotate path that is, or would overwrite, a source file: the input must survive."""
    out = user_path(target)
    if source.stills:
        inputs = [Path(p) for p in source.paths]  # type: ignore[attr-defined]
        folders = {p.parent.resolve() for p in inputs}
        if out.exists() and out.resolve() in folders:
            raise UserError(f"annotate: {printable(target)} holds the source images: their copies would overwrite them")
        if any(out.exists() and _same_file(out, p) for p in inputs):
            raise UserError(f"annotate: {printable(target)} is a source image")
    elif out.exists() and _same_file(out, user_path(source.uri)):
        raise UserError(f"annotate: {printable(target)} is the source itself: writing it would destroy it")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _open(config: Config, stop, on_status: StatusCallback) -> Source:
    from runtime.detector import detector_input  # imports mediapipe: only when running

    s, d = config.source, config.detector
    return open_source(
        s.uri, live=s.live, realtime=s.realtime, width=s.width, height=s.height, fps=s.fps,
        stall_timeout_s=s.stall_timeout_s, prepare=functools.partial(detector_input, input_side=d.input_side),
        stop=stop, reconnect=Backoff(s.reconnect_initial_s, s.reconnect_max_s) if s.reconnect else None,
        on_status=on_status,
    )  # fmt: skip


def _detectors(config: Config, source: Source) -> list:
    from runtime.detector import FaceDetector
    from runtime.detector_model import resolve_detector_model

    d = config.detector
    model = resolve_detector_model(d.model_path, allow_fetch=True)
    built: list = []
    try:
        mode = "image" if source.stills else "video"
        for _ in range(d.workers):
            detector = FaceDetector(model, mode, d.min_confidence, d.max_faces, input_side=d.input_side)
            built.append(detector)
    except BaseException:
        for detector in built:
            detector.close()
        raise
    return built


def _annotator(config: Config, source: Source):
    if not config.output.annotate:
        return None
    from runtime.annotate import Annotator

    check_annotate_target(config.output.annotate, source)
    return Annotator(config.output.annotate, stills=source.stills, fps=source.fps)


def _tracker(config: Config) -> Tracker:
    t = config.tracking
    return Tracker(iou_threshold=t.iou_threshold, max_missed=t.max_missed, smoothing=t.smoothing)


def _cropper(config: Config) -> FaceCropper:
    return FaceCropper(margin=DEFAULT_MARGIN if config.crop.margin is None else config.crop.margin)


def build(config: Config, stop, on_status: StatusCallback) -> Stages:
    """Every stage for `config` (raises UserError, or sources.Stopped, having closed what it built)."""
    owned: list = []
    try:
        source = _open(config, stop, on_status)
        owned.append(source)
        if config.output.annotate:
            check_annotate_target(config.output.annotate, source)
        classifier = load_classifier(config)
        annotator = _annotator(config, source)
        if annotator is not None:
            owned.append(annotator)
        detectors = _detectors(config, source)
        owned.extend(detectors)
    except BaseException:
        Stages(None, None, [], None, None, None, owned=owned).close()  # type: ignore[arg-type]
        raise
    return Stages(source, classifier, detectors, annotator, _cropper(config), _tracker(config), owned=owned)


def rebuild(stages: Stages, old: Config, new: Config, stop, on_status: StatusCallback) -> tuple[Stages, list[str]]:
    """Stages for `new`, reusing every stage whose settings did not change, and the names of those that did.
    Raises UserError (having closed what it built) if a new stage cannot be built: the old ones stay usable.
    The caller closes the replaced stages of the old Stages (those not in the new one's `owned`)."""
    changed = [name for name in ("source", "classifier", "detector", "crop", "tracking", "annotate") if (
        getattr(old.output, name) != getattr(new.output, name) if name == "annotate"
        else getattr(old, name) != getattr(new, name)
    )]  # fmt: skip
    new_source = "source" in changed or old.detector.input_side != new.detector.input_side
    owned: list = []
    try:
        source = _reopen(stages, old, new, stop, on_status) if new_source else stages.source
        if new_source:
            owned.append(source)
        classifier = load_classifier(new) if "classifier" in changed else stages.classifier
        annotator = stages.annotator
        # The same annotate path goes on in the same file (a new writer would truncate what was written).
        if "annotate" in changed or (annotator is not None and annotator.stills != source.stills):
            annotator = _annotator(new, source)
            if annotator is not None:
                owned.append(annotator)
        # MediaPipe's video mode needs a fresh graph for a new source's frames.
        detectors = _detectors(new, source) if new_source or "detector" in changed else stages.detectors
        if detectors is not stages.detectors:
            owned.extend(detectors)
    except BaseException:
        Stages(None, None, [], None, None, None, owned=owned).close()  # type: ignore[arg-type]
        raise
    tracker = stages.tracker
    if "tracking" in changed or new_source:  # same ids where only the thresholds change
        tracker = _tracker(new) if new_source else _retune(tracker, new)
    kept = [s for s in stages.owned if s in (source, annotator, *detectors)]
    result = replace(
        stages, source=source, classifier=classifier, detectors=detectors, annotator=annotator,
        cropper=_cropper(new) if "crop" in changed else stages.cropper, tracker=tracker, owned=kept + owned,
        started=stages.started and not new_source,
    )  # fmt: skip
    return result, changed


def _reopen(stages: Stages, old: Config, new: Config, stop, on_status: StatusCallback) -> Source:
    """The source for `new`. A camera is closed first (V4L2 refuses a second open of a busy device); if the new one
    cannot be opened the old one is opened again into `stages` (not started) and the error raised."""
    if getattr(stages.source, "kind", None) != "webcam":
        return _open(new, stop, on_status)
    stages.source.close()
    stages.owned.remove(stages.source)
    try:
        return _open(new, stop, on_status)
    except BaseException:
        stages.source = _open(old, stop, on_status)
        stages.owned.insert(0, stages.source)
        stages.started = False
        raise


def _retune(tracker: Tracker, config: Config) -> Tracker:
    t = config.tracking
    _tracker(config)  # validates the values as a new tracker would
    tracker.iou_threshold, tracker.max_missed, tracker.smoothing = t.iou_threshold, t.max_missed, t.smoothing
    return tracker
