"""How much margin around the face makes our crops look like FER2013's? Measured on wild-faces.

Real MediaPipe detection (image mode, once per photo) + runtime.crop.FaceCropper at several margins
(and crop centres), classified by a trainer checkpoint through the shared preprocessing, with
flip TTA as the checkpoint says. Two yardsticks per setting:
- accuracy / balanced accuracy / NLL of the checkpoint on the 210 labelled photos (a missed face counts
  as wrong in `accuracy_all`; the others are over the faces found);
- `mean_face_corr`: correlation of the average crop with the average FER2013 PublicTest face, a
  classifier-free check that faces sit where FER puts them, at FER's scale.

    python -m benchmarks.crop_margin [--model models/default/best.pt] [--margins 0,0.1,0.2] [--json PATH]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np

from benchmarks.engines import DATASETS, DEFAULT_CHECKPOINT, REPO, machine_facts
from runtime.crop import DEFAULT_CENTER, DEFAULT_MARGIN, FaceCropper, to_gray
from runtime.detector import FaceDetector
from runtime.detector_model import resolve_detector_model
from runtime.errors import UserError
from runtime.labels import LABEL_INDEX, LABELS
from runtime.preprocess import preprocess

RESULTS = REPO / "benchmarks" / "results"
NLL_TIE = 0.005  # NLL differences below this are within what one checkpoint to the next moves
BEST_RULE = f"lowest nll; among settings within {NLL_TIE} of it, highest mean_face_corr"


def load_wild(path: Path) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """(file names, BGR images, label indices) from the wild-faces zip (labels.csv + <label>/<file>.jpg)."""
    if not path.is_file():
        raise UserError(f"wild-faces dataset not found: {path}")
    with zipfile.ZipFile(path) as zf:
        rows = list(csv.DictReader(io.TextIOWrapper(zf.open("labels.csv"), encoding="utf-8")))
        images = [cv2.imdecode(np.frombuffer(zf.read(r["file"]), np.uint8), cv2.IMREAD_COLOR) for r in rows]
    return [r["file"] for r in rows], images, np.array([LABEL_INDEX[r["label"]] for r in rows])


def detect_all(images: list[np.ndarray], detector_model: str | None, min_confidence: float):
    """Best face per photo (None if none), and detection ms per photo."""
    found, ms = [], []
    with FaceDetector(resolve_detector_model(detector_model), "image", min_confidence=min_confidence) as det:
        for img in images:
            t0 = time.perf_counter()
            d = det.detect(img)
            ms.append((time.perf_counter() - t0) * 1e3)
            found.append(d[0] if d else None)
    return found, np.array(ms)


def evaluate(model, spec, tta_flip: bool, grays, found, labels, cropper: FaceCropper, fer_mean: np.ndarray) -> dict:
    from trainer.metrics import confusion_matrix, log_loss, summarize
    from trainer.train import predict_with_tta

    keep = [i for i, d in enumerate(found) if d is not None]
    crops = np.concatenate([cropper.crop(grays[i], [found[i]]) for i in keep])
    probs = predict_with_tta(model, preprocess(crops, spec), tta_flip=tta_flip)
    preds = probs.argmax(1)
    s = summarize(confusion_matrix(labels[keep], preds))
    mean_crop = crops.astype(np.float64).mean(0)
    return {
        "margin": cropper.margin,
        "center": cropper.center,
        "faces_found": len(keep),
        "photos": len(labels),
        "accuracy": s["accuracy"],
        "accuracy_all": float((preds == labels[keep]).sum() / len(labels)),
        "balanced_accuracy": s["balanced_accuracy"],
        "macro_f1": s["macro_f1"],
        # Mean -log p(true label): uses the whole probability, so it moves smoothly where accuracy jumps by photos.
        "nll": log_loss(probs, labels[keep]),
        "mean_face_corr": float(np.corrcoef(mean_crop.ravel(), fer_mean.ravel())[0, 1]),
        "per_class_recall": {k: v for k, v in s["per_class_recall"].items() if v is not None},
        "_crops": crops,
        "_preds": preds,
        "_keep": keep,
    }


def pick_best(results: list[dict]) -> dict:
    """Lowest NLL; settings within NLL_TIE of it are a tie, won by the crop most like FER2013's average face.

    NLL rather than accuracy: on 210 photos accuracy moves in steps of single photos and swings by
    several points from one checkpoint to the next, while NLL changes smoothly with the margin.
    """
    low = min(r["nll"] for r in results)
    return max((r for r in results if r["nll"] <= low + NLL_TIE), key=lambda r: r["mean_face_corr"])


def contact_sheet(path: Path, wild: dict, labels: np.ndarray, fer, per_row: int = 12, scale: int = 2) -> None:
    """Row pairs: wild-faces crops (prediction/truth in the caption) above FER2013 faces of the same classes."""
    rng = np.random.default_rng(0)
    crops, preds, keep = wild["_crops"], wild["_preds"], wild["_keep"]
    present = [c for c in range(len(LABELS)) if (labels[keep] == c).any()]
    picks = [j for c in present for j in rng.permutation(np.flatnonzero(labels[keep] == c))[:2]][:per_row]
    fer_picks = [rng.choice(np.flatnonzero(fer.labels == labels[keep][j])) for j in picks]
    side, cap = 48 * scale, 14
    sheet = np.full((2 * (side + cap) + cap, per_row * side), 255, np.uint8)
    cv2.putText(
        sheet,
        f"top: wild-faces crops, margin {wild['margin']:g} center {wild['center']:g} (true/pred)",
        (2, 10),
        cv2.FONT_HERSHEY_PLAIN,
        0.8,
        0,
        1,
    )
    for col, (j, f) in enumerate(zip(picks, fer_picks, strict=True)):
        x = col * side
        for row, (img, text) in enumerate(
            [
                (crops[j], f"{LABELS[labels[keep][j]][:3]}/{LABELS[preds[j]][:3]}"),
                (fer.images[f], f"FER {LABELS[fer.labels[f]][:3]}"),
            ]
        ):
            y = cap + row * (side + cap)
            sheet[y : y + side, x : x + side] = cv2.resize(img, (side, side), interpolation=cv2.INTER_NEAREST)
            cv2.putText(sheet, text, (x + 2, y + side + 11), cv2.FONT_HERSHEY_PLAIN, 0.8, 0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), sheet)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.crop_margin", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_CHECKPOINT), help="trainer checkpoint (.pt)")
    ap.add_argument("--data", default=str(DATASETS / "wild-faces" / "wild-faces.zip"), help="wild-faces zip")
    ap.add_argument("--fer", default=str(DATASETS / "fer2013" / "fer2013.zip"), help="FER2013 (mean face, examples)")
    ap.add_argument("--margins", default="0,0.1,0.15,0.2,0.25,0.3,0.45", help="comma-separated margins")
    ap.add_argument("--centers", default="0.2,0.25,0.3,0.35", help="comma-separated crop centres (eyes=0, mouth=1)")
    ap.add_argument("--detector-model", default=None, help="BlazeFace .tflite (default: cache, else fetch)")
    ap.add_argument("--min-confidence", type=float, default=0.5)
    ap.add_argument("--json", default=str(RESULTS / "crop_margin.json"), help="where to write the results")
    ap.add_argument("--examples", default=str(RESULTS / "crop_examples.png"), help="contact sheet PNG ('' = none)")
    args = ap.parse_args(argv)

    import torch

    from trainer.checkpoint import build, load
    from trainer.data import load as load_faces

    torch.set_num_threads(1)  # a shared 2-core machine: this is not a speed benchmark
    try:
        margins = [float(m) for m in args.margins.split(",")]
        centers = [float(c) for c in args.centers.split(",")]
        files, images, labels = load_wild(Path(args.data))
        ckpt = load(args.model)
        model, spec = build(ckpt, args.model)
        fer = load_faces(args.fer).split("PublicTest")
        found, det_ms = detect_all(images, args.detector_model, args.min_confidence)
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    grays = [to_gray(img) for img in images]
    fer_mean = fer.images.astype(np.float64).mean(0)
    tta = bool(ckpt.get("tta_flip", False))

    results = []
    for center in centers:
        for margin in margins:
            results.append(
                evaluate(model, spec, tta, grays, found, labels, FaceCropper(margin, center=center), fer_mean)
            )
    best = pick_best(results)

    print(f"checkpoint {args.model}: epoch {ckpt.get('epoch')}, tta_flip {tta}, metrics {ckpt.get('metrics', {})}")
    print(
        f"wild-faces {args.data}: {len(files)} photos, faces found {best['faces_found']}, "
        f"detection p50 {np.percentile(det_ms, 50):.1f} ms (image mode, ~350x350)"
    )
    print(
        f"{'margin':>6} {'center':>6} {'found':>6} {'acc':>6} {'acc_all':>7} {'bal_acc':>7} {'f1':>6} {'nll':>6} {'meanface':>8}"
    )
    for r in results:
        mark = "  <- best" if r is best else ""
        print(
            f"{r['margin']:6.2f} {r['center']:6.2f} {r['faces_found']:6d} {r['accuracy']:6.3f} {r['accuracy_all']:7.3f} "
            f"{r['balanced_accuracy']:7.3f} {r['macro_f1']:6.3f} {r['nll']:6.3f} {r['mean_face_corr']:8.3f}{mark}"
        )
    # Averaged over every setting: compares two models without favouring the one the defaults were chosen with.
    over_settings = {"accuracy_all": float(np.mean([r["accuracy_all"] for r in results])),
                     "nll": float(np.mean([r["nll"] for r in results]))}  # fmt: skip
    print(f"mean over the {len(results)} settings: accuracy_all {over_settings['accuracy_all']:.3f}, "
          f"nll {over_settings['nll']:.3f}")  # fmt: skip
    agree = (best["margin"], best["center"]) == (DEFAULT_MARGIN, DEFAULT_CENTER)
    print(
        f"best ({BEST_RULE}): margin {best['margin']:g}, center {best['center']:g}; runtime.crop defaults: "
        f"margin {DEFAULT_MARGIN:g}, center {DEFAULT_CENTER:g}"
        + ("" if agree else "  (differ: update runtime/crop.py?)")
    )

    report = {
        "command": " ".join(["python -m benchmarks.crop_margin", *(sys.argv[1:] if argv is None else argv)]),
        "checkpoint": {"path": args.model, "epoch": ckpt.get("epoch"), "tta_flip": tta, "metrics": ckpt.get("metrics")},
        "data": args.data,
        "photos": len(files),
        "detector": {
            "mode": "image",
            "min_confidence": args.min_confidence,
            "ms_p50": float(np.percentile(det_ms, 50)),
        },
        "machine": machine_facts(),
        "defaults": {"margin": DEFAULT_MARGIN, "center": DEFAULT_CENTER},
        "best": {"margin": best["margin"], "center": best["center"], "rule": BEST_RULE},
        "mean_over_settings": over_settings,
        "results": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results],
        "missed": [f for f, d in zip(files, found, strict=True) if d is None],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    if args.examples:
        default = next((r for r in results if r["margin"] == DEFAULT_MARGIN and r["center"] == DEFAULT_CENTER), best)
        contact_sheet(Path(args.examples), default, labels, fer)
        print(f"wrote {args.examples}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
