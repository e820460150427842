"""Accuracy of the whole pipeline on real photos: wild-faces as an image-directory source of `emotiond run`.

    python -m benchmarks.wild_faces [--json benchmarks/results/wild_faces.json] [--backend B] [--precision P]

Each photo is one still: MediaPipe finds the faces, the runtime crops and classifies them, and the best-scored
face's emotion is the photo's prediction. A photo without a detected face counts as wrong in `accuracy`
(`accuracy_found` leaves it out). `accuracy_ci95` is the Wilson 95% interval of `accuracy`: on 210 photos it
spans about 13 points, so differences of a few photos between models are within it. For scale: the `fer` package's model, on the same kind of photos through a
MediaPipe crop, is right about 56% of the time.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from benchmarks.engines import DATASETS, emotiond_command, write_result
from runtime.errors import UserError
from runtime.labels import LABEL_INDEX, LABELS

WILD_ZIP = DATASETS / "wild-faces" / "wild-faces.zip"


def extract(zip_path: Path, folder: Path, limit: int | None) -> dict[str, int]:
    """Photos flattened into `folder` (label folder in the name); returns file name -> label index."""
    if not zip_path.is_file():
        raise UserError(f"wild-faces dataset not found: {zip_path}")
    with zipfile.ZipFile(zip_path) as zf:
        rows = list(csv.DictReader(io.TextIOWrapper(zf.open("labels.csv"), encoding="utf-8")))
        if limit:  # spread over the classes: every k-th row of the label-sorted list
            rows = sorted(rows, key=lambda r: r["file"])[:: max(1, len(rows) // limit)][:limit]
        truth = {}
        for r in rows:
            name = r["file"].replace("/", "_")
            (folder / name).write_bytes(zf.read(r["file"]))
            truth[name] = LABEL_INDEX[r["label"]]
    return truth


def run_daemon(folder: Path, extra: list[str]) -> list[dict]:
    proc = subprocess.run(
        [*emotiond_command(), "run", "--source", str(folder), *extra], capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"emotiond run failed (exit {proc.returncode}): {last}")
    events = (json.loads(line) for line in proc.stdout.splitlines() if line.strip())
    return [e for e in events if e["type"] == "frame"]  # status and stats events say nothing of a photo


def score(events: list[dict], truth: dict[str, int]) -> dict:
    predicted: dict[str, int | None] = {}
    for e in events:
        if e["type"] == "frame" and e["file"]:
            best = max(e["faces"], key=lambda f: f["score"], default=None)
            predicted[Path(e["file"]).name] = None if best is None else LABEL_INDEX[best["emotion"]]
    confusion = np.zeros((len(LABELS), len(LABELS)), int)
    missed = []
    for name, label in truth.items():
        pred = predicted.get(name)
        if pred is None:
            missed.append(name)
        else:
            confusion[label, pred] += 1
    per_class = {}
    for i, label in enumerate(LABELS):
        total = sum(1 for t in truth.values() if t == i)
        if total:
            per_class[label] = {
                "photos": total,
                "correct": int(confusion[i, i]),
                "recall": round(confusion[i, i] / total, 4),
            }
    found = len(truth) - len(missed)
    correct = int(np.trace(confusion))
    ci = binomtest(correct, len(truth)).proportion_ci(0.95, method="wilson")
    return {
        "photos": len(truth), "faces_found": found, "accuracy": round(correct / len(truth), 4),
        "accuracy_ci95": [round(float(ci.low), 4), round(float(ci.high), 4)],
        "accuracy_found": round(correct / max(found, 1), 4),
        "balanced_accuracy": round(float(np.mean([c["recall"] for c in per_class.values()])), 4),
        "per_class": per_class, "confusion": confusion.tolist(), "missed": missed,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.wild_faces", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=WILD_ZIP, help="wild-faces zip (labels.csv + photos)")
    ap.add_argument("--limit", type=int, help="only this many photos, spread over the classes (quick checks)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("daemon_args", nargs="*", help="passed to `emotiond run` after --, e.g. -- --backend openvino")
    args = ap.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="emotiond-wild-") as tmp:
            truth = extract(args.data, Path(tmp), args.limit)
            result = score(run_daemon(Path(tmp), args.daemon_args), truth)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'class':<10}{'photos':>7}{'correct':>8}{'recall':>8}")
    for label, c in result["per_class"].items():
        print(f"{label:<10}{c['photos']:>7}{c['correct']:>8}{c['recall']:>8.3f}")
    low, high = result["accuracy_ci95"]
    print(f"faces found {result['faces_found']}/{result['photos']}; accuracy {result['accuracy']:.3f} "
          f"(95% CI {low:.3f}-{high:.3f}; over found faces {result['accuracy_found']:.3f}); "
          f"balanced {result['balanced_accuracy']:.3f}")  # fmt: skip
    if args.json:
        command = "python -m benchmarks.wild_faces " + " ".join(sys.argv[1:] if argv is None else argv)
        write_result(args.json, "wild_faces", {"command": command, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
