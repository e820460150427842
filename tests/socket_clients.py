"""Socket subscribers for the tests: real connections whose lines are read on a thread of their own."""

from __future__ import annotations

import json
import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect_when_up(address: tuple | str, rcvbuf: int | None = None, timeout: float = 60) -> socket.socket:
    """Connect as soon as the daemon listens (polling), so no event is published before; a str is a Unix path."""
    end = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX if isinstance(address, str) else socket.AF_INET)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            sock.connect(address)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > end:
                raise
            time.sleep(0.002)


class Reader(threading.Thread):
    """All lines of one connection, as dicts, until EOF; with `go` cleared it is connected but does not read
    (a stalled subscriber)."""

    def __init__(self, sock: socket.socket, reading: bool = True) -> None:
        super().__init__(daemon=True)
        self.sock, self.lines, self.go = sock, [], threading.Event()
        if reading:
            self.go.set()
        self.start()

    def run(self) -> None:
        self.go.wait()
        with self.sock, self.sock.makefile("rb") as stream:
            for line in stream:
                self.lines.append(json.loads(line))

    def events(self) -> list[dict]:
        """The events of the session (hello and dropped notices carry no seq)."""
        return [e for e in self.lines if "seq" in e]

    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events()]

    def frames(self) -> list[int]:
        return [e["frame"] for e in self.lines if e["type"] == "frame"]

    def contiguous(self) -> bool:
        """seq has no gap from the first event this subscriber got (a `starting` status may precede it)."""
        seqs = self.seqs()
        return bool(seqs) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
