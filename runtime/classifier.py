"""The expression classifier: an exported model set, loaded through its manifest, on one backend.

    clf = load_classifier(DEFAULT_MODEL_DIR, backend="onnxruntime", precision="int8", threads=1)
    probs = clf.predict(faces_u8)  # (N, 48, 48) uint8 -> (N, 7) float32, rows sum to 1

Models load only through `runtime.manifest`: every file's SHA-256 is checked on every load and the model's
own input shape must match the manifest's input spec. All faces (and, with test-time flip, their mirrors)
go through the network in one batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.backends import Backend, get_backend
from runtime.errors import UserError
from runtime.labels import NUM_CLASSES
from runtime.manifest import DEFAULT_MODEL_DIR, Manifest, TensorSpec, load_manifest, verified_files
from runtime.preprocess import preprocess

__all__ = ["DEFAULT_MODEL_DIR", "Classifier", "load_classifier"]  # DEFAULT_MODEL_DIR: where it always was


class Classifier:
    def __init__(self, engine: Backend, manifest: Manifest, variant_name: str, tta_flip: bool) -> None:
        self.engine = engine
        self.manifest = manifest
        self.variant_name = variant_name
        variant = manifest.variants[variant_name]
        self.backend, self.precision = variant.backend, variant.precision
        self.model_id = manifest.model_id
        self.spec = manifest.spec
        self.tta_flip = tta_flip

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """Preprocessed float32 (N, 1, crop, crop) -> raw (N, 7) logits."""
        if len(inputs) == 0:
            return np.zeros((0, NUM_CLASSES), np.float32)
        return self.engine.run(np.ascontiguousarray(inputs, dtype=np.float32))

    def predict(self, faces_u8: np.ndarray) -> np.ndarray:
        """uint8 (N, 48, 48) faces -> float32 (N, 7) probabilities; with tta_flip, the mean over face and mirror."""
        n = len(faces_u8)
        if n == 0:
            return np.zeros((0, NUM_CLASSES), np.float32)
        x = preprocess(faces_u8, self.spec, mirrors=self.tta_flip)  # with flip: faces then mirrors, one call
        p = _softmax(self.engine.run(x))
        return (p[:n] + p[n:]) * 0.5 if self.tta_flip else p

    def __repr__(self) -> str:
        return f"Classifier({self.model_id}, {self.variant_name}, tta_flip={self.tta_flip})"


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _check_shape(what: str, spec: TensorSpec, actual: list[int | None], path: Path) -> None:
    """Static axes must be equal; the manifest's named (dynamic) axes must be dynamic in the model too."""
    expected = [d if isinstance(d, int) else None for d in spec.shape]
    if expected != actual:
        show = ["?" if d is None else d for d in actual]
        raise UserError(f"model {path} has {what} shape {show}, its manifest says {spec.shape}: refusing to load it")


def load_classifier(
    model: str | Path = DEFAULT_MODEL_DIR,
    backend: str = "onnxruntime",
    precision: str = "int8",
    threads: int = 1,
    tta_flip: bool | None = None,
) -> Classifier:
    """model: a model set folder, its manifest.json, or a file beside it. tta_flip None: the manifest's default."""
    if threads < 1:
        raise UserError(f"classifier threads must be at least 1, got {threads}")
    engine_cls = get_backend(backend)
    manifest, folder = load_manifest(model)
    name, variant = manifest.find(backend, precision)
    files = verified_files(manifest, folder, variant)
    try:
        engine = engine_cls(files, threads)
    except Exception as e:  # each runtime raises its own types for a model it cannot read
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{backend} cannot load {files[0]}: {first[:200]}") from None
    _check_shape("input", manifest.input, engine.input_shape, files[0])
    _check_shape("output", manifest.output, engine.output_shape, files[0])
    clf = Classifier(engine, manifest, name, manifest.tta_flip if tta_flip is None else bool(tta_flip))
    clf.predict(np.zeros((1, clf.spec.size, clf.spec.size), np.uint8))  # warm-up: the first frame is not the slowest
    return clf
