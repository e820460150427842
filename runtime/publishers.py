"""Publishers: where encoded event lines go. The pipeline only calls publish(line) and close().

New transports (Unix socket, TCP) are one Publisher subclass each plus one branch in make_publisher;
several outputs at once are a Fanout. The pipeline does not change.
"""

from __future__ import annotations

import errno
import os
import sys
from abc import ABC, abstractmethod
from typing import BinaryIO

from runtime.errors import UserError


class ReaderGone(Exception):
    """The reader of a publisher went away (`emotiond run | head -n 5`): the pipeline stops quietly."""


class Publisher(ABC):
    @abstractmethod
    def publish(self, line: bytes) -> None:
        """Send one encoded event line (ending in b"\\n"). Must never block the pipeline for long."""

    def close(self) -> None:  # noqa: B027 - most publishers hold nothing worth closing
        """Release what the publisher holds; publishing after close is an error of the caller."""

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StdoutPublisher(Publisher):
    """JSON Lines on stdout, flushed per line so a consumer (`| jq`) sees each event as it happens.

    A blocking pipe can stall publish() when the reader stops reading; that is the Unix contract of stdout
    (backpressure) and the reason socket publishers, which must never stall, drop for slow readers instead.
    """

    def __init__(self, stream: BinaryIO | None = None):
        self.stream = stream if stream is not None else sys.stdout.buffer
        self._gone = False

    def publish(self, line: bytes) -> None:
        if self._gone:
            return
        try:
            self.stream.write(line)
            self.stream.flush()
        except OSError as exc:
            if not isinstance(exc, BrokenPipeError) and exc.errno != errno.EPIPE:
                raise
            self._gone = True
            self._silence()
            raise ReaderGone("stdout reader went away") from None

    def _silence(self) -> None:
        # The Python docs' recipe (signal module, "Note on SIGPIPE"): point the stdout fd at devnull, so the
        # interpreter's final flush of buffered bytes does not fail again and print "Exception ignored ...".
        try:
            fd = self.stream.fileno()
        except (OSError, ValueError):
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)

    def close(self) -> None:
        if self._gone:
            return
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._gone = True
            self._silence()


class Fanout(Publisher):
    """Publishes each line to several publishers. A publisher whose reader went away is dropped;
    ReaderGone is raised only when none is left, so one vanished consumer does not stop the others."""

    def __init__(self, publishers: list[Publisher]):
        if not publishers:
            raise ValueError("Fanout needs at least one publisher")
        self.publishers = list(publishers)

    def publish(self, line: bytes) -> None:
        gone = []
        for publisher in self.publishers:
            try:
                publisher.publish(line)
            except ReaderGone:
                gone.append(publisher)
        if gone:
            for publisher in gone:
                self.publishers.remove(publisher)
                publisher.close()
            if not self.publishers:
                raise ReaderGone("every reader went away")

    def close(self) -> None:
        for publisher in self.publishers:
            publisher.close()


def make_publisher(spec: str | list[str]) -> Publisher:
    """A publisher from its spec: "stdout" (later "unix:/path", "tcp:host:port"); a list or a comma-separated
    spec publishes to each."""
    specs = spec if isinstance(spec, list) else spec.split(",")
    specs = [s.strip() for s in specs if s.strip()]
    if not specs:
        raise UserError("output: no publisher given (expected e.g. 'stdout')")
    if len(specs) > 1:
        return Fanout([make_publisher(s) for s in specs])
    kind, _, target = specs[0].partition(":")
    if kind == "stdout" and not target:
        return StdoutPublisher()
    if kind in ("unix", "tcp"):
        raise UserError(f"output: {kind!r} publisher is not available yet (only 'stdout')")
    raise UserError(f"output: unknown publisher {specs[0]!r} (expected 'stdout')")
