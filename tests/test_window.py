"""`emotiond run --show` on a real X server (Xvfb, one per module, or one per test that kills it), as a user runs
it: the window shows the frames with their boxes drawn (a screenshot is kept: test-artifacts/window.png); q, Esc and
the window manager's close button stop the daemon cleanly; Space saves a snapshot PNG; SIGTERM still ends it at
once; the X server going away stops it cleanly too, however Qt ends the window's process; that process never
outlives the daemon, and a frozen or dead window never stops or slows it; without a usable display, or when the
window cannot open, it is one line and exit 2, never Qt's abort."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import clip_of

from runtime.annotate import COLORS

REPO = Path(__file__).resolve().parents[1]
ARTIFACT = REPO / "test-artifacts" / "window.png"
XVFB = shutil.which("Xvfb")
pytestmark = pytest.mark.skipif(XVFB is None, reason="Xvfb is not installed (Debian package xvfb; .ci/run installs it)")

# A face's box: this many pixels of one expression colour in one column and in one row (a bar is ~11 px tall).
BOX_RUN = 100
START_TIMEOUT_S = 60  # the daemon loads MediaPipe and the model on a machine that may be busy
QUIT_TIMEOUT_S = 3.0


@dataclass
class Display:
    name: str  # ":N"
    framebuffer: Path  # the screen as an XWD file, kept current by Xvfb (-fbdir)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        return {**env, "DISPLAY": self.name}

    def screenshot(self) -> np.ndarray:
        """The whole screen, BGR: parsed from the XWD header (25 big-endian 32-bit fields), a colour map, pixels."""
        data = self.framebuffer.read_bytes()
        h = struct.unpack(">25I", data[:100])
        header_size, version, width, height, byte_order, bpp, stride, ncolors = (
            h[0], h[1], h[4], h[5], h[7], h[11], h[12], h[19]
        )  # fmt: skip
        assert version == 7 and bpp == 32 and h[14:17] == (0xFF0000, 0xFF00, 0xFF), h
        pixels = np.frombuffer(data, np.uint8, count=height * stride, offset=header_size + 12 * ncolors)
        pixels = pixels.reshape(height, stride // 4, 4)[:, :width]
        return np.ascontiguousarray(pixels[..., :3] if byte_order == 0 else pixels[..., 3:0:-1])  # BGRX or XRGB


@contextlib.contextmanager
def xvfb(fbdir: Path) -> Iterator[tuple[subprocess.Popen, Display]]:
    """A private Xvfb (1280x720, no window manager) and its display. Xvfb picks a free display number itself and
    writes it to a pipe once it accepts connections (-displayfd): a number guessed from /tmp's lock files can be
    taken by another X server between the look and the start, and then the test talks to a server that goes away."""
    fbdir.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    cmd = [XVFB, "-displayfd", str(write_end), "-screen", "0", "1280x720x24", "-nolisten", "tcp", "-fbdir", str(fbdir)]
    log = fbdir / "Xvfb.log"
    with log.open("wb") as err:
        server = subprocess.Popen(cmd, pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=err)
    os.close(write_end)
    with os.fdopen(read_end) as ready:
        answered, _, _ = select.select([ready], [], [], 10)
        n = ready.readline().strip() if answered else ""
    if not n.isdigit():
        server.kill()
        server.wait()
        pytest.fail(f"Xvfb did not start: {log.read_text(errors='replace').strip()[-500:]}")
    try:
        yield server, Display(f":{n}", fbdir / "Xvfb_screen0")
    finally:
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.returncode == -signal.SIGKILL:  # a killed server leaves its lock and socket behind
            for stale in (Path(f"/tmp/.X{n}-lock"), Path(f"/tmp/.X11-unix/X{n}")):
                stale.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def display(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Display]:
    """The module's Xvfb."""
    with xvfb(tmp_path_factory.mktemp("xvfb")) as (_, shared):
        yield shared


def box_colours(image: np.ndarray) -> list[str]:
    """The expressions whose colour (runtime.annotate.COLORS) forms a box in the image: long runs in a column and
    in a row. The bars never do, and the photos (gray, compressed) hold no such run of one exact colour."""
    found = []
    for label, colour in COLORS.items():
        mask = np.all(image == np.array(colour, np.uint8), axis=2)
        if mask.sum(axis=0).max() >= BOX_RUN and mask.sum(axis=1).max() >= BOX_RUN:
            found.append(label)
    return found


def xdotool(display: Display, *args: str) -> str:
    if shutil.which("xdotool") is None:
        pytest.fail("xdotool is not installed (Debian package xdotool; .ci/run installs it)")
    run = subprocess.run(["xdotool", *args], env=display.env, capture_output=True, text=True, timeout=30, check=False)
    return run.stdout.strip() if run.returncode == 0 else ""


class Daemon:
    """`emotiond run --show` on the test display, in `cwd`; its stdout and stderr are read as they come (a full
    pipe would stall it)."""

    def __init__(
        self, emotiond: Path, model_dir: Path, clip: Path, display: Display, cwd: Path, env: dict[str, str]
    ) -> None:
        cmd = [str(emotiond), "run", "--show", "--source", str(clip), "--model", str(model_dir), "--realtime"]
        self.display, self.cwd = display, cwd
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env={**display.env, **env}
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=lines.extend, args=(stream,), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    def window(self) -> str:
        """The window's id, once it is on screen."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            found = xdotool(self.display, "search", "--name", "^emotiond: ")
            if found:
                return found.split()[0]
            assert self.proc.poll() is None, f"the daemon ended ({self.proc.returncode}): {''.join(self.err)}"
            time.sleep(0.1)
        pytest.fail(f"no window within {START_TIMEOUT_S} s")

    def boxes_on_screen(self) -> np.ndarray:
        """A screenshot once it shows a face's box (the window shows a waiting image first), kept as screen.png
        in cwd."""
        self.window()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            shot = self.display.screenshot()
            if box_colours(shot) or time.monotonic() > deadline or self.proc.poll() is not None:
                break
            time.sleep(0.1)
        cv2.imwrite(str(self.cwd / "screen.png"), shot)
        found = box_colours(shot)
        assert found, f"no box on screen (daemon: {self.proc.poll()}, {''.join(self.err)!r}): see {self.cwd}/screen.png"
        return shot

    def key(self, name: str) -> None:
        """Press a key in the window (focused first: there is no window manager to do it)."""
        xdotool(self.display, "windowfocus", "--sync", self.window(), "key", name)

    def finish(self, timeout: float) -> int:
        """The exit code; fails if the daemon still runs `timeout` seconds from now."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon still runs {timeout} s later")
        for reader in self._readers:
            reader.join(10)
        return code

    def assert_stopped_cleanly(self, event_validator) -> None:
        """Exit 0 (checked by the caller), whole valid events ending with `stopping`, and on stderr only
        emotiond's own lines: no traceback, no Qt."""
        events = [json.loads(line) for line in self.out]
        for event in events:
            assert not list(event_validator.iter_errors(event)), event
        assert any(e["type"] == "frame" for e in events)
        assert events[-1]["type"] == "status" and events[-1]["state"] == "stopping"
        assert self.err and all(line.startswith("emotiond: ") for line in self.err), "".join(self.err)
        assert self.err[-1].startswith("emotiond: stopped: "), self.err[-1]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def faces_clip(test_video, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test clip's frames with faces, five times over (13 s in --realtime): whenever a key is pressed or the
    screen is looked at, a frame with boxes is on show."""
    path = tmp_path_factory.mktemp("faces") / "faces.mp4"
    return clip_of(test_video.path, test_video.frames_with_faces * 5, path)


@pytest.fixture
def daemon(emotiond, model_dir, detector_model, faces_clip, display, tmp_path) -> Iterator[Callable[[], Daemon]]:
    """daemon(on=display, env={}) -> the daemon showing faces_clip on the test display (or `on`), with tmp_path as
    its cwd and `env` added to its environment."""
    started: list[Daemon] = []

    def start(on: Display = display, env: dict[str, str] | None = None) -> Daemon:
        started.append(Daemon(emotiond, model_dir, faces_clip, on, tmp_path, env or {}))
        return started[-1]

    yield start
    for d in started:
        d.close()


# -- what the window shows -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_window_shows_the_frames_with_their_boxes(daemon, display, faces_clip, tmp_path):
    # a `runtime` package in the daemon's current directory is not the one the window's process imports
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "__init__.py").write_text("raise SystemExit('the wrong runtime package')\n")
    d = daemon()
    window = d.window()
    shot = d.boxes_on_screen()
    ARTIFACT.parent.mkdir(exist_ok=True)
    cv2.imwrite(str(tmp_path / "window.png"), shot)
    shutil.copyfile(tmp_path / "window.png", ARTIFACT)
    geometry = dict(line.split("=") for line in xdotool(display, "getwindowgeometry", "--shell", window).split())
    x, y, w, h = (int(geometry[k]) for k in ("X", "Y", "WIDTH", "HEIGHT"))
    assert (w, h) == (640, 480), "the window is the clip's size: it shows frames, not the waiting image"
    assert box_colours(shot[y : y + h, x : x + w]), "the boxes are inside the window"
    assert xdotool(display, "getwindowname", window) == f"emotiond: {faces_clip}"


# -- keys and the close button -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("key", ["q", "Escape"])
def test_q_or_escape_stops_the_daemon_cleanly(daemon, event_validator, key):
    d = daemon()
    d.boxes_on_screen()  # frames flow
    d.key(key)
    assert d.finish(QUIT_TIMEOUT_S) == 0, "".join(d.err)
    d.assert_stopped_cleanly(event_validator)


@pytest.mark.slow
def test_the_close_button_stops_the_daemon_cleanly(daemon, display, event_validator):
    d = daemon()
    d.boxes_on_screen()
    close_window(display, int(d.window()))
    assert d.finish(QUIT_TIMEOUT_S) == 0, "".join(d.err)
    d.assert_stopped_cleanly(event_validator)


@pytest.mark.slow
def test_space_saves_a_snapshot_with_the_boxes(daemon, tmp_path):
    d = daemon()
    d.boxes_on_screen()
    d.key("space")
    deadline = time.monotonic() + 10
    while not (snapshots := sorted(tmp_path.glob("emotiond-snapshot-*.png"))) and time.monotonic() < deadline:
        time.sleep(0.1)
    d.key("q")
    assert d.finish(QUIT_TIMEOUT_S) == 0, "".join(d.err)
    assert len(snapshots) == 1, "one snapshot, in the daemon's current directory"
    assert re.fullmatch(r"emotiond-snapshot-\d{8}-\d{6}-\d{3}\.png", snapshots[0].name), snapshots[0].name
    assert f"emotiond: snapshot saved: {snapshots[0]}\n" in d.err, "".join(d.err)
    image = cv2.imread(str(snapshots[0]))
    assert image is not None and image.shape == (480, 640, 3)
    assert box_colours(image), "the snapshot is the annotated frame"


# -- stopping, and no display ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_while_the_window_shows_ends_the_daemon_at_once(daemon, event_validator):
    d = daemon()
    d.boxes_on_screen()
    d.proc.send_signal(signal.SIGTERM)
    assert d.finish(2.0) == 0, "".join(d.err)
    d.assert_stopped_cleanly(event_validator)


@pytest.mark.slow
def test_sigterm_while_the_window_starts_ends_the_daemon_at_once(daemon, tmp_path):
    slow = tmp_path / "slow"
    slow.mkdir()  # Python runs sitecustomize at start-up: this one holds only the window's process (its -c names it)
    (slow / "sitecustomize.py").write_text(
        "import time\nif b'runtime.window_child' in open('/proc/self/cmdline', 'rb').read():\n    time.sleep(60)\n"
    )
    d = daemon(env={"PYTHONPATH": str(slow)})
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _children(d.proc.pid):
        assert d.proc.poll() is None and time.monotonic() < deadline, "".join(d.err)
        time.sleep(0.05)
    time.sleep(0.5)  # the daemon now waits for the window to open (it would give up after 10 s)
    d.proc.send_signal(signal.SIGTERM)
    assert d.finish(3.0) == 0, "".join(d.err)  # the window's process is killed after a second at EOF
    assert all(line.startswith("emotiond: ") for line in d.err), "".join(d.err)
    assert not any(json.loads(line)["type"] == "frame" for line in d.out)


# Qt ends the process that holds its window when the X server goes (exit 1, or SIGABRT from another thread): 9 runs
# in 26 ended so while the window lived in the daemon's process. The window's process may die; the daemon not.
DISPLAY_LOSS_RUNS = 8


@pytest.mark.slow
@pytest.mark.parametrize("run", range(DISPLAY_LOSS_RUNS))
def test_the_display_going_away_stops_the_daemon_cleanly(daemon, event_validator, tmp_path, run):
    with xvfb(tmp_path / "xvfb") as (server, own):
        d = daemon(on=own)
        d.boxes_on_screen()
        server.kill()
        code = d.finish(QUIT_TIMEOUT_S)
    assert code == 0, f"exit {code} (-6: Qt aborted, 1: Qt's exit): {''.join(d.err)}"
    assert d.err.count("emotiond: the X display went away: stopping\n") == 1, "".join(d.err)
    assert all(line.endswith("\n") for line in d.out), "every event is a whole line"
    d.assert_stopped_cleanly(event_validator)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.slow
def test_the_window_never_outlives_the_daemon(daemon, display):
    d = daemon()
    d.boxes_on_screen()
    children = _children(d.proc.pid)
    assert children, "the window has a process of its own"
    for child in children:  # stopped, it cannot see its stdin close: only the kernel's PDEATHSIG can end it
        os.kill(child, signal.SIGSTOP)
    try:
        d.proc.kill()
        d.proc.wait()
        deadline = time.monotonic() + 2
        while any(map(_alive, children)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, children)), "the window's process ended with the daemon"
        # the X server destroys a client's windows once it has read the closed connection: soon, not at once
        while xdotool(display, "search", "--name", "^emotiond: ") and time.monotonic() < deadline + 2:
            time.sleep(0.05)
        assert not xdotool(display, "search", "--name", "^emotiond: "), "and its window is gone"
    finally:
        for child in filter(_alive, children):
            os.kill(child, signal.SIGKILL)


@pytest.mark.slow
def test_a_window_that_dies_leaves_the_daemon_running(daemon, event_validator):
    d = daemon()
    d.boxes_on_screen()
    for child in _children(d.proc.pid):
        os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not any("the window failed and is gone" in line for line in d.err) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.proc.poll() is None, "the daemon goes on without its window"
    d.proc.send_signal(signal.SIGTERM)
    assert d.finish(2.0) == 0, "".join(d.err)
    assert sum("emotiond: the window failed and is gone, the daemon goes on" in line for line in d.err) == 1, d.err
    d.assert_stopped_cleanly(event_validator)


@pytest.mark.slow
def test_a_frozen_window_never_slows_the_daemon(daemon, event_validator):
    d = daemon()
    d.boxes_on_screen()
    children = _children(d.proc.pid)
    for child in children:
        os.kill(child, signal.SIGSTOP)  # a screen that takes no frame at all
    try:
        before = len(d.out)
        time.sleep(2.0)
        frames = sum(json.loads(line)["type"] == "frame" for line in d.out[before:])
        assert frames >= 20, f"{frames} frames in 2 s of a 25 frames/s clip while the window was frozen"
        d.proc.send_signal(signal.SIGTERM)
        assert d.finish(5.0) == 0, "".join(d.err)  # the frozen window is killed after a short wait
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
    d.assert_stopped_cleanly(event_validator)


def _run_without(emotiond: Path, test_video, env: dict[str, str], *more: str) -> subprocess.CompletedProcess:
    cmd = [str(emotiond), "run", "--show", "--source", str(test_video.path), *more]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=REPO, check=False)


def _assert_one_line_error(run: subprocess.CompletedProcess, *words: str) -> None:
    lines = run.stderr.splitlines()
    assert run.returncode == 2, f"exit {run.returncode} (-6: Qt aborted): {run.stderr}"
    assert run.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("error: --show"), run.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("more", [[], ["--http", "0"]], ids=["alone", "with the page"])
def test_no_display_is_one_line(emotiond, test_video, more):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    _assert_one_line_error(_run_without(emotiond, test_video, env, *more), "DISPLAY")


def test_a_display_without_a_server_is_one_line_not_an_abort(emotiond, test_video):
    unused = (
        n for n in range(90, 400) if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists()
    )
    name = f":{next(unused)}"
    env = {k: v for k, v in os.environ.items() if k != "WAYLAND_DISPLAY"}
    _assert_one_line_error(_run_without(emotiond, test_video, {**env, "DISPLAY": name}), repr(name))


@contextlib.contextmanager
def all_connections_but_one(display: Display) -> Iterator[None]:
    """Holds every connection the X server accepts but one (through libxcb, as Qt connects): the daemon's check
    of the display takes the last, and its window's process is refused."""
    xcb = ctypes.CDLL("libxcb.so.1")
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    held = []
    try:
        while not xcb.xcb_connection_has_error(connection := xcb.xcb_connect(display.name.encode(), None)):
            held.append(connection)
        xcb.xcb_disconnect(connection)
        xcb.xcb_disconnect(held.pop())
        yield
    finally:
        for connection in held:
            xcb.xcb_disconnect(connection)


def test_a_window_that_cannot_open_is_one_error_line(emotiond, test_video, tmp_path):
    with xvfb(tmp_path / "xvfb") as (_, own), all_connections_but_one(own):
        run = _run_without(emotiond, test_video, own.env)
    assert run.returncode == 2, f"exit {run.returncode}: {run.stderr}"
    assert run.stdout == ""
    # libxcb writes the server's reason for refusing ("Maximum number of clients reached") itself
    lines = [line for line in run.stderr.splitlines() if line != "Maximum number of clients reached"]
    assert lines == [f"error: --show: cannot open a window: cannot use the X display {own.name!r}: no X server "
                     "answers there, or it refused the connection"], run.stderr  # fmt: skip


# -- a window manager's close button, without a window manager --------------------------------------------------


class _ClientMessage(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
        ("display", ctypes.c_void_p), ("window", ctypes.c_ulong), ("message_type", ctypes.c_ulong),
        ("format", ctypes.c_int), ("data", ctypes.c_long * 5),
    ]  # fmt: skip


class _XEvent(ctypes.Union):
    _fields_ = [("xclient", _ClientMessage), ("pad", ctypes.c_long * 24)]


def close_window(display: Display, window: int) -> None:
    """What a window manager's close button does: a WM_DELETE_WINDOW message to the window (Xlib via ctypes)."""
    x11 = ctypes.CDLL("libX11.so.6")
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XInternAtom.restype = ctypes.c_ulong
    x11.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    x11.XSendEvent.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    connection = x11.XOpenDisplay(display.name.encode())
    assert connection, f"cannot open {display.name}"
    try:
        event = _XEvent()
        event.xclient.type = 33  # ClientMessage
        event.xclient.window = window
        event.xclient.message_type = x11.XInternAtom(connection, b"WM_PROTOCOLS", 0)
        event.xclient.format = 32
        event.xclient.data[0] = x11.XInternAtom(connection, b"WM_DELETE_WINDOW", 0)
        assert x11.XSendEvent(connection, window, 0, 0, ctypes.byref(event))
    finally:
        x11.XCloseDisplay(connection)  # flushes the request
