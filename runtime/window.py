"""The `--show` window: the latest annotated frame (runtime.live) in an OpenCV window; q or Esc stops the daemon
as SIGINT does, Space saves what is on screen as a PNG in the current directory, the window manager's close button
counts as q.

One thread owns every GUI call of OpenCV (Qt wants its widgets and events in the thread that created them). It only
reads the latest frame, so a slow screen skips frames and never slows the pipeline.

Before any of that, the display is checked here: OpenCV's Qt aborts the whole process (SIGABRT, a core dump) when
it cannot reach the X server or load its plugin, which must be one line and exit 2 instead, before MediaPipe loads.
A link of our own to the X server (runtime/x11.py) then watches for what Qt handles badly: the server going away,
and a new window that stays black.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import UserError, printable, say
from runtime.live import LiveView
from runtime.x11 import XLink

_QUIT_KEYS = {ord("q"), ord("Q"), 27}  # 27: Esc
_SNAPSHOT_KEY = ord(" ")
# The loop waits in Python and only dips into Qt (imshow, waitKey) briefly: Qt learns of a dead X server while it
# runs and then ends the process, so our own check before each dip (runtime/x11.py) must nearly always come first.
_FRAME_WAIT_S = 0.02  # between frames, the longest the window's events (keys, repaints) wait
_KEY_WAIT_MS = 1
_SHOW_INTERVAL_S = 1 / 60  # at most ~60 frames/s reach the screen (what it shows); the others are skipped
_START_TIMEOUT_S = 10.0  # Qt's start takes ~0.2 s; a busy machine may take longer, and then we go on without it
_JOIN_TIMEOUT_S = 1.0
_WAITING_GRAY = 40  # the waiting image's background: how we know the window shows it (runtime/x11.py)
_PAINT_WAIT_S = 0.5  # how long a new window may take to show its first image before it is mapped again
_PAINT_TRIES = 4


class Window:
    """Window(live, on_quit, title) as a context manager: a window showing `live`'s frames while the block runs.
    UserError from the constructor (no display, no GUI in OpenCV) or from __enter__ (the window cannot open)."""

    def __init__(self, live: LiveView, on_quit: Callable[[], None], title: str) -> None:
        self._x = check_display()
        self._live = live
        self._on_quit = on_quit
        self._title = title
        self._quit_sent = False
        self._display_lost = False  # then no GUI call may be made again: Qt would end the process
        self._stop = threading.Event()
        self._started = threading.Event()  # the window is on screen, or failed to open (then _failure says why)
        self._failure: str | None = None
        self._gone_on = False  # __enter__ stopped waiting for the window: a later failure is told as a warning
        self._start_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="window", daemon=True)

    def __enter__(self) -> Window:
        self._thread.start()
        self._started.wait(_START_TIMEOUT_S)
        with self._start_lock:  # a failure comes before this (an error here) or after (a warning there), once
            self._gone_on = True
            failure = self._failure
        if failure is not None:
            self.close()
            raise UserError(f"--show: cannot open a window: {failure}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(_JOIN_TIMEOUT_S)
        if self._x is not None and not self._thread.is_alive():
            self._x.close()

    def _run(self) -> None:
        try:
            cv2.namedWindow(self._title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)  # no toolbar, no status bar
            cv2.imshow(self._title, _waiting_image())
            self._make_sure_it_paints()
        except cv2.error as e:
            with self._start_lock:
                self._failure = " ".join(str(e).split())
                late = self._gone_on
            self._started.set()
            if late:  # Qt took longer than _START_TIMEOUT_S, then failed: nobody waits for _failure any more
                say(f"emotiond: the window could not open, the daemon goes on without it: {self._failure}", "warning")
            return
        self._started.set()
        try:
            self._show_frames()
        except cv2.error as e:  # Qt gave up: the daemon goes on without its window
            say(f"emotiond: the window failed and is gone, the daemon goes on: {' '.join(str(e).split())}", "warning")
        finally:
            if not self._display_lost:
                with contextlib.suppress(cv2.error):
                    cv2.destroyAllWindows()
                    cv2.waitKey(1)  # lets Qt handle the destruction before the thread ends

    def _make_sure_it_paints(self) -> None:
        """Qt 5.15 now and then loses the events of its new window's mapping, and the window stays black for good
        (runtime/x11.py): while the waiting image is not on screen, map the window again."""
        cv2.waitKey(1)
        if self._x is None:
            return  # not an X display: nothing to check with
        window = None
        for _ in range(_PAINT_TRIES):
            deadline = time.monotonic() + _PAINT_WAIT_S
            while time.monotonic() < deadline:
                cv2.waitKey(10)
                window = window or self._x.find_window(self._title)
                if window and self._x.shows(window, 2, 2, _WAITING_GRAY):
                    return
            if window is None:
                return  # not found (an unusual window manager): nothing to check against
            self._x.remap(window)

    def _show_frames(self) -> None:
        shown_version, shown = 0, None  # the frame on screen; None: the waiting image
        shown_at = 0.0
        while not self._stop.is_set():
            new = self._live.wait(shown_version, _FRAME_WAIT_S) > shown_version
            if new and (early := shown_at + _SHOW_INTERVAL_S - time.monotonic()) > 0:
                self._stop.wait(early)
            if self._x is not None and self._x.lost():  # checked right before the GUI calls, which Qt may end in
                self._display_lost = True
                say("emotiond: the X display went away: stopping", "warning")
                self._quit()
                return
            if new:
                version, image = self._live.image()
                if image is not None:
                    cv2.imshow(self._title, image)
                    shown_version, shown, shown_at = version, image, time.monotonic()
            key = cv2.waitKey(_KEY_WAIT_MS) & 0xFF
            if key in _QUIT_KEYS:
                self._quit()
            elif key == _SNAPSHOT_KEY:
                save_snapshot(shown)
            if not self._visible():
                self._quit()  # closed by the window manager; showing on would open it again
                return
            if self._live.closed:
                self._stop.wait(_FRAME_WAIT_S)  # no frame will come: the loop only waits for close()

    def _visible(self) -> bool:
        try:
            return cv2.getWindowProperty(self._title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:  # Qt's: "NULL guiReceiver" once its last window is closed
            return False

    def _quit(self) -> None:
        if not self._quit_sent:
            self._quit_sent = True
            self._on_quit()


def save_snapshot(image: np.ndarray | None) -> Path | None:
    """`image` as emotiond-snapshot-YYYYmmdd-HHMMSS-mmm.png in the current directory, one line on stderr either way."""
    if image is None:
        say("emotiond: no frame yet: no snapshot saved", "warning")
        return None
    name = f"emotiond-snapshot-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')[:-3]}.png"
    path = Path(name)
    try:
        path = Path.cwd() / name  # named in full on stderr: a daemon's cwd is not always where its user looks
        ok, data = cv2.imencode(".png", image)
        if not ok:
            raise OSError("OpenCV could not encode the frame as PNG")
        path.write_bytes(data.tobytes())
    except OSError as e:
        say(f"emotiond: snapshot not saved: {printable(path)}: {e.strerror or e}", "warning")
        return None
    say(f"emotiond: snapshot saved: {printable(path)}")
    return path


def _waiting_image() -> np.ndarray:
    image = np.full((120, 360, 3), _WAITING_GRAY, np.uint8)
    cv2.putText(image, "waiting for frames ...", (20, 66), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (220, 220, 220), 1)
    return image


# -- can this process open a window? ---------------------------------------------------------------------------


def check_display() -> XLink | None:
    """UserError (one line) unless OpenCV has a GUI and the display it would use answers; the link to that display
    (None: not an X display)."""
    gui = _opencv_gui()
    if gui in ("", "NONE"):
        raise UserError(
            "--show: this OpenCV has no window support (a headless build); install opencv-contrib-python, "
            "not a -headless package"
        )
    display = os.environ.get("DISPLAY", "")
    if not display:
        if os.environ.get("WAYLAND_DISPLAY") and gui.startswith("GTK"):
            return None  # GTK speaks Wayland itself
        if os.environ.get("WAYLAND_DISPLAY"):
            raise UserError(
                "--show needs an X display and DISPLAY is not set (this OpenCV's Qt speaks X11 only; a Wayland "
                "desktop offers one through XWayland)"
            )
        raise UserError("--show needs a display and DISPLAY is not set (run it in a desktop session, or ssh -X)")
    if gui.startswith("QT"):
        problem = _qt_plugin_problem()
        if problem:
            raise UserError(f"--show: OpenCV's Qt cannot load its X11 plugin: {problem}")
    return XLink(display)


def _opencv_gui() -> str:
    """The "GUI:" line of OpenCV's build information: QT5, GTK3, NONE ..."""
    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return match.group(1).upper() if match else ""


def _qt_plugin_problem() -> str | None:
    """Readies the Qt that opencv's wheel ships for the X display: None, or why Qt would abort the process.

    Qt picks its platform plugin from QT_QPA_PLATFORM, else from the session: Wayland first on a Wayland desktop,
    with a warning on stderr. The wheel has only the xcb plugin, and a plugin Qt lacks (QT_QPA_PLATFORM=wayland, a
    common setting on Wayland desktops) or cannot load (a system library missing) aborts the process."""
    platforms = Path(cv2.__file__).parent / "qt" / "plugins" / "platforms"
    plugin = platforms / "libqxcb.so"
    if not plugin.is_file():
        return None  # a Qt of the system's: its plugins are the system's business
    wanted = os.environ.get("QT_QPA_PLATFORM", "").split(":")[0]  # "name:options"
    if not (platforms / f"libq{wanted}.so").is_file():
        os.environ["QT_QPA_PLATFORM"] = "xcb"
    try:
        ctypes.CDLL(str(plugin))
    except OSError as e:
        return " ".join(str(e).split())
    return None
