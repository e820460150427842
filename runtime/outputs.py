"""The daemon's outputs: the publishers of `output.publishers`, kept by spec so that a reload adds and removes
publishers without touching the others (a socket keeps its subscribers; an MQTT publisher its connection, unless
output.mqtt changed). Fixed publishers (the `--http` page's event stream) stay as they are across reloads.

Sockets systemd passed (socket activation, runtime.addresses) outlive the outputs that use them: an output removed
by a reload closes its duplicate only, and a later reload can take the socket up again. A passed socket that no
output uses (nor the page, a fixed publisher holding one as `passed`) is one warning line, at the start and whenever
a reload leaves it unused; an output may not take up the page's."""

from __future__ import annotations

import threading
from collections.abc import Callable

from runtime.config import MqttConfig
from runtime.errors import printable, say
from runtime.publishers import (
    Fanout,
    Publisher,
    close_all,
    idle_passed_sockets,
    is_mqtt,
    make_publisher,
    refuse_duplicate_addresses,
)


class Outputs(Fanout):
    """A Fanout over one publisher per spec; reconfigure(specs) builds the new, closes the removed, keeps the rest."""

    def __init__(
        self, specs: list[str], mqtt: MqttConfig | None = None, stop: threading.Event | None = None,
        fixed: dict[str, Publisher] | None = None,
    ) -> None:  # fmt: skip
        self.by_spec: dict[str, Publisher] = {}
        self.fixed = dict(fixed or {})  # by a name for stats; not in output.publishers, never reconfigured
        # The sockets systemd passed that fixed publishers (the page) hold, by their names: neither idle nor free
        self.held = {name: p.passed for name, p in self.fixed.items() if getattr(p, "passed", None) is not None}
        self.stop = stop  # a broker's first answer is not waited for once the daemon is stopping
        self.mqtt = mqtt or MqttConfig()
        self._hello: Callable[[], dict] | None = None
        self._status: Callable[..., None] | None = None
        self._idle: list = []  # passed sockets no output uses, already warned about
        self.reconfigure(specs)

    def reconfigure(self, specs: list[str], mqtt: MqttConfig | None = None) -> list[str]:
        """Make the outputs those of `specs` (MQTT ones with `mqtt`, if given, rebuilt if it changed); raises
        UserError (having built nothing) if a new one cannot be made. Returns the specs added and removed, as
        "+spec" / "-spec" (a rebuilt one is both)."""
        specs = list(dict.fromkeys(s.strip() for s in specs))
        refuse_duplicate_addresses(specs, {passed.address(): name for name, passed in self.held.items()})
        mqtt = mqtt or self.mqtt
        added: dict[str, Publisher] = {}
        try:
            for spec in specs:
                if spec not in self.by_spec or (is_mqtt(spec) and mqtt != self.mqtt):
                    added[spec] = make_publisher(spec, mqtt, self.stop)
                    if self._hello is not None:
                        added[spec].set_hello(self._hello)
                    if self._status is not None:
                        added[spec].set_status(self._status)
        except BaseException:
            for publisher in added.values():
                publisher.close()
            raise
        self.mqtt = mqtt
        removed = [spec for spec in self.by_spec if spec not in specs or spec in added]
        close_all([self.by_spec.pop(spec) for spec in removed])  # at once: events wait meanwhile (reload's lock)
        self.by_spec.update(added)
        self.by_spec = {spec: self.by_spec[spec] for spec in specs}
        self.publishers = list(self.by_spec.values()) + list(self.fixed.values())
        self._warn_idle(specs)
        return [f"+{s}" for s in added] + [f"-{s}" for s in removed]

    def _warn_idle(self, specs: list[str]) -> None:
        idle = idle_passed_sockets(specs, list(self.held.values()))
        if fresh := [p for p in idle if p not in self._idle]:
            say(
                f"emotiond: warning: systemd passed {printable(', '.join(map(str, fresh)))}, which no output uses "
                "(add the output systemd:NAME or its address)", "warning",
            )  # fmt: skip
        self._idle = idle

    def publish(self, line: bytes) -> None:
        try:
            super().publish(line)
        finally:  # Fanout drops publishers whose reader left: keep the map in step
            if len(self.publishers) != len(self.by_spec) + len(self.fixed):
                self.by_spec = {s: p for s, p in self.by_spec.items() if p in self.publishers}
                self.fixed = {s: p for s, p in self.fixed.items() if p in self.publishers}

    def set_hello(self, make: Callable[[], dict]) -> None:
        self._hello = make
        super().set_hello(make)

    def set_status(self, report: Callable[..., None]) -> None:
        self._status = report
        super().set_status(report)

    def output_stats(self) -> dict:
        """For stats events: the figures of the socket and MQTT outputs (subscribers or link, drops), by spec."""
        figures = {}
        for spec, publisher in [*self.by_spec.items(), *self.fixed.items()]:  # a reload may change the map meanwhile
            describe = getattr(publisher, "stats", None)
            if callable(describe):
                figures[spec] = describe()
        return {"outputs": figures} if figures else {}
