"""The pipeline's worker threads: a pool of face detectors and the finisher, with frame order kept between them.

MediaPipe's detect call is synchronous, and most of its time is spent handing work between its own threads: one
detector leaves much of the CPU idle. A few detectors, one thread each, taking frames first come first served,
fill that time (on two cores, two MediaPipe instances together detect about 1.8x the frames of one). Each
detector still sees its own frames in capture order, as MediaPipe's video mode requires. submit() returns a
Future per frame and the finisher takes those in frame order, so events leave in order whatever the detectors do.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from runtime.priority import lower_this_thread

POLL_S = 0.1  # how often a blocked hand-off checks that its consumer is still alive


def _put(q: queue.Queue, item: object, alive: Callable[[], bool]) -> None:
    """Blocking put that gives up once the consumer has died (it would never take the item)."""
    while alive():
        try:
            q.put(item, timeout=POLL_S)
            return
        except queue.Full:
            continue


class DetectorPool:
    """`with DetectorPool(detectors, detect) as pool: future = pool.submit(frame)`; future.result() is
    detect(frame, detector) for whichever detector was free. Detector threads keep the caller's priority."""

    def __init__(self, detectors: Sequence[Any], detect: Callable[[Any, Any], Any]) -> None:
        self.detect = detect
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
        future: Future = Future()
        _put(self.jobs, (future, frame), self._alive)
        return future

    def __exit__(self, *exc: object) -> None:
        for t in self.threads:
            _put(self.jobs, None, t.is_alive)
        for t in self.threads:
            t.join()


class Finisher:
    """The pipeline's second half on its own thread, at a lower priority (runtime.priority): `submit(item)` in
    order, item a value or a Future of one. Errors and ReaderGone surface in the caller's next submit or at exit."""

    def __init__(self, finish: Callable[[Any], object], backlog: int) -> None:
        self.finish = finish
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
                    self.finish(item.result() if isinstance(item, Future) else item)
                except BaseException as e:  # handed to the pipeline thread, which raises it
                    self.error = e

    def submit(self, item: Any) -> None:
        if self.error is not None:
            raise self.error
        _put(self.queue, item, self.thread.is_alive)

    def __exit__(self, exc_type, *exc: object) -> None:
        _put(self.queue, None, self.thread.is_alive)
        self.thread.join()
        if exc_type is None and self.error is not None:
            raise self.error
