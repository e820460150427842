"""Score any model on any dataset layout the trainer reads.

    python -m trainer.evaluate --model models/default/best.pt --data ../shared/datasets/fer2013/fer2013.zip
    python -m trainer.evaluate --model runtime/models/default/model.int8.onnx --data fer2013.csv --split PrivateTest

--model takes a PyTorch checkpoint (.pt) or an exported model (its folder, manifest.json, or one of its
model files; the variant is picked from the file name or --backend/--precision). Test-time flip
averaging defaults to what the model's checkpoint/manifest says, which is what the runtime does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from runtime.errors import UserError
from runtime.labels import LABELS
from runtime.manifest import load_manifest
from trainer import data
from trainer.metrics import confusion_matrix, summarize


def predict_checkpoint(path: Path, faces: np.ndarray, tta_flip: bool | None) -> tuple[np.ndarray, dict]:
    from runtime.preprocess import preprocess
    from trainer import checkpoint
    from trainer.train import predict_with_tta

    ckpt = checkpoint.load(path)
    model, spec = checkpoint.build(ckpt, path)
    tta = ckpt.get("tta_flip", False) if tta_flip is None else tta_flip
    probs = predict_with_tta(model, preprocess(faces, spec), tta)
    return probs, {"model": str(path), "kind": "pytorch", "epoch": ckpt.get("epoch"), "tta_flip": tta}


def exported_variant(path: Path, backend: str | None, precision: str | None) -> tuple[str, str]:
    """Backend and precision: from flags, else from the file named, else the manifest's INT8 ONNX model."""
    manifest, folder = load_manifest(path)
    if path.is_file() and path.name != "manifest.json":
        rel = path.resolve().relative_to(folder.resolve()).as_posix()
        for v in manifest.variants.values():
            if rel in v.files:
                return backend or v.backend, precision or v.precision
        raise UserError(f"{path} is not listed in its manifest {folder / 'manifest.json'}")
    return backend or "onnxruntime", precision or "int8"


def predict_exported(path: Path, faces: np.ndarray, tta_flip, backend, precision, threads) -> tuple[np.ndarray, dict]:
    from runtime.classifier import load_classifier

    backend, precision = exported_variant(path, backend, precision)
    clf = load_classifier(path, backend=backend, precision=precision, threads=threads, tta_flip=tta_flip)
    probs = np.concatenate([clf.predict(faces[i : i + 256]) for i in range(0, len(faces), 256)] or [np.zeros((0, 7))])
    info = {
        "model": str(path),
        "kind": "exported",
        "model_id": clf.model_id,
        "backend": backend,
        "precision": precision,
        "tta_flip": bool(clf.tta_flip),
    }
    return probs, info


PER_CLASS_COLUMNS = ("precision", "recall", "f1", "support")


def _cell(value: float | int | None) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def per_class_rows(result: dict) -> list[list[str]]:
    """One row per class: name, precision, recall, F1, support ("-" where undefined)."""
    return [[name, *(_cell(m[c]) for c in PER_CLASS_COLUMNS)] for name, m in result["per_class"].items()]


def format_table(result: dict) -> str:
    lines = [
        f"{'n':<22}{result['n']}",
        f"{'accuracy':<22}{result['accuracy']:.4f}",
        f"{'balanced accuracy':<22}{result['balanced_accuracy']:.4f}",
        f"{'macro F1':<22}{result['macro_f1']:.4f}",
    ]
    seen = result.get("seen_in_training")
    if seen and seen["n"]:
        unseen = f"{seen['accuracy_unseen']:.4f}" if seen["accuracy_unseen"] is not None else "-"
        lines.append(
            f"{'also in Training':<22}{seen['n']} faces, accuracy {seen['accuracy']:.4f}; "
            f"the other {result['n'] - seen['n']}: {unseen}"
        )
    lines += [
        "per class:",
        f"  {'class':<12}{'precision':>10}{'recall':>10}{'F1':>10}{'support':>10}",
    ]
    for name, *cells in per_class_rows(result):
        lines.append(f"  {name:<12}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)


def plot_confusion(result: dict, title: str, out: Path) -> None:
    """The row-normalised confusion matrix (share and count per cell) above the per-class table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(result["confusion"])
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.4, 7.8), dpi=120)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(LABELS)), LABELS, rotation=45, ha="right")
    ax.set_yticks(range(len(LABELS)), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(len(LABELS)):
        for j in range(len(LABELS)):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}\n{cm[i, j]}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout(rect=(0, 0.28, 1, 1))  # the matrix as before, the bottom of the figure kept for the table
    tab = fig.add_axes((0.08, 0.02, 0.84, 0.2))
    tab.axis("off")
    table = tab.table(
        cellText=per_class_rows(result),
        colLabels=["class", "precision", "recall", "F1", "support"],
        cellLoc="center",
        bbox=[0.0, 0.0, 1.0, 1.0],
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    tab.set_title(
        f"balanced accuracy {result['balanced_accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}, n {result['n']}",
        fontsize=9,
    )
    fig.savefig(out)
    plt.close(fig)


def write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def evaluate(args: argparse.Namespace) -> dict:
    model_path = Path(args.model)
    if not model_path.exists():
        raise UserError(f"model not found: {model_path}")
    faces = data.load(args.data)
    split = args.split or data.default_split(faces)
    if split != "all" and split not in faces.available_splits():
        raise UserError(f"{args.data} has no {split} split (has: {', '.join(faces.available_splits())})")
    subset = faces.split(split)
    if model_path.suffix == ".pt":
        probs, info = predict_checkpoint(model_path, subset.images, args.tta)
    else:
        probs, info = predict_exported(model_path, subset.images, args.tta, args.backend, args.precision, args.threads)
    result = summarize(confusion_matrix(subset.labels, probs.argmax(1)))
    result.update({"split": split, "data": str(args.data), "skipped_images": faces.skipped, **info})
    if split not in ("Training", "all") and "Training" in faces.available_splits():
        seen = subset.seen_in(faces.split("Training"))
        correct = probs.argmax(1) == subset.labels
        result["seen_in_training"] = {
            "n": int(seen.sum()),
            "accuracy": float(correct[seen].mean()) if seen.any() else None,
            "accuracy_unseen": float(correct[~seen].mean()) if (~seen).any() else None,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", required=True, help="checkpoint .pt, or exported model (folder, manifest.json or model file)"
    )
    ap.add_argument("--data", required=True, help="fer2013.csv, image folder or .zip (train/test/<label>/...)")
    ap.add_argument("--split", help="Training, PublicTest, PrivateTest or all (default: PublicTest if present)")
    ap.add_argument("--json", type=Path, help="write the metrics (per class too) as JSON here")
    ap.add_argument("--plot", type=Path, help="write the confusion matrix and the per-class table as PNG here")
    tta = ap.add_mutually_exclusive_group()
    tta.add_argument("--tta", dest="tta", action="store_true", default=None, help="average with the mirrored face")
    tta.add_argument("--no-tta", dest="tta", action="store_false", help="no test-time flip")
    ap.add_argument("--backend", choices=["onnxruntime", "openvino"], help="exported models: backend")
    ap.add_argument("--precision", choices=["fp32", "int8"], help="exported models: precision")
    ap.add_argument("--threads", type=int, default=2, help="exported models: inference threads")
    args = ap.parse_args(argv)
    try:
        for out in (args.json, args.plot):
            if out is not None and not out.parent.is_dir():
                raise UserError(f"cannot write {out}: folder {out.parent} does not exist")
        result = evaluate(args)
        print(format_table(result))
        if args.json:
            write_atomic(args.json, (json.dumps(result, indent=2, allow_nan=False) + "\n").encode())
        if args.plot:
            title = f"{Path(args.model).name} on {Path(args.data).name} {result['split']}: acc {result['accuracy']:.4f}"
            plot_confusion(result, title, args.plot)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
