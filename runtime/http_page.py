"""The request side of the `--http` page (runtime.http_preview owns the streams and the life cycle): routes, basic
auth, the page's files (runtime/web, shipped as package data), health; and the server, which knows its connections
so that close() can cut off clients stalled in a write.

HTTP/1.0 (the standard library's default): one request per connection, so no idle keep-alive connection holds a
thread; the streams need no length anyway.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from runtime.errors import UserError, printable, say
from runtime.http_guard import Connections, HeadReader, host_allowed
from runtime.http_preview import CLIENT_TIMEOUT_S, HEALTHY_S, JPEG_QUALITY, MAX_WIDTH

if TYPE_CHECKING:
    from runtime.http_preview import HttpPreview

WEB = Path(__file__).resolve().parent / "web"
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
BOUNDARY = b"emotiond-frame"
# The page loads nothing from elsewhere, and no injected script could either.
PAGE_POLICY = "default-src 'self'; frame-ancestors 'none'"
EVENTS_SNDBUF = 32 * 1024  # bytes of kernel send buffer per /events client (Linux doubles it)


def load_page() -> dict[str, tuple[bytes, str]]:
    """The page's files by URL path ("/" is index.html), read once; UserError if the installation lacks them."""
    try:
        files = {
            f"/{path.name}": (path.read_bytes(), f"{TYPES[path.suffix]}; charset=utf-8")
            for path in sorted(WEB.iterdir())
            if path.suffix in TYPES
        }
    except OSError as e:
        raise UserError(f"output.http: cannot read the page's files in {printable(WEB)}: {e.strerror}") from None
    if "/index.html" not in files:
        raise UserError(f"output.http: the page is missing from this installation ({printable(WEB)}/index.html)")
    files["/"] = files["/index.html"]
    return files


class Handler(BaseHTTPRequestHandler):
    server: Server
    server_version = "emotiond"
    timeout = CLIENT_TIMEOUT_S  # on the socket, for the answer's writes: a client that takes nothing is dropped

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = HeadReader(self.connection)  # the request head within runtime.http_guard's limits

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.server.connections.head_done(self.request)  # no longer the first to make room for a new client
        return parsed

    def do_HEAD(self) -> None:
        self.do_GET()  # _reply and _stream send no body

    def do_GET(self) -> None:
        preview = self.server.preview
        path = urlsplit(self.path).path
        if path == "/healthz":
            # Open without the password, and to any Host: probes (systemd, container health checks, load
            # balancers) carry no password, may name the machine as they like, and learn only whether frames flow.
            self._health(preview)
        elif not host_allowed(self.headers.get("Host"), self.server.loopback):
            port = self.server.server_address[1]
            self._reply(421, f"wrong Host: open this page as http://localhost:{port}/ or by IP address\n".encode())
        elif preview.credentials is not None and not self._authorized(preview.credentials):
            self._reply(401, b"password needed\n", {"WWW-Authenticate": 'Basic realm="emotiond", charset="UTF-8"'})
        elif path == "/events":
            # A small kernel buffer (as sockets have): what a slow client has not taken stays in its queue, where
            # it is dropped and counted. /stream.mjpg keeps the kernel's: a JPEG is tens of KB, nothing is counted.
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, EVENTS_SNDBUF)
            self._stream(preview, "text/event-stream; charset=utf-8", lambda: preview.serve_events(self.wfile.write))
        elif path == "/stream.mjpg":
            kind = f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}"
            self._stream(preview, kind, lambda: preview.serve_stream(self.wfile.write, BOUNDARY))
        elif path == "/snapshot.jpg":
            _, jpeg = preview.live.jpeg(MAX_WIDTH, JPEG_QUALITY)
            if jpeg is None:
                self._reply(503, b"no frame yet\n")
            else:
                self._reply(200, jpeg, content_type="image/jpeg")
        elif path in preview.page:
            body, content_type = preview.page[path]
            self._reply(200, body, {"Content-Security-Policy": PAGE_POLICY}, content_type)
        else:
            self._reply(404, b"not found\n")

    def _authorized(self, credentials: bytes) -> bool:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, credentials)  # constant time: no guessing the password byte by byte

    def _health(self, preview: HttpPreview) -> None:
        age = preview.live.age_s()
        ok = age is not None and age < HEALTHY_S
        status = "ok" if ok else "starting" if age is None else "stale"
        body = json.dumps({"status": status, "frame_age_s": None if age is None else round(age, 3)}) + "\n"
        self._reply(200 if ok else 503, body.encode(), content_type="application/json")

    def _stream(self, preview: HttpPreview, content_type: str, serve) -> None:
        streaming = self.command != "HEAD"  # HEAD: the same headers, no stream
        if streaming and not preview.admit():
            self._reply(503, b"too many clients\n", {"Retry-After": "5"})
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")  # a proxy (nginx) passes each event on at once
            self.end_headers()
            if streaming:
                serve()
        except OSError:
            pass  # the client left, took nothing for CLIENT_TIMEOUT_S, or close() cut it off
        finally:
            if streaming:
                preview.leave()

    def _reply(
        self, code: int, body: bytes, headers: dict[str, str] | None = None, content_type: str = "text/plain"
    ) -> None:
        try:
            self.send_response(code)
            for name, value in {
                "Content-Type": content_type, "Content-Length": str(len(body)), "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff", **(headers or {}),
            }.items():  # fmt: skip
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            pass

    def version_string(self) -> str:
        return self.server_version  # not the Python version: nothing for a visitor to look up

    def log_message(self, format: str, *args: object) -> None:
        say(f"emotiond: http: {self.address_string()} {printable(format % args)}", "debug")


class Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer on a socket bound by runtime.addresses (its errors, its warning), which caps and
    knows its connections (runtime.http_guard.Connections): close() waits for them and cuts off those stalled
    in a write."""

    daemon_threads = True

    def __init__(self, sock: socket.socket, handler: type, preview: HttpPreview) -> None:
        sock.setblocking(True)  # socketserver's accept, and the connections it makes, block
        super().__init__(sock.getsockname()[:2], handler, bind_and_activate=False)
        self.socket.close()  # the one socketserver made: ours is bound already
        self.socket = sock
        self.preview = preview
        self.loopback = ipaddress.ip_address(self.server_address[0].split("%")[0]).is_loopback
        self.connections = Connections()

    def process_request(self, request, client_address) -> None:
        if self.connections.add(request, client_address[0]):
            super().process_request(request, client_address)
        else:
            self.shutdown_request(request)  # full, and nobody to make room: closed unanswered

    def shutdown_request(self, request) -> None:
        super().shutdown_request(request)
        self.connections.remove(request)

    def wait_idle(self, timeout: float) -> bool:
        return self.connections.wait_idle(timeout)

    def hang_up(self) -> None:
        self.connections.hang_up()  # a write blocked on a connection fails now

    def handle_error(self, request, client_address) -> None:
        # Clients leaving (broken pipe, reset, time-out) is normal; anything else is one line, never a traceback.
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            say(f"emotiond: http: a request failed: {type(error).__name__}: {printable(error)}", "warning")
