"""Training loop: build data, model, optimizer; loop; validate; checkpoint. Read top to bottom.

python -m trainer --config trainer/configs/default.yaml [--set key=value ...] [--resume]
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from runtime.errors import UserError
from runtime.labels import LABELS
from runtime.preprocess import DEFAULT_SPEC, center_crop, preprocess, standardize
from trainer import checkpoint, data
from trainer.augment import augment_batch, cutmix, mixed_loss
from trainer.config import DEFAULT_CONFIG, LEGACY_KEYS, TrainConfig, load_config
from trainer.distill import Teacher, load_teachers, soften
from trainer.metrics import confusion_matrix, summarize
from trainer.models import build_model
from trainer.sharpness import compare_splits

# train_loss is what the optimizer minimizes; with distillation it blends train_ce (cross-entropy on the labels,
# comparable across runs) and train_kd (the teacher's term; empty without a teacher).
LOG_FIELDS = ["epoch", "train_loss", "train_ce", "train_kd", "train_acc", "val_loss", "val_acc", "val_acc_tta", "lr",
              "seconds"]  # fmt: skip


@torch.no_grad()
def predict_proba(model: torch.nn.Module, inputs: np.ndarray, flip: bool = False, batch: int = 512) -> np.ndarray:
    """Softmax probabilities for preprocessed inputs (N, 1, crop, crop), of the mirrored faces if flip."""
    model.eval()
    out = []
    for i in range(0, len(inputs), batch):
        x = torch.from_numpy(inputs[i : i + batch])
        x = (x.flip(-1) if flip else x).contiguous(memory_format=torch.channels_last)
        out.append(F.softmax(model(x).float(), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(LABELS)), np.float32)


def predict_with_tta(model: torch.nn.Module, inputs: np.ndarray, tta_flip: bool) -> np.ndarray:
    """What the runtime reports: with tta_flip, the mean of the face's and its mirror's probabilities."""
    p = predict_proba(model, inputs)
    return (p + predict_proba(model, inputs, flip=True)) / 2 if tta_flip else p


def use_bf16(setting: bool | str) -> bool:
    if setting == "auto":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return bool(setting)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_one_epoch(
    model, ema, optimizer, scheduler, images, labels, cfg: TrainConfig, g, epoch, bf16, teacher=None
) -> dict:
    model.train()
    n = len(labels)
    order = torch.randperm(n, generator=g)
    steps = n // cfg.batch_size if n >= cfg.batch_size else 1
    total_loss = total_ce = total_kd = correct = seen = 0
    bar = tqdm(
        range(steps), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False, file=sys.stderr, disable=None
    )
    t0 = time.perf_counter()
    for step in bar:
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x, y = images[idx], labels[idx]
        if cfg.augment.enabled:
            x = augment_batch(x, DEFAULT_SPEC.crop, cfg.augment, g)
        else:
            x = torch.from_numpy(center_crop(x[:, 0].numpy()))
        x, mixed = cutmix(x, cfg.augment, g)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        out = logits.float()
        ce = loss = mixed_loss(functools.partial(F.cross_entropy, out, label_smoothing=cfg.label_smoothing), y, mixed)
        if teacher is not None:
            kd = teacher.loss(out, idx, x, mixed, bf16)
            loss = (1 - cfg.distill.weight) * ce + cfg.distill.weight * kd
            total_kd += kd.item() * len(y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        total_loss += loss.item() * len(y)
        total_ce += ce.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        rate = seen / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", img_s=f"{rate:.0f}")
    kd = total_kd / seen if teacher is not None else None
    return {"train_loss": total_loss / seen, "train_ce": total_ce / seen, "train_kd": kd, "train_acc": correct / seen}


def validate(model, inputs: np.ndarray, labels: np.ndarray, tta_flip: bool, bf16: bool) -> dict:
    """Per-epoch check for model selection; bf16 where it is fast (trainer.evaluate scores in fp32)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        plain = predict_proba(model, inputs)
        both = (plain + predict_proba(model, inputs, flip=True)) / 2
    loss = float(-np.log(np.clip(plain[np.arange(len(labels)), labels], 1e-12, 1)).mean())
    return {
        "val_loss": loss,
        "val_acc": float((plain.argmax(1) == labels).mean()),
        "val_acc_tta": float((both.argmax(1) == labels).mean()),
        "summary": summarize(confusion_matrix(labels, (both if tta_flip else plain).argmax(1))),
    }


def run(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None) -> dict:
    """Train (or continue) a run; stop_after ends early at that epoch, to be continued with resume."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"
    state = checkpoint.load(last_path) if resume else None
    if resume and state is None:
        raise UserError(f"nothing to resume in {out}")
    if state is not None:
        checkpoint.require_spec(state, last_path)  # refuses a run trained on blurred faces (old blur_sigma)
        saved = {k: v for k, v in state["config"].items() if k not in LEGACY_KEYS}  # input_blur: the spec decides
        cfg = TrainConfig.model_validate(saved | {"epochs": cfg.epochs, "out": cfg.out})  # a moved run lives on here

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    g = torch.Generator().manual_seed(cfg.seed)
    bf16 = use_bf16(cfg.bf16)

    faces = data.load(cfg.data)
    train = faces.split("Training")
    if cfg.train_limit:  # a seeded random subset, so every class is represented
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(train))[: cfg.train_limit])
        train = data.FaceSet(train.images[keep], train.labels[keep], train.splits[keep], train.source)
    val = faces.split(cfg.eval_split)
    if len(train) == 0:
        raise UserError(f"{cfg.data}: no Training images")
    if len(val) == 0:
        raise UserError(f"{cfg.data}: no {cfg.eval_split} images to validate on (splits: {faces.available_splits()})")
    print(  # after the data loaded: bad data gets its one-line error alone
        f"{torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}, "
        f"bf16 autocast {'on' if bf16 else 'off'}",
        file=sys.stderr,
    )
    report, warning = compare_splits(train.images, val.images, cfg.eval_split)
    print(f"data: {len(train)} Training images, {len(val)} {cfg.eval_split}; {report}", file=sys.stderr)
    if warning:
        print(warning, file=sys.stderr)
    spec = DEFAULT_SPEC
    images = torch.from_numpy(standardize(train.images, spec)).unsqueeze(1)
    labels = torch.from_numpy(train.labels)
    val_inputs = preprocess(val.images, spec)
    teacher, teacher_sha256 = None, None
    if cfg.distill.teachers:
        teacher_model, teacher_sha256 = load_teachers(cfg.distill.teachers, spec, torch.get_num_threads())
        named = " + ".join(cfg.distill.teachers)
        if state is not None and state.get("teacher_sha256") != teacher_sha256:
            raise UserError(f"distill.teacher {named} is not the checkpoint this run started with")
        if cfg.distill.online:
            teacher = Teacher(cfg.distill.temperature, model=teacher_model.to(memory_format=torch.channels_last))
            print(f"distilling from {named}, online: it labels every augmented batch", file=sys.stderr)
        else:
            probs = predict_with_tta(teacher_model, center_crop(images[:, 0].numpy(), spec), tta_flip=True)
            teacher = Teacher(cfg.distill.temperature, fixed=soften(torch.from_numpy(probs), cfg.distill.temperature))
            agree = float((probs.argmax(1) == train.labels).mean())
            print(
                f"distilling from {named}: it agrees with {agree:.3f} of the Training labels",
                file=sys.stderr,
            )

    model_args = {**cfg.model.model_dump(), "depths": list(cfg.model.depths)}
    model = build_model(cfg.arch, **model_args)
    if cfg.init and state is None:  # a resumed run has its own weights
        _start_from(model, cfg.init, cfg.arch, model_args)
    model = model.to(memory_format=torch.channels_last)
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(labels) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total))
    ema = None
    if cfg.ema_decay > 0:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)

    start_epoch, best_acc, history = 1, -1.0, []
    if state is not None:
        model.load_state_dict(state["train_model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        g.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        start_epoch, best_acc, history = state["epoch"] + 1, state["best_acc"], state["history"]
        print(f"resuming {out} at epoch {start_epoch}", file=sys.stderr)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    def describe(epoch: int, metrics: dict) -> dict:
        eval_model = ema.module if ema is not None else model
        return {
            "arch": cfg.arch,
            "model_args": model_args,
            "labels": list(LABELS),
            "preprocess": spec.to_dict(),
            "tta_flip": cfg.tta_flip,
            "model": copy.deepcopy(eval_model).float().to(memory_format=torch.contiguous_format).state_dict(),
            "epoch": epoch,
            "metrics": metrics,
            "config": cfg.model_dump(mode="json"),
            "data_fingerprint": train.fingerprint(),
            "teacher_sha256": teacher_sha256,
            "data_source": str(cfg.data),
        }

    last_epoch = min(cfg.epochs, stop_after or cfg.epochs)
    for epoch in range(start_epoch, last_epoch + 1):
        t0 = time.perf_counter()
        tr = train_one_epoch(model, ema, optimizer, scheduler, images, labels, cfg, g, epoch, bf16, teacher)
        va = validate(ema.module if ema is not None else model, val_inputs, val.labels, cfg.tta_flip, bf16)
        row = {
            "epoch": epoch,
            **tr,
            **{k: v for k, v in va.items() if k != "summary"},
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        history.append(row)
        score = va["val_acc_tta"] if cfg.tta_flip else va["val_acc"]
        metrics = {cfg.eval_split: va["summary"]}
        ckpt = describe(epoch, metrics)
        if score > best_acc:
            best_acc = score
            checkpoint.save(best_path, ckpt)
        checkpoint.save(
            last_path,
            {
                **ckpt,
                "train_model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "rng": {"generator": g.get_state(), "torch": torch.get_rng_state()},
                "best_acc": best_acc,
                "history": history,
            },
        )
        _write_log(out / "log.csv", history)
        print(
            f"epoch {epoch:3d}  loss {tr['train_loss']:.3f}  train {tr['train_acc']:.3f}  "
            f"val {va['val_acc']:.4f}  val+flip {va['val_acc_tta']:.4f}  best {best_acc:.4f}  "
            f"{row['seconds']:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    return {"best_acc": best_acc, "history": history, "out": str(out)}


def _start_from(model: torch.nn.Module, path: str, arch: str, model_args: dict) -> None:
    """Fine-tuning: the inference weights of checkpoint `path`, which must be this run's architecture."""
    try:
        ckpt = checkpoint.load(path)
    except UserError as e:
        raise UserError(f"init: {e}") from None
    checkpoint.require_spec(ckpt, path, "init: ")
    theirs = (
        ckpt.get("arch"),
        {**ckpt.get("model_args", {}), "depths": list(ckpt.get("model_args", {}).get("depths", []))},
    )
    if theirs != (arch, model_args):
        raise UserError(f"init: {path} is {theirs[0]} {theirs[1]}, this run {arch} {model_args}")
    model.load_state_dict(ckpt["model"])
    print(f"starting from the weights of {path} (epoch {ckpt.get('epoch')})", file=sys.stderr)


def _write_log(path: Path, history: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer", description="Train an expression classifier on FER2013.")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="training YAML (default: %(default)s)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. model.width=48"
    )
    ap.add_argument("--data", help="dataset: fer2013.csv, image folder or .zip")
    ap.add_argument("--out", help="run directory (checkpoints, log.csv, config.yaml)")
    ap.add_argument("--epochs", type=int, help="total epochs (with --resume: extends the run)")
    ap.add_argument("--threads", type=int, help="torch threads (0 = all cores)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    ap.add_argument(
        "--stop-after", type=int, metavar="EPOCH", help="stop after this epoch (continue later with --resume)"
    )
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set, data=args.data, out=args.out, epochs=args.epochs, threads=args.threads)
        result = run(cfg, resume=args.resume, stop_after=args.stop_after)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: continue with --resume", file=sys.stderr)
        return 130
    print(f"best {cfg.eval_split} accuracy {result['best_acc']:.4f}; checkpoints in {result['out']}")
    return 0
