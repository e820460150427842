"""A stalled socket subscriber's cost to the daemon: `python -m benchmarks.sockets [--rounds 5] [--json OUT]`.

`emotiond run` on the sample clip (repeated `--repeat` times, every frame, as fast as possible) publishing to a
Unix socket with one subscriber reading everything, against the same with a second subscriber that connects and
never reads (a 4 KB receive buffer, so its queue overflows within frames). Rounds interleaved, the frame rate from
the daemon's summary line, the ratio with/without as the median of the rounds' own ratios. Also reported: what the
stalled subscriber's drops look like in the daemon's own `stats` events (outputs: dropped_total).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

from benchmarks.engines import REPO, emotiond_command, write_result

SAMPLE = REPO / "samples" / "faces.mp4"


def repeated_clip(path: Path, repeat: int) -> Path:
    cap = cv2.VideoCapture(str(SAMPLE))
    frames = []
    while (grabbed := cap.read())[0]:
        frames.append(grabbed[1])
    cap.release()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, frames[0].shape[1::-1])
    for _ in range(repeat):
        for frame in frames:
            writer.write(frame)
    writer.release()
    return path


def connect_when_up(address: tuple | str | Path, rcvbuf: int | None = None, timeout: float = 120) -> socket.socket:
    """Connect as soon as the daemon listens (polling), so no event is published before; a str or Path is a Unix
    socket, a tuple a TCP address. Tests use it too."""
    address = str(address) if isinstance(address, Path) else address
    end = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX if isinstance(address, str) else socket.AF_INET)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            sock.connect(address)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > end:
                raise
            time.sleep(0.002)


def run_once(clip: Path, folder: Path, stalled: bool) -> dict:
    path = folder / f"events{int(stalled)}.sock"
    config = folder / "stats.yaml"
    config.write_text("events:\n  stats_interval_s: 0.5\n")
    cmd = [*emotiond_command(), "run", "--config", str(config), "--source", str(clip), "--output", f"unix:{path}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reader = connect_when_up(path)
    lines: list[dict] = []
    pump = threading.Thread(target=lambda: lines.extend(map(json.loads, reader.makefile("rb"))), daemon=True)
    pump.start()
    slow = connect_when_up(path, rcvbuf=4096) if stalled else None
    _, err = proc.communicate(timeout=900)
    pump.join(timeout=10)
    reader.close()
    if slow is not None:
        slow.close()
    if proc.returncode != 0:
        raise SystemExit(f"error: emotiond run failed: {err.strip().splitlines()[-1:]}")
    stats = [e for e in lines if e["type"] == "stats"]
    dropped = max((o.get("dropped_total", 0) for e in stats for o in e.get("outputs", {}).values()), default=0)
    fps = float(re.search(r"\(([\d.]+) frames/s\)", err).group(1))
    return {"fps": fps, "frames_received": sum(e["type"] == "frame" for e in lines), "stats_dropped_total": dropped}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sockets", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=4, help="the sample clip this many times over (default 4)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="emotiond-sockets-") as tmp:
        folder = Path(tmp)
        clip = repeated_clip(folder / "clip.mp4", args.repeat)
        for i in range(args.rounds):
            order = [False, True] if i % 2 == 0 else [True, False]
            runs = {stalled: run_once(clip, folder, stalled) for stalled in order}
            rounds.append({"without": runs[False], "with_stalled": runs[True]})
            print(f"round {i + 1}: {runs[False]['fps']:.1f} frames/s alone, {runs[True]['fps']:.1f} with a stalled "
                  f"subscriber (its drops in stats: {runs[True]['stats_dropped_total']})")  # fmt: skip
    ratio = statistics.median(r["with_stalled"]["fps"] / r["without"]["fps"] for r in rounds)
    print(f"frame rate with a stalled subscriber / without: {ratio:.3f} (median of {len(rounds)} rounds' ratios)")
    if args.json:
        write_result(args.json, "sockets", {"command": "python -m benchmarks.sockets " + " ".join(argv or sys.argv[1:]),
                                            "rounds": rounds, "ratio": round(ratio, 3)})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
