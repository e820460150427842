"""The pipes between the daemon and its `--show` window's process (runtime/window.py starts runtime/window_child.py).

Daemon -> window, on the window's stdin: frames, each a header (height, width, channels: three little-endian
uint32) and the uint8 pixels, row after row. A frame goes only when the window has asked for one, so nothing
queues in the pipe: a slow screen skips frames in the daemon, and what it shows is the latest.

Window -> daemon, on the window's stdout: one line per message, a word and for some a text:
    opened              the window is on screen
    failed <why>        it could not open; the process ends
    ready               send the next frame
    quit                q, Esc or the window manager's close button; the process ends
    say <level> <line>  a line for the daemon's stderr, said there (in order with its own lines, at its log level)
    error <why>         the window failed while showing; the process ends

EOF on its stdin tells the window to close and its process to end. Its title comes in $EMOTIOND_WINDOW_TITLE.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np

_HEADER = struct.Struct("<3I")
TITLE_VARIABLE = "EMOTIOND_WINDOW_TITLE"  # the window's title, in its environment (not on a command line for `ps`)


def send_frame(pipe: BinaryIO, image: np.ndarray) -> None:
    image = np.ascontiguousarray(image, np.uint8)
    height, width = image.shape[:2]
    pipe.write(_HEADER.pack(height, width, 1 if image.ndim == 2 else image.shape[2]))
    pipe.write(image.data)
    pipe.flush()


def receive_frame(pipe: BinaryIO) -> np.ndarray | None:
    """The next frame from an unbuffered pipe, or None at EOF."""
    header = bytearray(_HEADER.size)
    if not _fill(pipe, memoryview(header)):
        return None
    image = np.empty(_HEADER.unpack(header), np.uint8)
    return image if _fill(pipe, memoryview(image).cast("B")) else None


def _fill(pipe: BinaryIO, buffer: memoryview) -> bool:
    """Reads exactly len(buffer) bytes (a pipe hands over a large frame in pieces); False at EOF."""
    done = 0
    while done < len(buffer):
        n = pipe.readinto(buffer[done:])
        if not n:
            return False
        done += n
    return True


def send_message(pipe: BinaryIO, word: str, text: str = "") -> None:
    line = f"{word} {text}".replace("\n", " ") if text else word  # one line whatever the text held
    pipe.write(line.encode("utf-8", "backslashreplace") + b"\n")
    pipe.flush()


def parse_message(line: bytes) -> tuple[str, str]:
    """(word, text) of a message line."""
    word, _, text = line.decode("utf-8", "replace").rstrip("\n").partition(" ")
    return word, text
