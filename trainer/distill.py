"""Knowledge distillation: a cheap model also learns from the soft labels of a larger trained one.

Two ways to get the teacher's soft labels (`distill.online`):
- fixed (default): its probabilities (face and mirror averaged) are computed once, on the centre crop of every
  Training image, before the first epoch: no teacher pass per batch, so an epoch costs what it costs without a
  teacher. The batches are augmented (shifts, turns, zooms, erasing, CutMix) while the targets describe the
  unaugmented face, blended by area for CutMix.
- online: the teacher labels each batch as the student sees it, augmented and mixed ("consistent teaching",
  Beyer et al., 2022, "Knowledge distillation: A good teacher is patient and consistent"). A teacher that has
  nearly memorised the Training faces (its fixed labels agree with 0.9 of them) says little beyond the label on
  the face it learned; on a view it has not seen, it says more. Costs one teacher pass per batch.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from runtime.errors import UserError
from runtime.manifest import sha256_file
from runtime.preprocess import PreprocessSpec
from trainer import checkpoint
from trainer.augment import mixed_loss


def load_teacher(path: str | Path, spec: PreprocessSpec, threads: int = 1) -> tuple[torch.nn.Module, str]:
    """The teacher (eval mode) and the SHA-256 that pins it on --resume: a PyTorch checkpoint (its file's hash), or
    an exported model set (its folder, manifest.json or one of its model files; run by the runtime's backend, INT8
    unless a file names another variant: several times faster than PyTorch, which matters when it labels every
    batch; pinned by the variant's files, so that exporting the same checkpoint again is the same teacher)."""
    path = Path(path)
    try:
        if path.suffix == ".pt":
            model, teacher_spec = checkpoint.build(checkpoint.load(path), path)
            identity = sha256_file(path)
        else:
            model, teacher_spec, identity = _exported(path, threads)
    except UserError as e:
        raise UserError(f"distill.teacher: {e}") from None
    if teacher_spec != spec:
        raise UserError(f"distill.teacher {path} preprocesses faces differently: {teacher_spec} vs {spec}")
    return model.eval(), identity


def load_teachers(teachers: list[str], spec: PreprocessSpec, threads: int = 1) -> tuple[torch.nn.Module, str]:
    """`distill.teachers` as one module and the SHA-256 that pins it on --resume. One teacher: its own. Several: an
    ensemble of them (the mean of their probabilities), pinned by the hash of their hashes in order."""
    if len(teachers) == 1:
        return load_teacher(teachers[0], spec, threads)
    loaded = [load_teacher(t, spec, threads) for t in teachers]
    digests = "".join(f"{identity}  {t}\n" for t, (_, identity) in zip(teachers, loaded, strict=True))
    return Ensemble([m for m, _ in loaded]).eval(), hashlib.sha256(digests.encode()).hexdigest()


class Ensemble(torch.nn.Module):
    """Several teachers as one: it answers the log of their mean probability, so a softmax gives that mean back.
    The mean of several runs' answers is better calibrated and more accurate than any one of them (on the photos
    of benchmarks.photo_tricks, three width-20 students: 0.648 against 0.627 for one on average)."""

    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([F.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
        return torch.log(probs.clamp_min(1e-12))


class ExportedModel(torch.nn.Module):
    """An exported model set behind the module interface the trainer calls: no gradients, float32 logits."""

    def __init__(self, classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.classifier.logits(x.detach().float().contiguous().numpy()))


def _exported(path: Path, threads: int) -> tuple[torch.nn.Module, PreprocessSpec, str]:
    from runtime.classifier import load_classifier
    from trainer.evaluate import exported_variant

    backend, precision = exported_variant(path, None, None)
    clf = load_classifier(path, backend=backend, precision=precision, threads=threads)
    variant = clf.manifest.variants[clf.variant_name]  # its files' SHA-256, checked as they were loaded
    pinned = json.dumps({"backend": backend, "precision": precision, "files": variant.files}, sort_keys=True)
    return ExportedModel(clf), clf.spec, hashlib.sha256(pinned.encode()).hexdigest()


def soften(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """p ** (1/T), renormalized: softmax(logits / T) when p = softmax(logits)."""
    z = torch.log(probs.clamp_min(1e-12)) / temperature
    return F.softmax(z, dim=1)


def distill_loss(logits: torch.Tensor, soft_targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T, scaled by T^2 so its gradients match cross-entropy's."""
    log_p = F.log_softmax(logits / temperature, dim=1)
    return F.kl_div(log_p, soft_targets, reduction="batchmean") * temperature**2


class Teacher:
    """The distillation term of a batch: fixed soft labels indexed by image, or the teacher's answer on the batch."""

    def __init__(self, temperature: float, fixed: torch.Tensor | None = None, model: torch.nn.Module | None = None):
        assert (fixed is None) != (model is None), "fixed soft labels or an online model, one of the two"
        self.temperature, self.fixed, self.model = temperature, fixed, model

    def loss(self, logits: torch.Tensor, idx: torch.Tensor, x: torch.Tensor, mixed: tuple | None, bf16: bool):
        if self.model is None:
            term = functools.partial(distill_loss, logits, temperature=self.temperature)
            return mixed_loss(term, self.fixed[idx], mixed)
        return distill_loss(logits, self.answer(x, bf16), self.temperature)

    @torch.no_grad()
    def answer(self, x: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        """The online teacher's soft labels for batch x itself (mixed or not: nothing to blend), face and mirror
        averaged as for the fixed labels: its best answer."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            probs = F.softmax(self.model(torch.cat([x, x.flip(-1)])).float(), dim=1)
        return soften((probs[: len(x)] + probs[len(x) :]) / 2, self.temperature)
