"""Per-face latency and throughput of each classifier backend/precision at batch 1, 8 and 32.

    python -m benchmarks.classifier [--json benchmarks/results/classifier.json] [--threads 1 2] [--seconds 1]
                                    [--rounds 15]

"network" times the model alone on preprocessed faces (what the targets speak of); "predict" times the runtime's
whole `Classifier.predict` at batch 1 (preprocessing, softmax), without and with the mirrored face (tta_flip),
back to back and, on one thread, at a camera's pace: a 33 ms sleep before each call, as the daemon idles behind
a 30 frames/s webcam (caches and predictors then start cold). Inputs are real FER2013 PublicTest faces when
../shared/datasets is present, else random faces (the time these models take does not depend on pixel values).
"Side by side" then times the exported networks in interleaved rounds (the INT8 speed-ups come from there).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.engines import (
    CAMERA_INTERVAL_S,
    DATASETS,
    DEFAULT_CHECKPOINT,
    EXPORTED,
    EngineSpec,
    all_engines,
    make_classifier,
    write_result,
)
from runtime.backends.onnxruntime_backend import make_session
from runtime.classifier import DEFAULT_MODEL_DIR
from runtime.errors import UserError
from runtime.manifest import load_manifest, verified_files
from runtime.preprocess import preprocess
from trainer.data import load as load_faces

FER_ZIP = DATASETS / "fer2013" / "fer2013.zip"
BATCHES = (1, 8, 32)
SIDE_BY_SIDE_BATCHES = (1, 2, 8, 16)  # 2: one face and its mirror, as the daemon's flip TTA runs it
ALL_PASSES = "onnxruntime int8, all onnxruntime passes"


def sample_faces(n: int = 64) -> tuple[np.ndarray, str]:
    if FER_ZIP.is_file():
        return load_faces(FER_ZIP).split("PublicTest").images[:n], "FER2013 PublicTest"
    return np.random.default_rng(0).integers(0, 256, (n, 48, 48), dtype=np.uint8), "random"


def time_call(fn, seconds: float, pause_s: float = 0.0, min_calls: int = 20, warmups: int = 5) -> float:
    """Median wall time of one call in ms, after `warmups` calls; pause_s > 0 sleeps that long before each call.
    At least min_calls calls, and as many more as fit in `seconds`."""
    for _ in range(warmups):
        fn()
    times = []
    end = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < end:
        if pause_s:
            time.sleep(pause_s)
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.median(times))


def bench(engine: EngineSpec, threads: int, faces: np.ndarray, seconds: float, model_dir, checkpoint) -> list[dict]:
    clf = make_classifier(engine, threads, model_dir, checkpoint)
    rows = []
    for batch in BATCHES:
        x = preprocess(faces[:batch], clf.spec)
        ms = time_call(lambda x=x: clf.logits(x), seconds)
        rows.append({"engine": engine.name, "threads": threads, "batch": batch, "what": "network",
                     "ms_per_call": round(ms, 4), "ms_per_face": round(ms / batch, 4),
                     "faces_per_s": round(1000 * batch / ms, 1)})  # fmt: skip
    for flip in (False, True):
        clf.tta_flip = flip
        for pace, pause_s in [("", 0.0)] + ([(" every 33 ms", CAMERA_INTERVAL_S)] if threads == 1 else []):
            ms = time_call(lambda: clf.predict(faces[:1]), seconds, pause_s)
            rows.append({"engine": engine.name, "threads": threads, "batch": 1,
                         "what": f"predict(tta_flip={flip}){pace}", "ms_per_call": round(ms, 4),
                         "ms_per_face": round(ms, 4),  # at a camera's pace, the camera sets the rate
                         "faces_per_s": None if pause_s else round(1000 / ms, 1)})  # fmt: skip
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'engine':<18}{'thr':>4}{'batch':>6}  {'what':<36}{'ms/face':>9}{'faces/s':>10}")
    for r in rows:
        rate = "-" if r["faces_per_s"] is None else f"{r['faces_per_s']:.0f}"
        print(f"{r['engine']:<18}{r['threads']:>4}{r['batch']:>6}  {r['what']:<36}{r['ms_per_face']:>9.3f}{rate:>10}")


def side_by_side(faces: np.ndarray, model_dir: Path, rounds: int, calls: int = 30) -> dict:
    """The exported networks on one thread, interleaved: every round times a burst of `calls` calls of each, at
    each batch, in an order that rotates, so the machine's drift (10-50% within minutes here) hits all alike.
    Includes onnxruntime INT8 with all of onnxruntime's graph passes (the one the runtime turns off back on).
    Per-face ms are medians over rounds; each ratio is the median of the rounds' own ratios."""
    nets = {}
    for backend, precision in EXPORTED:
        clf = make_classifier(EngineSpec(backend, precision), 1, model_dir)
        nets[f"{backend} {precision}"] = clf.logits
    manifest, folder = load_manifest(model_dir)
    int8_file = verified_files(manifest, folder, manifest.find("onnxruntime", "int8")[1])[0]
    session = make_session(int8_file, 1, all_passes=True)
    name = session.get_inputs()[0].name
    nets[ALL_PASSES] = lambda x: session.run(None, {name: x})[0]
    inputs = {b: preprocess(faces[:b], manifest.spec) for b in SIDE_BY_SIDE_BATCHES}
    ms: dict[tuple[str, int], list[float]] = {(n, b): [] for n in nets for b in inputs}
    order = list(nets)
    for r in range(rounds):
        for batch, x in inputs.items():
            for n in order[r % len(order) :] + order[: r % len(order)]:
                burst = time_call(lambda net=nets[n], x=x: net(x), 0.0, min_calls=calls, warmups=1)
                ms[n, batch].append(burst / batch)

    def ratio(slow: str, fast: str, batch: int) -> float:
        return round(float(np.median([s / f for s, f in zip(ms[slow, batch], ms[fast, batch], strict=True)])), 2)

    return {
        "rounds": rounds,
        "ms_per_face": {n: {str(b): round(float(np.median(ms[n, b])), 4) for b in inputs} for n in nets},
        "int8_speedup": {
            backend: {str(b): ratio(f"{backend} fp32", f"{backend} int8", b) for b in inputs}
            for backend in ("onnxruntime", "openvino")
        },
        "onnxruntime_int8_all_passes_over_runtime": {str(b): ratio(ALL_PASSES, "onnxruntime int8", b) for b in inputs},
    }


def print_side_by_side(result: dict) -> None:
    batches = list(next(iter(result["ms_per_face"].values())))
    print(f"networks side by side, 1 thread, {result['rounds']} interleaved rounds, ms per face at batch "
          + "/".join(batches))  # fmt: skip
    for n, by_batch in result["ms_per_face"].items():
        print(f"  {n:<42}" + " / ".join(f"{v:.3f}" for v in by_batch.values()))
    for backend, by_batch in result["int8_speedup"].items():
        print(f"  INT8 speed-up over FP32, {backend}: " + " / ".join(f"{v}x" for v in by_batch.values()))
    speed = " / ".join(f"{v}x" for v in result["onnxruntime_int8_all_passes_over_runtime"].values())
    print(f"  onnxruntime INT8, the runtime's session against all passes on: {speed}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.classifier", description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="exported model set (default: shipped)")
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="for the PyTorch eager row")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds side by side (default %(default)s)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        print("error: --rounds must be at least 1", file=sys.stderr)
        return 2
    try:
        faces, faces_from = sample_faces()
        engines = all_engines(with_torch=args.checkpoint.is_file())
        rows = [r for e in engines for t in args.threads for r in bench(e, t, faces, args.seconds, args.model,
                                                                         args.checkpoint)]  # fmt: skip
        paired = side_by_side(faces, args.model, args.rounds)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_table(rows)
    print_side_by_side(paired)
    if args.json:
        write_result(args.json, "classifier", {"inputs": faces_from, "rows": rows, "side_by_side": paired})
    return 0


if __name__ == "__main__":
    sys.exit(main())
