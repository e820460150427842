"""Thread priorities: the detector's thread first, the helper threads (capture, finisher) in the time it leaves.

On a small box MediaPipe's detection (the pipeline's own thread and MediaPipe's graph threads, created by it) is
the daemon's critical path. The capture thread (decode, scale) and the finisher (crop, classify, publish) have
less work per frame and a frame of slack each; at equal priority they still take cores from the detector
whenever they run. Linux keeps a nice value per thread, so these two lower their own: the detector's threads
win a contended core, and the helpers keep up in the gaps (a nice value, not SCHED_IDLE, so they still get a
share when other programs load the machine and do not stall).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

HELPER_NICE = 10  # added to the process's nice value for helper threads


def lower_this_thread(step: int = HELPER_NICE) -> None:
    """Raise the calling thread's nice value by `step` (Linux only; elsewhere it names the whole process)."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    # A sandbox may forbid it: then helpers keep the same priority as the rest, only slower on two cores.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
