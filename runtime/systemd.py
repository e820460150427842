"""Speaking to systemd (sd_notify): one datagram to $NOTIFY_SOCKET per message, nothing else; and the sockets it
passes (socket activation, listen_fds).

Outside systemd (NOTIFY_SOCKET unset) every function does nothing, so the daemon calls them unconditionally.
The protocol is the one of systemd's notify-selfcontained-example.c; no libsystemd needed.
"""

from __future__ import annotations

import os
import socket
import time

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the first passed descriptor


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1") to the service manager; False if not under systemd or sending failed."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":  # abstract namespace socket
        address = "\0" + address[1:]
    elif address[0] != "/":
        return False  # vsock and other address kinds: not needed on an edge box
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode("utf-8", "replace"), address)
        return True
    except OSError:
        return False  # the manager went away: nothing the daemon could do about it


def ready(status: str | None = None) -> bool:
    """Startup is complete: every stage is built and the source is open."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def reloading() -> bool:
    """A reload begins (Type=notify-reload wants the monotonic time with it); send ready() when done."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog_ping() -> bool:
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """One line shown by `systemctl status`."""
    return notify("STATUS=" + text.replace("\n", " "))


def watchdog_interval_s() -> float | None:
    """WatchdogSec= of the unit in seconds if the watchdog is meant for this process, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


def listen_fds() -> list[tuple[int, str]]:
    """The descriptors systemd passed (socket activation) with their names, as sd_listen_fds_with_names(3) with
    unset_environment: only if $LISTEN_PID is this process (else they were meant for another), $LISTEN_FDS of them
    from fd 3 on, named by $LISTEN_FDNAMES (FileDescriptorName=; "unknown" where none is given). The variables are
    removed whatever they held, so no child inherits them, and the descriptors are made close-on-exec. They are
    bound and listening already. [] outside socket activation; a second call finds nothing."""
    pid, count, names = (os.environ.pop(key, None) for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"))
    if pid != str(os.getpid()) or not count or not count.isdigit():
        return []
    labels = names.split(":") if names else []
    passed = []
    for i, fd in enumerate(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count))):
        try:
            os.set_inheritable(fd, False)
        except OSError:  # not open after all: nothing to use
            continue
        passed.append((fd, labels[i] if i < len(labels) and labels[i] else "unknown"))
    return passed
