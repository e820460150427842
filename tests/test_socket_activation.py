"""Socket activation with the real daemon: systemd-socket-activate (Debian's systemd package) listens as a socket
unit does and, at the first connection, becomes `emotiond run` with the socket as fd 3 and LISTEN_PID, LISTEN_FDS
and LISTEN_FDNAMES set. A subscriber waiting from before the start gets `hello` and then every event; the socket
file is systemd's, left in place at a stop; a socket held across two runs (a restart) serves a subscriber that
connected while no daemon ran; a reload that drops the output and one that restores it keep the socket; the
refusals are one line and exit 2. The `--http` page takes up a passed TCP socket alike: a request made before the
daemon serves is answered (the Host check knows the address), its port never refuses across a reload and a restart,
and a passed socket that cannot serve it is one line and exit 2."""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from socket_clients import Reader, connect_when_up, free_port, wait_for

from runtime import addresses, systemd
from runtime.addresses import Passed, parse_address, parse_http_address
from runtime.errors import UserError
from runtime.http_page import WEB
from runtime.http_preview import HttpPreview
from runtime.live import LiveView

ACTIVATE = shutil.which("systemd-socket-activate")
TIMEOUT = 120


def activated(listen: str | Path, emotiond: Path, *args: str | Path, fdname: str = "events") -> subprocess.Popen:
    """`emotiond ARGS` under systemd-socket-activate listening on `listen` (a path or HOST:PORT). It passes on only
    a few variables (PATH, HOME, ...): the model cache's are handed over explicitly."""
    if ACTIVATE is None:
        pytest.skip("systemd-socket-activate not installed (Debian: package systemd)")
    keep = [f"--setenv={key}" for key in ("EMOTIOND_CACHE_DIR", "XDG_CACHE_HOME") if key in os.environ]
    cmd = [ACTIVATE, f"--listen={listen}", f"--fdname={fdname}", *keep, str(emotiond), *map(str, args)]
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "warning"}  # not its "Listening on ..." lines among the daemon's
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def started_with(held: socket.socket, emotiond: Path, *args: str | Path, fdname: str = "events") -> subprocess.Popen:
    """What systemd does at each start of a service whose socket it holds: the socket becomes fd 3 of the new
    process, LISTEN_PID its pid (a small exec wrapper, as the pid is known only after the fork)."""
    fd = fcntl.fcntl(held.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)  # above 3, whatever this process has open
    wrapper = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.close(int(sys.argv[1])); "
        "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])"
    )
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": fdname}
    try:
        return subprocess.Popen(
            [sys.executable, "-c", wrapper, str(fd), str(emotiond), *map(str, args)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env, pass_fds=[fd],
        )  # fmt: skip
    finally:
        os.close(fd)


def run_args(model_dir: Path, clip: Path, *outputs: str) -> list[str | Path]:
    return ["run", "--source", clip, "--model", model_dir, *(a for out in outputs for a in ("--output", out))]


def finish(proc: subprocess.Popen, code: int = 0) -> tuple[str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == code, err
    return out, err


def listening(path: Path) -> bool:
    """A socket at `path` accepts connections: bound and listening (/proc/net/unix: flag __SO_ACCEPTCON). The file
    appears at bind(), a moment before listen(): a connection in between is refused."""
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == str(path) and int(fields[3], 16) & 0x10000:
            return True
    return False


def socket_file(path: Path) -> int:
    """The inode of the socket file at `path`, once a socket listens there."""
    assert wait_for(lambda: listening(path), timeout=10), f"nothing listens at {path}"
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    return st.st_ino


def connect(path: Path) -> socket.socket:
    """One attempt, no retry: a listening socket never refuses, with or without a daemon behind it."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(path))
    return sock


def assert_every_event(reader: Reader, frames: int) -> None:
    """hello, then every event of the session from seq 0 (the subscriber waited from before the start)."""
    lines = reader.lines
    assert lines[0]["type"] == "hello" and lines[0]["session"] == lines[1]["session"], lines[:2]
    assert reader.seqs() == list(range(len(reader.events()))), "nothing missed, from seq 0 on"
    assert reader.frames() == list(range(frames))
    assert lines[-1]["type"] == "status" and lines[-1]["state"] == "eos"


@pytest.mark.slow
def test_a_subscriber_waiting_before_the_daemon_starts_gets_hello_then_every_event(
    emotiond, model_dir, detector_model, test_video, tmp_path, event_validator
):
    path = tmp_path / "ev.sock"
    proc = activated(path, emotiond, *run_args(model_dir, test_video.path, "systemd:events"))
    inode = socket_file(path)  # listening; the daemon starts at this connection
    reader = Reader(connect(path))
    out, err = finish(proc)
    reader.join(timeout=10)
    assert out == "" and err.count("\n") == 1 and err.startswith("emotiond: eos: "), err
    assert_every_event(reader, len(test_video.faces))
    for line in reader.lines:
        assert not list(event_validator.iter_errors(line)), line
    assert os.lstat(path).st_ino == inode, "the socket file is systemd's: the daemon leaves it"


@pytest.mark.slow
def test_sigterm_leaves_the_socket_file_and_the_next_activation_serves_again(
    emotiond, model_dir, detector_model, test_video, long_clip, tmp_path
):
    path = tmp_path / "ev.sock"
    first = activated(path, emotiond, *run_args(model_dir, long_clip, f"unix:{path}"), "--realtime")  # its address
    inode = socket_file(path)
    before = Reader(connect(path))
    assert wait_for(lambda: len(before.frames()) >= 5, timeout=60), before.lines[-3:]
    first.send_signal(signal.SIGTERM)
    _, err = finish(first)
    before.join(timeout=10)
    assert err.startswith("emotiond: stopped: ") and before.lines[-1]["state"] == "stopping", err
    assert os.lstat(path).st_ino == inode, "SIGTERM leaves systemd's socket file in place"

    second = activated(path, emotiond, *run_args(model_dir, test_video.path, "systemd:events"))
    after = Reader(connect_when_up(path, timeout=10))  # refused only until systemd-socket-activate binds anew
    finish(second)
    after.join(timeout=10)
    assert_every_event(after, len(test_video.faces))
    assert after.lines[0]["session"] != before.lines[0]["session"]


@pytest.mark.slow
def test_a_held_socket_serves_across_a_restart_a_subscriber_that_came_while_no_daemon_ran(
    emotiond, model_dir, detector_model, test_video, tmp_path
):
    path = tmp_path / "ev.sock"
    with socket.socket(socket.AF_UNIX) as held:  # systemd's copy, kept while the service stops and starts
        held.bind(str(path))
        held.listen()
        inode = os.lstat(path).st_ino
        readers = [Reader(connect(path))]  # before the first start
        for run in range(2):
            if run:
                readers.append(Reader(connect(path)))  # while no daemon runs: accepted by the next, never refused
            finish(started_with(held, emotiond, *run_args(model_dir, test_video.path, "systemd:events")))
            readers[-1].join(timeout=10)
            assert os.lstat(path).st_ino == inode
    for reader in readers:
        assert_every_event(reader, len(test_video.faces))
    assert readers[0].lines[0]["session"] != readers[1].lines[0]["session"]


@pytest.mark.slow
def test_a_passed_tcp_socket_is_used_by_the_output_of_its_address(emotiond, model_dir, detector_model, test_video):
    port = free_port()
    outputs = (f"tcp:{port}", "stdout")
    proc = activated(f"127.0.0.1:{port}", emotiond, *run_args(model_dir, test_video.path, *outputs))
    reader = Reader(connect_when_up(("127.0.0.1", port), timeout=10))  # the first connection starts the daemon
    out, err = finish(proc)  # were the port bound anew, that would fail: in use
    reader.join(timeout=10)
    assert err.count("\n") == 1 and err.startswith("emotiond: eos: "), err
    assert_every_event(reader, len(test_video.faces))
    assert len(out.splitlines()) == len(reader.events())


def test_a_port_systemd_holds_on_all_addresses_names_the_socket_to_use(emotiond, model_dir, test_video):
    # ListenStream=PORT binds [::]:PORT, and tcp:PORT means 127.0.0.1:PORT: not the passed socket, and its port is
    # taken by systemd's. The error says which output would use it.
    port = free_port()
    proc = activated(str(port), emotiond, *run_args(model_dir, test_video.path, f"tcp:{port}"))
    with connect_when_up(("127.0.0.1", port), timeout=10):  # the first connection starts the daemon
        out, err = finish(proc, code=2)
    assert err.splitlines() == [
        f"error: output 'tcp:{port}': port {port} on 127.0.0.1 is in use (systemd passed events (tcp:[::]:{port}) "
        "on that port: name it systemd:events)"
    ]
    assert out == ""


@pytest.mark.slow
@pytest.mark.parametrize("passed", ["another name", "nothing"])
def test_systemd_name_without_such_a_socket_is_one_line_and_exit_2(emotiond, model_dir, test_video, tmp_path, passed):
    path = tmp_path / "ev.sock"
    args = run_args(model_dir, test_video.path, "stdout", "systemd:events")
    if passed == "nothing":
        proc = subprocess.Popen(
            [str(emotiond), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        have = "none (not started by systemd with a socket unit)"
    else:
        proc = activated(path, emotiond, *args, fdname="other")
        socket_file(path)
        connect(path).close()
        have = f"other (unix:{path})"
    out, err = finish(proc, code=2)
    assert out == "" and err.count("\n") == 1, err
    assert err == f"error: output 'systemd:events': systemd passed no socket named 'events' (passed: {have})\n"


@pytest.mark.slow
def test_a_passed_socket_no_output_uses_is_one_warning(emotiond, model_dir, detector_model, test_video, tmp_path):
    path = tmp_path / "ev.sock"
    proc = activated(path, emotiond, *run_args(model_dir, test_video.path, "stdout"))
    socket_file(path)
    with connect(path):  # starts the daemon, which never serves it
        out, err = finish(proc)
    warning, summary = err.splitlines()
    assert warning == f"emotiond: warning: systemd passed events (unix:{path}), which no output uses " + (
        "(add the output systemd:NAME or its address)"
    )
    assert summary.startswith("emotiond: eos: ") and len(out.splitlines()) > len(test_video.faces)


@pytest.mark.slow
def test_a_reload_that_drops_the_output_then_one_that_restores_it_keep_the_passed_socket(
    emotiond, mjpeg, detector_model, tmp_path
):
    stream = mjpeg(frames=100_000, interval_s=0.02)
    path, config = tmp_path / "ev.sock", tmp_path / "c.yaml"

    def publish_to(spec: str) -> None:
        config.write_text(f"source:\n  uri: {stream.url}\nevents:\n  emit: all\noutput:\n  publishers: ['{spec}']\n")

    publish_to("systemd:events")
    proc = activated(path, emotiond, "run", "--config", config)
    errors: list[str] = []
    threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()
    threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()  # stdout's events once reloaded
    socket_file(path)
    try:
        with connect(path) as first:
            first.settimeout(30)
            lines = first.makefile("rb")
            hello = json.loads(lines.readline())
            assert hello["type"] == "hello"
            while json.loads(lines.readline())["type"] != "frame":
                pass
            publish_to("stdout")
            proc.send_signal(signal.SIGHUP)
            while lines.readline():  # the output went: this subscriber is let go
                pass
        assert wait_for(lambda: any("which no output uses" in e for e in errors), timeout=30), errors
        publish_to("systemd:events")
        proc.send_signal(signal.SIGHUP)
        with connect(path) as second:
            second.settimeout(30)
            lines = second.makefile("rb")
            again = json.loads(lines.readline())
            assert again["type"] == "hello" and again["session"] == hello["session"], again
            while (event := json.loads(lines.readline()))["type"] != "frame":
                pass
            assert event["session"] == hello["session"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, errors
    assert path.exists()


def test_listen_fds_are_only_for_the_process_listen_pid_names_and_are_unset(monkeypatch):
    monkeypatch.setenv("LISTEN_PID", str(os.getppid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "events")
    assert systemd.listen_fds() == []
    assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(os.environ), "children must not inherit them"


def test_systemd_addresses_name_a_passed_socket(emotiond, tmp_path):
    a = parse_address("systemd:events?queue=9")
    assert (a.kind, a.name, a.queue, str(a)) == ("systemd", "events", 9, "systemd:events")
    for spec, words in [
        ("systemd:", "expected systemd:NAME"),
        ("systemd:a:b", "expected systemd:NAME"),
        ("systemd:events?mode=0600", "bad option"),
    ]:
        with pytest.raises(UserError, match=words):
            parse_address(spec)
    with pytest.raises(UserError, match="unknown scheme"):
        parse_address("systemd:events", role="address")  # `emotiond subscribe` connects: an address, not a name
    page = parse_http_address("systemd:page")
    assert (page.kind, page.name, str(page)) == ("systemd", "page", "systemd:page")
    for spec in ("systemd:", "systemd:a:b", "systemd:page?queue=9"):
        with pytest.raises(UserError, match=r"^output\.http .*\(?expected systemd:NAME"):
            parse_http_address(spec)
    config = tmp_path / "c.yaml"
    config.write_text("output:\n  publishers: ['stdout', 'systemd:events']\n  http: systemd:page\n")
    run = subprocess.run(
        [str(emotiond), "check-config", "--config", str(config)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0 and run.stderr == "", "ExecStartPre= is passed no socket: the name is not checked"


# --- the `--http` page on a passed socket --------------------------------------------------------------------------


def ask(sock: socket.socket, host: str, path: str = "/") -> None:
    """Send one page request on a connected socket, whether or not a daemon serves it yet."""
    sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())


def answer(sock: socket.socket, timeout: float = 30) -> tuple[int, bytes]:
    """(status, body) of the answer to ask(); the server closes the connection after it (HTTP/1.0)."""
    sock.settimeout(timeout)
    with sock:
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()


@pytest.mark.slow
@pytest.mark.parametrize("http", ["systemd:page", "{port}"])  # by its name, by its address
def test_a_page_request_made_before_the_daemon_serves_is_answered(
    emotiond, model_dir, detector_model, test_video, http
):
    port = free_port()
    args = (*run_args(model_dir, test_video.path), "--http", http.format(port=port))
    proc = activated(f"127.0.0.1:{port}", emotiond, *args, fdname="page")
    page = connect_when_up(("127.0.0.1", port), timeout=10)  # the first connection starts the daemon
    ask(page, f"127.0.0.1:{port}")
    rebound = socket.create_connection(("127.0.0.1", port))
    ask(rebound, f"rebind.example:{port}")  # a site's name pointed at 127.0.0.1: refused on loopback (421)
    assert answer(page) == (200, (WEB / "index.html").read_bytes())
    assert answer(rebound)[0] == 421, "the Host check knows the passed socket is on loopback"
    _, err = finish(proc)  # were the port bound anew, that would fail: in use
    assert err.splitlines()[0] == f"emotiond: live page at http://127.0.0.1:{port}/", err
    assert err.count("\n") == 2 and err.splitlines()[1].startswith("emotiond: eos: "), "no passed socket is idle"


@pytest.mark.slow
def test_the_page_port_never_refuses_across_a_reload_and_a_restart(
    emotiond, model_dir, detector_model, long_clip, tmp_path
):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"source:\n  uri: {long_clip}\n  realtime: true\nclassifier:\n  model: {model_dir}\n"
        "output:\n  http: systemd:page\n"
    )
    probes: list[object] = []  # /healthz from a client that asks all the time: a status, or what went wrong
    stop = threading.Event()
    procs: list[subprocess.Popen] = []

    def probe(port: int) -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                    ask(sock, f"127.0.0.1:{port}", "/healthz")
                    probes.append(answer(sock)[0])
            except (OSError, http.client.HTTPException) as e:
                probes.append(type(e).__name__)
            stop.wait(0.01)

    def start() -> tuple[subprocess.Popen, list[str]]:
        proc = started_with(held, emotiond, "run", "--config", config, fdname="page")
        procs.append(proc)
        errors: list[str] = []
        threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()
        threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()  # the events
        assert wait_for(lambda: any("live page at" in e for e in errors), timeout=60), errors  # signals handled
        return proc, errors

    def answered_again() -> bool:
        """A few more probes answered from now on."""
        count = len(probes)
        return wait_for(lambda: len(probes) > count + 2 and probes[-1] in (200, 503), timeout=10)

    with socket.socket() as held:  # systemd's copy, kept while the service stops and starts
        held.bind(("127.0.0.1", 0))
        held.listen(64)
        port = held.getsockname()[1]
        prober = threading.Thread(target=probe, args=(port,), daemon=True)
        prober.start()
        try:
            first, errors = start()
            first.send_signal(signal.SIGHUP)
            assert wait_for(lambda: any("emotiond: reloaded" in e for e in errors), timeout=30), errors
            assert answered_again(), probes[-3:]
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=15) == 0, errors
            assert not any("which no output uses" in e for e in errors), errors
            waiting = socket.create_connection(("127.0.0.1", port))  # while no daemon runs: never refused
            ask(waiting, f"127.0.0.1:{port}", "/healthz")
            second, errors = start()
            assert answer(waiting)[0] in (200, 503), "answered by the next daemon"
            assert answered_again(), probes[-3:]
            stop.set()  # before the last stop: with no daemon to come, a probe would wait in vain
            prober.join(timeout=10)
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=15) == 0, errors
        finally:
            stop.set()
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
    assert probes and set(probes) <= {200, 503}, [p for p in probes if p not in (200, 503)]


@pytest.mark.slow
@pytest.mark.parametrize("passed", ["another name", "nothing", "a Unix socket", "an output on it too"])
def test_a_passed_socket_the_page_cannot_use_is_one_line_and_exit_2(emotiond, model_dir, test_video, tmp_path, passed):
    port, path = free_port(), tmp_path / "page.sock"
    args = (*run_args(model_dir, test_video.path), "--http", "systemd:page")
    where = "error: output.http 'systemd:page': "
    if passed == "nothing":
        proc = subprocess.Popen(
            [str(emotiond), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        expected = (
            where + "systemd passed no socket named 'page' (passed: none (not started by systemd with a socket unit))"
        )
    elif passed == "a Unix socket":
        proc = activated(path, emotiond, *args, fdname="page")
        socket_file(path)
        connect(path).close()
        expected = (
            where
            + f"the passed socket page (unix:{path}) is a Unix socket; this needs a TCP one (ListenStream=HOST:PORT)"
        )
    else:
        output = ("--output", f"tcp:{port}") if passed == "an output on it too" else ()
        proc = activated(f"127.0.0.1:{port}", emotiond, *args, *output, fdname="other" if output == () else "page")
        connect_when_up(("127.0.0.1", port), timeout=10).close()
        expected = (
            f"error: output: 'tcp:{port}' and 'http://127.0.0.1:{port}' are the same address"
            if output
            else where + f"systemd passed no socket named 'page' (passed: other (tcp:127.0.0.1:{port}))"
        )
    out, err = finish(proc, code=2)
    assert out == "" and err == expected + "\n", err


@pytest.fixture
def passed_page(monkeypatch):
    """passed_page(host) -> a listening TCP socket on host, as if systemd had passed it named `page`."""
    held: list[socket.socket] = []

    def make(host: str) -> socket.socket:
        sock = socket.socket()
        sock.bind((host, 0))
        sock.listen()
        held.append(sock)
        monkeypatch.setattr(addresses, "_passed", [Passed(sock, "page", sock.getsockname())])
        return sock

    yield make
    for sock in held:
        sock.close()


def test_closing_the_page_leaves_the_passed_socket_listening(passed_page):
    sock = passed_page("127.0.0.1")
    port = sock.getsockname()[1]
    preview = HttpPreview(str(port), LiveView())  # by its address
    assert preview.passed is addresses.passed_sockets()[0]
    preview.close()
    with socket.create_connection(("127.0.0.1", port), timeout=5):  # systemd's copy: a restart takes it up again
        pass


def test_a_passed_socket_off_loopback_is_warned_about_as_a_bound_one(passed_page, capsys):
    passed_page("0.0.0.0")
    HttpPreview("systemd:page", LiveView()).close()
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith("emotiond: warning: output.http 'systemd:page': listening on 0.0.0.0, not loopback")
    assert "reachable from other machines" in warning and "with no password" in warning, warning
