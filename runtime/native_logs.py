"""Keeps the inference libraries' own log lines out of the daemon's stderr (and so out of the journal).

MediaPipe and LiteRT write INFO and WARNING lines straight to file descriptor 2 from C++ (13 at each start and
stop), and no environment variable of theirs silences them in the releases we use. So fd 2 becomes a pipe that a
thread filters: their INFO/WARNING lines are dropped, errors pass. Python's own stderr (our messages, the summary,
tracebacks) keeps writing to the original descriptor directly, so nothing of ours waits on the filter or is lost
when the process exits. EMOTIOND_NATIVE_LOGS=all keeps every line.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

# "INFO: [environment.cc:36] ...", "WARNING: Logging before InitGoogle() ...", glog's "I0000 00:00:..." / "W0000 ...";
# and the --show window's Qt (its process inherits this fd 2, runtime/window_child.py): its note on GNOME's Wayland
# sessions (it uses X11 there, as we want), and its last words when the X server goes away, which the daemon says in
# a line of its own. Qt's other errors pass.
_NOISE = re.compile(
    rb"^(INFO: |WARNING: Logging before InitGoogle|[IW]\d{4} \d\d:\d\d:\d\d"
    rb"|Warning: Ignoring XDG_SESSION_TYPE=wayland on Gnome"
    rb"|The X11 connection broke \(error \d+\)\. Did the X11 server die\?)"
)
_installed = False


def is_noise(line: bytes) -> bool:
    return bool(_NOISE.match(line))


def filter_native_stderr() -> bool:
    """Route fd 2 through the filter (once per process); False where it cannot (stderr closed, asked not to)."""
    global _installed
    if _installed or os.environ.get("EMOTIOND_NATIVE_LOGS") == "all" or sys.stderr is None:
        return False
    try:
        original = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:  # stderr closed: nothing to protect
        return False
    sys.stderr.flush()
    sys.stderr = open(original, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    os.dup2(write_end, 2)
    os.close(write_end)
    threading.Thread(target=_forward, args=(read_end, original), name="native-logs", daemon=True).start()
    _installed = True
    return True


def _forward(read_end: int, original: int) -> None:
    with open(read_end, "rb", closefd=True) as lines:
        for line in lines:
            if not is_noise(line):
                with contextlib.suppress(OSError):
                    os.write(original, line)
