"""The preparation every format shares: the checkpoint's model, the calibration and the evaluation images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.errors import UserError
from runtime.manifest import sha256_file
from runtime.preprocess import PreprocessSpec, preprocess
from trainer import checkpoint, data
from trainer.train import predict_with_tta

SEED = 0  # the calibration and parity samples are the same on every run


@dataclass
class Prepared:
    checkpoint_path: Path
    checkpoint_sha256: str
    ckpt: dict  # the loaded checkpoint (arch, model_args, epoch, data_fingerprint, ...)
    model: torch.nn.Module  # eval mode, FP32, contiguous memory format
    spec: PreprocessSpec
    tta_flip: bool
    model_id: str
    data_path: Path
    calib: np.ndarray  # float32 (K, 1, crop, crop): TRAINING images, never the ones accuracy is reported on
    parity: np.ndarray  # float32 (P, 1, crop, crop): real PublicTest faces for the FP32 parity gate
    torch_parity_logits: np.ndarray  # (P, 7)
    test_faces: np.ndarray  # uint8 (N, 48, 48): PublicTest, scored the way the runtime predicts
    test_labels: np.ndarray  # (N,)
    torch_test_probs: np.ndarray  # (N, 7), with the checkpoint's tta_flip


def prepare(checkpoint_path: Path, data_path: Path, calib_size: int, parity_size: int, log) -> Prepared:
    ckpt = checkpoint.load(checkpoint_path)
    model, spec = checkpoint.build(ckpt, checkpoint_path)
    model = model.float().to(memory_format=torch.contiguous_format).eval()
    digest = sha256_file(checkpoint_path)

    try:
        faces = data.load(data_path)
    except UserError as e:
        raise UserError(f"calibration data: {e}") from None
    train, test = faces.split("Training"), faces.split("PublicTest")
    if len(train) < calib_size:
        raise UserError(
            f"calibration data too small: {data_path} has {len(train)} Training images, --calib-size is {calib_size}"
        )
    if len(test) < parity_size:
        raise UserError(f"{data_path} has {len(test)} PublicTest images, the gates need at least {parity_size}")
    rng = np.random.default_rng(SEED)
    calib_faces = train.images[np.sort(rng.choice(len(train), calib_size, replace=False))]
    calib = preprocess(calib_faces, spec)
    parity = preprocess(test.images[np.sort(rng.choice(len(test), parity_size, replace=False))], spec)
    # logged only now: bad input gets its one-line error with nothing before it
    log(f"checkpoint {checkpoint_path}: {ckpt['arch']} {ckpt.get('model_args')}, epoch {ckpt.get('epoch')}")
    log(f"data {data_path}: {calib_size} calibration images (Training), {len(test)} PublicTest images")

    tta_flip = bool(ckpt.get("tta_flip", False))
    with torch.no_grad():
        torch_parity_logits = model(torch.from_numpy(parity)).numpy()
    torch_test_probs = predict_with_tta(model, preprocess(test.images, spec), tta_flip)
    log(f"PyTorch reference: PublicTest accuracy {(torch_test_probs.argmax(1) == test.labels).mean():.4f}")
    return Prepared(
        checkpoint_path=checkpoint_path,
        checkpoint_sha256=digest,
        ckpt=ckpt,
        model=model,
        spec=spec,
        tta_flip=tta_flip,
        model_id=f"{ckpt['arch']}-e{ckpt.get('epoch', 0)}-{digest[:8]}",
        data_path=data_path,
        calib=calib,
        parity=parity,
        torch_parity_logits=torch_parity_logits,
        test_faces=test.images,
        test_labels=test.labels,
        torch_test_probs=torch_test_probs,
    )
