"""Reconnecting a live source (camera unplugged, stream server gone, stalled stream): capped exponential backoff,
a status report for each attempt, and the stop flag honoured at every wait."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from runtime.errors import UserError

T = TypeVar("T")
# on_status(state, detail, **fields): "offline", "reconnecting" (attempt, retry_s), "online" (the schema's states)
StatusCallback = Callable[..., None]


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay
            delay = min(delay * 2, self.max_s)


def reopen(
    open_once: Callable[[], T],
    backoff: Backoff | Iterator[float],
    stop: threading.Event,
    on_status: StatusCallback,
    why: str,
) -> T | None:
    """open_once() until it succeeds (its result) or a stop is requested (None). UserError from open_once is a
    failed attempt; anything else is raised. `backoff` may be delays already under way (a source that opens and
    fails again at once keeps backing off instead of starting over)."""
    on_status("offline", why)
    delays = backoff.delays() if isinstance(backoff, Backoff) else backoff
    for attempt, delay in enumerate(delays, start=1):
        on_status("reconnecting", f"attempt {attempt} in {delay:g} s", attempt=attempt, retry_s=delay)
        if stop.wait(delay):
            return None
        try:
            result = open_once()
        except UserError as e:
            why = str(e)
            continue
        on_status("online", f"reconnected after {attempt} attempt{'s' if attempt > 1 else ''}", attempt=attempt)
        return result
    return None  # unreachable: delays() never ends
