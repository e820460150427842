"""The installed `emotiond` command, end to end, as a user runs it: events on a real clip validate against the
schema, faces are found and keep their ids, `| head` ends cleanly, image directories and annotation work, and
every bad input ends with one line on stderr and exit code 2."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import time
from pathlib import Path

import cv2
import pytest

from runtime.config import Config, load_config
from runtime.manifest import DEFAULT_MODEL_DIR, load_manifest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120


def emotiond_run(emotiond: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(emotiond), *args], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd or REPO, check=False
    )


def frames_of(stdout: str) -> list[dict]:
    """The frame events of a run's stdout (status and stats events are interleaved with them)."""
    return [e for e in map(json.loads, stdout.splitlines()) if e["type"] == "frame"]


def assert_one_line_error(run: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr: "error: ..." naming the problem, no traceback."""
    lines = run.stderr.splitlines()
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "Traceback" not in run.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def video_lines(emotiond, test_video, model_dir):
    """Every event of one run on the test clip, and its stderr."""
    run = emotiond_run(emotiond, "run", "--source", str(test_video.path), "--model", str(model_dir))
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()], run.stderr


@pytest.fixture(scope="module")
def video_run(video_lines):
    events, stderr = video_lines
    return [e for e in events if e["type"] == "frame"], stderr


# -- help and config -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], ["run", "fetch-models", "check-config", "examples"]),
        (["run"], ["--config", "--source", "--output", "--backend", "--precision", "--model", "--realtime",
                   "--annotate", "--emit", "--threads", "--live"]),
        (["fetch-models"], ["--force", "cache"]),
        (["check-config"], ["--config", "ok: PATH"]),
    ],
)  # fmt: skip
def test_help_of_each_command_is_complete(emotiond, command, expected):
    run = emotiond_run(emotiond, *command, "--help")
    assert run.returncode == 0 and run.stderr == ""
    for word in expected:
        assert word in run.stdout


def test_repository_config_yaml_is_the_built_in_default():
    assert load_config(REPO / "config.yaml") == Config()


def test_every_config_field_is_documented():
    def fields(model):
        for name, field in model.model_fields.items():
            yield name, field
            if isinstance(field.default_factory, type):
                yield from fields(field.default_factory)

    assert all(field.description for _, field in fields(Config))


def test_check_config_accepts_the_repository_config(emotiond):
    run = emotiond_run(emotiond, "check-config", "--config", "config.yaml")
    assert run.returncode == 0 and run.stdout.strip() == "ok: config.yaml" and run.stderr == ""


def test_check_config_without_a_file_uses_built_in_defaults(emotiond, tmp_path):
    run = emotiond_run(emotiond, "check-config", cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.strip() == "ok: built-in defaults"


BAD_CONFIGS = {
    "unknown key": ("source:\n  uri: clip.mp4\n  realtiem: true\n", ["unknown key", "source.realtiem"]),
    "wrong type": ("classifier:\n  threads: two\n", ["classifier.threads", "integer"]),
    "out of range": ("detector:\n  min_confidence: 1.5\n", ["detector.min_confidence", "less than or equal to 1"]),
    "input too small": ("detector:\n  input_side: 64\n", ["detector.input_side", "greater than or equal to 128"]),
    "bad choice": ("classifier:\n  backend: tensorflow\n", ["classifier.backend", "onnxruntime"]),
    "unknown section": ("sorce:\n  uri: 0\n", ["unknown key", "sorce"]),
    "not yaml": ("source: [unclosed\n", ["not valid YAML"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_check_config_names_the_bad_key_in_one_line(emotiond, tmp_path, case):
    text, words = BAD_CONFIGS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert_one_line_error(emotiond_run(emotiond, "check-config", "--config", str(path)), str(path), *words)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("output:\n  publishers: [kafka:events]\n", ["unknown publisher", "kafka:events"]),
        ("output:\n  publishers: ['tcp:99999']\n", ["port must be 1..65535"]),
        ("output:\n  publishers: ['tcp:7878', 'tcp:127.0.0.1:7878']\n", ["same address"]),
        ("classifier:\n  model: /\n", ["manifest", "not found"]),
        ("output:\n  http: '127.0.0.1:http'\n", ["output.http", "127.0.0.1:http"]),
        ("output:\n  http: '8080'\n  http_auth_file: /nonexistent/pw\n", ["http_auth_file", "cannot read"]),
    ],
)
def test_check_config_refuses_what_run_would_refuse(emotiond, tmp_path, text, words):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert_one_line_error(emotiond_run(emotiond, "check-config", "--config", str(path)), *words)


@pytest.mark.parametrize("case", ["unknown key", "wrong type", "out of range"])
def test_run_refuses_a_bad_config_in_one_line(emotiond, tmp_path, test_video, case):
    text, words = BAD_CONFIGS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    run = emotiond_run(emotiond, "run", "--config", str(path), "--source", str(test_video.path))
    assert_one_line_error(run, *words)


def test_missing_config_file_is_one_line(emotiond, tmp_path):
    assert_one_line_error(emotiond_run(emotiond, "run", "--config", str(tmp_path / "no.yaml")), "config file not found")


# -- the video, end to end -------------------------------------------------------------------------------------


def test_every_event_validates_against_the_schema(video_lines, test_video, event_validator):
    events, _ = video_lines
    for event in events:
        event_validator.validate(event)
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert len({e["session"] for e in events}) == 1
    frames = [e for e in events if e["type"] == "frame"]
    assert [e["frame"] for e in frames] == list(range(len(test_video.faces)))
    # status around the frames: starting and online before the first, eos after the last
    assert [(e["type"], e.get("state")) for e in events if e["type"] != "frame"] == [
        ("status", "starting"), ("status", "online"), ("status", "eos"),
    ]  # fmt: skip
    assert events[1]["model"] == frames[0]["model"] and events[-1]["frames"] == len(frames)


def test_faces_are_found_on_frames_that_hold_one(video_run, test_video):
    events, _ = video_run
    expected = test_video.frames_with_faces
    found = [i for i in expected if len(events[i]["faces"]) >= test_video.faces[i]]
    assert len(found) >= 0.98 * len(expected), f"faces found on {len(found)} of {len(expected)} frames"
    blank = [i for i, n in enumerate(test_video.faces) if n == 0]
    assert all(not events[i]["faces"] for i in blank)


def test_face_ids_stay_stable_while_a_photo_stands_still(video_run, test_video):
    events, _ = video_run
    seen: list[set[int]] = []
    for segment in test_video.segments:
        ids = {tuple(sorted(f["id"] for f in events[i]["faces"])) for i in segment if events[i]["faces"]}
        assert len(ids) == 1, f"ids changed within frames {segment}: {ids}"
        (segment_ids,) = ids
        assert len(segment_ids) == test_video.faces[segment[0]] and None not in segment_ids
        seen.append(set(segment_ids))
    # A new photo is a new face: no id carries over to the next photo.
    assert all(not (a & b) for a, b in itertools.pairwise(seen))


def test_summary_line_reports_frames_per_second(video_run, test_video):
    _, stderr = video_run
    summary = [line for line in stderr.splitlines() if line.startswith("emotiond: eos:")]
    assert summary and f"{len(test_video.faces)} frames" in summary[0] and "frames/s" in summary[0]


def test_piping_into_head_ends_cleanly(emotiond, test_video, model_dir):
    cmd = f"set -o pipefail; '{emotiond}' run --source '{test_video.path}' --model '{model_dir}' | head -n 5"
    run = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 5
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr and "BrokenPipe" not in run.stderr


def test_emit_faces_only_reports_frames_with_faces(emotiond, test_video, model_dir):
    run = emotiond_run(emotiond, "run", "--source", str(test_video.path), "--model", str(model_dir), "--emit", "faces")
    assert run.returncode == 0, run.stderr
    events = frames_of(run.stdout)
    assert events and all(e["faces"] for e in events)
    assert len(events) <= len(test_video.frames_with_faces)


def test_image_directory_gives_one_event_per_image_naming_the_file(emotiond, image_dir, model_dir, event_validator):
    run = emotiond_run(emotiond, "run", "--source", str(image_dir), "--model", str(model_dir))
    assert run.returncode == 0, run.stderr
    events = frames_of(run.stdout)
    images = sorted(p for p in image_dir.iterdir() if p.suffix == ".jpg")
    assert [Path(e["file"]) for e in events] == images
    for event in events:
        event_validator.validate(event)
    assert all(face["id"] is None for e in events for face in e["faces"])
    assert sum(bool(e["faces"]) for e in events) >= len(images) - 1
    assert "2 skipped" in run.stderr  # README.txt and labels.csv


def test_annotate_writes_a_video_of_what_was_seen(emotiond, test_video, model_dir, tmp_path):
    out = tmp_path / "seen.mp4"
    run = emotiond_run(
        emotiond, "run", "--source", str(test_video.path), "--model", str(model_dir), "--annotate", str(out)
    )
    assert run.returncode == 0, run.stderr
    cap = cv2.VideoCapture(str(out))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, image = cap.read()
    cap.release()
    assert ok and image.shape == (480, 640, 3)
    assert frames == len(test_video.faces)


def test_annotate_writes_images_for_an_image_directory(emotiond, image_dir, model_dir, tmp_path):
    out = tmp_path / "seen"
    run = emotiond_run(emotiond, "run", "--source", str(image_dir), "--model", str(model_dir), "--annotate", str(out))
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in image_dir.glob("*.jpg"))


# -- bad input: one line, exit 2 ---------------------------------------------------------------------------------


def test_missing_source_is_one_line(emotiond, tmp_path):
    assert_one_line_error(emotiond_run(emotiond, "run", "--source", str(tmp_path / "nope.mp4")), "source not found")


def test_unopenable_source_is_one_line(emotiond):
    with socketserver.TCPServer(("127.0.0.1", 0), None) as probe:  # a free port; nothing listens once closed
        port = probe.server_address[1]
    run = emotiond_run(emotiond, "run", "--source", f"http://127.0.0.1:{port}/cam.mjpg")
    assert_one_line_error(run, "cannot open source")


def test_corrupt_video_file_is_one_line(emotiond, tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(range(256)) * 200)
    assert_one_line_error(emotiond_run(emotiond, "run", "--source", str(bad)), "corrupt.mp4")


def test_empty_image_directory_is_one_line(emotiond, tmp_path):
    (tmp_path / "notes.txt").write_text("no pictures here")
    assert_one_line_error(emotiond_run(emotiond, "run", "--source", str(tmp_path)), "no images in directory")


def test_missing_model_is_one_line(emotiond, test_video, tmp_path):
    run = emotiond_run(emotiond, "run", "--source", str(test_video.path), "--model", str(tmp_path / "no-model"))
    assert_one_line_error(run, "no-model")


def test_model_not_matching_its_manifest_is_one_line(emotiond, test_video, model_dir, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(model_dir, tampered)
    for path in tampered.rglob("*"):
        if path.is_file() and path.name != "manifest.json":
            with path.open("ab") as f:
                f.write(b"tampered")
    run = emotiond_run(emotiond, "run", "--source", str(test_video.path), "--model", str(tampered))
    line = assert_one_line_error(run)
    assert "sha" in line.lower() or "manifest" in line.lower() or "hash" in line.lower(), line


def test_unknown_publisher_is_one_line(emotiond, test_video):
    run = emotiond_run(emotiond, "run", "--source", str(test_video.path), "--output", "carrier-pigeon")
    assert_one_line_error(run, "carrier-pigeon")


# -- lifecycle: signals and systemd ------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_daemon_cleanly(emotiond, test_video, model_dir, sig):
    cmd = [str(emotiond), "run", "--source", str(test_video.path), "--model", str(model_dir), "--realtime"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        while json.loads(proc.stdout.readline())["type"] != "frame":  # status events first (starting, online)
            pass
        proc.send_signal(sig)
        start = time.monotonic()
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - start < 2.0
    assert proc.returncode == 0, err
    assert "emotiond: stopped:" in err and "Traceback" not in err
    lines = [json.loads(line) for line in out.splitlines()]  # no half-written line
    assert lines[-1]["type"] == "status" and lines[-1]["state"] == "stopping"
    assert all(e["type"] == "frame" for e in lines[:-1])


def test_systemd_hears_ready_and_stopping(emotiond, test_video, model_dir, tmp_path):
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        env = {**os.environ, "NOTIFY_SOCKET": address}
        cmd = [str(emotiond), "run", "--source", str(test_video.path), "--model", str(model_dir)]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False)
        assert run.returncode == 0, run.stderr
        sock.settimeout(1.0)
        messages = []
        with contextlib.suppress(TimeoutError):
            while True:
                messages.append(sock.recv(4096).decode())
    ready = next(i for i, m in enumerate(messages) if m.startswith("READY=1\nSTATUS=watching"))
    assert messages[:ready] == ["STATUS=starting", "STATUS=online: " + messages[ready].split("STATUS=")[1]]
    assert "STOPPING=1" in messages[ready:]


def test_fetch_models_reports_the_verified_cached_model(emotiond, detector_model, tmp_path):
    shutil.copy(detector_model, tmp_path / detector_model.name)
    env = {**os.environ, "EMOTIOND_CACHE_DIR": str(tmp_path)}
    run = subprocess.run([str(emotiond), "fetch-models"], capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"ok: {tmp_path / detector_model.name}"


def test_fetch_models_refuses_a_cached_model_with_the_wrong_hash(emotiond, detector_model, tmp_path):
    (tmp_path / detector_model.name).write_bytes(detector_model.read_bytes()[:-10])
    env = {**os.environ, "EMOTIOND_CACHE_DIR": str(tmp_path)}
    run = subprocess.run([str(emotiond), "fetch-models"], capture_output=True, text=True, env=env, check=False)
    assert_one_line_error(run, "SHA-256")


def test_a_shipped_model_set_is_picked_by_its_name(emotiond, tmp_path, test_video):
    run = emotiond_run(emotiond, "run", "--source", str(test_video.path), "--model", "default", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    online = next(e for e in map(json.loads, run.stdout.splitlines()) if e.get("state") == "online")
    assert online["model"] == load_manifest(DEFAULT_MODEL_DIR)[0].model_id
    missing = emotiond_run(emotiond, "run", "--source", str(test_video.path), "--model", "huge", cwd=tmp_path)
    assert_one_line_error(missing, "model not found: huge", "shipped sets: default")


def test_a_bare_port_in_yaml_is_an_http_address(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output:\n  http: 8080\n")
    assert load_config(path).output.http == "8080"
