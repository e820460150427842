"""Knowledge distillation: a cheap model also learns from the soft labels of a larger trained one.

The teacher's probabilities (face and mirror averaged) are computed once, on the centre crop of every Training
image, before the first epoch: no teacher pass per batch, so an epoch costs what it costs without a teacher. The
batches are augmented (small shifts, turns, zooms, erasing) while the targets describe the unaugmented face;
those changes keep the expression, so its soft label still holds.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from runtime.errors import UserError
from runtime.preprocess import PreprocessSpec
from trainer import checkpoint


def load_teacher(path: str | Path, spec: PreprocessSpec) -> torch.nn.Module:
    try:
        model, teacher_spec = checkpoint.build(checkpoint.load(path), path)
    except UserError as e:
        raise UserError(f"distill.teacher: {e}") from None
    if teacher_spec != spec:
        raise UserError(f"distill.teacher {path} preprocesses faces differently: {teacher_spec} vs {spec}")
    return model


def soften(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """p ** (1/T), renormalized: softmax(logits / T) when p = softmax(logits)."""
    z = torch.log(probs.clamp_min(1e-12)) / temperature
    return F.softmax(z, dim=1)


def distill_loss(logits: torch.Tensor, soft_targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T, scaled by T^2 so its gradients match cross-entropy's."""
    log_p = F.log_softmax(logits / temperature, dim=1)
    return F.kl_div(log_p, soft_targets, reduction="batchmean") * temperature**2
