"""The `--http` page's cost to the daemon: `python -m benchmarks.http [--rounds 3] [--clients 20] [--json OUT]`.

`emotiond run --http PORT` on the sample clip (repeated `--repeat` times, every frame, as fast as possible) with
nobody watching, against the same with `--clients` HTTP clients reading all the time, half of them /stream.mjpg
(JPEG parts, capped at 15 frames/s) and half /events (Server-Sent Events, every event), connected before the first
frame. Rounds interleaved, the frame rate from the daemon's summary line, the ratio with/without as the median of
the rounds' own ratios (goal: ~1.0). Also reported: the parts and events each kind of client received. The
clients run on the same machine: they only count what they get, so that their own CPU use stays small.

The clients (SseReader, MjpegReader, stalled, wait_up) are the tests' too (tests/test_http.py).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.engines import emotiond_command, write_result
from benchmarks.sockets import repeated_clip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _headers(auth: str | None) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}


def get(port: int, path: str, auth: str | None = None, timeout: float = 10) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one plain GET on 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=_headers(auth))
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def wait_up(port: int, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Return as soon as the daemon's page answers /healthz (200 or 503); raise if the daemon exits first."""
    end = time.monotonic() + timeout
    while True:
        try:
            get(port, "/healthz", timeout=2)
            return
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > end:
                raise RuntimeError("the daemon's page did not come up") from None
            time.sleep(0.01)


class _StreamReader(threading.Thread):
    """GET `path` on a thread of its own, read until the stream ends or stop(); `status` once answered."""

    def __init__(self, port: int, path: str, auth: str | None = None) -> None:
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.request("GET", path, headers=_headers(auth))
        self.sock = self.conn.sock  # getresponse() lets go of it (HTTP/1.0: the response owns the connection)
        self.response = self.conn.getresponse()
        self.status, self.headers = self.response.status, dict(self.response.getheaders())
        self.start()

    def run(self) -> None:
        try:
            self.read(self.response)
        except (OSError, ValueError, http.client.HTTPException):
            pass  # stop() closed the connection under us, or the daemon went away
        finally:
            self.response.close()

    def read(self, response: http.client.HTTPResponse) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self.sock.shutdown(socket.SHUT_RDWR)
        self.join(timeout=5)


class SseReader(_StreamReader):
    """Every event of GET /events as a dict (`events`) and the comment lines (`comments`); with parse=False only
    `count`s the events (the benchmark's clients: their CPU is taken from the daemon's on a small machine)."""

    def __init__(self, port: int, auth: str | None = None, parse: bool = True) -> None:
        self.events: list[dict] = []
        self.comments: list[str] = []
        self.count, self.parse = 0, parse
        super().__init__(port, "/events", auth)

    def read(self, response: http.client.HTTPResponse) -> None:
        data: list[str] = []
        while line := response.readline():
            if not self.parse:
                self.count += line.startswith(b"data:")
                continue
            text = line.decode("utf-8").rstrip("\r\n")
            if text.startswith(":"):
                self.comments.append(text)
            elif text.startswith("data:"):
                data.append(text[5:].removeprefix(" "))
            elif not text and data:  # a blank line ends an event
                self.events.append(json.loads("\n".join(data)))
                self.count += 1
                data = []

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in list(self.events) if e["type"] == kind]


class MjpegReader(_StreamReader):
    """The JPEG parts of GET /stream.mjpg (`parts`) and when each came in (`times`, time.monotonic())."""

    def __init__(self, port: int, auth: str | None = None) -> None:
        self.parts: list[bytes] = []
        self.times: list[float] = []
        super().__init__(port, "/stream.mjpg", auth)

    def read(self, response: http.client.HTTPResponse) -> None:
        boundary = b"--" + self.headers["Content-Type"].split("boundary=")[1].encode()
        while line := response.readline():
            if line.rstrip(b"\r\n") != boundary:
                continue
            headers = {}
            while (header := response.readline().rstrip(b"\r\n")) != b"":
                name, _, value = header.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            assert headers["content-type"] == "image/jpeg", headers
            self.parts.append(response.read(int(headers["content-length"])))
            self.times.append(time.monotonic())


def stalled(port: int, path: str, rcvbuf: int = 4096) -> socket.socket:
    """A client that asks for `path` and then never reads (a small receive buffer: it fills within moments)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def run_once(clip: Path, clients: int, kinds: str = "both", realtime: bool = False) -> dict:
    """One daemon run with `clients` readers (`kinds`: both, mjpeg or sse), flat out or at the clip's pace. The
    daemon's CPU time comes from the kernel's account of reaped children, the clients' from this process's own
    (they are its threads); capture-to-event latency from its frame events."""
    port = free_port()
    children, own = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    pace = ["--realtime"] if realtime else []
    cmd = [*emotiond_command(), "run", "--source", str(clip), "--http", str(port), *pace]
    with tempfile.TemporaryFile() as events:
        proc = subprocess.Popen(cmd, stdout=events, stderr=subprocess.PIPE, text=True)
        readers: list[_StreamReader] = []
        try:
            wait_up(port, proc)  # the page is up before the models load: every client is in before the first frame
            mjpeg_at = {"both": lambda i: i % 2 == 1, "mjpeg": lambda i: True, "sse": lambda i: False}[kinds]
            readers = [MjpegReader(port) if mjpeg_at(i) else SseReader(port, parse=False) for i in range(clients)]
            _, err = proc.communicate(timeout=900)
        finally:
            proc.kill()
            for reader in readers:
                reader.join(timeout=10)
        events.seek(0)
        totals = sorted(e["latency_ms"]["total"] for e in map(json.loads, events) if e["type"] == "frame")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    daemon_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    clients_cpu = time.process_time() - own
    found = re.search(r"\(([\d.]+) frames/s\)", err)
    frames = re.search(r": (\d+) frames in", err)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"error: emotiond run failed: {err.strip().splitlines()[-1:]}")
    sse = [r for r in readers if isinstance(r, SseReader)]
    mjpeg = [r for r in readers if isinstance(r, MjpegReader)]
    return {
        "fps": float(found.group(1)),
        "latency_ms_p50": totals[len(totals) // 2],
        "latency_ms_p95": totals[int(len(totals) * 0.95)],
        "daemon_cpu_ms_per_frame": round(1000 * daemon_cpu / max(1, int(frames.group(1))), 3) if frames else None,
        "clients_cpu_s": round(clients_cpu, 2),
        "events_per_sse_client": [r.count for r in sse],
        "parts_per_mjpeg_client": [len(r.parts) for r in mjpeg],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.http", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=4, help="the sample clip this many times over (default 4)")
    ap.add_argument("--clients", type=int, default=20, help="HTTP clients, half MJPEG, half SSE (default 20)")
    ap.add_argument("--kinds", choices=["both", "mjpeg", "sse"], default="both", help="which clients (default both)")
    ap.add_argument("--realtime", action="store_true", help="at the clip's own 25 frames/s, as a camera, not flat out")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if min(args.rounds, args.repeat, args.clients) < 1:
        print("error: --rounds, --repeat and --clients must be at least 1", file=sys.stderr)
        return 2
    rounds = []
    with tempfile.TemporaryDirectory(prefix="emotiond-http-") as tmp:
        clip = repeated_clip(Path(tmp) / "clip.mp4", args.repeat)
        for i in range(args.rounds):
            order = [0, args.clients] if i % 2 == 0 else [args.clients, 0]
            runs = {n: run_once(clip, n, args.kinds, args.realtime) for n in order}
            rounds.append({"without": runs[0], "with_clients": runs[args.clients]})
            watched, alone = runs[args.clients], runs[0]
            print(f"round {i + 1}: {alone['fps']:.1f} frames/s unwatched, {watched['fps']:.1f} with {args.clients} "
                  f"{args.kinds} clients; daemon CPU {alone['daemon_cpu_ms_per_frame']} vs "
                  f"{watched['daemon_cpu_ms_per_frame']} ms per frame; latency p50 {alone['latency_ms_p50']} vs "
                  f"{watched['latency_ms_p50']} ms; the clients' own CPU {watched['clients_cpu_s']} s "
                  f"(MJPEG parts each: {watched['parts_per_mjpeg_client']})")  # fmt: skip
    ratio = statistics.median(r["with_clients"]["fps"] / r["without"]["fps"] for r in rounds)
    cpu_ratio = statistics.median(
        r["with_clients"]["daemon_cpu_ms_per_frame"] / r["without"]["daemon_cpu_ms_per_frame"] for r in rounds
    )
    print(f"frame rate with {args.clients} clients / without: {ratio:.3f} (median of {len(rounds)} rounds' ratios)")
    print(f"daemon CPU per frame with / without: {cpu_ratio:.3f}")
    latency = {
        k: statistics.median(r["with_clients"][k] - r["without"][k] for r in rounds)
        for k in ("latency_ms_p50", "latency_ms_p95")
    }
    print(
        f"capture-to-event latency with - without: p50 {latency['latency_ms_p50']:+.2f} ms, p95 {latency['latency_ms_p95']:+.2f} ms"
    )
    if args.json:
        write_result(args.json, "http", {"command": "python -m benchmarks.http " + " ".join(argv or sys.argv[1:]),
                                         "clients": args.clients, "kinds": args.kinds, "rounds": rounds, "ratio": round(ratio, 3),
                                         "daemon_cpu_ratio": round(cpu_ratio, 3), "realtime": args.realtime,
                                         "latency_ms_added": {k: round(v, 3) for k, v in latency.items()}})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
