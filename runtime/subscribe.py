"""`emotiond subscribe ADDRESS`: a daemon's socket stream as JSON Lines on stdout (`| jq .` works), reconnecting
with backoff when the daemon goes away (one line on stderr per outage, one when back).

It leaves quietly: SIGINT with 130, SIGTERM with 0, a reader of stdout going away (`| head`) with 0. A line cut
short by the daemon's end is not printed: every line on stdout is a whole JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import threading
from collections.abc import Iterator

from runtime.addresses import Address, connect, parse_address
from runtime.errors import printable, say
from runtime.publishers import Publisher, ReaderGone, StdoutPublisher

TYPES = ("frame", "status", "stats", "hello", "dropped")
BACKOFF_S = (0.1, 2.0)  # first retry, then doubling up to the second
MAX_LINE = 16 * 1024 * 1024  # a "line" longer than this is not an event: drop the connection


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "subscribe",
        help="print a running daemon's events from its Unix socket or TCP publisher",
        description="Connect to a daemon's socket publisher and print its events as JSON Lines on stdout (the "
        "first is a `hello` saying what follows). Reconnects with backoff when the daemon restarts. "
        "Example: emotiond subscribe unix:/run/emotiond/events.sock | jq .",
    )
    parser.add_argument("address", metavar="ADDRESS", help="unix:PATH or tcp:[HOST:]PORT (HOST: 127.0.0.1)")
    parser.add_argument(
        "--type",
        action="append",
        choices=TYPES,
        metavar="TYPE",
        help=f"print only events of this type, repeatable: {', '.join(TYPES)} (default: all)",
    )
    parser.set_defaults(func=cmd_subscribe)


class _Stop(BaseException):
    def __init__(self, code: int) -> None:
        self.code = code


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: object) -> None:
        raise _Stop(130 if signum == signal.SIGINT else 0)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_subscribe(args: argparse.Namespace) -> int:
    address = parse_address(args.address, role="address")
    types = {t.encode() for t in args.type} if args.type else None
    out = StdoutPublisher()
    try:
        with _stop_on_signals():
            follow(address, out, types)
    except _Stop as stop:
        out.close()
        return stop.code
    except ReaderGone:
        return 0
    return 0  # pragma: no cover - follow() only ends by an exception


def follow(address: Address, out: Publisher, types: set[bytes] | None, stop: threading.Event | None = None) -> None:
    """Copy the stream of `address` to `out` until `stop` is set (or forever), reconnecting with backoff. A
    connection counts as made once it delivers data: one that is accepted and dropped at once (not a daemon's
    publisher) is retried like a refused one, quietly after the first line."""
    stop = stop or threading.Event()
    where = printable(str(address))
    state = {"delay": BACKOFF_S[0], "announced": False}  # announced: a line about this outage is on stderr

    def connected() -> None:
        if state["announced"]:
            say(f"emotiond subscribe: connected to {where}")
        state.update(delay=BACKOFF_S[0], announced=False)

    while not stop.is_set():
        try:
            with connect(address) as sock:
                got, why = _copy(sock, out, types, stop, connected)
        except OSError as e:
            got, why = False, f"cannot connect to {where} ({printable(e.strerror or e)}); retrying"
        else:
            why = why and f"{where}: {why}; reconnecting"
        if not why:
            return
        if got or not state["announced"]:
            say(f"emotiond subscribe: {why}")
            state["announced"] = True
        stop.wait(state["delay"])
        state["delay"] = min(state["delay"] * 2, BACKOFF_S[1])


def _copy(sock: socket.socket, out: Publisher, types: set[bytes] | None, stop: threading.Event, connected) -> tuple:
    """Lines from sock to out until the connection ends: (whether any data came, why it ended: "" if stopped)."""
    sock.settimeout(0.2)  # a stop (tests, embedding) is seen within this; signals interrupt at once anyway
    pending, got = b"", False
    while not stop.is_set():
        try:
            chunk = sock.recv(256 * 1024)
        except TimeoutError:
            continue
        except OSError as e:
            return got, f"connection lost ({printable(e.strerror or e)})"
        if not chunk:
            return got, "the daemon closed the connection"
        if not got:
            got = True
            connected()
        *lines, pending = (pending + chunk).split(b"\n")
        if len(pending) > MAX_LINE:
            return got, f"a line longer than {MAX_LINE} bytes"
        for line in lines:
            if line and (types is None or _type(line) in types):
                out.publish(line + b"\n")
    return got, ""


def _type(line: bytes) -> bytes | None:
    # The daemon writes "type" first ({"type":"frame",...}); anything else is parsed as JSON.
    if line.startswith(b'{"type":"'):
        return line[9 : line.find(b'"', 9)]
    try:
        kind = json.loads(line).get("type")
    except (ValueError, AttributeError):
        return None
    return kind.encode() if isinstance(kind, str) else None
