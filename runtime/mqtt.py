"""MQTT publishers, the settings side: the URL `mqtt://[USER@]HOST[:PORT]/PREFIX` (`mqtts://` for TLS), the
camera's name, the password file and the TLS context, each checked before anything connects. Every mistake is one
UserError line naming the spec and the key; the password is read here and never appears in any message.

The publisher itself (thread, queue, reconnects) is runtime.mqtt_publisher; topics and what goes on them are
runtime.mqtt_topics; Home Assistant discovery is runtime.homeassistant.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from runtime.config import MQTT_TOPIC, MqttConfig, read_text
from runtime.errors import UserError, printable, secret_path

SCHEMES = {"mqtt": 1883, "mqtts": 8883}
DEFAULT_PREFIX = "emotiond"
EXPECTED = "expected mqtt://[USER@]HOST[:PORT]/PREFIX or mqtts://..."


@dataclass(frozen=True)
class Target:
    """Where an MQTT publisher publishes: broker, user, topic prefix. Holds no secret."""

    spec: str
    tls: bool
    host: str
    port: int
    user: str | None
    prefix: str

    @property
    def identity(self) -> str:
        """The same broker and prefix, however the URL was written (for duplicate outputs)."""
        return f"{self.host.lower()}:{self.port}/{self.prefix}"


def _shown(spec: str) -> str:
    """The spec for a message, with any password in it hidden."""
    shown = printable(spec.strip())
    match = re.match(r"^(mqtts?://)([^:/@]*):(.*)@", shown, flags=re.I)  # greedy: the password ends at the last @
    return f"{match.group(1)}{match.group(2)}:***@{shown[match.end() :]}" if match else shown


def parse_url(spec: str) -> Target:
    """mqtt://[USER@]HOST[:PORT]/PREFIX -> Target; UserError (one line, password hidden) when malformed."""
    spec = spec.strip()
    where = f"output {_shown(spec)!r}"
    try:
        url = urlsplit(spec)
        port = url.port
    except ValueError as e:  # a port that is not a number or out of range, a broken [IPv6]
        raise UserError(f"{where}: malformed MQTT URL: {printable(e)} ({EXPECTED})") from None
    scheme = url.scheme.lower()
    if scheme not in SCHEMES or not url.hostname:
        raise UserError(f"{where}: malformed MQTT URL: no broker host ({EXPECTED})")
    if url.password is not None:
        raise UserError(
            f"{where}: a password in the URL would be shown wherever the spec is; use output.mqtt.password_file"
        )
    if url.query or url.fragment or "#" in spec:
        raise UserError(f"{where}: malformed MQTT URL: no ?query or #fragment ({EXPECTED})")
    prefix = url.path.strip("/") or DEFAULT_PREFIX
    if not re.fullmatch(MQTT_TOPIC, prefix):
        raise UserError(
            f"{where}: topic prefix {printable(prefix)!r} must be 1..8 levels of A-Z a-z 0-9 _ . - (no + or #)"
        )
    if port == 0:
        raise UserError(f"{where}: malformed MQTT URL: port must be 1..65535 ({EXPECTED})")
    user = url.username or None
    return Target(spec, scheme == "mqtts", url.hostname, port or SCHEMES[scheme], user, prefix)


def default_camera() -> str:
    """The host name, plus '-NAME' for the unit instance emotiond@NAME (EMOTIOND_INSTANCE, set by the unit), as
    one topic level of A-Z a-z 0-9 _ -."""
    host = socket.gethostname().split(".")[0] or "emotiond"
    instance = os.environ.get("EMOTIOND_INSTANCE", "").strip()
    name = f"{host}-{instance}" if instance else host
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]


def _path(text: str) -> str:
    return str(secret_path(text))


def read_password(settings: MqttConfig) -> str | None:
    """The first line of output.mqtt.password_file (None: no file). Messages name the file, never its content."""
    if settings.password_file is None:
        return None
    text = read_text(_path(settings.password_file), "output.mqtt.password_file", limit=4096)
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise UserError(f"output.mqtt.password_file {printable(settings.password_file)} is empty")
    return lines[0]


def tls_context(target: Target, settings: MqttConfig) -> ssl.SSLContext | None:
    """The TLS context of an mqtts:// target (the broker's certificate and host name are checked); None for
    mqtt://, which refuses TLS files rather than silently sending in the clear."""
    files = {key: getattr(settings, key) for key in ("ca_file", "cert_file", "key_file")}
    if not target.tls:
        given = [key for key, value in files.items() if value is not None]
        if given:
            raise UserError(
                f"output {_shown(target.spec)!r}: output.mqtt.{given[0]} is set but mqtt:// is not TLS (use mqtts://)"
            )
        return None
    paths = {key: _path(value) for key, value in files.items() if value is not None}
    for key, path in paths.items():
        if not os.path.isfile(path):
            raise UserError(f"output.mqtt.{key} not found: {printable(path)}")
    try:
        context = ssl.create_default_context(cafile=paths.get("ca_file"))
        if "cert_file" in paths:
            # password="": an encrypted key is an error here, not a prompt on the daemon's terminal
            context.load_cert_chain(paths["cert_file"], paths["key_file"], password="")
    except (ssl.SSLError, OSError) as e:
        what = "ca_file" if "cert_file" not in paths else "cert_file/key_file"
        why = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
        raise UserError(f"output.mqtt.{what}: cannot load: {printable(why)}") from None
    return context


@dataclass(frozen=True)
class Connection:
    """Everything a publisher needs to connect: the target, the resolved user and password, TLS, the camera."""

    target: Target
    settings: MqttConfig
    user: str | None
    password: str | None
    tls: ssl.SSLContext | None
    camera: str

    def __repr__(self) -> str:  # a traceback or a debugger must not show the password
        return f"Connection({self.target.spec!r}, user={self.user!r}, camera={self.camera!r})"

    @property
    def base(self) -> str:
        """PREFIX/CAMERA: every topic of this publisher is below it."""
        return f"{self.target.prefix}/{self.camera}"


def resolve(spec: str, settings: MqttConfig | None = None) -> Connection:
    """Everything checked that can be checked without the network: URL, credentials file, TLS files."""
    settings = settings or MqttConfig()
    target = parse_url(spec)
    user = target.user or settings.username
    password = read_password(settings)
    if password is not None and user is None:
        raise UserError(
            f"output {_shown(spec)!r}: output.mqtt.password_file needs a user (mqtt://USER@HOST/... or "
            "output.mqtt.username)"
        )
    return Connection(
        target, settings, user, password, tls_context(target, settings), settings.camera or default_camera()
    )
