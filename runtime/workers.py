"""The pipeline's worker threads: a pool of face detectors and the finisher, with frame order kept between them.

MediaPipe's detect call is synchronous, and most of its time is spent handing work between its own threads: one
detector leaves much of the CPU idle. A few detectors, one thread each, taking frames first come first served,
fill that time (on two cores, two MediaPipe instances together detect about 1.8x the frames of one). Each
detector still sees its own frames in capture order, as MediaPipe's video mode requires. submit() returns a
Future per frame and the finisher takes those in frame order, so events leave in order whatever the detectors do.

Every blocking wait here also watches the stop flag: once a stop is requested, a hand-off gives up, and closing
waits at most EXIT_GRACE_S for the frames in flight. A thread still stuck after that (a finisher blocked writing
to a stdout nobody reads) is left behind and reported in `stuck`: the process must then exit without the
interpreter's own final flush of that stream (runtime.cli does).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from runtime.priority import lower_this_thread

POLL_S = 0.1  # how often a blocked hand-off checks that its consumer is still alive and no stop was asked
EXIT_GRACE_S = 1.0  # after a stop request, how long the hand-offs and closing wait, all together


class Grace:
    """give_up() is False until `stop` is set, then True once EXIT_GRACE_S have passed since it was first seen.
    One Grace is shared by every wait of a pipeline run, so that together they take EXIT_GRACE_S at most."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self._deadline: float | None = None

    def give_up(self) -> bool:
        if not self.stop.is_set():
            return False
        if self._deadline is None:
            self._deadline = time.monotonic() + EXIT_GRACE_S
        return time.monotonic() > self._deadline


def _put(q: queue.Queue, item: object, alive: Callable[[], bool], give_up: Callable[[], bool]) -> bool:
    """Blocking put that gives up once the consumer has died (it would never take the item) or give_up() says so.
    True if the item was put."""
    while alive() and not give_up():
        try:
            q.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _join(threads: Sequence[threading.Thread], give_up: Callable[[], bool]) -> list[threading.Thread]:
    """Wait for the threads until they end or give_up(); the ones still running."""
    for t in threads:
        while t.is_alive() and not give_up():
            t.join(POLL_S)
    return [t for t in threads if t.is_alive()]


class DetectorPool:
    """`with DetectorPool(detectors, detect) as pool: future = pool.submit(frame)`; future.result() is
    detect(frame, detector) for whichever detector was free. Detector threads keep the caller's priority."""

    def __init__(self, detectors: Sequence[Any], detect: Callable[[Any, Any], Any], grace: Grace | None = None) -> None:
        self.detect = detect
        self.grace = grace or Grace(threading.Event())
        self.stuck: list[threading.Thread] = []
        self.jobs: queue.Queue = queue.Queue(maxsize=1)  # one frame waits for a free detector; more would only age
        self.threads = [
            threading.Thread(target=self._work, args=(d,), name=f"pipeline:detect{i}", daemon=True)
            for i, d in enumerate(detectors)
        ]

    def __enter__(self) -> DetectorPool:
        for t in self.threads:
            t.start()
        return self

    def _work(self, detector: Any) -> None:
        while (job := self.jobs.get()) is not None:
            future, frame = job
            try:
                future.set_result(self.detect(frame, detector))
            except BaseException as e:  # the finisher raises it when it asks for this frame
                future.set_exception(e)

    def _alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def submit(self, frame: Any) -> Future:
        """A Future of detect(frame); after a stop request one that is cancelled if no detector took the frame."""
        future: Future = Future()
        # After a stop (or a reload's pause), a frame already read still gets a detector while the others are
        # busy for up to EXIT_GRACE_S: a file's frame is never lost to a SIGHUP.
        if not _put(self.jobs, (future, frame), self._alive, self.grace.give_up):
            future.cancel()
        return future

    def __exit__(self, *exc: object) -> None:
        # One None per thread, each taken by whichever thread is free: put while any is alive, not a given one.
        for _ in self.threads:
            _put(self.jobs, None, self._alive, self.grace.give_up)
        self.stuck = _join(self.threads, self.grace.give_up)


class Finisher:
    """The pipeline's second half on its own thread, at a lower priority (runtime.priority): `submit(item)` in
    order; finish(item) runs for each. Errors and ReaderGone surface in the caller's next submit or at exit."""

    def __init__(self, finish: Callable[[Any], object], backlog: int, grace: Grace | None = None) -> None:
        self.finish = finish
        self.grace = grace or Grace(threading.Event())
        self.stuck: list[threading.Thread] = []
        self.queue: queue.Queue = queue.Queue(maxsize=backlog)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="pipeline:finish", daemon=True)

    def __enter__(self) -> Finisher:
        self.thread.start()
        return self

    def _run(self) -> None:
        lower_this_thread()
        while (item := self.queue.get()) is not None:
            if self.error is None:  # after an error: drain, so a blocked submit() returns
                try:
                    self.finish(item)
                except BaseException as e:  # handed to the pipeline thread, which raises it
                    self.error = e

    def submit(self, item: Any) -> None:
        if self.error is not None:
            raise self.error
        _put(self.queue, item, self.thread.is_alive, self.grace.give_up)

    def __exit__(self, exc_type, *exc: object) -> None:
        _put(self.queue, None, self.thread.is_alive, self.grace.give_up)
        self.stuck = _join([self.thread], self.grace.give_up)
        if exc_type is None and self.error is not None:
            raise self.error
