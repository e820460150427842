"""The `fer` package's model beside ours on the wild-faces photos, on the same MediaPipe face boxes, and on
FER2013 PublicTest.

    python -m benchmarks.fer_baseline --fer-python PATH [--json benchmarks/results/fer_baseline.json]

`fer` (Keras/TensorFlow) lives in an environment of its own, so that TensorFlow never enters emotiond's:
    python3 -m venv /opt/fer-venv && /opt/fer-venv/bin/pip install fer "setuptools<81"  # fer imports pkg_resources
Our daemon runs on the photos (as benchmarks.wild_faces does) and its best-scored face box per photo is handed to
`fer`'s classifier (`FER.detect_emotions(image, face_rectangles=[box])`, its own crop margin and 64x64 input).
Both are scored alike: a photo without a detected face counts as wrong. On PublicTest, `fer`'s classifier gets each
48x48 face as its own `detect_emotions` prepares a crop (resized to 64x64, scaled to [-1, 1]); ours is scored by the
runtime's loader with flip TTA, as the daemon runs it. `fer`'s model was trained on FER2013 by its authors with a
split of their own, so PublicTest may not be unseen for it: its figure there is an upper bound.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.classifier import FER_ZIP
from benchmarks.engines import write_result
from benchmarks.wild_faces import WILD_ZIP, extract, run_daemon, score
from runtime.errors import UserError

# Run by the fer environment's Python: boxes.json in, {file: emotion} out. The warnings of TensorFlow's start-up
# go to stderr.
FER_SCRIPT = """
import json, sys
import cv2
from fer.fer import FER
folder, boxes = sys.argv[1], json.load(open(sys.argv[2]))
detector, out = FER(mtcnn=False), {}
for name, box in boxes.items():
    image = cv2.imread(folder + "/" + name)
    found = detector.detect_emotions(image, face_rectangles=[tuple(box)])
    out[name] = max(found[0]["emotions"], key=found[0]["emotions"].get) if found else None
print(json.dumps(out))
"""


# Run by the fer environment's Python: a .npy of (N, 48, 48) uint8 faces in, label indices out.
FER_FACES_SCRIPT = """
import json, sys
import cv2, numpy as np
from fer.fer import FER
faces = np.load(sys.argv[1])
detector = FER(mtcnn=False)
x = np.stack([cv2.resize(f, (64, 64)) for f in faces]).astype("float32") / 255.0
x = (x - 0.5) * 2.0
probs = np.concatenate([np.asarray(detector._classify_emotions(x[i : i + 256])) for i in range(0, len(x), 256)])
print(json.dumps(probs.argmax(1).tolist()))
"""


def run_fer(fer_python: str, script: str, *args: str) -> object:
    proc = subprocess.run([fer_python, "-c", script, *args], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"the fer environment failed (exit {proc.returncode}): {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def publictest(fer_python: str, fer2013: Path, tmp: Path) -> dict:
    """PublicTest accuracy of `fer` and of the shipped model (its default variant, flip TTA as in the daemon)."""
    from runtime.classifier import DEFAULT_MODEL_DIR, load_classifier
    from trainer import data
    from trainer.metrics import confusion_matrix, summarize

    faces = data.load(fer2013).split("PublicTest")
    np.save(tmp / "faces.npy", faces.images)
    theirs = np.asarray(run_fer(fer_python, FER_FACES_SCRIPT, str(tmp / "faces.npy")))
    ours = load_classifier(DEFAULT_MODEL_DIR).predict(faces.images).argmax(1)
    return {
        name: {
            k: v
            for k, v in summarize(confusion_matrix(faces.labels, predicted)).items()
            if k in ("accuracy", "balanced_accuracy")
        }
        for name, predicted in (("emotiond", ours), ("fer", theirs))
    }


def fer_predictions(fer_python: str, folder: Path, boxes: dict[str, list[int]]) -> dict[str, str | None]:
    boxes_file = folder.parent / "boxes.json"
    boxes_file.write_text(json.dumps(boxes))
    return run_fer(fer_python, FER_SCRIPT, str(folder), str(boxes_file))


def as_events(predictions: dict[str, str | None]) -> list[dict]:
    """fer's answers in the shape of our frame events, for wild_faces.score."""
    return [
        {"type": "frame", "file": name, "faces": [] if emotion is None else [{"score": 1.0, "emotion": emotion}]}
        for name, emotion in predictions.items()
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fer_baseline", description=__doc__.splitlines()[0])
    ap.add_argument("--fer-python", required=True, help="the Python of an environment with `pip install fer`")
    ap.add_argument("--data", type=Path, default=WILD_ZIP, help="wild-faces zip (labels.csv + photos)")
    ap.add_argument("--fer2013", type=Path, default=FER_ZIP, help="FER2013 (for PublicTest); 'none' skips it")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("daemon_args", nargs="*", help="passed to `emotiond run` after --, e.g. -- --model DIR")
    args = ap.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="emotiond-fer-") as tmp:
            folder = Path(tmp) / "photos"
            folder.mkdir()
            truth = extract(args.data, folder, None)
            events = run_daemon(folder, args.daemon_args)
            ours = score(events, truth)
            boxes = {}
            for e in events:
                best = max(e["faces"], key=lambda f: f["score"], default=None)
                if best is not None:
                    b = best["box"]
                    boxes[Path(e["file"]).name] = [b["x"], b["y"], b["w"], b["h"]]
            theirs = score(as_events(fer_predictions(args.fer_python, folder, boxes)), truth)
            on_publictest = (
                None if str(args.fer2013) == "none" else publictest(args.fer_python, args.fer2013, Path(tmp))
            )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'model':<10}{'accuracy':>9}{'balanced':>9}  recall per class")
    for name, result in (("emotiond", ours), ("fer", theirs)):
        recalls = " ".join(f"{k[:3]} {v['recall']:.2f}" for k, v in result["per_class"].items())
        print(f"{name:<10}{result['accuracy']:>9.3f}{result['balanced_accuracy']:>9.3f}  {recalls}")
    if on_publictest:
        print("PublicTest: " + ", ".join(f"{k} {v['accuracy']:.4f} (balanced {v['balanced_accuracy']:.4f})"
                                         for k, v in on_publictest.items()))  # fmt: skip
    if args.json:
        command = "python -m benchmarks.fer_baseline " + " ".join(sys.argv[1:] if argv is None else argv)
        found = {"command": command, "emotiond": ours, "fer": theirs, "publictest": on_publictest}
        write_result(args.json, "fer_baseline", found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
