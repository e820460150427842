"""Sources: a capture thread per source turns a camera, a video file, a URL or images into Frame records.

Capture runs in its own thread so decoding overlaps detection. Between that thread and the pipeline:
- live sources (cameras, URLs): a one-slot latest-frame holder; a frame not taken yet is replaced by the
  next one (and counted as dropped), so latency never grows with time;
- files and images: a small bounded queue; every frame is delivered, in order.

Opening happens in the caller's thread (`open_source`), so a bad source fails before anything starts.
OpenCV's timeouts only cover opening a stream, not each read: `Source.read(timeout)` is our watchdog.
A source given `prepare` (the detector's `detector_input`) runs it on each frame in the capture thread too, so
the scaling and colour conversion overlap detection instead of adding to it.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import UserError
from runtime.frames import DetectorInput, Frame
from runtime.priority import lower_this_thread

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".pnm"}
)
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
# Frames decoded ahead of a file source: decoding is much faster than detection, so 2 overlap fully; more only
# adds latency (each queued frame waits a whole detection).
FILE_QUEUE = 2
OPEN_TIMEOUT_MS = 10_000
JOIN_GRACE_S = 2.0  # beyond the stall timeout, when closing a source whose read is blocked
_END = object()  # end of stream marker in the hand-off


class SourceStalled(UserError):
    """No frame arrived within the watchdog timeout."""


class LatestSlot:
    """One-slot hand-off for live sources: put() replaces a frame not yet taken (counted in `dropped`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: object | None = None
        self._ended = False  # apart from the slot: the end must not replace the last frame
        self.dropped = 0

    def put(self, item: object) -> None:
        with self._cond:
            if item is _END:
                self._ended = True
            else:
                if self._item is not None:
                    self.dropped += 1
                self._item = item
            self._cond.notify()

    def get(self, timeout: float) -> object:
        """The newest item (or _END once ended and empty); raises queue.Empty after `timeout` s without one."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._item is not None or self._ended, timeout):
                raise queue.Empty
            if self._item is None:
                return _END
            item, self._item = self._item, None
            return item


class Source(ABC):
    """Frames from one capture thread. `open_source()` builds the right kind; use as a context manager.

    read(timeout) -> the next Frame, or None at the end of the stream; SourceStalled if nothing arrives in time.
    """

    live: bool = False
    stills: bool = False  # independent images: no tracking, detector in image mode

    def __init__(
        self,
        uri: str,
        live: bool,
        stall_timeout_s: float = 10.0,
        prepare: Callable[[np.ndarray], DetectorInput] | None = None,
    ) -> None:
        self.uri = uri
        self.prepare = prepare
        self.live = live
        self.stall_timeout_s = stall_timeout_s
        self.fps: float | None = None
        self.skipped = 0  # files in a directory that are not (decodable) images
        self.captured = 0
        self._stop = threading.Event()
        self._handoff: LatestSlot | queue.Queue = LatestSlot() if live else queue.Queue(maxsize=FILE_QUEUE)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"capture:{uri}", daemon=False)

    @property
    def dropped(self) -> int:
        """Stale frames replaced before the pipeline took them (live sources only)."""
        return self._handoff.dropped if isinstance(self._handoff, LatestSlot) else 0

    def start(self) -> Source:
        if self._thread.ident is None and not self._stop.is_set():  # a thread starts once; start() is idempotent
            self._thread.start()
        return self

    def read(self, timeout: float | None = None) -> Frame | None:
        timeout = self.stall_timeout_s if timeout is None else timeout
        try:
            item = self._handoff.get(timeout=timeout)
        except queue.Empty:
            raise SourceStalled(f"source {self.uri} stalled: no frame for {timeout:g} s") from None
        if item is _END:
            if isinstance(self._handoff, queue.Queue):
                self._handoff.put(_END)  # stays at the end for another read()
            if self._error is not None:
                raise self._error
            return None
        return item  # type: ignore[return-value]

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def close(self) -> None:
        """Stop the capture thread and wait for it; safe to call more than once."""
        self._stop.set()
        if isinstance(self._handoff, queue.Queue):  # unblock a producer waiting on a full queue
            while True:
                try:
                    self._handoff.get_nowait()
                except queue.Empty:
                    break
        if self._thread.is_alive():
            # A read blocked on a silent stream cannot be interrupted; FFmpeg's read timeout (= the stall timeout)
            # ends it, so waiting a little longer than that always suffices.
            wait_s = self.stall_timeout_s + JOIN_GRACE_S
            self._thread.join(wait_s)
            if self._thread.is_alive():
                print(f"emotiond: capture thread of {self.uri} did not stop within {wait_s:g} s", file=sys.stderr)
        self._release()

    def __enter__(self) -> Source:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- capture thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        lower_this_thread()  # the detector's thread comes first: runtime.priority
        try:
            self._capture()
        except BaseException as e:  # handed to the consumer, which raises it from read()
            self._error = e if isinstance(e, UserError) else UserError(f"source {self.uri} failed: {e}")
        finally:
            self._deliver(_END)

    def _frame(self, image: np.ndarray, index: int, t0_ns: int, file: str | None = None) -> Frame:
        """The Frame record of an image just decoded (and prepared for the detector, if asked); t0_ns: when
        reading it began (perf_counter_ns)."""
        capture_ns = time.monotonic_ns()
        prepared = self.prepare(image) if self.prepare is not None else None
        decode_ms = (time.perf_counter_ns() - t0_ns) / 1e6
        return Frame(image, index, capture_ns, time.time(), file=file, decode_ms=decode_ms, detector_input=prepared)

    def _deliver(self, item: object) -> bool:
        """Hand one item to the pipeline; False once stopping. Files block on a full queue (nothing is lost)."""
        if isinstance(self._handoff, LatestSlot):
            self._handoff.put(item)
            return not self._stop.is_set()
        while not self._stop.is_set():
            try:
                self._handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    @abstractmethod
    def _capture(self) -> None:
        """Read frames and _deliver() each until the end or self._stop."""

    def _release(self) -> None:  # noqa: B027 - only capture devices hold something to free
        """Free what the source holds; called after the thread ended."""


class VideoSource(Source):
    """cv2.VideoCapture: webcam (index or /dev/videoN), video file, or stream URL."""

    def __init__(self, uri: str, kind: str, live: bool, realtime: bool = False, prepare=None, **opts) -> None:
        super().__init__(uri, live, opts.get("stall_timeout_s", 10.0), prepare)
        self.kind = kind
        self.realtime = realtime
        self._cap = _open_capture(uri, kind, opts)
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        self._first: tuple[np.ndarray, int] | None = None  # read at open time, and its decode time in ns
        if kind == "file":
            # A file that exists but yields no frame (corrupt, empty, not a video) fails here, not mid-run.
            t0 = time.perf_counter_ns()
            ok, image = self._cap.read()
            if not ok or image is None:
                self._cap.release()
                raise UserError(f"cannot decode any frame from {uri} (corrupt or not a video file)")
            self._first = (image, time.perf_counter_ns() - t0)

    def _capture(self) -> None:
        cap, index = self._cap, 0
        pace = 1.0 / self.fps if (self.realtime and self.kind == "file" and self.fps) else 0.0
        start = time.monotonic()
        while not self._stop.is_set():
            t0 = time.perf_counter_ns()
            if self._first is not None:
                (image, first_ns), self._first = self._first, None
                t0 -= first_ns
            else:
                ok, image = cap.read()  # a fresh array per frame: the previous one may still be in the pipeline
                if not ok or image is None:
                    if self.kind == "file":
                        return  # end of the file
                    if time.perf_counter_ns() - t0 >= 0.9e9 * self.stall_timeout_s:  # FFmpeg's read timeout
                        raise SourceStalled(f"source {self.uri} stalled: no frame for {self.stall_timeout_s:g} s")
                    raise UserError(f"source {self.uri} ended or was lost")
            frame = self._frame(image, index, t0)
            if pace:  # the file's own clock: frame i is due at start + i/fps
                delay = start + index * pace - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                frame.capture_ns, frame.wall_time = time.monotonic_ns(), time.time()
            if not self._deliver(frame):
                return
            index += 1
            self.captured = index

    def _release(self) -> None:
        if not self._thread.is_alive():  # never release under a read that is still running
            self._cap.release()


class ImageSource(Source):
    """A single image or a directory of images (sorted by name); each frame names its file."""

    stills = True

    def __init__(
        self, uri: str, paths: list[Path], skipped: int = 0, stall_timeout_s: float = 10.0, prepare=None
    ) -> None:
        super().__init__(uri, live=False, stall_timeout_s=stall_timeout_s, prepare=prepare)
        self.paths = paths
        self.skipped = skipped

    def _capture(self) -> None:
        index = 0
        for path in self.paths:
            if self._stop.is_set():
                return
            t0 = time.perf_counter_ns()
            image = _imread(path)
            if image is None:
                if len(self.paths) == 1:
                    raise UserError(f"cannot decode image {path}")
                self.skipped += 1  # named on stderr: the user should know which file was left out
                print(f"emotiond: skipped {path}: not a decodable image", file=sys.stderr)
                continue
            if not self._deliver(self._frame(image, index, t0, str(path))):
                return
            index += 1
            self.captured = index


def _imread(path: Path) -> np.ndarray | None:
    """BGR uint8 (H, W, 3) or None. IMREAD_COLOR turns gray and RGBA images into BGR, as the detector needs."""
    try:
        return cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error:
        return None


def _open_capture(uri: str, kind: str, opts: dict) -> cv2.VideoCapture:
    if kind == "webcam":
        target: int | str = int(uri) if uri.isdigit() else uri
        # V4L2 directly on Linux: the default probing order tries other backends that log their own failures.
        cap = cv2.VideoCapture(target, cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY)
        if cap.isOpened():
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's own queue would add latency
            for prop, key in ((cv2.CAP_PROP_FRAME_WIDTH, "width"), (cv2.CAP_PROP_FRAME_HEIGHT, "height")):
                if opts.get(key):
                    cap.set(prop, opts[key])
            if opts.get("fps"):
                cap.set(cv2.CAP_PROP_FPS, opts["fps"])
    elif kind == "url":
        # The read timeout bounds a blocked read so the capture thread can stop; our watchdog reports the stall.
        read_ms = int(opts.get("stall_timeout_s", 10.0) * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_ms]
        cap = cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)
    else:
        cap = cv2.VideoCapture(uri, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        why = {
            "webcam": "no such camera, or it is busy / not permitted",
            "url": "unreachable, refused, or not a stream FFmpeg can read",
            "file": "corrupt, or not a video format FFmpeg can read",
        }[kind]
        raise UserError(f"cannot open source {uri} ({why})")
    return cap


def list_images(folder: Path) -> tuple[list[Path], int]:
    """Image files of a folder sorted by name, and how many other files were skipped (subfolders ignored)."""
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as e:
        raise UserError(f"cannot read directory {folder}: {e.strerror or e}") from None
    images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
    return images, len(entries) - len(images)


def source_kind(uri: str) -> str:
    """webcam | url | images | image | file; UserError if a path does not exist."""
    if uri.isdigit() or uri.startswith("/dev/video"):
        return "webcam"
    if uri.lower().startswith(URL_SCHEMES):
        return "url"
    path = Path(uri).expanduser()
    if path.is_dir():
        return "images"
    if not path.exists():
        raise UserError(f"source not found: {uri}")
    if not os.access(path, os.R_OK):
        raise UserError(f"cannot open source {uri}: permission denied")
    return "image" if path.suffix.lower() in IMAGE_SUFFIXES else "file"


def open_source(
    uri: str,
    live: bool | None = None,
    realtime: bool = False,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    stall_timeout_s: float = 10.0,
    prepare: Callable[[np.ndarray], DetectorInput] | None = None,
) -> Source:
    """The source for `uri`, opened (errors raise UserError here) but not started: `with open_source(...) as src`.

    live=None: cameras and URLs are live (latest frame wins), files are not (every frame). live=True on a file
    plays it like a camera, which benchmarks and tests use to show that stale frames are dropped.
    prepare: run on each frame in the capture thread, the result kept as Frame.detector_input.
    """
    kind = source_kind(uri)
    if kind in ("images", "image"):
        if kind == "image":
            return ImageSource(uri, [Path(uri).expanduser()], stall_timeout_s=stall_timeout_s, prepare=prepare)
        images, skipped = list_images(Path(uri).expanduser())
        if not images:
            raise UserError(f"no images in directory {uri} ({skipped} other file{'s' if skipped != 1 else ''})")
        return ImageSource(uri, images, skipped, stall_timeout_s=stall_timeout_s, prepare=prepare)
    is_live = kind in ("webcam", "url") if live is None else live
    return VideoSource(
        uri, kind, is_live, realtime, prepare, width=width, height=height, fps=fps, stall_timeout_s=stall_timeout_s
    )
