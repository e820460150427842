"""Write every variant into a staging folder, prove them, then write the manifest with their metrics."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from export import formats, gates
from export.prepare import Prepared
from runtime.labels import NUM_CLASSES
from runtime.manifest import Manifest, TensorSpec, Variant, sha256_file, write_manifest

# name -> (backend, precision, model file); the OpenVINO weights (.bin) sit beside their .xml
VARIANTS = {
    "onnx-fp32": ("onnxruntime", "fp32", "model.onnx"),
    "onnx-int8": ("onnxruntime", "int8", "model.int8.onnx"),
    "openvino-fp32": ("openvino", "fp32", "model.xml"),
    "openvino-int8": ("openvino", "int8", "model.int8.xml"),
}


def write_variants(prep: Prepared, folder: Path, log) -> dict[str, list[Path]]:
    path = {name: folder / spec[2] for name, spec in VARIANTS.items()}
    steps = [
        ("onnx-fp32", lambda: formats.export_onnx(prep, path["onnx-fp32"])),
        ("onnx-int8", lambda: formats.quantize_onnx_int8(prep, path["onnx-fp32"], path["onnx-int8"])),
        ("openvino-fp32", lambda: formats.export_openvino(prep, path["onnx-fp32"], path["openvino-fp32"])),
        ("openvino-int8", lambda: formats.quantize_openvino_int8(prep, path["openvino-fp32"], path["openvino-int8"])),
    ]
    files = {}
    for name, step in steps:
        t0 = time.perf_counter()
        files[name] = step()
        log(f"{name}: wrote {', '.join(f.name for f in files[name])} ({time.perf_counter() - t0:.1f}s)")
    return files


def build_manifest(prep: Prepared, folder: Path, files: dict[str, list[Path]], created_by: str) -> Manifest:
    spec = prep.spec
    return Manifest(
        model_id=prep.model_id,
        labels=list(prep.ckpt["labels"]),
        preprocess=spec.to_dict(),
        tta_flip=prep.tta_flip,
        input=TensorSpec(name=formats.INPUT, shape=["batch", *spec.input_shape]),
        output=TensorSpec(name=formats.OUTPUT, shape=["batch", NUM_CLASSES]),
        variants={
            name: Variant(
                backend=VARIANTS[name][0],
                precision=VARIANTS[name][1],
                files={f.relative_to(folder).as_posix(): sha256_file(f) for f in paths},
            )
            for name, paths in files.items()
        },
        source_checkpoint={
            "path": str(prep.checkpoint_path),
            "sha256": prep.checkpoint_sha256,
            "epoch": prep.ckpt.get("epoch"),
            "arch": prep.ckpt["arch"],
            "model_args": prep.ckpt.get("model_args", {}),
        },
        training_data_fingerprint=prep.ckpt.get("data_fingerprint", ""),
        created_by=created_by,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def run(prep: Prepared, folder: Path, created_by: str, log) -> tuple[Manifest, dict]:
    """Export into `folder` (a staging folder) and return the final manifest and the gate report."""
    files = write_variants(prep, folder, log)
    manifest = build_manifest(prep, folder, files, created_by)
    write_manifest(manifest, folder)  # the gates load each variant through it, as the runtime will
    metrics, pytorch = gates.score_variants(prep, manifest, folder, log)
    results = gates.check(metrics, manifest)
    for name, m in metrics.items():
        manifest.variants[name].metrics = m
    manifest.source_checkpoint["metrics"] = pytorch
    write_manifest(manifest, folder)
    report = {
        "passed": all(g.passed for g in results),
        "gates": gates.as_dicts(results),
        "variants": metrics,
        "pytorch": pytorch,
        "model_id": manifest.model_id,
        "checkpoint": str(prep.checkpoint_path),
        "calibration_images": len(prep.calib),
        "data": str(prep.data_path),
    }
    return manifest, report
