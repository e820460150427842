"""The daemon's configuration: one small pydantic model per concern, validated as a whole at start.

Every field has a description (the documentation of config.yaml comes from the same place), unknown keys
are errors (`extra="forbid"`: a misspelt key must not be silently ignored), and types are strict (`"yes"`
is not a boolean, `"2"` is not a number). Every number has bounds the daemon can run with and must be finite
(no .nan, no .inf), every text must be something a path or URL can be: a config that validates is one that
runs. Every problem becomes ONE line naming the dotted key.

The file itself is read only if it is a regular file of at most 1 MiB of UTF-8: a FIFO, a device or a directory
named by mistake is refused before it is opened for reading (a FIFO would block, /dev/zero never ends).
"""

from __future__ import annotations

import math
import os
import reprlib
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from runtime.errors import UserError, one_line, printable

MAX_FILE_BYTES = 1 << 20  # a config file (or a model manifest) is a few KB; anything larger is a mistake
MAX_TEXT = 4096  # the longest path or URL (PATH_MAX)
MAX_THREADS = 64  # classifier threads, whatever the machine
THREADS_PER_CPU = 4  # ... and at most this many per usable CPU: beyond, threads only wait for each other
MAX_WEBCAM_INDEX = 9999  # OpenCV's index + backend offset (CAP_V4L2 + 0 = 200, ...)
MAX_PIXELS = 8192  # frame sides: 8K (7680 / 8192 wide)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and systemd's CPUAffinity= set)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_threads() -> int:
    """The most classifier threads a config may ask for on this machine."""
    return max(1, min(MAX_THREADS, THREADS_PER_CPU * usable_cpus()))


def _text(value: str) -> str:
    """A path, URL or name: not blank, no control characters (a NUL cannot be in a path; a newline in a path is
    a mistake), encodable as UTF-8 (YAML's "\\ud800" escape yields a lone surrogate that no file name can hold)."""
    if not value.strip():
        raise PydanticCustomError("blank_text", "must not be empty or blank")
    if not value.isprintable():  # (" " is printable; tabs, newlines, NUL, escapes are not)
        raise PydanticCustomError("control_character", "must not contain control or non-printing characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("not_utf8", "must be valid Unicode text (no lone surrogates)") from None
    return value


Text = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(_text)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class SourceConfig(_Section):
    uri: Text = Field(
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
        None,
        ge=1,
        le=MAX_PIXELS,
        description="Cameras: requested frame width in pixels, 1..8192 (null: driver default).",
    )
    height: int | None = Field(
        None, ge=1, le=MAX_PIXELS, description="Cameras: requested frame height, 1..8192 (null: driver default)."
    )
    fps: float | None = Field(
        None, ge=0.1, le=1000, description="Cameras: requested frame rate, 0.1..1000 (null: driver default)."
    )
    stall_timeout_s: float = Field(
        10.0,
        ge=0.5,
        le=600,
        description="Watchdog: a source that delivers no frame for this long (0.5..600 s) is reported as stalled.",
    )

    reconnect: bool = Field(
        True, description="Cameras and URLs that fail or stall are reopened with backoff instead of ending the run."
    )
    reconnect_initial_s: float = Field(
        0.5, ge=0.05, le=60, description="First wait before reopening a lost source (0.05..60 s); doubles each try."
    )
    reconnect_max_s: float = Field(30.0, ge=0.05, le=3600, description="Longest wait between tries (0.05..3600 s).")

    @field_validator("uri", mode="before")
    @classmethod
    def _index_as_text(cls, value: Any) -> Any:
        # YAML reads `uri: 0` as an int; a webcam index is the natural way to write it.
        # (Only a plausible one: str() of a 5000-digit integer raises, and the index check below names the range.)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63:
            return str(value)
        return value

    @field_validator("uri")
    @classmethod
    def _webcam_index(cls, value: str) -> str:
        # The daemon opens an all-digit uri as a webcam index: int() must take it and OpenCV must hold it.
        if value.isdigit() and (not value.isascii() or len(value) > len(str(MAX_WEBCAM_INDEX))):
            raise PydanticCustomError(
                "webcam_index", "a webcam index is 0..{limit} in ASCII digits", {"limit": MAX_WEBCAM_INDEX}
            )
        return value

    @model_validator(mode="after")
    def _watchdog_outlasts_frames(self) -> SourceConfig:
        if self.fps is not None and self.stall_timeout_s < 2 / self.fps:
            raise PydanticCustomError(
                "stall_before_frame",
                "stall_timeout_s {stall} s is shorter than two frame intervals at fps {fps} ({need} s): "
                "the watchdog would call every pause between frames a stall",
                {"stall": f"{self.stall_timeout_s:g}", "fps": f"{self.fps:g}", "need": f"{2 / self.fps:g}"},
            )
        return self


class DetectorConfig(_Section):
    model_path: Text | None = Field(
        None,
        description="BlazeFace short-range .tflite; null: the cached copy ($EMOTIOND_CACHE_DIR or "
        "$XDG_CACHE_HOME/emotiond), fetched by `emotiond fetch-models`.",
    )
    min_confidence: float = Field(0.5, ge=0, le=1, description="Faces scored below this (0..1) are ignored.")
    max_faces: int = Field(
        8, ge=1, le=100, description="At most this many faces per frame (1..100, best scores first)."
    )
    workers: int = Field(
        2,
        ge=1,
        le=8,
        description="Face detectors working on consecutive frames at once (1..8), a thread and ~8 MB each: one "
        "MediaPipe detector leaves the CPU idle much of its time; two detect about 1.8x the frames of one on two "
        "cores.",
    )
    input_side: int | None = Field(
        128,
        ge=128,
        le=MAX_PIXELS,
        description="Before detection the frame is halved (area averaging) while its longer side stays at least "
        "this many pixels (128..8192; 640x480 -> 160x120): BlazeFace sees 128x128 anyway, and MediaPipe's own "
        "resize of a large frame misses small faces. null: full size.",
    )


class CropConfig(_Section):
    margin: float | None = Field(
        None,
        gt=-0.5,
        le=3.0,
        description="Extra room around the face, as a fraction of its size (-0.5 < margin <= 3); null: the value "
        "tuned on wild-faces (runtime.crop.DEFAULT_MARGIN).",
    )


class ClassifierConfig(_Section):
    model: Text | None = Field(
        None,
        description="Model set: a folder with manifest.json, or the name of a set shipped with emotiond; null: the shipped default.",
    )
    backend: Literal["onnxruntime", "openvino"] = Field("onnxruntime", description="Inference engine.")
    precision: Literal["int8", "fp32"] = Field("int8", description="Model variant: int8 (fast) or fp32.")
    threads: int = Field(
        1,
        ge=1,
        description="CPU threads for the classifier: 1..4 per usable CPU, 64 at most (more threads than cores only "
        "wait for each other; 1000 stalled a 2-core machine).",
    )
    tta_flip: bool | None = Field(
        None,
        description="Average each face with its mirror image (one batch of face and mirror): +1.3 points on FER2013 "
        "PublicTest and +1.4 on the wild-faces photos, for 0.1-0.15 ms more per face with the shipped model; "
        "null: as the model's manifest recommends (the shipped model's: true).",
    )

    @field_validator("threads")
    @classmethod
    def _threads_for_this_machine(cls, value: int) -> int:
        limit = max_threads()
        if value > limit:
            raise PydanticCustomError(
                "too_many_threads",
                "at most {limit} on this machine ({per} per usable CPU, {cpus} CPU{s}): more threads than cores "
                "only wait for each other",
                {"limit": limit, "per": THREADS_PER_CPU, "cpus": usable_cpus(), "s": "s" if usable_cpus() > 1 else ""},
            )
        return value


class TrackingConfig(_Section):
    iou_threshold: float = Field(0.3, gt=0, le=1, description="Minimum box overlap (0 < x <= 1) to keep a face's id.")
    max_missed: int = Field(
        10, ge=0, le=1000, description="Frames a face may go unseen (0..1000) before its id is forgotten."
    )
    smoothing: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="EMA of probabilities (0 <= s < 1): p = s*previous + (1-s)*new; 0 turns smoothing off.",
    )


class EventsConfig(_Section):
    emit: Literal["all", "faces"] = Field(
        "all", description="Emit an event for every frame, or only frames with faces."
    )
    status: bool = Field(True, description="A status event on each state change (starting, online, eos, ...).")
    stats_interval_s: float = Field(
        10.0, ge=0, le=86400, description="A stats event every this many seconds (0..86400; 0: none)."
    )


MQTT_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # one topic level that Home Assistant also takes as a node id
MQTT_TOPIC = r"^[A-Za-z0-9_.-]{1,64}(/[A-Za-z0-9_.-]{1,64}){0,7}$"  # no wildcards, no empty levels


class MqttConfig(_Section):
    camera: str | None = Field(
        None,
        pattern=MQTT_NAME,
        description="This camera's topic level (PREFIX/CAMERA/...), 1..64 of A-Z a-z 0-9 _ -; null: the host name, "
        "plus '-NAME' under emotiond@NAME (EMOTIOND_INSTANCE, set by the unit).",
    )
    username: Text | None = Field(None, description="Broker user; null: the URL's USER@, if any (the URL's wins).")
    password_file: Text | None = Field(
        None,
        description="File holding the broker password (one line; never printed). $VARIABLES are expanded: "
        "'$CREDENTIALS_DIRECTORY/mqtt' with systemd's LoadCredential=mqtt:/etc/emotiond/mqtt-password.",
    )
    ca_file: Text | None = Field(
        None, description="mqtts:// only: PEM CA certificate(s) the broker's certificate must chain to; null: system's."
    )
    cert_file: Text | None = Field(None, description="mqtts:// only: PEM client certificate (with key_file).")
    key_file: Text | None = Field(None, description="mqtts:// only: PEM private key of cert_file.")
    homeassistant: bool = Field(
        False, description="Publish Home Assistant MQTT discovery configs (retained): the camera as a device."
    )
    discovery_prefix: str = Field(
        "homeassistant", pattern=MQTT_TOPIC, description="Home Assistant's discovery prefix (its default)."
    )
    queue: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Events waiting for the broker (1..100000): when it is slow or away the oldest are dropped "
        "(counted in stats), the pipeline never waits.",
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive (5..3600 s): a silent link is dead.")
    connect_timeout_s: float = Field(
        5.0,
        ge=0.1,
        le=60,
        description="Longest wait for the broker at start and per attempt (0.1..60 s); a broker down at start is "
        "not fatal, one that refuses the credentials is.",
    )
    reconnect_initial_s: float = Field(
        0.5, ge=0.05, le=60, description="First wait before reconnecting to the broker (0.05..60 s); doubles each try."
    )
    reconnect_max_s: float = Field(30.0, ge=0.05, le=3600, description="Longest wait between tries (0.05..3600 s).")

    @model_validator(mode="after")
    def _cert_with_key(self) -> MqttConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise PydanticCustomError("cert_without_key", "cert_file and key_file go together: give both or neither")
        return self


class LogConfig(_Section):
    level: Literal["error", "warning", "info", "debug"] = Field(
        "info",
        description="emotiond's own lines on stderr: errors, warnings (skipped files, lost frames), info (the "
        "summary, reloads); debug also shows the native libraries' logs (MediaPipe, LiteRT, OpenVINO).",
    )


class OutputConfig(_Section):
    publishers: list[Text] = Field(
        ["stdout"],
        min_length=1,
        max_length=16,
        description="Where events go (1..16 publishers), one JSON object per line: 'stdout', "
        "'unix:PATH[?mode=0660]' or 'tcp:[HOST:]PORT' (listening sockets, any number of subscribers; one systemd "
        "passed for that address is used), 'systemd:NAME' (the socket systemd passed with FileDescriptorName=NAME), "
        "'mqtt://[USER@]HOST[:PORT]/PREFIX' or 'mqtts://...' (an MQTT broker, see output.mqtt).",
    )
    annotate: Text | None = Field(
        None,
        description="Write what the daemon saw, with boxes and expressions drawn: a .mp4/.avi path for streams, "
        "a directory for images; null: off.",
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Settings of mqtt:// and mqtts:// publishers.")

    show: bool = Field(
        False,
        description="Show the annotated frames live in a window (needs a display); q or Esc stops the daemon, "
        "Space saves a snapshot PNG.",
    )
    http: Text | None = Field(
        None,
        description="Serve a live page at [HOST:]PORT (HOST: 127.0.0.1; a TCP socket systemd passed for that "
        "address is used) or on 'systemd:NAME' (the socket systemd passed with FileDescriptorName=NAME): the "
        "annotated stream, expression bars, status and stats; also GET /events (Server-Sent Events), /stream.mjpg "
        "and /healthz; null: off.",
    )
    http_auth_file: Text | None = Field(
        None,
        description="A file holding USER:PASSWORD: the http page asks for them (HTTP basic auth); $VARIABLES "
        "expanded, e.g. '$CREDENTIALS_DIRECTORY/http' with systemd's LoadCredential=; null: no password.",
    )

    @field_validator("http", mode="before")
    @classmethod
    def _port_as_text(cls, value: Any) -> Any:
        # YAML reads `http: 8080` as an int, and a bare port is how --http is written.
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63:
            return str(value)
        return value


class Config(_Section):
    source: SourceConfig = Field(default_factory=SourceConfig, description="Where frames come from.")
    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="Face detection (MediaPipe).")
    crop: CropConfig = Field(default_factory=CropConfig, description="Face crops handed to the classifier.")
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig, description="Expression model.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Face ids and smoothing (streams).")
    events: EventsConfig = Field(default_factory=EventsConfig, description="Which frames produce events.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Publishers and annotation.")
    log: LogConfig = Field(default_factory=LogConfig, description="What reaches stderr (the journal).")


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlevel = 2


def shown_value(value: Any) -> str:
    """A short, one-line rendering of any value YAML can produce (huge ints, deep or self-referencing lists)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of {len(str(abs(value))) if value.bit_length() < 10000 else 'thousands of'} digits"
    if isinstance(value, float) and not math.isfinite(value):
        return {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}[repr(value)]
    try:
        text = _REPR.repr(value)
    except Exception:  # a value whose repr fails is still an answer, not a traceback
        text = f"a {type(value).__name__}"
    return printable(text)


def _key(loc: tuple) -> str:
    return ".".join(printable(part) if isinstance(part, str) else shown_value(part) for part in loc) or "(top level)"


def validation_line(err: ValidationError, origin: str) -> str:
    """The first problem as one line naming the dotted key; the count of any others."""
    errors = err.errors(include_url=False)
    first = errors[0]
    key = _key(first["loc"])
    if first["type"] == "extra_forbidden":
        line = f"{origin}: unknown key {key!r}"
    else:
        got = first.get("input")
        shown = "" if isinstance(got, dict) or first["type"] == "stall_before_frame" else f" (got {shown_value(got)})"
        line = f"{origin}: {key}: {first['msg']}{shown}"
    more = len(errors) - 1
    return one_line(line + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""))


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def read_small_file(path: str | Path, what: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; UserError (one line) for anything else.

    Checked before reading: a FIFO would block until a writer comes, /dev/zero would never end, a huge file would
    fill memory. The file is opened non-blocking and checked again, in case it was swapped in between."""
    shown = printable(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise UserError(f"{what} {shown} is {kind}, not a regular file")
        if st.st_size > limit:
            raise UserError(f"{what} {shown} is {st.st_size} bytes, more than the {limit} a {what} may have")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UserError(f"{what} {shown} is not a regular file")
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {shown}") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise UserError(f"cannot read {what} {shown}: {getattr(e, 'strerror', None) or e}") from None
    if len(data) > limit:
        raise UserError(f"{what} {shown} is more than the {limit} bytes a {what} may have")
    return data


def read_text(path: str | Path, what: str, limit: int = MAX_FILE_BYTES) -> str:
    """read_small_file, decoded as UTF-8 (a leading BOM is dropped)."""
    data = read_small_file(path, what, limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{what} {printable(path)} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None


def read_yaml(path: str | Path) -> dict:
    """The file's top-level mapping (empty file: {}); UserError for a missing, unreadable or unparsable file."""
    text = read_text(path, "config file")
    shown = printable(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
        raise UserError(one_line(f"{shown}:{where}: not valid YAML: {printable(problem)}")) from None
    except RecursionError:
        raise UserError(f"{shown}: not valid YAML: nested too deeply") from None
    except Exception as e:  # PyYAML's constructors raise plain errors for `!!int x`, `!!int ''`, 5000 digits, ...
        why = str(e).strip() or type(e).__name__
        raise UserError(one_line(f"{shown}: not valid YAML: {printable(why[:200])}")) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{shown}: expected a mapping of sections (source:, detector:, ...), got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults <- the YAML file (if any) <- overrides ({"source.uri": "clip.mp4", ...}), validated as a whole."""
    raw = read_yaml(path) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise UserError(validation_line(e, printable(path) if path is not None else "config")) from None
    except RecursionError:  # a self-referencing YAML alias where a value was expected
        raise UserError(f"{printable(path) if path is not None else 'config'}: a value refers to itself") from None
