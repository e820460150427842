"""Do cheap inference-time tricks lift accuracy on the real photos? Measured on wild-faces and PublicTest.

Three tricks, each applied to trainer checkpoints (PyTorch, flip TTA as each checkpoint says), with real
MediaPipe detection (image mode, once per photo) and runtime.crop.FaceCropper:
- prior correction: probabilities divided by FER2013's Training class frequencies to the power tau, the
  post-hoc form of logit adjustment (Menon et al., 2021); tau 1 targets balanced accuracy. The photos'
  classes are near-uniform, FER2013's are not (disgust 1.5%, happy 25%);
- multi-crop TTA: the mean probability over several crop margins or centres around the runtime's;
- ensembles: the mean probability of every checkpoint given (all of them, at the runtime's crop).
On the photos a missed face counts as wrong; balanced accuracy is over the classes present (no fear).

    python -m benchmarks.photo_tricks --models models/default/best.pt,models/default_seed1/best.pt [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.crop_margin import RESULTS, detect_all, load_wild
from benchmarks.engines import DATASETS, DEFAULT_CHECKPOINT, machine_facts
from runtime.crop import DEFAULT_CENTER, DEFAULT_MARGIN, FaceCropper, to_gray
from runtime.errors import UserError
from runtime.labels import NUM_CLASSES

PRIOR_TAUS = (0.25, 0.5, 1.0)
MARGIN_STEP, CENTER_STEP = 0.05, 0.05  # multi-crop neighbours: one step either side of the runtime's crop


def crop_sets() -> dict[str, list[tuple[float, float]]]:
    """Named lists of (margin, centre) whose probabilities are averaged; "runtime" is the daemon's one crop."""
    m, c = DEFAULT_MARGIN, DEFAULT_CENTER
    return {
        "runtime": [(m, c)],
        "3 margins": [(m - MARGIN_STEP, c), (m, c), (m + MARGIN_STEP, c)],
        "3 centres": [(m, c - CENTER_STEP), (m, c), (m, c + CENTER_STEP)],
        "3x3": [(m + i * MARGIN_STEP, c + j * CENTER_STEP) for i in (-1, 0, 1) for j in (-1, 0, 1)],
    }


def scores(probs: np.ndarray, labels: np.ndarray, total: int) -> dict:
    """Accuracy over `total` photos (faces not found are wrong), balanced accuracy and log-loss over those found."""
    from trainer.metrics import confusion_matrix, log_loss, summarize

    s = summarize(confusion_matrix(labels, probs.argmax(1)))
    return {
        "accuracy": float((probs.argmax(1) == labels).sum() / total),
        "balanced_accuracy": s["balanced_accuracy"],
        "nll": log_loss(probs, labels),
        "per_class_recall": {k: round(v, 3) for k, v in s["per_class_recall"].items() if v is not None},
    }


def corrected(probs: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """p / prior**tau, renormalized."""
    p = probs * prior**-tau
    return p / p.sum(axis=1, keepdims=True)


def measure(paths: list[str], wild: Path, fer_zip: Path, detector_model: str | None) -> dict:
    import torch

    from runtime.preprocess import preprocess
    from trainer.checkpoint import build, load
    from trainer.data import load as load_faces
    from trainer.train import predict_with_tta

    torch.set_num_threads(1)  # a shared 2-core machine: this is not a speed benchmark
    fer = load_faces(str(fer_zip))
    public = fer.split("PublicTest")
    prior = np.bincount(fer.split("Training").labels, minlength=NUM_CLASSES).astype(float)
    prior /= prior.sum()
    _, images, labels = load_wild(wild)
    found, _ = detect_all(images, detector_model, 0.5)
    keep = [i for i, d in enumerate(found) if d is not None]
    grays = {i: to_gray(images[i]) for i in keep}
    sets, truth = crop_sets(), labels[keep]
    runtime = sets["runtime"][0]
    crops = {
        mc: np.concatenate([FaceCropper(mc[0], center=mc[1]).crop(grays[i], [found[i]]) for i in keep])
        for mc in {mc for s in sets.values() for mc in s}
    }
    report, runtime_probs, public_probs = {}, [], []
    for path in paths:
        ckpt = load(path)
        model, spec = build(ckpt, path)
        tta = bool(ckpt.get("tta_flip", False))
        photo = {mc: predict_with_tta(model, preprocess(c, spec), tta) for mc, c in crops.items()}
        pub = predict_with_tta(model, preprocess(public.images, spec), tta)
        runtime_probs.append(photo[runtime])
        public_probs.append(pub)
        rows = {f"crops: {name}": scores(np.mean([photo[mc] for mc in s], 0), truth, len(labels))
                for name, s in sets.items()}  # fmt: skip
        for tau in PRIOR_TAUS:
            row = scores(corrected(photo[runtime], prior, tau), truth, len(labels))
            row["publictest"] = scores(corrected(pub, prior, tau), public.labels, len(public.labels))
            rows[f"prior tau {tau:g}"] = row
        rows["crops: runtime"]["publictest"] = scores(pub, public.labels, len(public.labels))
        report[path] = rows
    if len(paths) > 1:
        ensemble = scores(np.mean(runtime_probs, 0), truth, len(labels))
        ensemble["publictest"] = scores(np.mean(public_probs, 0), public.labels, len(public.labels))
        report["ensemble of all"] = {"crops: runtime": ensemble}
    return {"photos": len(labels), "faces_found": len(keep), "prior": prior.round(4).tolist(), "models": report}


def print_table(result: dict) -> None:
    print(f"{'model':<34} {'trick':<16} {'photos acc':>10} {'bal':>6} {'nll':>6} {'PublicTest acc':>15} {'bal':>6}")
    for name, rows in result["models"].items():
        for trick, r in rows.items():
            pub = r.get("publictest")
            tail = f"{pub['accuracy']:15.4f} {pub['balanced_accuracy']:6.4f}" if pub else ""
            print(f"{name:<34} {trick:<16} {r['accuracy']:10.3f} {r['balanced_accuracy']:6.3f} {r['nll']:6.3f} {tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.photo_tricks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=str(DEFAULT_CHECKPOINT), help="comma-separated trainer checkpoints (.pt)")
    ap.add_argument("--data", default=str(DATASETS / "wild-faces" / "wild-faces.zip"), help="wild-faces zip")
    ap.add_argument("--fer", default=str(DATASETS / "fer2013" / "fer2013.zip"), help="FER2013 (priors, PublicTest)")
    ap.add_argument("--detector-model", default=None, help="BlazeFace .tflite (default: cache, else fetch)")
    ap.add_argument("--json", default=str(RESULTS / "photo_tricks.json"), help="where to write the results")
    args = ap.parse_args(argv)
    paths = [p for p in args.models.split(",") if p]
    try:
        for p in paths:
            if not Path(p).is_file():
                raise UserError(f"checkpoint not found: {p}")
        result = measure(paths, Path(args.data), Path(args.fer), args.detector_model)
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_table(result)
    result = {
        "command": " ".join(["python -m benchmarks.photo_tricks", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_facts(),
        "runtime_crop": {"margin": DEFAULT_MARGIN, "center": DEFAULT_CENTER},
        **result,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
