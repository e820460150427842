"""Shared fixtures: where the shared data lives, a test clip and an image directory built from real photos, the
expression model (shipped, else exported for the session) and the installed `emotiond` command."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import shutil
import socketserver
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
WILD_ZIP = DATASETS / "wild-faces" / "wild-faces.zip"
SHIPPED_MODEL = REPO / "runtime" / "models" / "default"
CHECKPOINT = REPO / "models" / "default" / "best.pt"
# pyproject's default timeout (300 s) is for ordinary tests; `slow` ones may export a model first (up to 900 s).
SLOW_TIMEOUT_S = 1200


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked slow get SLOW_TIMEOUT_S unless they set their own @pytest.mark.timeout."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


def _load_sample_maker():
    """samples/make_sample.py is a script, not a package: load it by path (the clip is built the same way)."""
    spec = importlib.util.spec_from_file_location("make_sample", REPO / "samples" / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Clip:
    path: Path
    faces: list[int]  # faces placed in each frame (0: a blank frame)
    segments: list[range]  # frame ranges during which one set of photos stands still

    @property
    def frames_with_faces(self) -> list[int]:
        return [i for i, n in enumerate(self.faces) if n > 0]


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not WILD_ZIP.is_file():
        pytest.skip(f"shared datasets not found at {DATASETS}")
    return DATASETS


@pytest.fixture(scope="session")
def test_video(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Clip:
    """A 640x480 mp4: 4 blank frames, 7 still photos and one pair of photos (8 frames each), 4 blank frames."""
    maker = _load_sample_maker()
    path = tmp_path_factory.mktemp("clip") / "faces.mp4"
    per_photo, blank = 8, 4
    faces = maker.build_clip(path, photos=8, frames_per_photo=per_photo, blank_frames=blank, pairs=1)
    segments = [range(s, s + per_photo) for s in range(blank, len(faces) - blank, per_photo)]
    return Clip(path, faces, segments)


# Each pair: two photos of different expression folders side by side, one segment each.
PAIRS = (("happy", "angry"), ("surprise", "sad"), ("neutral", "happy"))


@pytest.fixture(scope="session")
def pair_video(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Clip:
    """A 640x480 mp4 of two faces at a time with different expressions (PAIRS, 6 frames each) between 2 blank
    frames at each end: built like the sample clip (make_sample's canvas, photo size and layout)."""
    maker = _load_sample_maker()
    by_folder: dict[str, list[str]] = {}
    for name in maker.photo_names(WILD_ZIP):
        by_folder.setdefault(name.split("/")[0], []).append(name)
    path = tmp_path_factory.mktemp("pairs") / "pairs.mp4"
    per_pair, blank_frames = 6, 2
    blank = np.empty((maker.SIZE[1], maker.SIZE[0], 3), np.uint8)
    blank[:] = maker.BACKGROUND
    frames = [blank] * blank_frames
    with zipfile.ZipFile(WILD_ZIP) as zf:
        for i, pair in enumerate(PAIRS):
            canvas = blank.copy()
            for folder, (x, y) in zip(pair, maker.layout(i, 2), strict=True):
                photo = maker.read_photo(zf, by_folder[folder][5 + i])
                canvas[y : y + maker.PHOTO, x : x + maker.PHOTO] = photo
            frames += [canvas] * per_pair
    frames += [blank] * blank_frames
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, maker.SIZE)
    for frame in frames:
        writer.write(frame)
    writer.release()
    faces = [0] * blank_frames + [2] * (per_pair * len(PAIRS)) + [0] * blank_frames
    segments = [range(blank_frames + i * per_pair, blank_frames + (i + 1) * per_pair) for i in range(len(PAIRS))]
    return Clip(path, faces, segments)


@pytest.fixture(scope="session")
def image_dir(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 wild-faces photos (spread over the expression folders, flattened, sorted names) plus two non-images."""
    maker = _load_sample_maker()
    folder = tmp_path_factory.mktemp("images")
    with zipfile.ZipFile(WILD_ZIP) as zf:
        for name in maker.pick(maker.photo_names(WILD_ZIP), 12):
            (folder / name.replace("/", "_")).write_bytes(zf.read(name))
    (folder / "README.txt").write_text("not an image\n")
    (folder / "labels.csv").write_text("file,label\n")
    return folder


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$EMOTIOND_TEST_MODEL if set, else the shipped default model set if present, else one exported now from a copy
    of the training checkpoint."""
    if os.environ.get("EMOTIOND_TEST_MODEL"):
        return Path(os.environ["EMOTIOND_TEST_MODEL"])
    if (SHIPPED_MODEL / "manifest.json").is_file():
        return SHIPPED_MODEL
    if not CHECKPOINT.is_file():
        pytest.skip("no shipped model and no checkpoint to export one from")
    tmp = tmp_path_factory.mktemp("model")
    checkpoint = tmp / "best.pt"
    shutil.copy2(CHECKPOINT, checkpoint)  # training rewrites best.pt: export a fixed copy
    out = tmp / "model"
    cmd = [sys.executable, "-m", "export", "--checkpoint", str(checkpoint), "--out", str(out)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    if run.returncode != 0 or not (out / "manifest.json").is_file():
        pytest.fail(f"exporting a model for the tests failed ({run.returncode}): {run.stderr[-2000:]}")
    return out


@pytest.fixture(scope="session")
def detector_model() -> Path:
    from runtime.detector_model import resolve_detector_model

    return resolve_detector_model()


@pytest.fixture(scope="session")
def emotiond() -> Path:
    """The installed console script, run as a user runs it."""
    exe = Path(sys.executable).parent / "emotiond"
    if not exe.is_file():
        pytest.skip(f"emotiond is not installed next to {sys.executable} (pip install -e .)")
    return exe


@pytest.fixture(scope="session")
def event_validator():
    """A JSON Schema validator for the event schema (checks formats too)."""
    import jsonschema

    from runtime.events import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


class MjpegServer:
    """A real multipart/x-mixed-replace JPEG stream on 127.0.0.1 (what IP cameras serve). Frame i is a flat image
    of gray level i % 256, so a reader can tell which frame it got. After `frames` frames it stalls (keeps the
    connection open, sends nothing) until the server is closed."""

    def __init__(self, frames: int, interval_s: float, port: int = 0) -> None:
        self.frames, self.interval_s = frames, interval_s
        self.closed = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for i in range(outer.frames):
                        _, jpg = cv2.imencode(".jpg", np.full((120, 160, 3), i % 256, np.uint8))
                        head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                        self.wfile.write(head + jpg.tobytes() + b"\r\n")
                        self.wfile.flush()
                        if outer.closed.wait(outer.interval_s):
                            return
                    outer.closed.wait(30)  # the stall
                except OSError:
                    pass  # the reader left

            def log_message(self, *args: object) -> None:
                pass

        socketserver.ThreadingTCPServer.allow_reuse_address = True  # a restarted server takes its old port
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"

    def close(self) -> None:
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mjpeg() -> Iterator[Callable[..., MjpegServer]]:
    """mjpeg(frames=200, interval_s=0.002, port=0) -> a running MjpegServer, closed after the test."""
    servers: list[MjpegServer] = []

    def start(frames: int = 200, interval_s: float = 0.002, port: int = 0) -> MjpegServer:
        servers.append(MjpegServer(frames, interval_s, port))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def long_clip(test_video: Clip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test clip five times over (360 frames, 14.4 s at its 25 frames/s): a run that lasts in --realtime, long
    enough to overflow a stalled subscriber's queue."""
    return clip_of(
        test_video.path, list(range(len(test_video.faces))) * 5, tmp_path_factory.mktemp("long") / "long.mp4"
    )


def clip_of(source: Path, indices: list[int], path: Path, fps: float = 25.0) -> Path:
    """A new clip at `path` made of `source`'s frames in the order of `indices` (repeats allowed)."""
    cap = cv2.VideoCapture(str(source))
    frames = []
    while (grabbed := cap.read())[0]:
        frames.append(grabbed[1])
    cap.release()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, frames[0].shape[1::-1])
    for i in indices:
        writer.write(frames[i])
    writer.release()
    return path
