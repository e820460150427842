"""The classifiers a benchmark compares: the exported variants through the runtime's own loader, plus PyTorch
eager on the source checkpoint (needs the train extra), all behind the runtime's `Classifier.predict`."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from runtime.classifier import DEFAULT_MODEL_DIR, Classifier, load_classifier
from runtime.config import ClassifierConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "models" / "default" / "best.pt"
DATASETS = REPO.parent / "shared" / "datasets"  # beside the repository, as CI runs it
EXPORTED = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8")]
CAMERA_INTERVAL_S = 1 / 30  # a 30 frames/s camera's frame interval: the daemon's pace behind a webcam


@dataclass(frozen=True)
class EngineSpec:
    backend: str  # "pytorch" or a runtime backend name
    precision: str

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}"


def all_engines(with_torch: bool = True) -> list[EngineSpec]:
    specs = [EngineSpec(b, p) for b, p in EXPORTED]
    return ([EngineSpec("pytorch", "fp32")] if with_torch and torch_available() else []) + specs


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class TorchEngine:
    """The eager PyTorch model as a runtime backend (run: float32 NCHW -> logits)."""

    def __init__(self, model, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.torch, self.model = torch, model.eval()

    def run(self, inputs: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(inputs)).numpy()


class TorchClassifier(Classifier):
    """Classifier.predict (preprocessing, flip TTA, softmax) over the checkpoint in eager PyTorch."""

    def __init__(self, checkpoint_path: Path, threads: int, tta_flip: bool | None = None) -> None:
        from trainer import checkpoint

        ckpt = checkpoint.load(checkpoint_path)
        model, self.spec = checkpoint.build(ckpt, checkpoint_path)
        self.engine = TorchEngine(model.float(), threads)
        self.backend, self.precision, self.variant_name = "pytorch", "fp32", "pytorch-fp32"
        self.model_id = f"{ckpt['arch']}-e{ckpt.get('epoch', 0)}"
        self.tta_flip = bool(ckpt.get("tta_flip", False)) if tta_flip is None else tta_flip


DAEMON_TTA_FLIP = ClassifierConfig().tta_flip


def make_classifier(
    engine: EngineSpec,
    threads: int,
    model_dir: Path = DEFAULT_MODEL_DIR,
    checkpoint: Path = DEFAULT_CHECKPOINT,
    tta_flip: bool | None = DAEMON_TTA_FLIP,
) -> Classifier:
    """A classifier as the daemon builds it (its default tta_flip unless told otherwise)."""
    if engine.backend == "pytorch":
        return TorchClassifier(checkpoint, threads, tta_flip)
    return load_classifier(model_dir, engine.backend, engine.precision, threads=threads, tta_flip=tta_flip)


def machine_facts() -> dict:
    """CPU, cores and library versions: what a reader needs to compare numbers across machines."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = sorted({f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx"))})
    except OSError:
        pass
    versions = {}
    for dist in ("numpy", "opencv-contrib-python", "mediapipe", "onnxruntime", "openvino", "torch"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "versions": versions,
    }  # fmt: skip


def percentiles(values_ms: list[float] | np.ndarray) -> dict:
    v = np.asarray(values_ms, dtype=np.float64)
    if v.size == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(v, [50, 95, 99])
    return {k: round(float(x), 3) for k, x in zip(("p50", "p95", "p99", "max"), (p50, p95, p99, v.max()), strict=True)}


def write_result(path: Path, name: str, result: dict) -> None:
    """One results file: the benchmark's name and the machine it ran on first, then its figures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "machine": machine_facts(), **result}, indent=1) + "\n")
    print(f"wrote {path}")


def emotiond_command() -> list[str]:
    """The installed daemon beside this interpreter (as a user runs it), else the module."""
    emotiond = Path(sys.executable).with_name("emotiond")
    return [str(emotiond)] if emotiond.exists() else [sys.executable, "-m", "runtime"]
