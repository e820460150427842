"""What the `--http` page's server (runtime.http_page) refuses, so that no client can cost it much or lock others
out: a request head (request line and headers) past MAX_HEAD_BYTES or MAX_HEAD_LINES, or still incomplete
HEAD_TIMEOUT_S after it began; connections past MAX_CONNECTIONS, or past MAX_PER_CLIENT from one address; and,
on loopback, a Host naming another site (DNS rebinding).

The standard library reads up to 100 headers of 64 KB each, with a time-out per read only: 30 clients could make
the daemon hold gigabytes, and one byte every few seconds held a connection (and its thread) for ever.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import re
import socket
import threading
import time

MAX_HEAD_BYTES = 16 * 1024  # request line and headers together (as Node's default); more gets 431
MAX_HEAD_LINES = 64  # request line and headers (a browser sends about 20); more gets 431
HEAD_TIMEOUT_S = 5.0  # from the connection's start to the end of its head, however steadily the bytes trickle
MAX_CONNECTIONS = 128  # connections at once (a thread each)
MAX_PER_CLIENT = 32  # from one address (every local client is 127.0.0.1: the benchmark's 20 and a few more)
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::[0-9]*)?")  # name or [IPv6], then an optional :port


class HeadReader:
    """The handler's rfile: reads the request head off `sock` within MAX_HEAD_BYTES, MAX_HEAD_LINES and
    HEAD_TIMEOUT_S. Only readline(), which is all the standard library calls for a request without a body."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._timeout = sock.gettimeout()  # for the answer's writes, once the head is in
        self._deadline = time.monotonic() + HEAD_TIMEOUT_S
        self._buffer = b""
        self._left = MAX_HEAD_BYTES
        self._lines = 0

    def readline(self, size: int = -1) -> bytes:
        self._lines += 1
        if self._lines > MAX_HEAD_LINES:
            raise http.client.HTTPException(f"more than {MAX_HEAD_LINES} lines")  # parse_request: 431
        while b"\n" not in self._buffer and len(self._buffer) <= self._left:
            left_s = self._deadline - time.monotonic()
            if left_s <= 0:
                raise TimeoutError(f"no request head within {HEAD_TIMEOUT_S:g} s")  # the connection is closed
            self._sock.settimeout(min(left_s, self._timeout or left_s))
            try:
                chunk = self._sock.recv(4096)
            finally:
                self._sock.settimeout(self._timeout)
            if not chunk:
                break
            self._buffer += chunk
        end = self._buffer.find(b"\n") + 1 or len(self._buffer)
        if size >= 0:
            end = min(end, size)
        line, self._buffer = self._buffer[:end], self._buffer[end:]
        self._left -= len(line)
        if self._left < 0:
            if self._lines == 1:
                return b""  # a request line this long: the standard library closes the connection unanswered
            raise http.client.LineTooLong(f"request head over {MAX_HEAD_BYTES} bytes")  # parse_request: 431
        return line

    def close(self) -> None:
        self._buffer = b""


class Connections:
    """The server's open connections, capped. When full (in all, or from the new client's address), the oldest
    connection still sending its head makes room: a client that sends its request at once (a health probe, a
    browser) gets in however many slow ones wait, and viewers already in are never pushed out. Only when none can
    make room is the new one closed unanswered."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._open: dict[socket.socket, str] = {}  # -> the client's address; oldest first
        self._in_head: dict[socket.socket, None] = {}  # those still sending their head, oldest first

    def add(self, sock: socket.socket, client: str) -> bool:
        with self._changed:
            full_here = sum(other == client for other in self._open.values()) >= MAX_PER_CLIENT
            if full_here or len(self._open) >= MAX_CONNECTIONS:
                oldest = next((s for s in self._in_head if not full_here or self._open[s] == client), None)
                if oldest is None:
                    return False
                self._drop(oldest)
                _hang_up(oldest)  # its reads end at once; its thread closes it
            self._open[sock] = client
            self._in_head[sock] = None
            return True

    def head_done(self, sock: socket.socket) -> None:
        with self._changed:
            self._in_head.pop(sock, None)

    def remove(self, sock: socket.socket) -> None:
        with self._changed:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        self._open.pop(sock, None)
        self._in_head.pop(sock, None)
        self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: not self._open, timeout)

    def hang_up(self) -> None:
        """Shut every connection down: a read or write blocked on one fails now."""
        with self._changed:
            connections = list(self._open)
        for sock in connections:
            _hang_up(sock)


def _hang_up(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already gone
        sock.shutdown(socket.SHUT_RDWR)


def host_allowed(host: str | None, loopback: bool) -> bool:
    """DNS rebinding: a site the user visits can point its own name at 127.0.0.1 and then read this page as its
    own; the browser still sends that name in Host. So on loopback only a Host naming an IP address (which no DNS
    answer can change) or localhost (which browsers resolve themselves) is answered. No Host at all: no browser
    leaves it out, so no such site can; HTTP/1.0 tools may. On any other address, any Host: the user chose the
    network (warned at start), where names we cannot know (DNS, mDNS, a proxy's) reach it, and the password is
    what guards it there."""
    if host is None or not loopback:
        return True
    found = _HOST.fullmatch(host.strip().lower())
    if found is None:
        return False
    name = found.group(1).strip("[]")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
