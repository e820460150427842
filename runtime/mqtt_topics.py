"""What an MQTT publisher puts on which topic, all below PREFIX/CAMERA:

| topic | payload | QoS | retained |
| --- | --- | --- | --- |
| `status` | `online` / `offline` (the Last Will sets `offline`) | 1 | yes |
| `frame` | every frame event | 0 | no |
| `face/ID` | one tracked face of a frame event, while it is seen | 0 | no |
| `faces` | the number of faces, when it changes | 0 | yes |
| `emotion` | the dominant emotion (top label of the faces' mean probabilities; `none`), when it changes | 0 | yes |
| `state` | each `status` event (starting, online, eos, a broker reconnect, ...) | 1 | yes |
| `stats` | each `stats` event | 0 | no |

`faces` and `emotion` are what a dashboard wants (Home Assistant's sensors): a value per change, not 30 a second.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from runtime.events import encode
from runtime.labels import LABELS

NO_EMOTION = "none"
# the daemon's states (status events without `output`) -> availability; the others leave it as it is
AVAILABILITY = {"online": "online", "offline": "offline", "reconnecting": "offline", "eos": "offline",
                "stopping": "offline"}  # fmt: skip


class Message(NamedTuple):
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


def dominant_emotion(faces: list[dict]) -> str:
    """The label with the highest mean probability over the faces of a frame (`none` without a face)."""
    if not faces:
        return NO_EMOTION
    sums = [sum(face["probs"][label] for face in faces) for label in LABELS]
    return LABELS[max(range(len(LABELS)), key=sums.__getitem__)]


def availability_of(status: dict) -> str | None:
    """`online`/`offline` for a status event about the daemon itself; None for other states and for events about
    one of its outputs (a broker reconnect carries `output`)."""
    if "output" in status:
        return None
    return AVAILABILITY.get(status.get("state", ""))


class Router:
    """Event lines -> messages. Keeps the last `faces` and `emotion` values, to publish them only on change."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.status = f"{base}/status"
        self.last_faces: int | None = None
        self.last_emotion: str | None = None

    def forget(self) -> None:
        """After a reconnect the retained values are published again (the broker may have restarted)."""
        self.last_faces = self.last_emotion = None

    def messages(self, line: bytes) -> list[Message]:
        event = json.loads(line)
        kind, payload = event.get("type"), line.rstrip(b"\n")
        if kind == "frame":
            return self._frame(event, payload)
        if kind == "status":
            return [Message(f"{self.base}/state", payload, 1, True)]
        if kind == "stats":
            return [Message(f"{self.base}/stats", payload)]
        return []

    def _frame(self, event: dict, payload: bytes) -> list[Message]:
        faces = event.get("faces", [])
        out = [Message(f"{self.base}/frame", payload)]
        head = {key: event[key] for key in ("session", "seq", "frame", "time", "unix", "mono_ms") if key in event}
        for face in faces:
            if face.get("id") is not None:  # stills have no ids: nothing to follow
                out.append(Message(f"{self.base}/face/{face['id']}", encode({**head, **face}).rstrip(b"\n")))
        if len(faces) != self.last_faces:
            self.last_faces = len(faces)
            out.append(Message(f"{self.base}/faces", str(len(faces)).encode(), 0, True))
        emotion = dominant_emotion(faces)
        if emotion != self.last_emotion:
            self.last_emotion = emotion
            out.append(Message(f"{self.base}/emotion", emotion.encode(), 0, True))
        return out
