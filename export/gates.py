"""Prove the exported variants: FP32 equals PyTorch, INT8 agrees with FP32, all scored as the runtime predicts.

Every variant is loaded through `runtime.classifier.load_classifier` (manifest, hashes, input shape), so the
gates also prove that the runtime can load what was written.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from export.prepare import Prepared
from runtime.classifier import load_classifier
from runtime.manifest import Manifest
from trainer.metrics import confusion_matrix, summarize

PARITY_MAX_ABS = 1e-4  # FP32 logits vs PyTorch, max abs over the parity images
INT8_MIN_AGREEMENT = 0.97  # top-1 agreement of INT8 with FP32 of the same backend, PublicTest
INT8_MAX_ACC_DROP = 0.01  # accuracy points lost by INT8 vs FP32 of the same backend, PublicTest
CHUNK = 256


@dataclass
class Gate:
    name: str
    value: float
    limit: float
    passed: bool


def predict_all(clf, faces: np.ndarray) -> np.ndarray:
    return np.concatenate([clf.predict(faces[i : i + CHUNK]) for i in range(0, len(faces), CHUNK)])


def score_variants(prep: Prepared, manifest: Manifest, folder: Path, log) -> tuple[dict[str, dict], dict]:
    """Metrics per variant (as stored in the manifest) plus the PyTorch reference, and each variant's predictions."""
    threads = max(1, min(4, os.cpu_count() or 1))
    torch_pred = prep.torch_test_probs.argmax(1)
    metrics, preds = {}, {}
    for name, variant in manifest.variants.items():
        clf = load_classifier(folder, variant.backend, variant.precision, threads=threads)
        max_diff = float(np.abs(clf.logits(prep.parity) - prep.torch_parity_logits).max())
        pred = predict_all(clf, prep.test_faces).argmax(1)
        summary = summarize(confusion_matrix(prep.test_labels, pred))
        preds[name] = pred
        metrics[name] = {
            "publictest_accuracy": round(summary["accuracy"], 6),
            "publictest_balanced_accuracy": round(summary["balanced_accuracy"], 6),
            "publictest_n": summary["n"],
            "tta_flip": clf.tta_flip,
            "file_size_bytes": sum((folder / rel).stat().st_size for rel in variant.files),
            "agreement_with_pytorch": round(float((pred == torch_pred).mean()), 6),
            "max_abs_logit_diff_vs_pytorch": max_diff,
            "parity_images": len(prep.parity),
        }
        log(
            f"{name}: accuracy {summary['accuracy']:.4f}, agreement with PyTorch {metrics[name]['agreement_with_pytorch']:.4f}, "
            f"max |logit diff| {max_diff:.2e}"
        )
    for name, variant in manifest.variants.items():
        if variant.precision == "int8":
            ref, _ = manifest.find(variant.backend, "fp32")
            metrics[name]["fp32_reference"] = ref
            metrics[name]["agreement_with_fp32"] = round(float((preds[name] == preds[ref]).mean()), 6)
            metrics[name]["accuracy_drop_vs_fp32"] = round(
                metrics[ref]["publictest_accuracy"] - metrics[name]["publictest_accuracy"], 6
            )
    torch_summary = summarize(confusion_matrix(prep.test_labels, torch_pred))
    pytorch = {
        "publictest_accuracy": round(torch_summary["accuracy"], 6),
        "publictest_balanced_accuracy": round(torch_summary["balanced_accuracy"], 6),
        "tta_flip": prep.tta_flip,
    }
    return metrics, pytorch


def check(metrics: dict[str, dict], manifest: Manifest) -> list[Gate]:
    gates = []
    for name, variant in manifest.variants.items():
        m = metrics[name]
        if variant.precision == "fp32":
            d = m["max_abs_logit_diff_vs_pytorch"]
            gates.append(Gate(f"{name}: max |logit - PyTorch logit|", d, PARITY_MAX_ABS, d <= PARITY_MAX_ABS))
        else:
            a, drop = m["agreement_with_fp32"], m["accuracy_drop_vs_fp32"]
            ref = m["fp32_reference"]
            gates.append(Gate(f"{name}: top-1 agreement with {ref}", a, INT8_MIN_AGREEMENT, a >= INT8_MIN_AGREEMENT))
            gates.append(Gate(f"{name}: accuracy drop vs {ref}", drop, INT8_MAX_ACC_DROP, drop <= INT8_MAX_ACC_DROP))
    return gates


def as_dicts(gates: list[Gate]) -> list[dict]:
    return [asdict(g) for g in gates]
