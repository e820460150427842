"""The `--show` window: the latest annotated frame (runtime.live) in an OpenCV window; q or Esc stops the daemon
as SIGINT does, Space saves what is on screen as a PNG in the current directory, the window manager's close button
counts as q.

The window lives in a process of its own (runtime/window_child.py, through runtime/window_pipe.py): Qt ends the
process that holds its window when the X server goes away, and no check before each GUI call can always come
first. Here the daemon only sees the pipe close; if its own link to the X server (runtime/x11.py) has broken too,
the display went away and the daemon stops as on SIGINT, every event written; else it goes on without the window.
The window gets a frame only when it asks for one, the latest: a slow screen skips frames, never slows the pipeline.

Before any of that, the display is checked here: OpenCV's Qt aborts the process (SIGABRT, a core dump) when it
cannot reach the X server or load its plugin, which must be one line and exit 2 instead, before MediaPipe loads.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2

from runtime.errors import LOG_LEVELS, UserError, one_line, say
from runtime.live import LiveView
from runtime.window_pipe import TITLE_VARIABLE, parse_message, send_frame
from runtime.x11 import XLink

_WAKE_S = 0.05  # how often the sender looks at the stop flag while it waits for a request or a frame
_SHOW_INTERVAL_S = 1 / 60  # at most ~60 frames/s reach the screen (what it shows); the others are skipped
_START_TIMEOUT_S = 10.0  # Python, cv2 and Qt start in ~0.5 s; a busy machine may take longer, and we go on without
_START_POLL_S = 0.05  # how soon a stop ends the wait for the window to open
_END_TIMEOUT_S = 1.0  # for the window's process to close at EOF, before it is killed
_JOIN_TIMEOUT_S = 1.0
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding runtime/
# The window's process: signals are the daemon's to handle (systemd's stop reaches every process of the unit, even
# while cv2 and Qt still load; the daemon then closes the window). Our package comes first on sys.path, not what
# the daemon's current directory holds, which `python -m` or -c would put there ('' in sys.path[0]).
_BOOTSTRAP = """import signal, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
if sys.path and sys.path[0] in ("", "."):
    sys.path[0] = {root!r}
else:
    sys.path.insert(0, {root!r})
from runtime.window_child import main
sys.exit(main(sys.argv[1:]))
"""
_LOSS_GRACE_S = 0.5  # the window's process may see the X server go a moment before our own link does


class Window:
    """Window(live, on_quit, title, stop) as a context manager: a window showing `live`'s frames while the block
    runs; `stop` set while the window opens ends the wait for it.
    UserError from the constructor (no display, no GUI in OpenCV) or from __enter__ (the window cannot open).
    Enter it from the main thread: the window's process is killed when the thread that started it ends."""

    def __init__(
        self, live: LiveView, on_quit: Callable[[], None], title: str, stop: threading.Event | None = None
    ) -> None:
        self._x = check_display()
        self._daemon_stop = stop or threading.Event()  # a SIGTERM while the window starts: stop waiting for it
        self._live = live
        self._on_quit = on_quit
        self._title = title
        self._child: subprocess.Popen | None = None
        self._quit_sent = False
        self._stop = threading.Event()
        self._wanted = threading.Event()  # the window asked for a frame
        self._started = threading.Event()  # the window is on screen, or failed to open (then _failure says why)
        self._failure: str | None = None
        self._gone_on = False  # __enter__ stopped waiting for the window: a later failure is told as a warning
        self._start_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="window-reader", daemon=True)
        self._sender = threading.Thread(target=self._send, name="window-sender", daemon=True)

    def __enter__(self) -> Window:
        command = [sys.executable, "-c", _BOOTSTRAP.format(root=str(_PACKAGE_ROOT)), str(os.getpid())]
        # The title names the source, which may hold a password (rtsp://user:pass@...): not on a command line for `ps`
        env = {**os.environ, TITLE_VARIABLE: self._title}
        try:  # a session of its own: a terminal's signals (Ctrl-C) are for the daemon, which then closes the window
            self._child = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True, env=env
            )
        except OSError as e:
            self.close()
            raise UserError(f"--show: cannot start the window's process: {e.strerror or e}") from None
        self._reader.start()
        self._sender.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._started.wait(_START_POLL_S) and not self._daemon_stop.is_set() and time.monotonic() < deadline:
            pass
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
        self._stop.set()  # the sender then closes the window's stdin: EOF tells the window to end
        if self._child is not None:
            try:
                self._child.wait(_END_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # a frozen window (its sender may be stuck writing to it)
                self._child.kill()
                self._child.wait()
            for thread in (self._sender, self._reader):
                if thread.is_alive():
                    thread.join(_JOIN_TIMEOUT_S)
        if self._x is not None and not self._reader.is_alive():
            self._x.close()

    def _send(self) -> None:
        """Hands the window the latest frame whenever it asks for one; closes its stdin at close()."""
        sent_version, sent_at = 0, 0.0
        try:
            while not self._stop.is_set():
                if not self._wanted.wait(_WAKE_S):
                    continue
                if self._live.wait(sent_version, _WAKE_S) <= sent_version:
                    if self._live.closed:
                        self._stop.wait(_WAKE_S)  # no frame will come: only close() is awaited
                    continue
                if (early := sent_at + _SHOW_INTERVAL_S - time.monotonic()) > 0 and self._stop.wait(early):
                    break
                version, image = self._live.image()
                if image is not None:
                    self._wanted.clear()
                    send_frame(self._child.stdin, image)
                    sent_version, sent_at = version, time.monotonic()
        except OSError:
            pass  # the window's process has ended: the reader tells why
        finally:
            with contextlib.suppress(OSError):
                self._child.stdin.close()

    def _read(self) -> None:
        """Acts on the window's messages (runtime/window_pipe.py), then on its end."""
        why = None  # the window's own account of its end
        for line in self._child.stdout:
            word, text = parse_message(line)
            if word == "ready":
                self._wanted.set()
            elif word == "opened":
                self._started.set()
            elif word == "failed":
                self._failed(text)
            elif word == "quit":
                self._quit()
            elif word == "say":
                level, _, said = text.partition(" ")
                say(said, level if level in LOG_LEVELS else "warning")
            elif word == "error":
                why = text
        self._ended(why or _how_it_ended(self._child))

    def _failed(self, why: str) -> None:
        with self._start_lock:
            self._failure = why
            late = self._gone_on
        self._started.set()
        if late:  # it took longer than _START_TIMEOUT_S, then failed: nobody waits for _failure any more
            say(f"emotiond: the window could not open, the daemon goes on without it: {why}", "warning")

    def _ended(self, why: str) -> None:
        if not self._started.is_set():
            self._failed(f"its process ended: {why}")
        elif self._stop.is_set() or self._quit_sent or self._failure is not None:
            pass  # closed, quit or failed: told already
        elif self._display_lost():
            say("emotiond: the X display went away: stopping", "warning")
            self._quit()
        else:
            say(f"emotiond: the window failed and is gone, the daemon goes on: {why}", "warning")

    def _display_lost(self) -> bool:
        """Whether our own link to the X server broke too (the window's process may have seen it a moment before)."""
        if self._x is None:
            return False
        deadline = time.monotonic() + _LOSS_GRACE_S
        while not self._x.lost():
            if time.monotonic() > deadline or self._stop.wait(0.02):
                return False
        return True

    def _quit(self) -> None:
        if not self._quit_sent:
            self._quit_sent = True
            self._on_quit()


def _how_it_ended(child: subprocess.Popen) -> str:
    try:
        code = child.wait(_END_TIMEOUT_S)  # its stdout closed as it exited: a moment at most
    except subprocess.TimeoutExpired:
        return "its output closed"
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:  # a real-time signal: no name
        return f"killed by signal {-code}"


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
        return one_line(e)
    return None
