"""Self-describing checkpoints: whoever loads one needs nothing else to rebuild the model."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from runtime.errors import UserError
from runtime.labels import LABELS
from runtime.preprocess import PreprocessSpec
from trainer.models import build_model

FORMAT = "emotiond-checkpoint/1"


def save(path: str | Path, state: dict) -> None:
    """Atomic: write beside, then rename, so a killed run never leaves a broken file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a corrupt file
        raise UserError(f"checkpoint {path} is corrupt or not a PyTorch file ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not an emotiond checkpoint")
    if tuple(ckpt.get("labels", ())) != LABELS:
        raise UserError(f"{path}: its labels {ckpt.get('labels')} differ from emotiond's {list(LABELS)}")
    return ckpt


def build(ckpt: dict, path: str | Path = "checkpoint") -> tuple[nn.Module, PreprocessSpec]:
    """The checkpoint's model (eval mode, inference weights) and its preprocessing spec."""
    try:
        model = build_model(ckpt["arch"], **ckpt["model_args"])
        model.load_state_dict(ckpt["model"])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: weights do not fit architecture {ckpt.get('arch')!r} ({first[:160]})") from None
    return model.eval(), PreprocessSpec.from_dict(ckpt["preprocess"])
