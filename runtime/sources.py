"""Sources: a capture thread per source turns a camera, a video file, a URL or images into Frame records.

Capture runs in its own thread so decoding overlaps detection. Between that thread and the pipeline:
- live sources (cameras, URLs): a one-slot latest-frame holder; a frame not taken yet is replaced by the
  next one (and counted as dropped), so latency never grows with time;
- files and images: a small bounded queue; every frame is delivered, in order.

Opening happens before anything starts (`open_source`), so a bad source fails first; it runs in a helper thread
the caller waits on while watching its stop flag and a deadline, because an open can block for good (a FIFO
nobody writes to, a silent server). OpenCV's timeouts only cover opening a stream, not each read:
`Source.poll(timeout)` is our watchdog. Capture threads are daemon threads and a close waits for them a bounded
time: a read blocked in FFmpeg must never keep the process from exiting.
A source given `prepare` (the detector's `detector_input`) runs it on each frame in the capture thread too, so
the scaling and colour conversion overlap detection instead of adding to it.
"""

from __future__ import annotations

import os
import queue
import stat
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import UserError, printable, say, user_path
from runtime.frames import DetectorInput, Frame
from runtime.priority import lower_this_thread
from runtime.reconnect import Backoff, StatusCallback, reopen

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".pnm"}
)
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
# Frames decoded ahead of a file source: decoding is much faster than detection, so 2 overlap fully; more only
# adds latency (each queued frame waits a whole detection).
FILE_QUEUE = 2
OPEN_TIMEOUT_MS = 10_000
CLOSE_WAIT_S = 0.3  # longest a close waits for a capture thread; one blocked in a read is left behind (daemon)
POLL_S = 0.1  # how often a wait for an open checks the stop flag
WARN_EVERY_S = 60.0  # a source that keeps sending malformed frames is named on stderr at most this often
_END = object()  # end of stream marker in the hand-off
NOTHING = object()  # poll(): no frame within the timeout


class Stopped(Exception):
    """A stop request arrived while the source was still opening."""


class SourceStalled(UserError):
    """No frame arrived within the watchdog timeout."""


def run_bounded(
    work: Callable[[], object], what: str, timeout_s: float, stop: threading.Event | None = None,
    discard: Callable[[object], None] | None = None,
):  # fmt: skip
    """work() in a daemon thread; its result, or its exception re-raised. Stopped if `stop` is set first, and
    UserError naming `what` after timeout_s: the thread may stay blocked, and is abandoned; should it still
    succeed, discard(result) frees what it opened (a capture nobody will read)."""
    box: dict = {}
    lock = threading.Lock()

    def target() -> None:
        try:
            result = work()
        except BaseException as e:
            box["error"] = e
            return
        with lock:
            abandoned = box.get("abandoned", False)
            box["result"] = result
        if abandoned and discard is not None:
            discard(result)

    thread = threading.Thread(target=target, name=f"open:{what}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    try:
        while thread.is_alive():
            thread.join(POLL_S)
            if stop is not None and stop.is_set():
                raise Stopped
            if thread.is_alive() and time.monotonic() > deadline:
                raise UserError(f"{what}: no answer within {timeout_s:g} s")
    except BaseException:
        with lock:
            box["abandoned"] = True
            late = box.get("result")
        if late is not None and discard is not None:  # it finished just as we gave up
            discard(late)
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]


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
    reconnects: bool = False  # reopens itself when lost (and reports it): the pipeline must not call it stalled

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
        self.skipped = 0  # files in a directory that are not (decodable) images; malformed frames of a capture
        self.captured = 0
        self._stop = threading.Event()
        self._handoff: LatestSlot | queue.Queue = LatestSlot() if live else queue.Queue(maxsize=FILE_QUEUE)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"capture:{printable(uri)}", daemon=True)

    @property
    def dropped(self) -> int:
        """Stale frames replaced before the pipeline took them (live sources only)."""
        return self._handoff.dropped if isinstance(self._handoff, LatestSlot) else 0

    def start(self) -> Source:
        if self._thread.ident is None and not self._stop.is_set():  # a thread starts once; start() is idempotent
            self._thread.start()
        return self

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next Frame, None at the end; SourceStalled after `timeout` (default: the stall timeout) without."""
        timeout = self.stall_timeout_s if timeout is None else timeout
        item = self.poll(timeout)
        if item is NOTHING:
            raise SourceStalled(f"source {printable(self.uri)} stalled: no frame for {timeout:g} s")
        return item  # type: ignore[return-value]

    def poll(self, timeout: float) -> Frame | object | None:
        """The next Frame, None at the end, or NOTHING if none arrived within `timeout`. A failure of the capture
        thread (including its own stall report) is raised, once the frames before it were taken."""
        try:
            item = self._handoff.get(timeout=timeout)
        except queue.Empty:
            return NOTHING
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
            # A read blocked on a silent stream cannot be interrupted: the daemon thread is left to FFmpeg's read
            # timeout (or the process's exit), and what it reads from is not released under it.
            self._thread.join(CLOSE_WAIT_S)
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
            self._error = e if isinstance(e, UserError) else UserError(f"source {printable(self.uri)} failed: {e}")
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

    def __init__(
        self, uri: str, kind: str, live: bool, realtime: bool = False, prepare=None, stop=None,
        reconnect: Backoff | None = None, on_status: StatusCallback | None = None, **opts,
    ) -> None:  # fmt: skip
        super().__init__(uri, live, opts.get("stall_timeout_s", 10.0), prepare)
        self.kind = kind
        self.realtime = realtime
        # Cameras and streams that fail or stall are reopened (files end): the pipeline then waits, not stalls.
        self.reconnect = reconnect if kind in ("webcam", "url") else None
        self.reconnects = self.reconnect is not None
        self._delays: Iterator[float] | None = None  # backoff under way, until a frame arrives again
        self.on_status = on_status or (lambda *a, **k: None)
        self._opts = opts
        self._fd: int | None = None  # a file whose name OpenCV cannot take, opened by us (_capture_path)
        self._quiet_until = 0.0  # no "malformed frame" warning before this (monotonic s)
        target = _capture_path(self, uri) if kind == "file" else uri
        self._first: tuple[np.ndarray, int] | None = None  # read at open time, and its decode time in ns
        try:
            self._cap, self._first = run_bounded(
                lambda: _open_and_check(target, uri, kind, opts), f"cannot open source {printable(uri)}",
                OPEN_TIMEOUT_MS / 1000 + 1, stop, discard=lambda opened: opened[0].release(),
            )  # fmt: skip
        except BaseException:
            self._close_fd()
            raise
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None

    def _reopen(self, why: str) -> cv2.VideoCapture | None:
        """Release the lost capture and open it again with backoff (None once stopping); in the capture thread."""
        self._cap.release()
        if self._delays is None:
            self._delays = self.reconnect.delays()
        cap = reopen(
            lambda: run_bounded(
                lambda: _open_capture(self.uri, self.kind, self._opts), f"cannot open source {printable(self.uri)}",
                OPEN_TIMEOUT_MS / 1000 + 1, self._stop, discard=lambda cap: cap.release(),
            ),
            self._delays, self._stop, self.on_status, why,
        )  # fmt: skip
        if cap is not None:
            self._cap = cap
        return cap

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _capture(self) -> None:
        cap, index = self._cap, 0
        pace = 1.0 / self.fps if (self.realtime and self.kind == "file" and self.fps) else 0.0
        start = usable = time.monotonic()  # usable: since when the capture has read no frame it could use
        while not self._stop.is_set():
            t0, lost = time.perf_counter_ns(), None
            if self._first is not None:
                (image, first_ns), self._first = self._first, None
                t0 -= first_ns
            else:
                ok, image = cap.read()  # a fresh array per frame: the previous one may still be in the pipeline
                if not ok or image is None:
                    if self.kind == "file":
                        return  # end of the file
                    if time.perf_counter_ns() - t0 >= 0.9e9 * self.stall_timeout_s:  # FFmpeg's read timeout
                        lost = SourceStalled(
                            f"source {printable(self.uri)} stalled: no frame for {self.stall_timeout_s:g} s"
                        )
                    else:
                        lost = UserError(f"source {printable(self.uri)} ended or was lost")
            if lost is None and (image.size == 0 or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8):
                self._skip_malformed(image)  # an empty or malformed frame (a broken camera driver)
                if time.monotonic() - usable < self.stall_timeout_s:
                    continue
                # Frames, but none usable: a stall all the same (reported, or reconnected), never a silent loop
                lost = SourceStalled(
                    f"source {printable(self.uri)} stalled: no usable frame for {self.stall_timeout_s:g} s, "
                    f"only malformed ones ({_shape(image)})"
                )
            if lost is not None:
                if self.reconnect is None:
                    raise lost
                cap = self._reopen(str(lost))
                if cap is None:
                    return  # stopping
                usable = time.monotonic()
                continue
            self._delays = None  # a frame again: the next loss backs off from the start
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
            usable = time.monotonic()  # after the hand-off: waiting on a slow consumer is no stall

    def _skip_malformed(self, image: np.ndarray) -> None:
        """Count a frame that is not (H, W, 3) uint8, and name the source on stderr (at most every WARN_EVERY_S)."""
        self.skipped += 1
        if time.monotonic() >= self._quiet_until:
            self._quiet_until = time.monotonic() + WARN_EVERY_S
            say(
                f"emotiond: source {printable(self.uri)}: skipped a malformed frame ({_shape(image)}, expected "
                f"height x width x 3 uint8); {self.skipped} so far", "warning",
            )  # fmt: skip

    def _release(self) -> None:
        if not self._thread.is_alive():  # never release under a read that is still running
            self._cap.release()
            self._close_fd()


def _shape(image: np.ndarray) -> str:
    return f"{tuple(image.shape)} {image.dtype}"


def _capture_path(source: VideoSource, uri: str) -> str:
    """The path to give OpenCV for a video file. cv2 takes names as UTF-8 text and crashes on one that is not
    (bytes of another encoding reach Python as surrogates): such a file is opened here and FFmpeg reads it through
    /proc/self/fd, so its name never reaches OpenCV."""
    try:
        uri.encode("utf-8")
        return uri
    except UnicodeEncodeError:
        pass
    if not os.path.isdir("/proc/self/fd"):
        raise UserError(f"cannot open source {printable(uri)}: its name is not UTF-8 (rename the file)")
    try:
        source._fd = os.open(user_path(uri), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise UserError(f"cannot open source {printable(uri)}: {e.strerror}") from None
    return f"/proc/self/fd/{source._fd}"


def _open_and_check(target: str, uri: str, kind: str, opts: dict) -> tuple[cv2.VideoCapture, tuple | None]:
    """The opened capture, and for a file its first frame with its decode time: a file that exists but yields no
    frame (corrupt, empty, not a video) fails here, not mid-run."""
    cap = _open_capture(target, kind, opts, shown=uri)
    if kind != "file":
        return cap, None
    t0 = time.perf_counter_ns()
    ok, image = cap.read()
    if not ok or image is None:
        cap.release()
        raise UserError(f"cannot decode any frame from {printable(uri)} (corrupt or not a video file)")
    return cap, (image, time.perf_counter_ns() - t0)


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
                    raise UserError(f"cannot decode image {printable(path)}")
                self.skipped += 1  # named on stderr: the user should know which file was left out
                say(f"emotiond: skipped {printable(path)}: not a decodable image", "warning")
                continue
            if not self._deliver(self._frame(image, index, t0, str(path))):
                return
            index += 1
            self.captured = index


MAX_IMAGE_BYTES = 256 << 20  # larger "images" are skipped rather than read into memory


def _imread(path: Path) -> np.ndarray | None:
    """BGR uint8 (H, W, 3) or None. IMREAD_COLOR turns gray and RGBA images into BGR, as the detector needs.

    Read as bytes by Python and decoded from memory: cv2.imread takes names as UTF-8 text and crashes on one that
    is not; and only regular files are opened (a FIFO would block the open)."""
    try:
        with open(path, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_IMAGE_BYTES:
                return None
            data = f.read()
    except OSError:
        return None
    if not data:
        return None
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None


def _open_capture(uri: str, kind: str, opts: dict, shown: str | None = None) -> cv2.VideoCapture:
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
        raise UserError(f"cannot open source {printable(shown or uri)} ({why})")
    return cap


def list_images(folder: Path) -> tuple[list[Path], int]:
    """Image files of a folder sorted by name, and how many other files were skipped (subfolders ignored)."""
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as e:
        raise UserError(f"cannot read directory {printable(folder)}: {e.strerror or e}") from None
    images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
    return images, len(entries) - len(images)


def source_kind(uri: str) -> str:
    """webcam | url | images | image | file; UserError if a path does not exist."""
    if uri.isdigit() or uri.startswith("/dev/video"):
        return "webcam"
    if uri.lower().startswith(URL_SCHEMES):
        return "url"
    path = user_path(uri)
    if path.is_dir():
        return "images"
    if not path.exists():
        raise UserError(f"source not found: {printable(uri)}")
    if not os.access(path, os.R_OK):
        raise UserError(f"cannot open source {printable(uri)}: permission denied")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if not path.is_file():
            raise UserError(f"cannot open source {printable(uri)}: not a regular file")
        return "image"
    return "file"  # a FIFO too: its open and reads are bounded like a stream's


def open_source(
    uri: str,
    live: bool | None = None,
    realtime: bool = False,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    stall_timeout_s: float = 10.0,
    prepare: Callable[[np.ndarray], DetectorInput] | None = None,
    stop: threading.Event | None = None,
    reconnect: Backoff | None = None,
    on_status: StatusCallback | None = None,
) -> Source:
    """The source for `uri`, opened (errors raise UserError here) but not started: `with open_source(...) as src`.

    live=None: cameras and URLs are live (latest frame wins), files are not (every frame). live=True on a file
    plays it like a camera, which benchmarks and tests use to show that stale frames are dropped.
    prepare: run on each frame in the capture thread, the result kept as Frame.detector_input.
    stop: a stop request while opening raises Stopped (an open may block for up to OPEN_TIMEOUT_MS).
    reconnect: cameras and URLs that fail or stall are reopened with this backoff, on_status(state, detail, **fields)
    told of each step, instead of ending the run (only the first open must succeed).
    """
    kind = source_kind(uri)
    if kind in ("images", "image"):
        if kind == "image":
            return ImageSource(uri, [user_path(uri)], stall_timeout_s=stall_timeout_s, prepare=prepare)
        images, skipped = list_images(user_path(uri))
        if not images:
            raise UserError(
                f"no images in directory {printable(uri)} ({skipped} other file{'s' if skipped != 1 else ''})"
            )
        return ImageSource(uri, images, skipped, stall_timeout_s=stall_timeout_s, prepare=prepare)
    is_live = kind in ("webcam", "url") if live is None else live
    return VideoSource(
        uri, kind, is_live, realtime, prepare, stop, reconnect, on_status,
        width=width, height=height, fps=fps, stall_timeout_s=stall_timeout_s,
    )  # fmt: skip
