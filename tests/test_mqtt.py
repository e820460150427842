"""The MQTT publisher with the real daemon on a real clip and a real Mosquitto broker (tests/mqtt_broker.py): every
frame event arrives in order, per-face topics follow the tracked faces, `status` is retained and the Last Will sets
it `offline` when the daemon is killed, the daemon keeps its frame rate while the broker is down and publishes again
after it restarts, Home Assistant discovery, credentials and TLS, and every refusal is one line and exit 2."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mqtt_broker import MOSQUITTO, MOSQUITTO_SUB, PASSWORD, USER, Broker, Subscriber, make_tls_files, retained

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (.ci/run installs it; docs/mqtt.md)"),
]
TIMEOUT = 120
BASE = "emotiond/door"


def daemon(emotiond: Path, model_dir: Path, clip: Path, config: Path, *outputs: str, realtime: bool = False):
    cmd = [str(emotiond), "run", "--config", str(config), "--source", str(clip), "--model", str(model_dir)]
    cmd += [arg for out in outputs for arg in ("--output", out)] + (["--realtime"] if realtime else [])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=clip.parent)


def write_config(tmp_path: Path, stats_interval_s: float = 10.0, **mqtt) -> Path:
    path = tmp_path / "config.yaml"
    settings = {"events": {"stats_interval_s": stats_interval_s}, "output": {"mqtt": {"camera": "door", **mqtt}}}
    path.write_text(yaml.safe_dump(settings))
    return path


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    return out, err


def events(payloads: list[bytes]) -> list[dict]:
    return [json.loads(p) for p in payloads]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def broker(tmp_path):
    """broker(kind="plain", tls=None) -> a running Broker, stopped after the test whatever happened."""
    brokers: list[Broker] = []

    def start(kind: str = "plain", tls=None) -> Broker:
        brokers.append(Broker(tmp_path, kind, tls))
        return brokers[-1]

    yield start
    for b in brokers:
        b.stop()


def test_every_frame_event_arrives_in_order_with_its_faces(
    emotiond, model_dir, detector_model, test_video, tmp_path, broker, event_validator
):
    b = broker()
    paho_sub = Subscriber(b.port, "emotiond/#")
    cli_sub = subprocess.Popen(
        [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(b.port), "-v", "-t", f"{BASE}/frame", "-C", str(len(test_video.faces))],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)  # mosquitto_sub has subscribed
    spec = f"mqtt://127.0.0.1:{b.port}/emotiond"
    out, err = finish(daemon(emotiond, model_dir, test_video.path, write_config(tmp_path), "stdout", spec))
    stdout_frames = [json.loads(line) for line in out.splitlines() if '"type":"frame"' in line]
    assert paho_sub.wait_for(lambda: b"offline" in paho_sub.on(f"{BASE}/status"), timeout=10)
    frames = events(paho_sub.on(f"{BASE}/frame"))
    assert frames == stdout_frames and [f["frame"] for f in frames] == list(range(len(test_video.faces)))
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(seqs)
    for event in frames:
        assert not list(event_validator.iter_errors(event)), event
    # per-face topics: one message per tracked face per frame, the face as in the frame event
    head = ("session", "seq", "frame", "time", "unix", "mono_ms")
    expected = [(f"{BASE}/face/{face['id']}", f["seq"], f["frame"], face) for f in frames for face in f["faces"]]
    per_face = [(t, json.loads(p)) for t, p, _ in paho_sub.messages if t.startswith(f"{BASE}/face/")]
    got = [(t, m["seq"], m["frame"], {k: v for k, v in m.items() if k not in head}) for t, m in per_face]
    assert got == expected and len(got) >= sum(n > 0 for n in test_video.faces) > 0
    states = [e["state"] for e in events(paho_sub.on(f"{BASE}/state"))]
    assert states[0] in ("starting", "online") and "online" in states and states[-1] == "eos", states
    assert paho_sub.on(f"{BASE}/status") == [b"online", b"offline"]
    assert paho_sub.on(f"{BASE}/faces")[-1] == b"0" and paho_sub.on(f"{BASE}/emotion")[-1] == b"none"
    # the reference client saw the same frames (and left after the last: -C)
    lines = cli_sub.communicate(timeout=10)[0].splitlines()
    cli_frames = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith(f"{BASE}/frame ")]
    assert cli_frames == frames
    paho_sub.close()
    assert err.count("\n") == 1 and err.startswith("emotiond: eos: "), "nothing to say about a broker that is up"


def test_status_is_retained_and_the_last_will_says_offline_after_sigkill(
    emotiond, model_dir, detector_model, long_clip, tmp_path, broker
):
    b = broker()
    proc = daemon(emotiond, model_dir, long_clip, write_config(tmp_path), f"mqtt://127.0.0.1:{b.port}/emotiond",
                  realtime=True)  # fmt: skip
    try:
        watcher = Subscriber(b.port, f"{BASE}/#")
        assert watcher.wait_for(lambda: len(watcher.on(f"{BASE}/frame")) >= 5, timeout=60), "no frames"
        assert retained(b.port, f"{BASE}/status") == {f"{BASE}/status": b"online"}, "a late subscriber reads online"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert watcher.wait_for(lambda: watcher.on(f"{BASE}/status")[-1:] == [b"offline"], timeout=10), "no will"
        assert retained(b.port, f"{BASE}/status") == {f"{BASE}/status": b"offline"}
        watcher.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def frame_rate(frames: list[dict], start_ms: float, end_ms: float) -> float:
    inside = [f for f in frames if start_ms <= f["mono_ms"] < end_ms]
    return len(inside) / ((end_ms - start_ms) / 1000)


def test_the_daemon_keeps_its_frame_rate_while_the_broker_is_down_and_publishes_again_after(
    emotiond, model_dir, detector_model, long_clip, tmp_path, broker, event_validator
):
    b = broker()
    spec = f"mqtt://127.0.0.1:{b.port}/emotiond"
    config = write_config(tmp_path, stats_interval_s=1.0, queue=16, reconnect_initial_s=0.1, reconnect_max_s=0.4)
    proc = daemon(emotiond, model_dir, long_clip, config, "stdout", spec, realtime=True)
    lines: list[dict] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(line) for line in proc.stdout), daemon=True)
    reader.start()
    sub = Subscriber(b.port, f"{BASE}/#")
    assert sub.wait_for(lambda: len(sub.on(f"{BASE}/frame")) >= 25, timeout=60), "no frames before the outage"
    down_ms = time.monotonic_ns() / 1e6
    b.stop()
    time.sleep(3.0)
    up_ms = time.monotonic_ns() / 1e6
    before_restart = len(sub.on(f"{BASE}/frame"))
    b.start()
    assert sub.wait_for(lambda: len(sub.on(f"{BASE}/frame")) > before_restart + 25, timeout=30), "no frames after"
    assert retained(b.port, f"{BASE}/status") == {f"{BASE}/status": b"online"}, "said again to the new broker"
    proc.wait(timeout=TIMEOUT)
    reader.join(timeout=10)
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    frames = [e for e in lines if e["type"] == "frame"]
    assert [f["frame"] for f in frames] == list(range(len(frames))), "stdout lost nothing"
    before = frame_rate(frames, down_ms - 2000, down_ms)
    during = frame_rate(frames, down_ms, up_ms)
    assert during >= 0.8 * before, f"{during:.1f} frames/s with the broker down, {before:.1f} before"
    # the link's own status events, and stats that count the outage
    link = [(e["state"], e.get("attempt")) for e in lines if e["type"] == "status" and e.get("output") == spec]
    assert link[0] == ("online", None) and ("offline", None) in link and link[-1][0] == "online", link
    assert any(state == "reconnecting" for state, _ in link)
    stats = [e["outputs"][spec] for e in lines if e["type"] == "stats"]
    assert any(s["connected"] == 0 for s in stats) and stats[-1]["connected"] == 1 and stats[-1]["reconnects"] >= 1
    assert stats[-1]["dropped_total"] > 0, "a 16-event queue overflowed in 3 s at 25 frames/s"
    for event in lines:
        assert not list(event_validator.iter_errors(event)), event
    got = events(sub.on(f"{BASE}/frame"))
    assert [f["seq"] for f in got] == sorted(f["seq"] for f in got), "in order, across the outage"
    assert got[-1]["frame"] == frames[-1]["frame"]
    assert retained(b.port, f"{BASE}/status") == {f"{BASE}/status": b"offline"}, "a clean exit says so"
    assert "cannot reach the broker" in err or "connection to the broker lost" in err
    sub.close()


def test_home_assistant_discovery_configs_are_retained_json_naming_the_state_topics(
    emotiond, model_dir, detector_model, test_video, tmp_path, broker
):
    b = broker()
    config = write_config(tmp_path, homeassistant=True)
    finish(daemon(emotiond, model_dir, test_video.path, config, f"mqtt://127.0.0.1:{b.port}/emotiond"))
    configs = retained(b.port, "homeassistant/#")
    assert set(configs) == {
        "homeassistant/sensor/emotiond_door/emotion/config",
        "homeassistant/sensor/emotiond_door/faces/config",
    }
    parsed = {topic.split("/")[3]: json.loads(payload) for topic, payload in configs.items()}
    assert parsed["emotion"]["state_topic"] == f"{BASE}/emotion" and parsed["faces"]["state_topic"] == f"{BASE}/faces"
    assert "happy" in parsed["emotion"]["options"] and parsed["emotion"]["device_class"] == "enum"
    for obj, sensor in parsed.items():
        assert sensor["availability_topic"] == f"{BASE}/status" and sensor["unique_id"] == f"emotiond_door_{obj}"
        assert sensor["device"]["identifiers"] == ["emotiond_door"]
    values = retained(b.port, f"{BASE}/#")
    assert values == {f"{BASE}/status": b"offline", f"{BASE}/faces": b"0", f"{BASE}/emotion": b"none",
                      f"{BASE}/state": values[f"{BASE}/state"]}  # fmt: skip
    assert json.loads(values[f"{BASE}/state"])["state"] == "eos"


def test_a_wrong_password_is_one_error_line_and_exit_2(emotiond, model_dir, test_video, tmp_path, broker):
    b = broker("password")
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password\n")
    config = write_config(tmp_path, password_file=str(wrong))
    proc = daemon(emotiond, model_dir, test_video.path, config, f"mqtt://{USER}@127.0.0.1:{b.port}/emotiond")
    out, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, out, err.count("\n")) == (2, "", 1), err
    assert err.startswith(f"error: output 'mqtt://{USER}@127.0.0.1:{b.port}/emotiond': the broker refused"), err
    assert "not the password" not in err


def test_the_right_password_and_tls_with_a_client_certificate_publish(
    emotiond, model_dir, detector_model, test_video, tmp_path, broker, tls_files
):
    b = broker("password")
    right = tmp_path / "mqtt-password"
    right.write_text(PASSWORD + "\n")
    sub = Subscriber(b.port, f"{BASE}/frame", auth=True)
    config = write_config(tmp_path, password_file=str(right))
    out, err = finish(daemon(emotiond, model_dir, test_video.path, config, f"mqtt://{USER}@127.0.0.1:{b.port}/emotiond",
                             "stdout"))  # fmt: skip
    assert PASSWORD not in out + err
    assert sub.wait_for(lambda: len(sub.on(f"{BASE}/frame")) == len(test_video.faces), timeout=10)
    sub.close()
    t = broker("tls", tls_files)
    sub = Subscriber(t.port, f"{BASE}/frame", tls=tls_files)
    config = write_config(
        tmp_path, ca_file=str(tls_files["ca"]), cert_file=str(tls_files["client_cert"]),
        key_file=str(tls_files["client_key"]),
    )  # fmt: skip
    finish(daemon(emotiond, model_dir, test_video.path, config, f"mqtts://localhost:{t.port}/emotiond"))
    assert sub.wait_for(lambda: len(sub.on(f"{BASE}/frame")) == len(test_video.faces), timeout=10)
    sub.close()


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("no host", "malformed MQTT URL"),
        ("bad port", "malformed MQTT URL"),
        ("wildcard prefix", "topic prefix"),
        ("password in URL", "use output.mqtt.password_file"),
        ("TLS file missing", "output.mqtt.ca_file not found"),
        ("TLS files on mqtt://", "is not TLS"),
        ("unknown CA", "the broker's certificate failed verification"),
        ("password file missing", "output.mqtt.password_file not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(emotiond, model_dir, test_video, tmp_path, broker, tls_files, kind, words):
    port = broker("tls", tls_files).port if kind == "unknown CA" else 1883
    spec, mqtt = {
        "no host": ("mqtt:///emotiond", {}),
        "bad port": ("mqtt://127.0.0.1:99999/emotiond", {}),
        "wildcard prefix": ("mqtt://127.0.0.1/emotiond/+", {}),
        "password in URL": ("mqtt://user:hunter2@127.0.0.1/emotiond", {}),
        "TLS file missing": ("mqtts://localhost/emotiond", {"ca_file": str(tmp_path / "missing.crt")}),
        "TLS files on mqtt://": ("mqtt://localhost/emotiond", {"ca_file": str(tls_files["ca"])}),
        "unknown CA": (f"mqtts://localhost:{port}/emotiond", {"ca_file": str(tls_files["other_ca"]),
                       "cert_file": str(tls_files["client_cert"]), "key_file": str(tls_files["client_key"])}),
        "password file missing": ("mqtt://u@localhost/emotiond", {"password_file": str(tmp_path / "nope")}),
    }[kind]  # fmt: skip
    proc = daemon(emotiond, model_dir, test_video.path, write_config(tmp_path, **mqtt), "stdout", spec)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, out, err.count("\n")) == (2, "", 1), err
    assert err.startswith("error: output") and words in err and "hunter2" not in err, err


@contextlib.contextmanager
def silent_broker() -> Iterator[str]:
    """An mqtt:// spec whose listener has a full backlog: a connect to it hangs until its timeout."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    filler = socket.create_connection(silent.getsockname())
    try:
        yield f"mqtt://127.0.0.1:{silent.getsockname()[1]}/emotiond"
    finally:
        filler.close()
        silent.close()


def test_sigterm_ends_the_daemon_within_2_s_while_the_broker_does_not_answer(
    emotiond, model_dir, detector_model, long_clip, tmp_path
):
    # attempts of 6 s each: the daemon starts after the first (a broker that does not answer is not fatal), and
    # when it stops the second is under way for several seconds more
    config = write_config(tmp_path, connect_timeout_s=6.0, reconnect_initial_s=0.05, reconnect_max_s=0.05)
    with silent_broker() as spec:
        proc = daemon(emotiond, model_dir, long_clip, config, "stdout", spec, realtime=True)
        for line in proc.stdout:
            if '"type":"frame"' in line:
                break
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        seconds = time.monotonic() - started
    assert proc.returncode == 0, err
    assert seconds < 2.0, f"{seconds:.2f} s to stop"
    assert re.search(r"cannot reach the broker: timed out|no answer from the broker", err), err


def test_sigterm_while_waiting_for_a_silent_broker_at_start_ends_within_2_s(emotiond, model_dir, long_clip, tmp_path):
    config = write_config(tmp_path, connect_timeout_s=20.0)  # the first connect waits its whole timeout
    with silent_broker() as spec:
        proc = daemon(emotiond, model_dir, long_clip, config, "stdout", spec, realtime=True)
        time.sleep(3.0)  # past the imports, into the broker's first answer
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        seconds = time.monotonic() - started
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert seconds < 2.0, f"{seconds:.2f} s to stop"


def test_the_benchmark_quick_mode_reports_throughput_and_the_frame_rate_ratio(model_dir, detector_model, tmp_path):
    from benchmarks import mqtt as bench

    out = tmp_path / "mqtt.json"
    quick = ["--events", "300", "--rounds", "1", "--repeat", "1", "--model", str(model_dir), "--json", str(out)]
    assert bench.main(quick) == 0
    result = json.loads(out.read_text())
    t = result["throughput"]
    assert (t["events"], t["received"], t["complete"], t["dropped_total"]) == (300, 300, True, 0)
    assert t["events_per_s"] > 0 and t["messages_per_event"] >= 2, "a frame and its face at least"
    assert 0 <= t["publish_call_us"]["p50"] <= t["publish_call_us"]["p99"] <= t["publish_call_us"]["max"]
    daemon = result["daemon"]
    assert daemon["frames_received_by_subscriber"] == [daemon["clip_frames"]] and daemon["ratio"] > 0
    assert abs(daemon["ratio"] - daemon["fps_with_mqtt"][0] / daemon["fps_without"][0]) < 0.01
