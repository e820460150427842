"""The exception types the command line turns into one line, and the one way to print a line on stderr."""

from __future__ import annotations

import os
import sys
from pathlib import Path


class UserError(Exception):
    """Printed as one line on stderr by the command line, which then exits with code 2."""


class FatalError(Exception):
    """A stage that keeps failing (not the user's doing): one line on stderr, exit code 1."""


def one_line(text: object) -> str:
    """Any message folded onto one line (pydantic, YAML and OpenCV messages may hold line breaks)."""
    return " ".join(str(text).split())


def printable(text: object) -> str:
    """`text` safe for one line of a terminal or log: control characters and bytes that are not UTF-8 (a file name
    from a foreign file system) are escaped, so no name can break a line or forge an `error:` line."""
    s = str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in s)


LOG_LEVELS = ("error", "warning", "info", "debug")
_shown = LOG_LEVELS.index("info")  # lines of this level and more severe are shown


def set_log_level(level: str) -> None:
    """Which of emotiond's own lines reach stderr (`--log-level`, `log.level`); debug also lets the native
    libraries' log lines through (runtime.native_logs)."""
    global _shown
    _shown = LOG_LEVELS.index(level)


def log_level() -> str:
    return LOG_LEVELS[_shown]


def say(line: str, level: str = "info") -> None:
    """One line on stderr, if `level` is shown. Never raises: stderr may be closed, full or a pipe whose reader
    left, and a message must not turn into a traceback (or, with stderr closed, into a line on stdout among the
    events)."""
    stream = sys.stderr
    if stream is None or LOG_LEVELS.index(level) > _shown:
        return
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def secret_path(text: str) -> Path:
    """A credentials file as configured: `$VARIABLES` expanded (`$CREDENTIALS_DIRECTORY/mqtt` with systemd's
    LoadCredential=), then `~`."""
    return user_path(os.path.expandvars(text))


def user_path(text: str) -> Path:
    """A path as the user wrote it, `~` expanded; UserError (not RuntimeError) when `~user` names nobody."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise UserError(f"{printable(text)}: cannot expand '~' (no such user, or no home directory)") from None
