"""The mean of several checkpoints' weights, BatchNorm statistics included ("model soup", Wortsman et al., 2022; SWA,
Izmailov et al., 2018), scored on the validation split as a trained epoch is, and written as a self-describing
checkpoint that `python -m export` and `python -m trainer.evaluate` take as they take a run's best.pt.

Averaging only makes sense for checkpoints of one training trajectory (a run and its continuation, or epochs of one
run): weights of separately trained nets do not line up. The checkpoints must share architecture, labels,
preprocessing and training data; the soup records each one's path, epoch and SHA-256.

    python -m trainer.soup models/teacher/best.pt models/teacher_ext/best.pt --out models/teacher_soup/best.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from runtime.errors import UserError
from runtime.manifest import sha256_file
from runtime.preprocess import preprocess
from trainer import checkpoint, data
from trainer.train import validate

MUST_MATCH = ("arch", "model_args", "labels", "preprocess", "tta_flip", "data_fingerprint")


def soup(paths: list[str | Path]) -> dict:
    """The averaged checkpoint (without metrics): the first checkpoint's description, the mean weights."""
    if len(paths) < 2:
        raise UserError("a soup needs at least two checkpoints")
    ckpts = [checkpoint.load(p) for p in paths]
    for path, ckpt in zip(paths, ckpts, strict=True):
        checkpoint.require_spec(ckpt, path)
        for key in MUST_MATCH:
            if ckpt.get(key) != ckpts[0].get(key):
                raise UserError(f"{path} differs from {paths[0]} in {key}: {ckpt.get(key)!r} vs {ckpts[0].get(key)!r}")
    weights = {}
    for name, first in ckpts[0]["model"].items():
        if first.is_floating_point():
            weights[name] = torch.stack([c["model"][name].float() for c in ckpts]).mean(0).to(first.dtype)
        else:  # BatchNorm's num_batches_tracked: a count, not a weight
            weights[name] = first.clone()
    keep = ("arch", "model_args", "labels", "preprocess", "tta_flip", "config", "data_fingerprint", "data_source")
    return {
        **{k: ckpts[0][k] for k in keep if k in ckpts[0]},
        "model": weights,
        "epoch": max(int(c.get("epoch", 0)) for c in ckpts),
        "soup": [
            {"path": str(p), "epoch": c.get("epoch"), "sha256": sha256_file(Path(p))}
            for p, c in zip(paths, ckpts, strict=True)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.soup", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoints (.pt) of one training trajectory")
    ap.add_argument("--out", required=True, help="where to write the averaged checkpoint (.pt)")
    ap.add_argument("--data", default=None, help="dataset to score it on (default: the first checkpoint's)")
    ap.add_argument("--threads", type=int, default=2, choices=range(1, 257), metavar="N")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    try:
        if out.is_dir():
            raise UserError(f"--out {out} is a folder: name the checkpoint file (e.g. {out / 'best.pt'})")
        out.parent.mkdir(parents=True, exist_ok=True)  # before the work: an unwritable place fails first
        averaged = soup(args.checkpoints)
        split = averaged.get("config", {}).get("eval_split", "PublicTest")
        faces = data.load(args.data or averaged.get("data_source") or "").split(split)
        model, spec = checkpoint.build(averaged, "the soup")
        result = validate(model, preprocess(faces.images, spec), faces.labels, averaged["tta_flip"], bf16=False)
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the output's folder could not be made
        print(f"error: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    averaged["metrics"] = {split: result["summary"]}
    try:
        checkpoint.save(out, averaged)
    except OSError as e:
        print(f"error: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    for part in averaged["soup"]:
        print(f"{part['path']}: epoch {part['epoch']}", file=sys.stderr)
    flip = " with flip" if averaged["tta_flip"] else ""
    print(f"soup of {len(averaged['soup'])}: {split} accuracy{flip} {result['summary']['accuracy']:.4f} "
          f"(without flip {result['val_acc']:.4f}, {len(faces.labels)} faces)")  # fmt: skip
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
