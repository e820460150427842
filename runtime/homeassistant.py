"""Home Assistant MQTT discovery (output.mqtt.homeassistant): each camera appears as one device with two sensors,
"Dominant emotion" (PREFIX/CAMERA/emotion) and "Faces" (PREFIX/CAMERA/faces), both unavailable while
PREFIX/CAMERA/status reads `offline`, which the publisher's Last Will sets when the daemon dies.

The configs are retained under DISCOVERY_PREFIX/sensor/emotiond_CAMERA/OBJECT/config and published again at each
connect, so Home Assistant finds the camera whenever it starts (https://www.home-assistant.io/integrations/mqtt/,
"MQTT Discovery")."""

from __future__ import annotations

import json

from runtime.events import emotiond_version
from runtime.labels import LABELS
from runtime.mqtt_topics import NO_EMOTION, Message


def discovery_messages(base: str, camera: str, discovery_prefix: str) -> list[Message]:
    """The retained discovery configs of one camera whose topics are below `base` (PREFIX/CAMERA)."""
    node = f"emotiond_{camera}"
    version = emotiond_version()
    common = {
        "availability_topic": f"{base}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [node],
            "name": f"emotiond {camera}",
            "manufacturer": "emotiond",
            "model": "facial expression daemon",
            "sw_version": version,
        },
        "origin": {"name": "emotiond", "sw_version": version},
    }
    sensors = {
        "emotion": {
            "name": "Dominant emotion",
            "state_topic": f"{base}/emotion",
            "device_class": "enum",
            "options": [*LABELS, NO_EMOTION],
            "icon": "mdi:emoticon-outline",
        },
        "faces": {
            "name": "Faces",
            "state_topic": f"{base}/faces",
            "state_class": "measurement",
            "icon": "mdi:account-multiple",
        },
    }
    return [
        Message(
            f"{discovery_prefix}/sensor/{node}/{obj}/config",
            json.dumps({**sensor, "unique_id": f"{node}_{obj}", **common}).encode(),
            1,
            True,
        )
        for obj, sensor in sensors.items()
    ]
