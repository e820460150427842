"""Publishers: where encoded event lines go. The pipeline only calls publish(line) and close(); the service tells
them once what a socket subscriber's first line (`hello`) says (set_hello).

stdout (JSON Lines), Unix socket and TCP (runtime.sockets, many subscribers each), an MQTT broker
(runtime.mqtt_publisher); several outputs at once are a Fanout. Specs: "stdout", "unix:PATH[?mode=0660&queue=256]",
"tcp:[HOST:]PORT[?queue=256]", "systemd:NAME[?queue=256]" (a socket systemd passed; runtime.addresses),
"mqtt://[USER@]HOST[:PORT]/PREFIX", "mqtts://..." (runtime.mqtt).
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

from runtime.errors import UserError, printable
from runtime.events import encode

if TYPE_CHECKING:
    from runtime.addresses import Passed
    from runtime.config import MqttConfig

EXPECTED = "expected stdout, unix:PATH, tcp:[HOST:]PORT, systemd:NAME or mqtt://[USER@]HOST[:PORT]/PREFIX"
SOCKET_KINDS = ("unix", "tcp", "systemd")  # runtime.sockets publishers; their addresses: runtime.addresses


def is_mqtt(spec: str) -> bool:
    return spec.strip().lower().startswith(("mqtt://", "mqtts://"))


class ReaderGone(Exception):
    """The reader of a publisher went away (`emotiond run | head -n 5`): the pipeline stops quietly."""


class Publisher(ABC):
    @abstractmethod
    def publish(self, line: bytes) -> None:
        """Send one encoded event line (ending in b"\\n"). Must never block the pipeline for long."""

    def publish_event(self, make: Callable[[], dict | None]) -> dict | None:
        """Build an event (`make()` stamps its seq) and publish it; None from make() publishes nothing. Publishers
        shared by threads (runtime.reporter.Locked) do both under one lock, so seqs leave in order."""
        event = make()
        if event is not None:
            self.publish(encode(event))
        return event

    def close(self) -> None:  # noqa: B027 - most publishers hold nothing worth closing
        """Release what the publisher holds; publishing after close is an error of the caller."""

    def set_hello(self, make: Callable[[], dict]) -> None:  # noqa: B027 - only socket publishers greet
        """`make()` builds the `hello` event each new subscriber gets first (runtime.events.EventBuilder.hello)."""

    def set_status(self, report: Callable[..., None]) -> None:  # noqa: B027 - only publishers with a link report
        """`report(state, detail, **fields)` publishes a `status` event about this output (runtime.reporter)."""

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
        if stream is None:
            if sys.stdout is None:  # started with stdout closed (`>&-`)
                raise UserError("stdout is closed: nowhere to write events (give another --output)")
            stream = sys.stdout.buffer
        self.stream = stream
        self._gone = False
        self._failure: tuple[type[Exception], str] | None = None

    def publish(self, line: bytes) -> None:
        if self._failure is not None:  # every later publish says so too, whichever thread publishes first
            kind, message = self._failure
            raise kind(message)
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
            self._gone = True
            self._silence()
            if isinstance(exc, BrokenPipeError) or getattr(exc, "errno", None) == errno.EPIPE:
                self._failure = (ReaderGone, "stdout reader went away")
            else:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                self._failure = (UserError, f"cannot write events to stdout: {why}")
            kind, message = self._failure
            raise kind(message) from None

    def _silence(self) -> None:
        # The Python docs' recipe (signal module, "Note on SIGPIPE"): point the stdout fd at devnull, so the
        # interpreter's final flush of buffered bytes does not fail again and print "Exception ignored ...".
        # The same for a full disk: what could not be written is lost either way.
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
        except (OSError, ValueError):
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

    def set_hello(self, make: Callable[[], dict]) -> None:
        for publisher in self.publishers:
            publisher.set_hello(make)

    def set_status(self, report: Callable[..., None]) -> None:
        for publisher in self.publishers:
            publisher.set_status(report)

    def close(self) -> None:
        close_all(self.publishers)


def close_all(publishers: list[Publisher]) -> None:
    """Close the publishers at once, a thread each: each may wait a grace for its slow readers (sockets, MQTT, the
    page), and N stalled outputs must take one grace at a stop, not N (SIGTERM within 2 s). Every close() is
    bounded by itself; the first error is raised once all are done."""
    errors: list[Exception] = []

    def close(publisher: Publisher) -> None:
        try:
            publisher.close()
        except Exception as e:  # raised in the caller's thread, not lost in this one's
            errors.append(e)

    threads = [threading.Thread(target=close, args=(p,), name="close output", daemon=True) for p in publishers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def make_publisher(
    spec: str | list[str], settings: MqttConfig | None = None, stop: threading.Event | None = None
) -> Publisher:
    """A publisher from its spec ("stdout", "unix:PATH", "tcp:[HOST:]PORT", "mqtt://HOST/PREFIX"); a list or a
    comma-separated spec publishes to each. Sockets are listening (and a broker has answered, or is known to be
    down) when this returns; if one spec fails, those built are closed again. `settings`: output.mqtt."""
    specs = spec if isinstance(spec, list) else spec.split(",")
    specs = [s.strip() for s in specs if s.strip()]
    if not specs:
        raise UserError("output: no publisher given (expected e.g. 'stdout')")
    if len(specs) > 1:
        refuse_duplicate_addresses(specs)
        built: list[Publisher] = []
        try:
            for s in specs:
                built.append(make_publisher(s, settings, stop))
        except BaseException:
            for publisher in built:
                publisher.close()
            raise
        return Fanout(built)
    kind, _, target = specs[0].partition(":")
    if kind == "stdout" and not target:
        return StdoutPublisher()
    if kind in SOCKET_KINDS:
        from runtime.addresses import parse_address
        from runtime.sockets import SocketPublisher  # imports this module

        return SocketPublisher(parse_address(specs[0]))
    if is_mqtt(specs[0]):
        from runtime.mqtt import resolve
        from runtime.mqtt_publisher import MqttPublisher  # paho: loaded only for an MQTT output

        return MqttPublisher(resolve(specs[0], settings), stop)
    raise UserError(f"output: unknown publisher {printable(specs[0])!r} ({EXPECTED})")


def refuse_duplicate_addresses(specs: list[str], taken: dict[str, str] | None = None) -> None:
    # The second bind would fail as "in use by a running daemon" (ourselves): say what is really wrong. Two outputs
    # on one socket systemd passed (its address and systemd:NAME) would each get some of the subscribers; so would
    # an output and the page on it (`taken`: the addresses of passed sockets the page holds, by what holds them).
    # Two URLs of one broker and prefix would publish every event twice on the same topics.
    from runtime.addresses import parse_address, passed_for
    from runtime.mqtt import parse_url

    seen: dict[str, str] = dict(taken or {})
    for s in specs:
        if s.partition(":")[0] in SOCKET_KINDS or is_mqtt(s):
            if is_mqtt(s):
                where = parse_url(s).identity
            else:
                passed = passed_for(address := parse_address(s))
                where = passed.address() if passed is not None else str(address)
            if where in seen:
                raise UserError(f"output: {printable(s)!r} and {printable(seen[where])!r} are the same address")
            seen[where] = s


def check_publishers(specs: list[str], settings: MqttConfig | None = None) -> None:
    """What make_publisher would refuse, found without opening anything (for `check-config`): for MQTT the URL,
    the password file and the TLS files, not the broker."""
    from runtime.addresses import parse_address

    for spec in specs:
        kind, _, target = spec.strip().partition(":")
        if kind in SOCKET_KINDS:  # systemd:NAME: only its form (systemd passes no socket to ExecStartPre=)
            parse_address(spec.strip())
        elif is_mqtt(spec):
            from runtime.mqtt import resolve

            resolve(spec, settings)
        elif not (kind == "stdout" and not target):
            raise UserError(f"output: unknown publisher {printable(spec)!r} ({EXPECTED})")
    refuse_duplicate_addresses([s.strip() for s in specs])


def idle_passed_sockets(specs: list[str], held: list[Passed] | None = None) -> list[Passed]:
    """The sockets systemd passed that none of the outputs `specs` uses (runtime.addresses.passed_for), nor the
    page (`held`): their subscribers would wait unserved."""
    from runtime.addresses import parse_address, passed_for, passed_sockets

    used = [passed_for(parse_address(s)) for s in specs if s.partition(":")[0] in SOCKET_KINDS] + (held or [])
    return [p for p in passed_sockets() if all(p is not u for u in used)]
