"""Events leave in seq order although three threads make them: the finisher (frames), the capture thread (status
on a camera loss) and the stats ticker. Each takes its seq under the same lock that sends it."""

from __future__ import annotations

import json
import threading
import time

import numpy as np

from runtime.events import EventBuilder
from runtime.frames import Frame
from runtime.publishers import Publisher
from runtime.reporter import Locked, Reporter


class SlowCollector(Publisher):
    """An output that takes a while per line, so a thread that took its seq early would be overtaken."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def publish(self, line: bytes) -> None:
        time.sleep(0.0005)
        self.lines.append(line)


def test_seqs_leave_in_order_whichever_thread_makes_the_event():
    builder = EventBuilder("s", "test", "m")
    out = SlowCollector()
    locked = Locked(out)
    reporter = Reporter(builder, locked, stats_interval_s=60)
    frame = Frame(np.zeros((4, 4, 3), np.uint8), 0, time.monotonic_ns(), time.time())

    def frames() -> None:
        for _ in range(150):
            locked.publish_event(lambda: builder.frame(frame, [], 4, 4, {"total": 0.0}))

    def statuses() -> None:
        for i in range(150):
            reporter.status("offline" if i % 2 else "online", "camera")

    def stats() -> None:
        for _ in range(150):
            reporter.output_status("reconnecting", "broker", output="mqtt://x/y")

    threads = [threading.Thread(target=f) for f in (frames, statuses, stats)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [json.loads(line)["seq"] for line in out.lines]
    assert len(seqs) == 450
    assert seqs == list(range(450))
