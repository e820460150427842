"""Publishers over real pipes: a reader that goes away ends the writer quietly, as Unix tools do."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runtime.errors import UserError
from runtime.publishers import Fanout, Publisher, ReaderGone, StdoutPublisher, make_publisher

REPO = Path(__file__).resolve().parents[1]

# The child publishes far more than a pipe buffer holds, so it is still writing when the reader leaves.
# Exit codes: 0 after ReaderGone (what the daemon does), 3 if the reader never went away.
CHILD = textwrap.dedent(
    """
    import sys
    from runtime.events import EventBuilder, encode, new_session_id
    from runtime.publishers import ReaderGone, make_publisher

    publisher = make_publisher("stdout")
    builder = EventBuilder(new_session_id(), source="test", model_id="m")
    try:
        for _ in range(200_000):
            publisher.publish(encode(builder.status("online", "x" * 100)))
    except ReaderGone:
        sys.stdout.write("left in the text buffer, flushed at exit")  # must not fail loudly at exit
        publisher.close()
        sys.exit(0)
    sys.exit(3)
    """
)


def test_child_exits_quietly_when_the_reader_closes_the_pipe():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    lines = [child.stdout.readline() for _ in range(3)]
    child.stdout.close()
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=60) == 0, stderr
    assert stderr == ""
    assert [json.loads(line)["seq"] for line in lines] == [0, 1, 2]


def test_shell_pipeline_into_head_ends_cleanly():
    cmd = f"{sys.executable} -c {shlex.quote(CHILD)} | head -n 5"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b""
    assert len(done.stdout.splitlines()) == 5


def pipe_publisher() -> tuple[StdoutPublisher, int]:
    read_fd, write_fd = os.pipe()
    return StdoutPublisher(os.fdopen(write_fd, "wb")), read_fd


def test_reader_gone_is_raised_on_every_publish_after_the_reader_left():
    """Frames (finisher thread) and status events (other threads) share the publisher: whichever publishes
    next must learn the reader left, not only the first."""
    publisher, read_fd = pipe_publisher()
    publisher.publish(b"one\n")
    assert os.read(read_fd, 100) == b"one\n"
    os.close(read_fd)
    for line in (b"two\n", b"three\n"):
        with pytest.raises(ReaderGone):
            publisher.publish(line)
    publisher.close()


def test_fanout_keeps_publishing_to_the_readers_still_there():
    first, first_read = pipe_publisher()
    second, second_read = pipe_publisher()
    fanout = Fanout([first, second])
    fanout.publish(b"a\n")
    os.close(first_read)
    fanout.publish(b"b\n")  # first reader gone: no ReaderGone while another remains
    fanout.publish(b"c\n")
    assert os.read(second_read, 100) == b"a\nb\nc\n"
    os.close(second_read)
    with pytest.raises(ReaderGone):
        fanout.publish(b"d\n")
    fanout.close()


def test_fanout_closes_its_publishers_at_once_and_raises_an_error_once_all_are_closed():
    class Slow(Publisher):  # a close that waits its grace for a stalled reader (runtime.sockets, mqtt, http)
        def __init__(self, fails: bool = False) -> None:
            self.fails, self.closed = fails, False

        def publish(self, line: bytes) -> None:
            pass

        def close(self) -> None:
            time.sleep(0.3)
            self.closed = True
            if self.fails:
                raise OSError("cannot close")

    publishers = [Slow(), Slow(fails=True), Slow()]
    started = time.monotonic()
    with pytest.raises(OSError, match="cannot close"):
        Fanout(publishers).close()
    assert time.monotonic() - started < 0.6, "one grace, not one per publisher"
    assert all(p.closed for p in publishers), "an error in one leaves none open"


def test_other_write_errors_are_not_mistaken_for_a_reader_leaving():
    with open("/dev/full", "wb", buffering=0) as full:
        publisher = StdoutPublisher(full)
        for _ in range(2):  # one line naming the cause, each time
            with pytest.raises(UserError, match="cannot write events to stdout: No space left on device"):
                publisher.publish(b"x\n")


def test_make_publisher_builds_stdout_and_fanouts():
    assert isinstance(make_publisher("stdout"), StdoutPublisher)
    fanout = make_publisher("stdout, stdout")
    assert isinstance(fanout, Fanout) and len(fanout.publishers) == 2
    assert isinstance(make_publisher(["stdout"]), StdoutPublisher)


@pytest.mark.parametrize("spec", ["", "kafka:events", "unix:", "tcp:notaport", "stdout,mqtt:x", "stdout:2"])
def test_make_publisher_refuses_unknown_specs_with_a_user_error(spec):
    with pytest.raises(UserError, match=r"^output[: ]"):
        make_publisher(spec)
