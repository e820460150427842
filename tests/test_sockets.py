"""Socket publishers in-process, over real Unix and TCP sockets: every subscriber gets `hello` then every event in
order; a stalled one loses its oldest events and is told, never slowing publish() or the others; vanished ones are
cleaned up at once; churn leaks no thread or fd; the socket file's life cycle; addresses; `emotiond subscribe`.
The same with the real daemon: tests/test_sockets_daemon.py."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from socket_clients import Reader, assert_gaps_announced, free_port, wait_for

from runtime.addresses import parse_address
from runtime.errors import UserError
from runtime.events import EventBuilder, encode
from runtime.publishers import Fanout, make_publisher
from runtime.sockets import SocketPublisher


def dial(address: str, rcvbuf: int | None = None) -> socket.socket:
    a = parse_address(address)
    sock = socket.socket(socket.AF_UNIX if a.kind == "unix" else socket.AF_INET)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(a.path if a.kind == "unix" else (a.host, a.port))
    return sock


@pytest.fixture
def builder() -> EventBuilder:
    return EventBuilder("s" * 32, source="test", model_id="m")


@pytest.fixture(params=["unix", "tcp"])
def address(request, tmp_path: Path) -> str:
    return f"unix:{tmp_path}/ev.sock" if request.param == "unix" else f"tcp:127.0.0.1:{free_port()}"


def test_hello_first_then_every_event_in_order_for_every_subscriber(address, builder, event_validator):
    publisher = SocketPublisher(parse_address(address))
    early = Reader(dial(address))  # connected before the daemon knows its hello: still gets it first
    assert wait_for(lambda: publisher.subscribers == 1)
    publisher.set_hello(builder.hello)
    readers = [early, *(Reader(dial(address)) for _ in range(3))]
    assert wait_for(lambda: publisher.subscribers == 4)
    for _ in range(250):  # fewer than a queue holds: published in a burst, none may be lost
        publisher.publish(encode(builder.status("online", "x" * 200)))
    assert wait_for(lambda: all(len(r.lines) == 251 for r in readers))
    publisher.close()
    for r in readers:
        r.join(timeout=5)
        assert r.lines[0]["type"] == "hello" and r.lines[0]["queue"] == 256
        assert not list(event_validator.iter_errors(r.lines[0]))
        assert r.seqs() == list(range(250)) and r.lines[1:] == readers[0].lines[1:]


def test_each_burst_is_delivered_without_waiting_for_the_next_event(address, builder):
    """publish() wakes the sender thread: a lost wake-up would leave a burst's last events unsent until more come."""
    publisher = SocketPublisher(parse_address(address))
    reader = Reader(dial(address))
    assert wait_for(lambda: publisher.subscribers == 1)
    rng, sent = random.Random(3), 0
    for _ in range(300):
        for _ in range(rng.randint(2, 4)):
            publisher.publish(encode(builder.status("online", "")))
            sent += 1
            time.sleep(rng.choice([0, 0, 0.00005]))  # let the sender thread run between two publishes
        assert wait_for(lambda n=sent: len(reader.lines) == n, timeout=2.0), f"stuck after {sent} events"
    publisher.close()


def test_a_stalled_subscriber_loses_its_oldest_events_and_is_told(tmp_path, builder, event_validator):
    address = f"unix:{tmp_path}/ev.sock?queue=16"
    publisher = SocketPublisher(parse_address(address))
    publisher.set_hello(builder.hello)
    fast, stalled = Reader(dial(address)), Reader(dial(address, rcvbuf=4096), reading=False)
    assert wait_for(lambda: publisher.subscribers == 2)
    took = []

    def pipeline() -> None:
        for _ in range(600):
            t0 = time.perf_counter()
            publisher.publish(encode(builder.status("online", "x" * 500)))
            took.append(time.perf_counter() - t0)
            time.sleep(0.0005)  # the fast reader keeps up with this pace

    publishing = threading.Thread(target=pipeline)
    publishing.start()
    publishing.join(timeout=30)
    stalled.go.set()  # reads again: gets the notice, then the newest events
    assert not publishing.is_alive(), "publish() waits for the stalled subscriber"
    assert wait_for(lambda: stalled.seqs()[-1:] == [599] and len(fast.lines) == 601)
    figures = publisher.stats()  # for the daemon's stats events
    stalled.sock.shutdown(socket.SHUT_RDWR)  # leaves: its drops still count
    assert wait_for(lambda: publisher.subscribers == 1)
    after = publisher.stats()
    publisher.close()
    assert fast.seqs() == list(range(600)) and all(e["type"] != "dropped" for e in fast.lines)
    dropped = assert_gaps_announced(stalled.lines, event_validator)[-1]["dropped_total"]
    assert len(stalled.seqs()) + dropped == 600
    assert figures == {"subscribers": 2, "dropped_total": dropped} and after == {
        "subscribers": 1,
        "dropped_total": dropped,
    }
    took.sort()  # a blocked send would stall every publish after the queue filled; a busy CPU stalls a few
    assert took[len(took) // 2] < 0.001 and took[int(len(took) * 0.98)] < 0.02, "publish() waited for a subscriber"


def test_close_is_prompt_with_stalled_subscribers_and_removes_the_socket_file(tmp_path, builder):
    path = tmp_path / "ev.sock"
    publisher = SocketPublisher(parse_address(f"unix:{path}"))
    stalled = [dial(f"unix:{path}", rcvbuf=4096) for _ in range(5)]
    assert wait_for(lambda: publisher.subscribers == 5)
    for _ in range(1000):
        publisher.publish(encode(builder.status("online", "x" * 500)))
    t0 = time.monotonic()
    publisher.close()
    assert time.monotonic() - t0 < 0.5
    assert not path.exists()
    for sock in stalled:
        sock.close()


def test_a_vanished_subscriber_is_cleaned_up_at_once(address):
    publisher = SocketPublisher(parse_address(address))
    socks = [dial(address) for _ in range(3)]
    assert wait_for(lambda: publisher.subscribers == 3)
    socks[0].close()
    socks[1].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # leaves with a reset
    socks[1].close()
    assert wait_for(lambda: publisher.subscribers == 1, timeout=0.5)  # no event needed to notice
    publisher.close()
    socks[2].close()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_fifty_subscribers_coming_and_going_leak_no_thread_and_no_fd(address, builder):
    threads, fds = threading.active_count(), open_fds()
    publisher = SocketPublisher(parse_address(address + "?queue=32"))
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            publisher.publish(encode(builder.status("online", "x" * 300)))
            time.sleep(0.0005)

    pumping = threading.Thread(target=pump)
    pumping.start()
    rng, live = random.Random(7), []
    for _ in range(50):
        live.append(dial(address, rcvbuf=4096 if rng.random() < 0.5 else None))
        if rng.random() < 0.5:
            live[-1].recv(rng.choice([1, 1000, 65536]))  # reads a little, or nothing at all
        while live and rng.random() < 0.4:
            sock = live.pop(rng.randrange(len(live)))
            if rng.random() < 0.5:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        time.sleep(rng.random() * 0.02)
    assert wait_for(lambda: publisher.subscribers == len(live))
    for sock in live:
        sock.close()
    assert wait_for(lambda: publisher.subscribers == 0, timeout=1.0)
    stop.set()
    pumping.join()
    publisher.close()
    assert wait_for(lambda: threading.active_count() == threads and open_fds() == fds, timeout=2.0), (
        threading.enumerate(),
        open_fds() - fds,
    )


def test_unix_socket_file_mode_stale_and_live(tmp_path):
    path = tmp_path / "ev.sock"
    with make_publisher(f"unix:{path}"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        with pytest.raises(UserError, match="in use by a running daemon"):
            make_publisher(f"unix:{path}")
        assert path.exists()  # the live daemon's socket was left alone
    assert not path.exists()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a crashed run: the file stays, nobody listens
    stale.close()
    with make_publisher(f"unix:{path}?mode=0600"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        dial(f"unix:{path}").close()
    path.write_text("not a socket")
    with pytest.raises(UserError, match="exists and is not a socket"):
        make_publisher(f"unix:{path}")
    assert path.read_text() == "not a socket"


def test_tcp_busy_port_is_refused_and_a_non_loopback_address_is_warned_about(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match=r"port \d+ on 127.0.0.1 is in use"):
            make_publisher(f"tcp:{busy.getsockname()[1]}")
    make_publisher(f"tcp:0.0.0.0:{free_port()}").close()
    err = capsys.readouterr().err
    assert err.startswith("emotiond: warning: ") and "not loopback" in err and err.count("\n") == 1


def test_make_publisher_closes_what_it_built_when_a_later_spec_fails(tmp_path):
    path = tmp_path / "ev.sock"
    with pytest.raises(UserError, match="in use"), socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        make_publisher([f"unix:{path}", f"tcp:{busy.getsockname()[1]}"])
    assert not path.exists()
    with pytest.raises(UserError, match="are the same address"):
        make_publisher(["stdout", f"unix:{path}", f"unix:{path}?mode=0600"])
    port = free_port()
    with pytest.raises(UserError, match="are the same address"):
        make_publisher([f"tcp:{port}", f"tcp:127.0.0.1:{port}"])
    fanout = make_publisher(["stdout", f"unix:{path}", f"tcp:{free_port()}"])
    assert isinstance(fanout, Fanout) and len(fanout.publishers) == 3
    fanout.close()
    assert not path.exists()


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("kafka:x", "unknown publisher"),
        ("unix:", "no socket path"),
        ("unix:/x.sock?mode=999", "mode must be"),
        ("unix:/x.sock?colour=red", "bad option"),
        ("unix:/" + "x" * 200, "longer than"),
        ("tcp:", "port must be"),
        ("tcp:65536", "port must be"),
        ("tcp:localhost:http", "port must be"),
        ("tcp:::1:7878", "malformed address"),
        ("tcp:7878?mode=0600", "bad option"),
        ("tcp:7878?queue=0", "queue must be"),
        ("unix:/nonexistent-dir/ev.sock", "does not exist"),
        ("unix:/proc/sys/ev.sock", "not writable"),
    ],
)
def test_bad_specs_are_one_line_user_errors(spec, words):
    with pytest.raises(UserError, match=words) as caught:
        make_publisher(spec)
    assert "\n" not in str(caught.value)


def test_addresses_parse():
    assert str(parse_address("tcp:7878")) == "tcp:127.0.0.1:7878"
    assert str(parse_address("tcp:[::1]:7878")) == "tcp:[::1]:7878"
    a = parse_address("unix:ev.sock?mode=0640&queue=9")
    assert (a.path, a.mode, a.queue) == (os.path.abspath("ev.sock"), 0o640, 9)


def subscribe(emotiond: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(emotiond), "subscribe", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_subscribe_prints_the_chosen_types_and_leaves_quietly_on_signals(emotiond, tmp_path, builder, sig, code):
    address = f"unix:{tmp_path}/ev.sock"
    publisher = SocketPublisher(parse_address(address))
    publisher.set_hello(builder.hello)
    child = subscribe(emotiond, address, "--type", "status", "--type", "hello")
    assert wait_for(lambda: publisher.subscribers == 1, timeout=30)
    publisher.publish(encode(builder.stats(interval_s=1.0, frames=1, dropped=0, fps=1.0, faces=0)))
    publisher.publish(encode(builder.status("online", "x")))
    lines = [json.loads(child.stdout.readline()) for _ in range(2)]
    assert [e["type"] for e in lines] == ["hello", "status"] and lines[1]["seq"] == 1
    child.send_signal(sig)
    assert child.wait(timeout=10) == code
    assert child.stdout.read() == b"" and child.stderr.read() == b""
    publisher.close()


def test_subscribe_leaves_quietly_when_its_reader_goes_away(emotiond, tmp_path, builder):
    address = f"unix:{tmp_path}/ev.sock"
    publisher = SocketPublisher(parse_address(address))
    cmd = f"{emotiond} subscribe {address} | head -n 3"
    child = subprocess.Popen(["bash", "-o", "pipefail", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: publisher.subscribers == 1, timeout=30)
    while child.poll() is None and publisher.subscribers:
        publisher.publish(encode(builder.status("online", "x")))
        time.sleep(0.01)
    assert child.wait(timeout=10) == 0
    assert len(child.stdout.read().splitlines()) == 3 and child.stderr.read() == b""
    publisher.close()
