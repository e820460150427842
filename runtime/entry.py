"""The `emotiond` console script: the command line, with a stop request during its imports (pydantic, cv2 and the
engines take a second or more) ending the process as quietly as one at any later moment: Ctrl-C with 130, SIGTERM
with 0. runtime.service installs the handlers of a running daemon once it starts."""

from __future__ import annotations

import signal
import sys


class _Terminated(BaseException):
    """SIGTERM before the daemon's own handlers are installed."""


def _terminate(_signum: int, _frame: object) -> None:
    raise _Terminated


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        from runtime.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        return 130
    except _Terminated:
        return 0


if __name__ == "__main__":
    sys.exit(main())
