"""Sources: files deliver every frame in order; live sources (a real HTTP MJPEG stream, a file played live) let the
latest frame win; image directories are sorted with non-images skipped and counted; bad sources are UserErrors."""

from __future__ import annotations

import http.server
import itertools
import socketserver
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import UserError
from runtime.sources import SourceStalled, open_source


def test_file_source_delivers_every_frame_in_order(test_video):
    with open_source(str(test_video.path)) as src:
        assert not src.live and not src.stills
        frames = list(src)
    assert [f.index for f in frames] == list(range(len(test_video.faces)))
    assert all(f.image.shape == (480, 640, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(f.file is None and f.decode_ms >= 0 for f in frames)
    assert all(a.capture_ns < b.capture_ns for a, b in itertools.pairwise(frames))
    assert src.dropped == 0


def test_file_source_waits_for_a_slow_consumer_without_losing_frames(test_video):
    with open_source(str(test_video.path)) as src:
        indices = []
        while (frame := src.read()) is not None:
            indices.append(frame.index)
            if len(indices) <= 5:
                time.sleep(0.05)  # the capture thread fills its small queue and waits
    assert indices == list(range(len(test_video.faces)))


def test_realtime_file_plays_at_its_own_frame_rate(test_video):
    with open_source(str(test_video.path), realtime=True) as src:
        start = time.monotonic()
        frames = [src.read() for _ in range(10)]
        elapsed = time.monotonic() - start
    assert src.fps == pytest.approx(25.0)
    assert [f.index for f in frames] == list(range(10))
    assert elapsed >= 9 / 25 - 0.02  # frame 9 is due 0.36 s after frame 0


def test_file_played_live_drops_stale_frames_for_a_slow_consumer(test_video):
    with open_source(str(test_video.path), live=True) as src:
        frames = []
        while (frame := src.read()) is not None:
            frames.append((frame, time.monotonic_ns()))
            time.sleep(0.02)  # much slower than decoding: frames pile up at the source
    indices = [f.index for f, _ in frames]
    assert src.dropped > 0
    assert len(indices) + src.dropped == len(test_video.faces)
    assert indices == sorted(set(indices))  # newer frames only, never an old one after a new one
    # Latest frame wins: a frame is never older than about one consumer step, however long the run.
    ages_ms = [(taken - f.capture_ns) / 1e6 for f, taken in frames]
    assert max(ages_ms[len(ages_ms) // 2 :]) < 60


def test_http_mjpeg_stream_is_live_and_latest_frame_wins(mjpeg):
    server = mjpeg(frames=150, interval_s=0.002)
    with open_source(server.url, stall_timeout_s=1.0) as src:
        assert src.live
        got = []
        with pytest.raises(SourceStalled):  # after its 150 frames the server stalls
            while True:
                frame = src.read()
                got.append((frame.index, int(frame.image[60, 80, 0])))
                time.sleep(0.03)
    indices = [i for i, _ in got]
    assert src.dropped > 0
    assert indices == sorted(set(indices))
    # The pixel level says which frame it is: what arrived is the frame it claims to be (JPEG: +-3 levels).
    assert all(abs(level - i % 256) <= 3 for i, level in got)


def test_stalled_stream_is_reported_and_closes_promptly(mjpeg):
    server = mjpeg(frames=5, interval_s=0.01)
    src = open_source(server.url, stall_timeout_s=0.5).start()
    try:
        # A live source keeps the latest frame: a consumer descheduled for 10 ms gets fewer than the 5 sent.
        got, start = [], time.monotonic()
        with pytest.raises(SourceStalled, match="stalled"):
            while True:
                start = time.monotonic()
                got.append(src.read().index)
        assert got and got == sorted(set(got)) and got[-1] <= 4
        assert time.monotonic() - start < 2.0  # the read after the last frame: reported within its timeout
    finally:
        start = time.monotonic()
        src.close()
    assert time.monotonic() - start < 3.0


def test_image_directory_is_sorted_and_non_images_are_skipped_and_counted(image_dir):
    expected = sorted(p for p in image_dir.iterdir() if p.suffix == ".jpg")
    with open_source(str(image_dir)) as src:
        assert src.stills
        frames = list(src)
    assert [Path(f.file) for f in frames] == expected
    assert [f.index for f in frames] == list(range(len(expected)))
    assert src.skipped == 2  # README.txt and labels.csv


def test_undecodable_image_in_a_directory_is_skipped_and_counted(tmp_path, image_dir):
    for p in sorted(image_dir.glob("*.jpg"))[:3]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with open_source(str(tmp_path)) as src:
        frames = list(src)
    assert len(frames) == 3 and "broken.jpg" not in [Path(f.file).name for f in frames]
    assert src.skipped == 1


def test_single_image_is_one_still_frame_naming_its_file(image_dir):
    path = sorted(image_dir.glob("*.jpg"))[0]
    with open_source(str(path)) as src:
        frames = list(src)
    assert len(frames) == 1 and frames[0].file == str(path) and src.stills


def test_empty_image_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no images in directory"):
        open_source(str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match=r"no images in directory .*1 other file"):
        open_source(str(tmp_path))


def test_missing_source_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="source not found"):
        open_source(str(tmp_path / "nope.mp4"))


def test_corrupt_video_file_is_a_user_error(tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match=r"cannot (open source|decode any frame)"):
        open_source(str(bad))


def test_unreachable_stream_is_a_user_error():
    # A port nothing listens on (we bind it, then close it): the connection is refused at once.
    with socketserver.TCPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]
    with pytest.raises(UserError, match="cannot open source"):
        open_source(f"http://127.0.0.1:{port}/stream.mjpg")


def test_close_stops_the_capture_thread_while_it_waits_on_a_full_queue(test_video):
    src = open_source(str(test_video.path)).start()
    assert src.read() is not None
    time.sleep(0.1)  # the capture thread is now blocked on the full queue
    start = time.monotonic()
    src.close()
    assert time.monotonic() - start < 1.0
    assert not src._thread.is_alive()
