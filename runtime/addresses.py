"""Socket addresses of the publishers and of `emotiond subscribe`: parsing, listening (with the socket file's
life cycle) and connecting. Every mistake a user can make is a UserError of one line.

    unix:PATH[?mode=0660][&queue=256]      a Unix stream socket; mode: the socket file's permissions
    tcp:[HOST:]PORT[?queue=256]           TCP; HOST defaults to 127.0.0.1 ([::1] for IPv6); any other than a
                                          loopback address is allowed but warned about (events are not encrypted)
    systemd:NAME[?queue=256]              (outputs only) the socket systemd passed with FileDescriptorName=NAME

queue: events each subscriber's queue holds before its oldest are dropped (runtime.sockets).

Socket activation (systemd/emotiond.socket): the sockets systemd passes are read once per process
(passed_sockets). An output whose address is that of a passed socket (unix:PATH of the same path, tcp:HOST:PORT
of the same address), or that names it (systemd:NAME), uses it instead of binding one: it is listening before the
daemon starts and after it stops, so a subscriber is never refused. Its file is systemd's, never removed here
(`mode` does not apply: SocketMode= does), and an output only ever closes a duplicate of it, so a reload can take
it up again.

The `--http` page's address (output.http, runtime.http_preview) is the same `[HOST:]PORT` without the scheme, or
`systemd:NAME`, with no options; a passed TCP socket serves it by the same rules (a passed Unix socket cannot).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass

from runtime import systemd
from runtime.errors import UserError, printable, say

DEFAULT_MODE = 0o660
DEFAULT_QUEUE = 256
MAX_QUEUE = 100_000
BACKLOG = 64
EXPOSED = "events reach other hosts unencrypted"  # what a TCP output off loopback warns about
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


@dataclass(frozen=True)
class Address:
    spec: str
    kind: str  # "unix", "tcp" or "systemd"
    path: str = ""  # unix: absolute
    host: str = ""  # tcp
    port: int = 0
    name: str = ""  # systemd: FileDescriptorName=
    mode: int = DEFAULT_MODE
    queue: int = DEFAULT_QUEUE

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "systemd":
            return f"systemd:{self.name}"
        return f"tcp:[{self.host}]:{self.port}" if ":" in self.host else f"tcp:{self.host}:{self.port}"


def parse_address(spec: str, role: str = "output") -> Address:
    """unix:... or tcp:... (see the module docstring) -> Address; UserError if malformed. `role` names the spec
    in messages ("output", "address")."""
    kind, _, rest = spec.partition(":")
    where = f"{role} {printable(spec)!r}"
    if kind not in ("unix", "tcp", "systemd") or (kind == "systemd" and role != "output"):
        expected = "stdout, unix:PATH or tcp:[HOST:]PORT" if role == "output" else "unix:PATH or tcp:[HOST:]PORT"
        raise UserError(f"{where}: unknown scheme (expected {expected})")
    target, _, query = rest.partition("?")
    options = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        allowed = ("mode", "queue") if kind == "unix" else ("queue",)
        if not eq or key not in allowed or key in options:
            raise UserError(f"{where}: bad option {printable(item)!r} (allowed: {', '.join(allowed)}; once each)")
        options[key] = value
    fields: dict = {"spec": spec, "kind": kind}
    if "queue" in options:
        fields["queue"] = _number(where, "queue", options["queue"], 10, 1, MAX_QUEUE)
    if kind == "systemd":
        return Address(**fields, name=_fd_name(where, target))
    if kind == "unix":
        if not target:
            raise UserError(f"{where}: no socket path (expected unix:/run/emotiond/events.sock)")
        if "\0" in target:
            raise UserError(f"{where}: the socket path holds a NUL character")
        fields["path"] = os.path.abspath(os.path.expanduser(target))
        if len(os.fsencode(fields["path"])) > _SUN_PATH_MAX:
            raise UserError(f"{where}: socket path longer than {_SUN_PATH_MAX} bytes")
        if "mode" in options:
            fields["mode"] = _number(where, "mode", options["mode"], 8, 0, 0o777)
        return Address(**fields)
    host, port = _host_port(where, target, "tcp:")
    return Address(**fields, host=host, port=port)


def parse_http_address(spec: str, role: str = "output.http") -> Address:
    """The page's "[HOST:]PORT" (HOST defaults to 127.0.0.1) -> a TCP Address, or "systemd:NAME" -> the name of
    the socket systemd passed for it; UserError if malformed."""
    where = f"{role} {printable(spec)!r}"
    kind, _, name = spec.strip().partition(":")
    if kind == "systemd":
        if "?" in name:  # as an output's systemd:NAME?queue=N would be read
            raise UserError(f"{where}: the page takes no options (expected systemd:NAME)")
        return Address(spec=spec, kind="systemd", name=_fd_name(where, name))
    host, port = _host_port(where, spec.strip(), "")
    return Address(spec=spec, kind="tcp", host=host, port=port)


def _fd_name(where: str, name: str) -> str:
    """FileDescriptorName=: printable ASCII, no ':', at most 255 characters."""
    if not name or len(name) > 255 or not all(" " <= c < "\x7f" and c != ":" for c in name):
        raise UserError(f"{where}: expected systemd:NAME, NAME as in the socket unit's FileDescriptorName=")
    return name


def _host_port(where: str, target: str, scheme: str) -> tuple[str, int]:
    host, colon, port = target.rpartition(":")
    if not colon:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host or not host:
        expected = f"{scheme}PORT, {scheme}HOST:PORT or {scheme}[IPv6]:PORT"
        raise UserError(f"{where}: malformed address (expected {expected})")
    return host, _number(where, "port", port, 10, 1, 65535)


def _number(where: str, name: str, text: str, base: int, low: int, high: int) -> int:
    try:
        value = int(text, base) if text.isascii() and text.isalnum() else None
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        shown = f"{low:o}..{high:o} (octal)" if base == 8 else f"{low}..{high}"
        raise UserError(f"{where}: {name} must be {shown}, got {printable(text)!r}")
    return value


@dataclass
class Listener:
    """A listening, non-blocking socket; close() also removes the Unix socket file if it is still ours (`path` is
    empty for a socket systemd passed: its file is systemd's). `passed`: the socket systemd passed that `sock`
    duplicates, if it does."""

    sock: socket.socket
    path: str = ""
    inode: tuple[int, int] | None = None
    passed: Passed | None = None

    def close(self) -> None:
        self.sock.close()
        if self.path and self.inode is not None:
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self.inode:  # not a socket a later daemon put in its place
                    os.unlink(self.path)
            except OSError:
                pass
            self.inode = None


def listen(address: Address, where: str = "", exposed: str = EXPOSED, unix: bool = True) -> Listener:
    """The socket systemd passed for `address` if there is one (see the module docstring), else one bound now.
    `where` and `exposed` as for listen_tcp; unix=False (the page: HTTP over TCP only) refuses a passed Unix
    socket."""
    where = where or f"output {printable(address.spec)!r}"
    passed = passed_for(address, where)
    if passed is not None:
        tcp = passed.sock.family != socket.AF_UNIX
        if not (tcp or unix):
            raise UserError(
                f"{where}: the passed socket {printable(passed)} is a Unix socket; this needs a TCP one "
                "(ListenStream=HOST:PORT)"
            )
        sock = passed.sock.dup()  # closing it leaves the passed one open: a reload or a restart adopts it again
        sock.setblocking(False)
        if tcp:
            _warn_exposed(sock.getsockname()[0], where, exposed)
        return Listener(sock, passed=passed)
    if address.kind == "systemd":
        have = ", ".join(map(str, passed_sockets())) or "none (not started by systemd with a socket unit)"
        raise UserError(
            f"{where}: systemd passed no socket named {printable(address.name)!r} (passed: {printable(have)})"
        )
    return _listen_unix(address) if address.kind == "unix" else listen_tcp(address, where, exposed)


@dataclass(eq=False)
class Passed:
    """A socket systemd passed: bound and listening already (systemd keeps a copy of it), or `local` None if it is
    not a listening Unix or TCP stream socket (ListenDatagram=, ListenFIFO=, Accept=yes), which no output can use."""

    sock: socket.socket | None
    name: str  # FileDescriptorName= (default: the socket unit's name, emotiond.socket)
    local: str | bytes | tuple | None  # getsockname()

    def address(self) -> str:
        """What an output spec says to use it: unix:PATH or tcp:HOST:PORT (tcp:[HOST]:PORT for IPv6)."""
        if self.sock is None or self.local is None:
            return ""
        if self.sock.family == socket.AF_UNIX:  # bytes: Linux's abstract namespace (ListenStream=@NAME)
            local = self.local
            return "unix:" + (local if isinstance(local, str) else "@" + local[1:].decode("utf-8", "replace"))
        host, port = self.local[:2]
        return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"

    def __str__(self) -> str:
        return f"{self.name} ({self.address() or 'not a listening stream socket'})"


_passed: list[Passed] | None = None


def passed_sockets() -> list[Passed]:
    """The sockets systemd passed to this process, read once (runtime.systemd.listen_fds unsets the variables, so
    they are kept here for the life of the process); [] outside socket activation."""
    global _passed
    if _passed is None:
        _passed = [_passed_socket(fd, name) for fd, name in systemd.listen_fds()]
    return _passed


def _passed_socket(fd: int, name: str) -> Passed:
    try:
        sock = socket.socket(fileno=fd)  # family and type read from the descriptor
    except OSError:  # not a socket (ListenFIFO=)
        return Passed(None, name, None)
    usable = (
        sock.family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)
        and sock.type == socket.SOCK_STREAM
        and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    )
    return Passed(sock, name, sock.getsockname() if usable else None)


def passed_for(a: Address, where: str = "") -> Passed | None:
    """The passed socket an output (or the page) at `a` uses: the one named so (systemd:NAME) or bound to that
    address; None if there is none. UserError if systemd:NAME names a socket no output can use, or several.
    `where` names the address in messages (default: output 'SPEC')."""
    passed = passed_sockets()
    if not passed:
        return None
    where = where or f"output {printable(a.spec)!r}"
    if a.kind == "systemd":
        named = [p for p in passed if p.name == a.name]
        if len(named) > 1:
            raise UserError(
                f"{where}: {len(named)} passed sockets are named {printable(a.name)!r}: give each its own socket "
                "unit and FileDescriptorName=, or use their addresses"
            )
        if named and not named[0].address():
            raise UserError(f"{where}: the passed socket {printable(named[0])} cannot serve")
        return named[0] if named else None
    if a.kind == "unix":
        wanted = f"unix:{a.path}"
    else:  # the address as bound: tcp:localhost:7878 is tcp:127.0.0.1:7878
        host = _resolve(a, where, passive=True)[1][0]
        wanted = str(Address(a.spec, "tcp", host=host, port=a.port))
    return next((p for p in passed if p.address() == wanted), None)


def _listen_unix(a: Address) -> Listener:
    where, folder = f"output {printable(a.spec)!r}", os.path.dirname(a.path)
    if not os.path.isdir(folder):
        raise UserError(f"{where}: socket directory {printable(folder)} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{where}: socket directory {printable(folder)} is not writable")
    try:
        st = os.lstat(a.path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise UserError(f"{where}: {printable(a.path)} exists and is not a socket; not replacing it")
        if _unix_alive(a.path):
            raise UserError(f"{where}: {printable(a.path)} is in use by a running daemon (another emotiond?)")
        os.unlink(a.path)  # stale: left behind by a run that crashed
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.fchmod(sock.fileno(), a.mode)  # Linux: bind() creates the file with this mode (& ~umask): no wider window
        sock.bind(a.path)
        st = os.lstat(a.path)
        os.chmod(a.path, a.mode)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"{where}: {printable(a.path)} was just created by another process") from None
        raise UserError(f"{where}: cannot listen on {printable(a.path)}: {e.strerror}") from None
    return Listener(sock, a.path, (st.st_dev, st.st_ino))


def _unix_alive(path: str) -> bool:
    """Does a process accept connections on this socket file? Refused: a stale file. Anything but a plain
    refusal (a full backlog, no permission to try) counts as alive: never take a live daemon's socket."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True
    finally:
        probe.close()
    return True


def _resolve(a: Address, where: str, passive: bool) -> tuple:
    flags = socket.AI_NUMERICSERV | (socket.AI_PASSIVE if passive else 0)
    try:
        infos = socket.getaddrinfo(a.host, a.port, type=socket.SOCK_STREAM, flags=flags)
    except (socket.gaierror, UnicodeError) as e:
        raise UserError(f"{where}: unknown host {printable(a.host)!r} ({getattr(e, 'strerror', e)})") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def listen_tcp(a: Address, where: str = "", exposed: str = EXPOSED) -> Listener:
    """A listening, non-blocking TCP socket; UserError if the port is busy or the host unknown. Not on loopback: a warning
    ending in `exposed` (what other hosts can now reach). `where` names the address in messages."""
    where = where or f"output {printable(a.spec)!r}"
    family, sockaddr = _resolve(a, where, passive=True)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart is not kept out by TIME_WAIT
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"{where}: port {a.port} on {printable(a.host)} is in use ({_holder(a.port)})") from None
        raise UserError(f"{where}: cannot listen on {printable(a.host)}:{a.port}: {e.strerror}") from None
    _warn_exposed(sockaddr[0], where, exposed)
    return Listener(sock)


def _holder(port: int) -> str:
    """Who may hold the port: a socket systemd passed on it at another address (ListenStream=PORT binds all of
    them, [::], where tcp:PORT means 127.0.0.1), else another daemon."""
    for p in passed_sockets():
        if p.local is not None and p.sock.family != socket.AF_UNIX and p.local[1] == port:  # (host, port, ...)
            return f"systemd passed {printable(p)} on that port: name it systemd:{printable(p.name)}"
    return "another emotiond?"


def _warn_exposed(host: str, where: str, exposed: str) -> None:
    if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
        say(f"emotiond: warning: {where}: listening on {host}, not loopback: {exposed}", "warning")


def connect(a: Address, timeout: float = 5.0) -> socket.socket:
    """A connected, blocking socket to a daemon's publisher (OSError if none is there)."""
    if a.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = a.path
    else:
        family, target = _resolve(a, f"address {printable(a.spec)!r}", passive=False)
        sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(target)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock
