"""A real Mosquitto broker for the tests, on a free loopback port with a config file of its own (no auth, a password
file, or TLS with certificates made here by openssl), and a real paho subscriber that records what it gets."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from socket_clients import free_port

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
MOSQUITTO_SUB = shutil.which("mosquitto_sub")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
USER, PASSWORD = "emotiond", "correct horse battery staple"


class Broker:
    """mosquitto -c CONFIG, started at once; stop() and start() again keep the port (a broker restart)."""

    def __init__(
        self, folder: Path, kind: str = "plain", tls: dict[str, Path] | None = None, port: int | None = None
    ) -> None:
        self.folder, self.kind, self.port = folder, kind, port or free_port()
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_type error"]
        if os.geteuid() == 0:  # mosquitto would switch to user `mosquitto`, who cannot read the test's files
            lines.append("user root")
        if kind == "password":
            passwd = folder / "passwd"
            subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(passwd), USER, PASSWORD], check=True, timeout=30)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if kind == "tls":
            assert tls is not None
            lines += [
                f"cafile {tls['ca']}", f"certfile {tls['server_cert']}", f"keyfile {tls['server_key']}",
                "require_certificate true",
            ]  # fmt: skip
        self.config = folder / f"mosquitto-{kind}-{self.port}.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = folder / f"mosquitto-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self, timeout: float = 15) -> None:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log)
        end = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


def make_tls_files(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost / 127.0.0.1 and a client certificate, signed by it; and a second,
    unrelated CA (EC P-256 keys, valid for two days)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other_ca"):
        openssl("req", "-x509", *key, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
                "-subj", f"/CN=emotiond test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    for name, cn, usage in (("server", "localhost", "serverAuth"), ("client", "emotiond", "clientAuth")):
        (folder / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nauthorityKeyIdentifier=keyid\n"
        )
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
    return {
        "ca": folder / "ca.crt", "other_ca": folder / "other_ca.crt",
        "server_cert": folder / "server.crt", "server_key": folder / "server.key",
        "client_cert": folder / "client.crt", "client_key": folder / "client.key",
    }  # fmt: skip


class Subscriber:
    """A paho client subscribed to `topic` (again after each reconnect); `messages` holds (topic, payload, retain)."""

    def __init__(self, port: int, topic: str = "#", tls: dict[str, Path] | None = None, auth: bool = False) -> None:
        self.topic, self.messages = topic, []
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:12]}")
        self.client.reconnect_delay_set(0.05, 0.2)
        if auth:
            self.client.username_pw_set(USER, PASSWORD)
        if tls:
            self.client.tls_set(str(tls["ca"]), str(tls["client_cert"]), str(tls["client_key"]))
        self.client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload, bool(m.retain)))
        self.client.connect("localhost" if tls else "127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(15), "the test's subscriber could not subscribe"

    def on(self, topic: str) -> list[bytes]:
        return [payload for t, payload, _ in list(self.messages) if t == topic]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30) -> bool:
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                return False
            time.sleep(0.02)
        return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, topic: str, wait_s: float = 1.0, **kwargs) -> dict[str, bytes]:
    """What a new subscriber gets at once for `topic`: the retained messages, by topic."""
    sub = Subscriber(port, topic, **kwargs)
    time.sleep(wait_s)
    sub.close()
    return {t: payload for t, payload, was_retained in sub.messages if was_retained}
