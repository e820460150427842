"""The MQTT publisher in process, against a real Mosquitto broker: publish() never waits, whatever the broker does;
its queue drops the oldest and counts them; a broker down at start is not fatal and is used once it is up, with a
status event per attempt; a reload that changes output.mqtt keeps the camera `online`; what the publisher refuses
(URL, password, TLS files) is one UserError line that never shows a password, in `run` and `check-config` alike."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mqtt_broker import MOSQUITTO, Broker, Subscriber, retained
from socket_clients import free_port

from runtime.config import MqttConfig
from runtime.errors import UserError
from runtime.events import EventBuilder, encode
from runtime.mqtt import default_camera
from runtime.mqtt_link import WINDOW
from runtime.outputs import Outputs
from runtime.publishers import check_publishers, make_publisher

needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (.ci/run installs it)")
BASE = "emotiond/door"


@pytest.fixture
def broker(tmp_path):
    """broker(port=None) -> a running Broker without auth, stopped after the test whatever happened."""
    brokers: list[Broker] = []

    def start(port: int | None = None) -> Broker:
        brokers.append(Broker(tmp_path, port=port))
        return brokers[-1]

    yield start
    for b in brokers:
        if b.proc is not None:
            os.kill(b.proc.pid, signal.SIGCONT)  # a test that stopped it and failed
        b.stop()


def frame_line(index: int) -> bytes:
    return encode({"type": "frame", "schema": 1, "session": "s", "seq": index, "frame": index, "faces": []})


@needs_broker
def test_a_broker_down_at_start_is_not_fatal_publish_never_waits_and_the_newest_events_go_once_it_is_up(broker):
    port = free_port()
    settings = MqttConfig(camera="door", queue=5, reconnect_initial_s=1.0, reconnect_max_s=1.0)
    started = time.monotonic()
    publisher = make_publisher(f"mqtt://127.0.0.1:{port}/emotiond", settings)
    assert time.monotonic() - started < 1.0, "a refused connection is not waited for"
    reports: list[tuple] = []
    publisher.set_status(lambda state, detail, **fields: reports.append((state, detail, fields)))
    lines = [frame_line(i) for i in range(1000)]
    started = time.perf_counter()
    for line in lines:
        publisher.publish(line)
    per_publish_us = (time.perf_counter() - started) / len(lines) * 1e6
    assert per_publish_us < 200, f"{per_publish_us:.0f} us per publish with the broker away"
    assert publisher.stats() == {"queued": 5, "dropped_total": 995, "sent_total": 0, "connected": 0, "reconnects": 0}
    b = broker(port)
    try:
        sub = Subscriber(b.port, f"{BASE}/frame")
        assert sub.wait_for(lambda: len(sub.on(f"{BASE}/frame")) == 5, timeout=10)
        assert [json.loads(p)["frame"] for p in sub.on(f"{BASE}/frame")] == [995, 996, 997, 998, 999]
        time.sleep(0.2)
        assert publisher.stats()["connected"] == 1 and publisher.stats()["sent_total"] == 5
        states = [(state, fields.get("attempt"), fields["output"]) for state, _, fields in reports]
        assert states[0] == ("reconnecting", 1, f"mqtt://127.0.0.1:{port}/emotiond")
        assert states[-1][0] == "online" and states[-1][1] == len(states) - 1, states
        sub.close()
    finally:
        publisher.close()


@needs_broker
def test_a_stalled_broker_fills_our_bounded_queue_not_memory_and_gets_the_newest_events_when_it_resumes(broker):
    b = broker()
    sub = Subscriber(b.port, f"{BASE}/frame")
    publisher = make_publisher(f"mqtt://127.0.0.1:{b.port}/emotiond", MqttConfig(camera="door", queue=100))
    pad = "x" * 2000  # 20000 events of 2 KB: more than the kernel's socket buffers hold
    lines = [encode({"type": "frame", "seq": i, "frame": i, "faces": [], "pad": pad}) for i in range(20000)]
    os.kill(b.proc.pid, signal.SIGSTOP)  # the broker reads nothing more: TCP backpressure
    try:
        spent = 0.0
        for start in range(0, len(lines), 50):  # 10000 events/s: a pace the publisher's thread keeps up with
            started = time.perf_counter()
            for line in lines[start : start + 50]:
                publisher.publish(line)
            spent += time.perf_counter() - started
            time.sleep(0.005)
        per_publish_us = spent / len(lines) * 1e6
        time.sleep(1.0)  # the publisher's thread hands over what the socket takes
        stats = publisher.stats()
        assert stats["dropped_total"] > 0 and stats["queued"] <= 100 and stats["connected"] == 1, stats
        assert publisher.link.inflight <= WINDOW, "what waits inside paho is bounded too"
        assert per_publish_us < 200, f"{per_publish_us:.0f} us per publish with the broker stalled"
        os.kill(b.proc.pid, signal.SIGCONT)
        assert sub.wait_for(lambda: b'"frame":19999,' in b"".join(sub.on(f"{BASE}/frame")[-1:]), timeout=30)
        frames = [json.loads(p)["frame"] for p in sub.on(f"{BASE}/frame")]
        assert frames == sorted(frames) and len(frames) < len(lines), "in order, the oldest dropped"
    finally:
        publisher.close()
        sub.close()


@needs_broker
def test_a_reload_with_new_mqtt_settings_rebuilds_the_publisher_and_the_camera_stays_online(broker):
    b = broker()
    spec = f"mqtt://127.0.0.1:{b.port}/emotiond"
    sub = Subscriber(b.port, f"{BASE}/status")
    builder = EventBuilder("s", "clip.mp4", "m")
    outputs = Outputs([spec], MqttConfig(camera="door"))
    try:
        outputs.publish(encode(builder.status("online", "watching")))
        assert sub.wait_for(lambda: sub.on(f"{BASE}/status") == [b"online"], timeout=10)
        old = outputs.by_spec[spec]
        assert outputs.reconfigure([spec], MqttConfig(camera="door")) == [], "same settings: kept"
        assert outputs.reconfigure([spec], MqttConfig(camera="door", queue=10)) == [f"+{spec}", f"-{spec}"]
        assert outputs.by_spec[spec] is not old and outputs.by_spec[spec].settings.queue == 10
        outputs.publish(encode(builder.status("online", "reloaded")))  # what the service says after a reload
        assert sub.wait_for(lambda: len(sub.on(f"{BASE}/status")) == 2, timeout=10)
        time.sleep(0.3)
        assert sub.on(f"{BASE}/status") == [b"online", b"online"], "never offline in between"
        outputs.close()
        assert retained(b.port, f"{BASE}/status") == {f"{BASE}/status": b"offline"}, "a clean close says so"
    finally:
        outputs.close()
        sub.close()


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("mqtt://", "no broker host"),
        ("mqtt://host:0/x", "port must be 1..65535"),
        ("mqtt://host:port/x", "malformed MQTT URL"),
        ("mqtt://host/a//b", "topic prefix"),
        ("mqtt://host/a/#", "no ?query or #fragment"),
        ("mqtt://host/x?qos=1", "no ?query or #fragment"),
        ("mqtt://me:secret@host/x", "password in the URL"),
        ("mqtts://me:secret@host/x", "password in the URL"),
    ],
)
def test_malformed_urls_are_one_user_error_that_never_shows_a_password(spec, words):
    for check in (make_publisher, lambda s: check_publishers([s])):
        with pytest.raises(UserError) as caught:
            check(spec)
        message = str(caught.value)
        assert message.startswith("output '") and words in message and "secret" not in message, message
        assert "\n" not in message


def test_settings_that_cannot_work_are_refused_before_connecting(tmp_path):
    password = tmp_path / "password"
    password.write_text("hunter2\n")
    empty = tmp_path / "empty"
    empty.write_text("")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        ("mqtt://host/x", MqttConfig(password_file=str(password)), "needs a user"),
        ("mqtt://u@host/x", MqttConfig(password_file=str(empty)), "is empty"),
        ("mqtt://u@host/x", MqttConfig(password_file=str(tmp_path / "none")), "password_file not found"),
        ("mqtts://host/x", MqttConfig(ca_file=str(garbage)), "ca_file: cannot load"),
        ("mqtt://host/x", MqttConfig(cert_file=str(garbage), key_file=str(garbage)), "is not TLS"),
        ("mqtt://host/x, mqtt://HOST:1883/x", None, "are the same address"),
    ]
    for spec, settings, words in cases:
        with pytest.raises(UserError, match=words) as caught:
            check_publishers(spec.split(", "), settings)
        assert "hunter2" not in str(caught.value)


def test_check_config_refuses_a_missing_tls_file_and_passes_a_good_mqtt_config_without_connecting(tmp_path):
    emotiond = Path(sys.executable).parent / "emotiond"
    config = tmp_path / "config.yaml"
    spec = f"mqtts://localhost:{free_port()}/emotiond"  # nothing listens: check-config never connects
    config.write_text(f"output:\n  publishers: [{spec}]\n  mqtt:\n    ca_file: {tmp_path}/ca.pem\n")
    run = subprocess.run([str(emotiond), "check-config", "--config", str(config)], capture_output=True, text=True,
                         timeout=120, check=False)  # fmt: skip
    assert (run.returncode, run.stdout, run.stderr.count("\n")) == (2, "", 1), run.stderr
    assert run.stderr.startswith("error: output.mqtt.ca_file not found")
    config.write_text(f"output:\n  publishers: [stdout, {spec}]\n  mqtt:\n    homeassistant: true\n")
    run = subprocess.run([str(emotiond), "check-config", "--config", str(config)], capture_output=True, text=True,
                         timeout=120, check=False)  # fmt: skip
    assert (run.returncode, run.stdout) == (0, f"ok: {config}\n"), run.stderr


def test_the_default_camera_is_the_host_name_plus_the_unit_instance(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "hall-pi.example.org")
    monkeypatch.delenv("EMOTIOND_INSTANCE", raising=False)
    assert default_camera() == "hall-pi"
    monkeypatch.setenv("EMOTIOND_INSTANCE", "front door")
    assert default_camera() == "hall-pi-front_door"
