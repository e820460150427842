"""SIGTERM with every kind of output stalled at once, the real daemon on a real clip: stalled Unix socket and TCP
subscribers, a real Mosquitto broker that stops answering (SIGSTOP) and a stalled /events client of the page. Each
output waits a grace for its slow readers at close; the daemon must still stop within 2 s, not N graces, and a
healthy subscriber beside the stalled ones still gets the last events."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import pytest
import yaml
from mqtt_broker import MOSQUITTO, Broker, Subscriber
from socket_clients import Reader, connect_when_up, free_port, wait_for

from benchmarks.http import stalled, wait_up

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (.ci/run installs it; docs/mqtt.md)"),
]
TIMEOUT = 120
SOCKETS = 3  # stalled Unix sockets, and as many TCP ports: 6 x 0.25 s of grace, one after another, is over 2 s


def test_sigterm_ends_within_2_s_with_every_output_stalled_at_once(
    emotiond, model_dir, detector_model, long_clip, tmp_path
):
    broker = Broker(tmp_path)
    watcher = Subscriber(broker.port, "emotiond/door/status")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"events": {"stats_interval_s": 0.25}, "output": {"mqtt": {"camera": "door"}}}))
    unix = [tmp_path / f"ev{i}.sock" for i in range(SOCKETS)]
    tcp, http = [free_port() for _ in range(SOCKETS)], free_port()
    outputs = [f"unix:{p}?queue=32" for p in unix] + [f"tcp:127.0.0.1:{p}?queue=32" for p in tcp]
    outputs.append(f"mqtt://127.0.0.1:{broker.port}/emotiond")
    cmd = [str(emotiond), "run", "--config", str(config), "--source", str(long_clip), "--model", str(model_dir)]
    cmd += [a for out in outputs for a in ("--output", out)] + ["--http", str(http), "--realtime"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    stuck = []  # connected, never read: with a small receive buffer they fill within moments
    try:
        healthy = Reader(connect_when_up(str(unix[0])))
        stuck += [connect_when_up(str(p), rcvbuf=4096) for p in unix]
        stuck += [connect_when_up(("127.0.0.1", p), rcvbuf=4096) for p in tcp]
        wait_up(http, proc)
        stuck.append(stalled(http, "/events"))
        assert watcher.wait_for(lambda: b"online" in watcher.on("emotiond/door/status")), "never connected"

        def overflowing() -> bool:  # every stalled socket subscriber has lost events: its buffers are full
            stats = [e for e in healthy.lines if e["type"] == "stats"]
            figures = stats[-1]["outputs"] if stats else {}
            return all(figures.get(out, {}).get("dropped_total", 0) > 0 for out in outputs[: 2 * SOCKETS])

        assert wait_for(overflowing, 60), "the stalled subscribers never overflowed"
        os.kill(broker.proc.pid, signal.SIGSTOP)  # the broker takes nothing more, acknowledges nothing
        time.sleep(0.5)
        assert proc.poll() is None, "the clip ended before the stop"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
        seconds = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        with contextlib.suppress(ProcessLookupError):
            os.kill(broker.proc.pid, signal.SIGCONT)
        watcher.close()
        broker.stop()
        for sock in stuck:
            sock.close()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert seconds < 2.0, f"{seconds:.2f} s to stop with every output stalled"
    healthy.join(timeout=10)
    assert healthy.contiguous() and not [e for e in healthy.lines if e["type"] == "dropped"], "none lost"
    last = healthy.lines[-1]
    assert last["type"] == "status" and last["state"] == "stopping", last
