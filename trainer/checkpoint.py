"""Self-describing checkpoints: whoever loads one needs nothing else to rebuild the model."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from runtime.errors import UserError
from runtime.labels import LABELS
from runtime.preprocess import DEFAULT_SPEC, BlurredSpecError, PreprocessSpec
from trainer.models import build_model

FORMAT = "emotiond-checkpoint/1"


def save(path: str | Path, state: dict) -> None:
    """Atomic: write beside, then rename, so a killed run never leaves a broken file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # our open: a place that cannot take the file is an OSError, not torch's RuntimeError
        torch.save({"format": FORMAT, **state}, f)
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
    preprocessing = spec(ckpt, path)  # a spec this version cannot honour is refused before the weights are read
    try:
        model = build_model(ckpt["arch"], **ckpt["model_args"])
        model.load_state_dict(ckpt["model"])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: weights do not fit architecture {ckpt.get('arch')!r} ({first[:160]})") from None
    return model.eval(), preprocessing


def spec(ckpt: dict, path: str | Path = "checkpoint") -> PreprocessSpec:
    """The checkpoint's preprocessing spec; a checkpoint trained on blurred faces (old `blur_sigma` > 0) is refused."""
    try:
        return PreprocessSpec.from_dict(ckpt["preprocess"])
    except BlurredSpecError as e:  # from before the input blur contract was removed
        raise UserError(f"checkpoint {path} was {e}: retrain it on sharp data") from None
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    except (KeyError, TypeError):
        raise UserError(f"{path}: unsupported preprocessing spec: {ckpt.get('preprocess')!r}") from None


def require_spec(ckpt: dict, path: str | Path, role: str = "") -> PreprocessSpec:
    """The checkpoint's spec if it is this version's (DEFAULT_SPEC); else one line naming both (`role`: "init: ")."""
    theirs = spec(ckpt, path)
    if theirs != DEFAULT_SPEC:
        raise UserError(f"{role}{path} preprocesses faces as {theirs}, this version as {DEFAULT_SPEC}")
    return theirs
