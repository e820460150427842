"""Socket subscribers for the tests: real connections whose lines are read on a thread of their own."""

from __future__ import annotations

import json
import socket
import threading
import time

from benchmarks.sockets import connect_when_up  # noqa: F401 - one helper for tests and benchmarks


def wait_for(predicate, timeout: float = 5.0) -> bool:
    """Poll `predicate` until it holds or `timeout` s pass; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def assert_gaps_announced(lines: list[dict], validator) -> list[dict]:
    """The lines a slow subscriber read (`hello` first): every seq gap is announced just before it by a valid
    `dropped` notice giving its size, and the notices' sizes add up to their running total. Returns the notices."""
    assert lines[0]["type"] == "hello"
    notices = [e for e in lines if e["type"] == "dropped"]
    assert notices and all(not list(validator.iter_errors(n)) for n in notices)
    for i, event in enumerate(lines[2:], start=2):
        if event["type"] == "dropped":
            assert lines[i + 1]["seq"] - lines[i - 1]["seq"] - 1 == event["dropped"]
        elif lines[i - 1]["type"] != "dropped":
            assert event["seq"] == lines[i - 1]["seq"] + 1
    assert sum(n["dropped"] for n in notices) == notices[-1]["dropped_total"]
    return notices
