"""Classification metrics from a confusion matrix (rows = true label, columns = prediction)."""

from __future__ import annotations

import numpy as np

from runtime.labels import LABELS, NUM_CLASSES


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    return np.bincount(np.asarray(labels) * n + np.asarray(preds), minlength=n * n).reshape(n, n)


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true label), p floored at 1e-7: unlike accuracy it moves smoothly as a model changes."""
    return float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-7)).mean())


def summarize(confusion: np.ndarray) -> dict:
    """accuracy, balanced accuracy (mean recall over classes present), macro-F1, and per class: precision, recall,
    F1 and support (true faces). A class with no true faces has no recall and no F1 (None, and it is left out of
    the means); a class never predicted has no precision (None; its F1 is 0 when it has true faces)."""
    cm = np.asarray(confusion, dtype=np.int64)
    true = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    tp = np.diag(cm)
    present = true > 0
    recall = np.divide(tp, true, out=np.zeros(len(cm)), where=present)
    precision = np.divide(tp, pred, out=np.zeros(len(cm)), where=pred > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(len(cm)), where=denom > 0)
    n = int(cm.sum())
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_recall": {LABELS[i]: (float(recall[i]) if present[i] else None) for i in range(len(cm))},
        "per_class": {
            LABELS[i]: {
                "precision": float(precision[i]) if pred[i] > 0 else None,
                "recall": float(recall[i]) if present[i] else None,
                "f1": float(f1[i]) if present[i] else None,
                "support": int(true[i]),
            }
            for i in range(len(cm))
        },
        "confusion": cm.tolist(),
    }
