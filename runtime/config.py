"""The daemon's configuration: one small pydantic model per concern, validated as a whole at start.

Every field has a description (the documentation of config.yaml comes from the same place), unknown keys
are errors (`extra="forbid"`: a misspelt key must not be silently ignored), and types are strict (`"yes"`
is not a boolean, `"2"` is not a number). Every problem becomes ONE line naming the dotted key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runtime.errors import UserError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SourceConfig(_Section):
    uri: str = Field(
        "0",
        description="What to watch: webcam index ('0') or device (/dev/video0), video file, rtsp:// or http(s):// "
        "URL, a single image, or a directory of images.",
    )
    realtime: bool = Field(False, description="Files only: play at the file's own frame rate instead of flat out.")
    live: bool | None = Field(
        None,
        description="Latest-frame-wins (stale frames dropped, never queued). null: yes for cameras and URLs, "
        "no for files (every frame is processed).",
    )
    width: int | None = Field(
        None, ge=1, description="Cameras: requested frame width in pixels (null: driver default)."
    )
    height: int | None = Field(None, ge=1, description="Cameras: requested frame height (null: driver default).")
    fps: float | None = Field(None, gt=0, description="Cameras: requested frame rate (null: driver default).")
    stall_timeout_s: float = Field(
        10.0, gt=0, description="Watchdog: a source that delivers no frame for this long is reported as stalled."
    )

    @field_validator("uri", mode="before")
    @classmethod
    def _index_as_text(cls, value: Any) -> Any:
        # YAML reads `uri: 0` as an int; a webcam index is the natural way to write it.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class DetectorConfig(_Section):
    model_path: str | None = Field(
        None,
        description="BlazeFace short-range .tflite; null: the cached copy ($EMOTIOND_CACHE_DIR or "
        "$XDG_CACHE_HOME/emotiond), fetched by `emotiond fetch-models`.",
    )
    min_confidence: float = Field(0.5, ge=0, le=1, description="Faces scored below this are ignored.")
    max_faces: int = Field(8, ge=1, description="At most this many faces per frame (best scores first).")
    workers: int = Field(
        2,
        ge=1,
        le=8,
        description="Face detectors working on consecutive frames at once, a thread and ~8 MB each: one MediaPipe detector "
        "leaves the CPU idle much of its time; two detect about 1.8x the frames of one on two cores.",
    )
    input_side: int | None = Field(
        128,
        ge=128,
        description="Before detection the frame is halved (area averaging) while its longer side stays at least "
        "this many pixels (640x480 -> 160x120): BlazeFace sees 128x128 anyway, and MediaPipe's own resize of a "
        "large frame misses small faces. null: full size.",
    )


class CropConfig(_Section):
    margin: float | None = Field(
        None,
        gt=-0.5,
        le=3.0,
        description="Extra room around the face, as a fraction of its size; null: the value tuned on wild-faces "
        "(runtime.crop.DEFAULT_MARGIN).",
    )


class ClassifierConfig(_Section):
    model: str | None = Field(None, description="Model set folder (with manifest.json); null: the shipped default.")
    backend: Literal["onnxruntime", "openvino"] = Field("onnxruntime", description="Inference engine.")
    precision: Literal["int8", "fp32"] = Field("int8", description="Model variant: int8 (fast) or fp32.")
    threads: int = Field(1, ge=1, description="CPU threads for the classifier.")
    tta_flip: bool | None = Field(
        None,
        description="Average each face with its mirror image (one batch of face and mirror): +1.3 points on FER2013 "
        "PublicTest and +1.4 on the wild-faces photos, for 0.1-0.15 ms more per face with the shipped model; "
        "null: as the model's manifest recommends (the shipped model's: true).",
    )


class TrackingConfig(_Section):
    iou_threshold: float = Field(0.3, gt=0, le=1, description="Minimum box overlap to keep a face's id.")
    max_missed: int = Field(10, ge=0, description="Frames a face may go unseen before its id is forgotten.")
    smoothing: float = Field(
        0.5, ge=0, lt=1, description="EMA of probabilities: p = s*previous + (1-s)*new; 0 turns smoothing off."
    )


class EventsConfig(_Section):
    emit: Literal["all", "faces"] = Field(
        "all", description="Emit an event for every frame, or only frames with faces."
    )


class OutputConfig(_Section):
    publishers: list[str] = Field(
        ["stdout"], min_length=1, description="Where events go: 'stdout' (JSON Lines, one event per line)."
    )
    annotate: str | None = Field(
        None,
        description="Write what the daemon saw, with boxes and expressions drawn: a .mp4/.avi path for streams, "
        "a directory for images; null: off.",
    )


class Config(_Section):
    source: SourceConfig = Field(default_factory=SourceConfig, description="Where frames come from.")
    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="Face detection (MediaPipe).")
    crop: CropConfig = Field(default_factory=CropConfig, description="Face crops handed to the classifier.")
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig, description="Expression model.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Face ids and smoothing (streams).")
    events: EventsConfig = Field(default_factory=EventsConfig, description="Which frames produce events.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Publishers and annotation.")


def _one_line(err: ValidationError, origin: str) -> str:
    """The first problem as one line naming the dotted key; the count of any others."""
    errors = err.errors(include_url=False)
    first = errors[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        line = f"{origin}: unknown key {key!r}"
    else:
        got = first.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r:.60})"
        line = f"{origin}: {key}: {first['msg']}{shown}"
    more = len(errors) - 1
    return line + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def read_yaml(path: str | Path) -> dict:
    """The file's top-level mapping (empty file: {}); UserError for a missing or unparsable file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}:{where}: not valid YAML: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections (source:, detector:, ...), got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults <- the YAML file (if any) <- overrides ({"source.uri": "clip.mp4", ...}), validated as a whole."""
    raw = read_yaml(path) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise UserError(_one_line(e, str(path) if path is not None else "config")) from None
