"""The `--show` window's own process: every OpenCV GUI call of the daemon happens here. Qt ends the process that
holds its window when the X server goes away (exit(1) from inside a GUI call, or an abort while other threads
run), a race no check before each call can win; here that ends this process only, and the daemon, which sees the
pipe close, stops cleanly (runtime/window.py).

`main([DAEMON_PID])` (the title in the environment, runtime/window_pipe.py), started by runtime/window.py, which
has it ignore SIGINT, SIGTERM and SIGHUP before anything loads: shows the frames it reads on stdin, asks for the
next one once the last is shown, and reports keys and failures on stdout (runtime/window_pipe.py). q, Esc and the window
manager's close button ask the daemon to stop; Space saves what is on screen as a PNG in the current directory
(the daemon's, inherited). Its life is the daemon's: it ends at EOF on stdin, and the kernel kills it if the daemon
dies (PR_SET_PDEATHSIG). Its native stderr is the daemon's fd 2, which runtime/native_logs.py filters.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import resource
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from runtime.errors import UserError, one_line, printable
from runtime.window_pipe import TITLE_VARIABLE, receive_frame, send_message
from runtime.x11 import XLink

_QUIT_KEYS = {ord("q"), ord("Q"), 27}  # 27: Esc
_SNAPSHOT_KEY = ord(" ")
_FRAME_WAIT_S = 0.02  # the longest the window's events (keys, repaints) wait for a frame
_KEY_WAIT_MS = 1
_WAITING_GRAY = 40  # the waiting image's background: how we know the window shows it (runtime/x11.py)
_PAINT_WAIT_S = 0.5  # how long a new window may take to show its first image before it is mapped again
_PAINT_TRIES = 4
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def main(argv: list[str]) -> int:
    title, daemon = os.environ.get(TITLE_VARIABLE, "emotiond"), int(argv[0])
    _live_and_die_with(daemon)
    frames = open(0, "rb", buffering=0, closefd=False)  # noqa: SIM115 - read exactly, frame by frame
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a library's stray print must not land in the pipe among the messages

    def tell(word: str, text: str = "") -> None:
        send_message(out, word, text)

    try:
        if not _open(title, tell):
            return 0
        try:
            _show(title, frames, tell)
        except cv2.error as e:
            tell("error", one_line(e))
        finally:
            with contextlib.suppress(cv2.error):
                cv2.destroyAllWindows()
                cv2.waitKey(1)  # lets Qt handle the destruction before the process ends
    except BrokenPipeError:
        pass  # the daemon has gone: nobody to tell
    return 0


def _live_and_die_with(daemon: int) -> None:
    # PDEATHSIG fires when the thread that started us ends: runtime/window.py starts us from the daemon's main thread.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != daemon:  # it died before the line above
        sys.exit(0)
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))  # Qt's abort: no core


def _open(title: str, tell: Callable[..., None]) -> bool:
    """Shows the window with a waiting image; says `opened` or `failed <why>`."""
    try:
        x = XLink(os.environ["DISPLAY"]) if os.environ.get("DISPLAY") else None  # None: GTK on Wayland
    except UserError as e:
        tell("failed", str(e).removeprefix("--show: "))
        return False
    try:
        cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)  # no toolbar, no status bar
        cv2.imshow(title, _waiting_image())
        _make_sure_it_paints(x, title)
    except cv2.error as e:
        tell("failed", one_line(e))
        return False
    finally:
        if x is not None:
            x.close()
    tell("opened")
    return True


def _make_sure_it_paints(x: XLink | None, title: str) -> None:
    """Qt 5.15 now and then loses the events of its new window's mapping, and the window stays black for good
    (runtime/x11.py): while the waiting image is not on screen, map the window again."""
    cv2.waitKey(1)
    if x is None:
        return  # not an X display: nothing to check with
    window = None
    for _ in range(_PAINT_TRIES):
        deadline = time.monotonic() + _PAINT_WAIT_S
        while time.monotonic() < deadline:
            cv2.waitKey(10)
            window = window or x.find_window(title)
            if window and x.shows(window, 2, 2, _WAITING_GRAY):
                return
        if window is None:
            return  # not found (an unusual window manager): nothing to check against
        x.remap(window)


def _show(title: str, frames: BinaryIO, tell: Callable[..., None]) -> None:
    """Shows each frame that comes and handles the keys, until EOF on `frames` or a quit."""
    shown = None  # the frame on screen; None: the waiting image
    tell("ready")
    while True:
        if select.select([frames], [], [], _FRAME_WAIT_S)[0]:
            image = receive_frame(frames)
            if image is None:
                return  # the daemon closes its window
            cv2.imshow(title, image)
            shown = image
            tell("ready")
        key = cv2.waitKey(_KEY_WAIT_MS) & 0xFF
        if key in _QUIT_KEYS:
            tell("quit")
            return
        if key == _SNAPSHOT_KEY:
            tell("say", " ".join(save_snapshot(shown)))
        if not _visible(title):
            tell("quit")
            return  # closed by the window manager; showing on would open it again


def _visible(title: str) -> bool:
    try:
        return cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) >= 1
    except cv2.error:  # Qt's: "NULL guiReceiver" once its last window is closed
        return False


def save_snapshot(image: np.ndarray | None) -> tuple[str, str]:
    """`image` as emotiond-snapshot-YYYYmmdd-HHMMSS-mmm.png in the current directory; (level, line) to say either
    way."""
    if image is None:
        return "warning", "emotiond: no frame yet: no snapshot saved"
    name = f"emotiond-snapshot-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')[:-3]}.png"
    path = Path(name)
    try:
        path = Path.cwd() / name  # named in full: a daemon's cwd is not always where its user looks
        ok, data = cv2.imencode(".png", image)
        if not ok:
            raise OSError("OpenCV could not encode the frame as PNG")
        path.write_bytes(data.tobytes())
    except OSError as e:
        return "warning", f"emotiond: snapshot not saved: {printable(path)}: {e.strerror or e}"
    return "info", f"emotiond: snapshot saved: {printable(path)}"


def _waiting_image() -> np.ndarray:
    image = np.full((120, 360, 3), _WAITING_GRAY, np.uint8)
    cv2.putText(image, "waiting for frames ...", (20, 66), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (220, 220, 220), 1)
    return image


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
