"""Events: one JSON object per processed frame, plus status and stats events, all described by SCHEMA_PATH.

Every event carries `type`, `schema`, `session` (new at each daemon start), `seq` (0, 1, 2, ... across all
types of one session, so a consumer sees gaps and restarts), the wall-clock time as ISO-8601 UTC and as Unix
seconds, and a monotonic time in ms (the capture time for frames) for latency maths.

Two kinds of line are not events of the session and carry no `seq`, because each concerns one socket subscriber:
`hello` (the first line a subscriber gets: what it is reading) and `dropped` (a notice that the subscriber's queue
overflowed and its oldest events were lost; the `seq` gap shows the same).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from runtime.frames import Face, Frame
from runtime.labels import LABELS, NUM_CLASSES

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "event.schema.json"

# Kept in step with the schema's enum (tests check both agree), so a typo fails where it is made.
STATUS_STATES = ("starting", "online", "offline", "reconnecting", "reloading", "stopping", "eos", "error")
# The event types the daemon publishes (told to subscribers in `hello`).
PUBLISHED_TYPES = ("frame", "status", "stats")


def load_schema() -> dict:
    """The event JSON Schema (draft 2020-12) as a dict, for validators (the runtime itself never validates)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def new_session_id() -> str:
    return uuid.uuid4().hex


def _to_builtin(obj: Any) -> Any:
    # Only reached for types json does not know: numpy scalars (np.float32 is no float subclass) and arrays.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


# One encoder built once: json.dumps(..., separators=...) would build a new one per call.
# ensure_ascii keeps lines valid UTF-8 even for file names that are not (surrogate-escaped bytes).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_to_builtin)


def encode(event: dict) -> bytes:
    """One compact JSON line ending in b"\\n". Raises ValueError on NaN/Infinity: never writes invalid JSON."""
    return _ENCODER.encode(event).encode("ascii") + b"\n"


@functools.cache
def emotiond_version() -> str:
    try:
        from importlib.metadata import version

        return version("emotiond")
    except Exception:  # not installed (a source checkout): still a valid hello
        return "unknown"


def _clock() -> dict:
    unix = time.time()
    return {"time": _iso_utc(unix), "unix": round(unix, 3), "mono_ms": round(time.monotonic_ns() / 1e6, 3)}


def dropped_notice(count: int, total: int) -> dict:
    """The in-band notice to one subscriber: `count` of its oldest events were dropped since the last notice
    (`total` since it connected), because it read slower than events came."""
    return {"type": "dropped", "schema": SCHEMA_VERSION, **_clock(), "dropped": int(count), "dropped_total": int(total)}


def _iso_utc(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _box(det_box: tuple[float, float, float, float], width: int, height: int) -> tuple[dict, dict]:
    # Clipped to the frame: detectors report boxes reaching past the border, consumers want drawable ones.
    x, y, w, h = det_box
    x0 = min(max(round(x), 0), width)
    y0 = min(max(round(y), 0), height)
    x1 = min(max(round(x + w), x0), width)
    y1 = min(max(round(y + h), y0), height)
    box = {"x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0}
    norm = {
        "x": round(x0 / width, 4),
        "y": round(y0 / height, 4),
        "w": round((x1 - x0) / width, 4),
        "h": round((y1 - y0) / height, 4),
    }
    return box, norm


def face_record(face: Face, width: int, height: int) -> dict:
    box, norm = _box(face.detection.box, width, height)
    # Python floats (float64) before rounding: k/10**4 then prints as its short decimal; float32 would print
    # 0.123400002. tolist() is one call where numpy's round would be three.
    values = face.probs.tolist() if isinstance(face.probs, np.ndarray) else face.probs
    probs = [round(float(v), 4) for v in values]
    if len(probs) != NUM_CLASSES:
        raise ValueError(f"a face needs {NUM_CLASSES} probabilities, got {len(probs)}")
    top = max(range(NUM_CLASSES), key=probs.__getitem__)
    return {
        "id": None if face.id is None else int(face.id),
        "box": box,
        "box_norm": norm,
        "score": round(float(face.detection.score), 4),
        "emotion": LABELS[top],
        "confidence": probs[top],
        "probs": dict(zip(LABELS, probs, strict=True)),
    }


class EventBuilder:
    """Stamps events of one daemon session. seq comes from itertools.count, whose next() is atomic under the GIL,
    so the pipeline thread (frames) and a service thread (status, stats) may share one builder."""

    def __init__(self, session: str, source: str, model_id: str, emit_empty: bool = True):
        self.session = session
        self.source = source
        self.model_id = model_id
        self.emit_empty = emit_empty
        self._seq = itertools.count()

    def _head(self, kind: str, unix: float, mono_ns: int) -> dict:
        return {
            "type": kind,
            "schema": SCHEMA_VERSION,
            "session": self.session,
            "seq": next(self._seq),
            "time": _iso_utc(unix),
            "unix": round(unix, 3),
            "mono_ms": round(mono_ns / 1e6, 3),
            "source": self.source,
        }

    def hello(self) -> dict:
        """The first line each socket subscriber gets: what it reads (schema, versions, session, model, source,
        which event types). Takes no seq: it is not an event of the session, and other subscribers never see it."""
        return {
            "type": "hello",
            "schema": SCHEMA_VERSION,
            "session": self.session,
            **_clock(),
            "source": self.source,
            "version": emotiond_version(),
            "pid": os.getpid(),
            "model": self.model_id,
            "publishes": {"types": list(PUBLISHED_TYPES), "emit": "all" if self.emit_empty else "faces"},
        }

    def frame(
        self, frame: Frame, faces: list[Face], width: int, height: int, latency_ms: dict[str, float]
    ) -> dict | None:
        """The event of one processed frame; None (and no seq used) for a frame without faces if not emit_empty."""
        if not faces and not self.emit_empty:
            return None
        event = self._head("frame", frame.wall_time, frame.capture_ns)
        event["frame"] = int(frame.index)
        event["file"] = frame.file
        event["size"] = {"width": int(width), "height": int(height)}
        event["model"] = self.model_id
        event["latency_ms"] = {stage: round(float(ms), 3) for stage, ms in latency_ms.items()}
        event["faces"] = [face_record(face, width, height) for face in faces]
        return event

    def status(self, state: str, detail: str = "", **fields: Any) -> dict:
        """A change of the daemon's or source's state (online, offline, reloading, stopping, eos, ...)."""
        if state not in STATUS_STATES:
            raise ValueError(f"unknown status state {state!r}; one of {', '.join(STATUS_STATES)}")
        event = self._head("status", time.time(), time.monotonic_ns())
        event["state"] = state
        event["detail"] = detail
        event.update(fields)
        return event

    def stats(self, **fields: Any) -> dict:
        """Periodic figures: frames, dropped, fps, faces, latency percentiles per stage (see the schema)."""
        event = self._head("stats", time.time(), time.monotonic_ns())
        event.update(fields)
        return event
