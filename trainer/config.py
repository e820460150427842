"""A training run's configuration: YAML file + `--set key=value` overrides, validated by pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runtime.errors import UserError

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"
# Keys older versions wrote and this one no longer has. input_blur blurred every face that was not a Training
# image; faces are never blurred now, so only 0 (no blur) is still accepted, and ignored.
LEGACY_KEYS = ("input_blur",)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(Strict):
    width: int = Field(32, ge=4, le=256, description="channels of the first stage; doubles per stage")
    depths: list[Annotated[int, Field(ge=1, le=8)]] = Field(
        [2, 2, 2, 2], min_length=1, max_length=6, description="conv layers per stage"
    )
    dropout: float = Field(0.3, ge=0, lt=1, description="dropout before the classifier head")
    stem_stride: Literal[1, 2] = Field(1, description="stride of the first conv (2: the stages run at half resolution)")


class AugmentConfig(Strict):
    enabled: bool = Field(True, description="off: centre crops only (sanity runs, overfit tests)")
    rotate_deg: float = Field(15, ge=0, le=45, description="max rotation either way")
    scale: tuple[float, float] = Field((0.85, 1.15), description="zoom range")
    translate_px: float = Field(4, ge=0, le=8, description="max shift in pixels")
    flip: bool = Field(True, description="random horizontal flip")
    brightness: float = Field(0.2, ge=0, le=1, description="max offset, in units of the face's std")
    contrast: float = Field(0.2, ge=0, lt=1, description="max relative contrast change")
    erase_p: float = Field(0.5, ge=0, le=1, description="probability of random erasing")
    erase_area: tuple[float, float] = Field((0.02, 0.2), description="erased fraction of the crop")
    downscale_p: float = Field(0.0, ge=0, le=1, description="share of faces seen at a lower resolution (0 = off)")
    downscale_px: tuple[int, int] = Field((20, 36), description="side range of that lower resolution, in pixels")
    cutmix_p: float = Field(0.0, ge=0, le=1, description="share of batches mixed with CutMix (0 = off)")
    cutmix_alpha: float = Field(1.0, gt=0, le=10, description="Beta(alpha, alpha) of the kept share")

    @field_validator("downscale_px")
    @classmethod
    def _side_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 4 <= v[0] <= v[1]:
            raise ValueError("needs 4 <= lowest <= highest")
        return v


class DistillConfig(Strict):
    teacher: str | list[str] | None = Field(
        None,
        description="checkpoint (.pt) or exported model set whose soft labels the model also learns from; a list: "
        "an ensemble, the mean of their probabilities; null = off",
    )
    weight: float = Field(0.5, ge=0, le=1, description="share of the loss that follows the teacher")
    temperature: float = Field(2.0, gt=0, le=20, description="softens teacher and student distributions")
    online: bool = Field(False, description="the teacher labels every augmented batch (slower) instead of once")

    @field_validator("teacher")
    @classmethod
    def _some_teacher(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and not v:
            raise ValueError("an empty list teaches nothing: give one or more teachers, or null for none")
        return v

    @property
    def teachers(self) -> list[str]:
        """`teacher` as a list: empty without one."""
        return [] if self.teacher is None else [self.teacher] if isinstance(self.teacher, str) else list(self.teacher)


class TrainConfig(Strict):
    data: str = Field("../shared/datasets/fer2013/fer2013.zip", description="dataset in any layout trainer.data reads")
    out: str = Field("models/default", description="run directory: checkpoints, log, reports")
    arch: Literal["vgg", "resnet"] = "vgg"
    model: ModelConfig = ModelConfig()
    init: str | None = Field(
        None, description="checkpoint whose weights the run starts from (fine-tuning); null = random"
    )
    epochs: int = Field(60, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=4096)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0, le=10, description="peak learning rate (after warmup; cosine to 0)")
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(2, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    ema_decay: float = Field(0.999, ge=0, lt=1, description="0 disables the weight EMA")
    tta_flip: bool = Field(True, description="average with the mirrored face at evaluation and in the runtime")
    seed: int = 0
    threads: int = Field(0, ge=0, description="torch threads; 0 = all cores")
    bf16: bool | Literal["auto"] = Field(
        "auto",
        description="bf16 autocast; auto = only where the CPU has native bf16 (AVX512-BF16/AMX), "
        "elsewhere it is emulated and ~10x slower than fp32",
    )
    train_limit: int = Field(0, ge=0, description="use only the first N training images (0 = all)")
    eval_split: str = Field("PublicTest", description="split for model selection")
    augment: AugmentConfig = AugmentConfig()
    distill: DistillConfig = DistillConfig()


def _set_path(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise UserError(f"--set {dotted}: {k} is not a section")
    d[keys[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] = (), **flags) -> TrainConfig:
    """defaults <- YAML file <- `key=value` overrides <- explicit flags (None = not given)."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{p}: expected a mapping of keys")
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        _set_path(raw, key.strip(), yaml.safe_load(value))
    for key, value in flags.items():
        if value is not None:
            raw[key] = value
    if "input_blur" in raw:
        blur = raw.pop("input_blur")
        if isinstance(blur, bool) or blur != 0:
            raise UserError(
                f"config key input_blur: {blur!r} is no longer supported (faces are never blurred to match the "
                "training data): remove the key"
            )
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "config"
        raise UserError(f"config key {where}: {err['msg']}") from None
