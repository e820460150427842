"""The MQTT publisher's cost, on a real Mosquitto broker on loopback: `python -m benchmarks.mqtt [--json OUT]`.

1. Throughput: `--events` frame events (one face each, ~1 KB, as the daemon writes them) published back to back
   through runtime's MqttPublisher (queue large enough to drop none), one paho subscriber on PREFIX/CAMERA/frame:
   events per second from the first publish() to the last event received, the cost of publish() itself (what
   the pipeline pays, p50/p99 in microseconds), and the MQTT messages per event (frame and face).
2. The daemon with and without it: `emotiond run` on the sample clip (repeated `--repeat` times, every frame,
   as fast as possible), events to stdout (/dev/null) alone, and to stdout plus mqtt:// with a subscriber
   reading everything; rounds interleaved, the frame rate from the daemon's own summary line, and the ratio
   with/without as the median of the rounds' own ratios (on a shared machine absolute rates move, ratios less).

Needs `mosquitto` (Debian: apt-get install mosquitto mosquitto-clients).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.engines import REPO, machine_facts, percentiles
from runtime.config import MqttConfig
from runtime.events import encode
from runtime.labels import LABELS
from runtime.mqtt_topics import Router
from runtime.publishers import make_publisher

RESULTS = REPO / "benchmarks" / "results"
SAMPLE = REPO / "samples" / "faces.mp4"
BASE = "emotiond/bench"


def start_broker(folder: Path) -> tuple[subprocess.Popen, int]:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = folder / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", "log_type error"]
    config.write_text("\n".join(lines + (["user root"] if os.geteuid() == 0 else [])) + "\n")
    proc = subprocess.Popen([mosquitto, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("mosquitto did not start") from None
            time.sleep(0.02)


def mosquitto_version(mosquitto: str) -> str:
    run = subprocess.run([mosquitto, "-h"], capture_output=True, text=True, timeout=30, check=False)
    return ((run.stdout + run.stderr).splitlines() or ["unknown"])[0]


class Counter:
    """A paho subscriber counting messages on `topic`; `done` is set at `expect` messages."""

    def __init__(self, port: int, topic: str, expect: int = 0) -> None:
        self.count, self.expect, self.last_at = 0, expect, 0.0
        self.done, ready = threading.Event(), threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe(topic)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(15):
            raise RuntimeError("the subscriber could not subscribe")

    def _message(self, *_args) -> None:
        self.count += 1
        self.last_at = time.perf_counter()
        if self.count == self.expect:
            self.done.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def frame_event(i: int) -> bytes:
    probs = dict(zip(LABELS, (0.02, 0.01, 0.03, 0.87, 0.02, 0.01, 0.04), strict=True))
    face = {"id": 4, "box": {"x": 262, "y": 142, "w": 119, "h": 118},
            "box_norm": {"x": 0.4094, "y": 0.2958, "w": 0.1859, "h": 0.2458}, "score": 0.9312, "emotion": "happy",
            "confidence": 0.87, "probs": probs}  # fmt: skip
    return encode({
        "type": "frame", "schema": 1, "session": "3f1c9b2e8a4d4c0e9b7a6d5e4f3a2b1c", "seq": i,
        "time": "2025-12-01T09:24:03.250Z", "unix": 1764581043.25, "mono_ms": 4215331.402, "source": "/dev/video0",
        "frame": i, "file": None, "size": {"width": 640, "height": 480}, "model": "bench",
        "latency_ms": {"detect": 2.641, "classify": 0.284, "total": 3.108}, "faces": [face],
    })  # fmt: skip


def messages_per_event(lines: list[bytes]) -> int:
    """In a steady state: frame and face (the faces/emotion summaries go only when they change)."""
    router = Router(BASE)
    router.messages(lines[0])
    return len(router.messages(lines[-1]))


def throughput(port: int, events: int) -> dict:
    lines = [frame_event(i) for i in range(events)]
    counter = Counter(port, f"{BASE}/frame", expect=events)
    publisher = make_publisher(f"mqtt://127.0.0.1:{port}/emotiond", MqttConfig(camera="bench", queue=events))
    costs_us = []
    started = time.perf_counter()
    for line in lines:
        t0 = time.perf_counter_ns()
        publisher.publish(line)
        costs_us.append((time.perf_counter_ns() - t0) / 1e3)
    finished = counter.done.wait(120)
    seconds = counter.last_at - started
    stats = publisher.stats()
    time.sleep(0.2)
    publisher.close()
    counter.close()
    return {
        "events": events, "received": counter.count, "complete": finished, "seconds": round(seconds, 3),
        "events_per_s": round(counter.count / seconds, 1), "bytes_per_event": len(lines[0]),
        "messages_per_event": messages_per_event(lines),
        "publish_call_us": {k: round(v, 2) for k, v in percentiles(costs_us).items()},
        "dropped_total": stats["dropped_total"],
    }  # fmt: skip


def repeated_clip(folder: Path, times: int) -> Path:
    cap = cv2.VideoCapture(str(SAMPLE))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while (ok_frame := cap.read())[0]:
        frames.append(ok_frame[1])
    cap.release()
    path = folder / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, frames[0].shape[1::-1])
    for frame in frames * times:
        writer.write(frame)
    writer.release()
    return path


def daemon_fps(clip: Path, outputs: list[str], model: Path | None) -> float:
    emotiond = Path(sys.executable).parent / "emotiond"
    cmd = [str(emotiond), "run", "--source", str(clip)] + [a for out in outputs for a in ("--output", out)]
    cmd += ["--model", str(model)] if model else []
    run = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600, check=False)
    found = re.search(r"\(([\d.]+) frames/s\)", run.stderr)
    if run.returncode != 0 or not found:
        raise RuntimeError(f"emotiond failed ({run.returncode}): {run.stderr.strip()[-500:]}")
    return float(found.group(1))


def with_and_without(port: int, clip: Path, rounds: int, model: Path | None) -> dict:
    spec = f"mqtt://127.0.0.1:{port}/emotiond"
    without, with_mqtt, received = [], [], []
    for _ in range(rounds):
        without.append(daemon_fps(clip, ["stdout"], model))
        counter = Counter(port, "emotiond/+/frame")
        with_mqtt.append(daemon_fps(clip, ["stdout", spec], model))
        time.sleep(0.2)
        received.append(counter.count)
        counter.close()
    ratios = [w / b for w, b in zip(with_mqtt, without, strict=True)]
    return {
        "clip_frames": int(cv2.VideoCapture(str(clip)).get(cv2.CAP_PROP_FRAME_COUNT)), "rounds": rounds,
        "fps_without": without, "fps_with_mqtt": with_mqtt, "frames_received_by_subscriber": received,
        "ratio": round(statistics.median(ratios), 3),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.mqtt", description=__doc__.splitlines()[0],
                                 epilog="\n".join(__doc__.splitlines()[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--events", type=int, default=20000, help="events for the throughput run (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=5, help="daemon rounds with and without (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=4, help="the sample clip this many times over (default %(default)s)")
    ap.add_argument("--model", type=Path, help="model set folder for the daemon (default: the shipped one)")
    ap.add_argument("--json", type=Path, help="write the results here (default: print only)")
    args = ap.parse_args(argv)
    if min(args.events, args.rounds, args.repeat) < 1:
        print("error: --events, --rounds and --repeat must be at least 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="emotiond-mqtt-bench-") as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            result = {
                "machine": machine_facts(),
                "mosquitto": mosquitto_version(broker.args[0]),
                "throughput": throughput(port, args.events),
                "daemon": with_and_without(port, repeated_clip(Path(tmp), args.repeat), args.rounds, args.model),
            }
        finally:
            broker.terminate()
            broker.wait(10)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
