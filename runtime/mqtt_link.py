"""One MQTT connection, driven by the thread of runtime.mqtt_publisher and by nothing else: paho's client with its
external-loop API (loop_read / loop_write / loop_misc) around our own select(), which also watches a wake-up
socketpair, so a new event wakes the thread at once and a close is seen within one step. paho is never touched
from another thread.

Flow control: at most WINDOW messages are handed to paho and not yet on the socket (QoS 0: on_publish once
written; QoS 1: once acknowledged). A slow broker (TCP backpressure) stops the handing over; the events then wait,
and drop, in the publisher's bounded queue, never in paho's unbounded one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import socket
import ssl
import time
from typing import NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from runtime.errors import printable
from runtime.mqtt import Connection
from runtime.mqtt_topics import Message

WINDOW = 64
OK = MQTTErrorCode.MQTT_ERR_SUCCESS
BUSY = ("Server unavailable", "Server busy")  # CONNACK refusals that are the broker's state, not our config
_ids = itertools.count()


class Failure(NamedTuple):
    why: str  # one line, no secret
    config: bool  # the broker (or its certificate) says our settings are wrong: fatal at start


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate failed verification: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    return printable(getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)


class Link:
    def __init__(self, conn: Connection, will_topic: str, on_drain) -> None:
        """`on_drain()`: called once pending wake-up bytes are read (the publisher then sends the next one)."""
        self.conn, self.settings, self.on_drain = conn, conn.settings, on_drain
        self.connected = self.in_connect = False
        self.inflight = 0
        self.lost = ""
        self._connack: paho.ReasonCode | None = None
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        client_id = f"emotiond-{conn.camera}-{os.getpid()}-{next(_ids)}"  # unique: a reload's new one takes none over
        self.client = client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        client.connect_timeout = self.settings.connect_timeout_s
        if conn.user is not None:
            client.username_pw_set(conn.user, conn.password)
        if conn.tls is not None:
            client.tls_set_context(conn.tls)
        client.will_set(will_topic, "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish

    def _on_connect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self._connack = reason_code

    def _on_disconnect(self, *_args) -> None:
        self.connected = False

    def _on_publish(self, *_args) -> None:
        self.inflight = max(0, self.inflight - 1)

    def connect(self, closing) -> Failure | None:
        """One attempt (TCP, TLS, CONNECT, CONNACK): None once the broker accepted us. `closing()` ends the wait
        for the CONNACK; the TCP/TLS connect itself blocks up to connect_timeout_s (close() does not wait for it)."""
        target, self._connack, self.inflight = self.conn.target, None, 0
        self.in_connect = True
        try:
            self.client.connect(target.host, target.port, self.settings.keepalive_s)
        except ssl.SSLCertVerificationError as e:
            return Failure(_why(e), True)
        except (OSError, ValueError) as e:  # refused, unreachable, unknown host, timed out, TLS handshake
            return Failure(f"cannot reach the broker: {_why(e)}", False)
        finally:
            self.in_connect = False
        deadline = time.monotonic() + self.settings.connect_timeout_s
        while self._connack is None:
            left = deadline - time.monotonic()
            if left <= 0 or closing() or not self.step(min(left, 0.25)):
                if self._connack is not None:
                    break
                self.close_socket()
                return Failure("no answer from the broker" if left <= 0 else "the broker closed the connection", False)
        if self._connack.is_failure:
            self.close_socket()
            reason = str(self._connack)
            if reason in BUSY:
                return Failure(f"the broker is not available: {reason}", False)
            return Failure(f"the broker refused the connection: {reason}", True)
        self.connected = True
        return None

    def step(self, timeout: float) -> bool:
        """Wait for the socket (or a wake-up) up to `timeout`, then let paho read, write and keep alive. False when
        the link is gone (`lost` says why)."""
        sock = self.client.socket()
        if sock is None:
            self.lost = "the connection was closed"
            return False
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0  # TLS bytes select cannot see
        wlist = [sock] if self.client.want_write() else []
        try:
            readable, writable, _ = select.select([sock, self.wake_r], wlist, [], 0 if pending else timeout)
        except (OSError, ValueError):
            readable, writable = [sock], []  # closed under us: loop_read says so
        if self.wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                self.wake_r.recv(4096)
            self.on_drain()
        rc = OK
        if sock in readable or pending:
            rc = self.client.loop_read()
        if rc == OK and sock in writable:
            rc = self.client.loop_write()
        if rc == OK:
            rc = self.client.loop_misc()
        if rc != OK or self.client.socket() is None:
            self.connected = False
            self.lost = paho.error_string(rc).rstrip(".") if rc != OK else "the connection was closed"
            return False
        return True

    def send(self, message: Message) -> None:
        info = self.client.publish(message.topic, message.payload, message.qos, message.retain)
        if info.rc == OK:
            self.inflight += 1

    def disconnect(self, grace_s: float) -> None:
        """DISCONNECT (the broker then drops the Last Will), written within `grace_s` or abandoned."""
        self.client.disconnect()
        end = time.monotonic() + grace_s
        while self.client.socket() is not None and self.client.want_write() and time.monotonic() < end:
            self.step(0.05)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed (the thread has ended)
            self.wake_w.send(b"\0")

    def close_socket(self) -> None:
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        self.connected = False
        self.close_socket()
        self.wake_r.close()
        self.wake_w.close()
