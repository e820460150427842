"""python -m export --checkpoint PATH --out DIR: every variant is written to a staging folder beside DIR and
renamed into place only when all gates pass, so DIR is either the previous model set or the new one, never
half of one."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from runtime.errors import UserError
from runtime.manifest import MANIFEST_NAME

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "fer2013" / "fer2013.zip"
MIN_CALIB = 32
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"export [{time.perf_counter() - T0:5.1f}s] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a checkpoint to ONNX and OpenVINO, FP32 and INT8, with parity and accuracy gates. "
        "The model set replaces --out only when every gate passes; otherwise the exit code is 1 and a report is "
        "written beside --out (<out>.failed-report.json). Bad input: one-line error, exit code 2.",
    )
    ap.add_argument("--checkpoint", type=Path, required=True, metavar="PATH", help="trainer checkpoint (.pt)")
    ap.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="output folder for the model set (replaced on success)"
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        metavar="PATH",
        help=f"FER2013 data: calibration from Training, gates on PublicTest (default: {DEFAULT_DATA})",
    )
    ap.add_argument(
        "--calib-size",
        type=int,
        default=1000,  # 300 left the distilled 4M-MAC model's OpenVINO INT8 at 96.96% agreement with FP32 (gate: 97%)
        metavar="N",
        help="Training images for INT8 calibration (default: %(default)s)",
    )
    ap.add_argument(
        "--parity-size",
        type=int,
        default=256,
        metavar="N",
        help="PublicTest images for the FP32 parity gate (default: 256)",
    )
    args = ap.parse_args(argv)
    if args.calib_size < MIN_CALIB:
        ap.error(f"--calib-size must be at least {MIN_CALIB}")
    if args.parity_size < 1:
        ap.error("--parity-size must be at least 1")
    return args


def staging_folder(out: Path) -> Path:
    """A fresh folder beside `out` (same filesystem, so the final rename is atomic)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise UserError(f"refusing to replace {out}: it is not empty and holds no {MANIFEST_NAME}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise UserError(f"cannot write output folder {out}: {e.strerror or e}") from None
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the published folder is an ordinary one
    return staging


def publish(staging: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old)
    else:
        os.rename(staging, out)


def print_table(report: dict) -> None:
    print(f"{'variant':<15}{'size':>10}{'accuracy':>10}{'balanced':>10}{'agree(PT)':>11}{'max|dlogit|':>13}")
    for name, m in report["variants"].items():
        print(
            f"{name:<15}{m['file_size_bytes'] / 1e6:>8.2f}MB{m['publictest_accuracy']:>10.4f}"
            f"{m['publictest_balanced_accuracy']:>10.4f}{m['agreement_with_pytorch']:>11.4f}"
            f"{m['max_abs_logit_diff_vs_pytorch']:>13.2e}"
        )
    pt = report["pytorch"]
    print(f"{'pytorch':<15}{'':>10}{pt['publictest_accuracy']:>10.4f}{pt['publictest_balanced_accuracy']:>10.4f}")
    for g in report["gates"]:
        print(f"{'PASS' if g['passed'] else 'FAIL'}  {g['name']}: {g['value']:.6g} (limit {g['limit']})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    created_by = shlex.join(["python", "-m", "export", *(sys.argv[1:] if argv is None else argv)])
    failed_report = args.out.with_name(args.out.name + ".failed-report.json")
    staging = None
    try:
        staging = staging_folder(args.out)
        from export import pipeline  # heavy imports (torch, onnx, openvino) only once the arguments are sane
        from export.prepare import prepare

        prep = prepare(args.checkpoint, args.data, args.calib_size, args.parity_size, log)
        _, report = pipeline.run(prep, staging, created_by, log)
        print_table(report)
        if not report["passed"]:
            failed_report.write_text(json.dumps(report, indent=2) + "\n")
            failed = [g["name"] for g in report["gates"] if not g["passed"]]
            print(f"error: export failed {len(failed)} gate(s): {'; '.join(failed)}", file=sys.stderr)
            print(f"error: report written to {failed_report}; {args.out} left unchanged", file=sys.stderr)
            return 1
        publish(staging, args.out)
        staging = None
        failed_report.unlink(missing_ok=True)
        log(f"model set {report['model_id']} written to {args.out}")
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
