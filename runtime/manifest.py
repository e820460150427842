"""The model manifest: `manifest.json` beside an exported model set, the only way models are loaded.

It names the labels, the input spec and preprocessing, every file with its SHA-256, the training
data fingerprint, the source checkpoint and metrics per variant. A file whose hash disagrees with
the manifest is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.errors import UserError
from runtime.labels import LABELS
from runtime.preprocess import PreprocessSpec

FORMAT = "emotiond-model/1"
MANIFEST_NAME = "manifest.json"
Backend = Literal["onnxruntime", "openvino"]
Precision = Literal["fp32", "int8"]


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[int | str]  # "batch" for the dynamic axis
    dtype: str = "float32"


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: Backend
    precision: Precision
    files: dict[str, str]  # path relative to the manifest -> SHA-256; the first is the model to load
    metrics: dict = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["emotiond-model/1"] = FORMAT
    model_id: str
    labels: list[str]
    preprocess: dict
    tta_flip: bool
    input: TensorSpec
    output: TensorSpec
    variants: dict[str, Variant]
    source_checkpoint: dict = Field(default_factory=dict)
    training_data_fingerprint: str = ""
    created_by: str = ""
    created_at: str = ""

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocess)

    def find(self, backend: str, precision: str) -> tuple[str, Variant]:
        for name, v in self.variants.items():
            if v.backend == backend and v.precision == precision:
                return name, v
        have = ", ".join(f"{v.backend}/{v.precision}" for v in self.variants.values())
        raise UserError(f"model has no {backend}/{precision} variant (has: {have})")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_path(path: str | Path) -> Path:
    """Accept the manifest itself, its folder, or any model file beside it."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    elif p.name != MANIFEST_NAME:
        for folder in (p.parent, p.parent.parent):
            if (folder / MANIFEST_NAME).is_file():
                return folder / MANIFEST_NAME
        p = p.parent / MANIFEST_NAME
    if not p.is_file():
        raise UserError(f"model manifest not found: {p}")
    return p


def load_manifest(path: str | Path) -> tuple[Manifest, Path]:
    """(manifest, its folder). Checks the contract (labels, preprocessing), not the files yet."""
    p = manifest_path(path)
    try:
        m = Manifest.model_validate(json.loads(p.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{p}: not valid JSON") from None
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"{p}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    if tuple(m.labels) != LABELS:
        raise UserError(f"{p}: labels {m.labels} differ from emotiond's {list(LABELS)}")
    try:
        spec = m.spec
    except (TypeError, ValueError) as e:
        raise UserError(f"{p}: {e}") from None
    if [d for d in m.input.shape[1:]] != list(spec.input_shape):
        raise UserError(f"{p}: input shape {m.input.shape} disagrees with preprocessing {spec.input_shape}")
    return m, p.parent


def verified_files(m: Manifest, folder: Path, variant: Variant) -> list[Path]:
    """The variant's files, each checked against its SHA-256 in the manifest."""
    paths = []
    for rel, digest in variant.files.items():
        f = folder / rel
        if not f.is_file():
            raise UserError(f"model file missing: {f}")
        if sha256_file(f) != digest:
            raise UserError(f"model file {f} does not match its manifest (SHA-256 differs): refusing to load it")
        paths.append(f)
    return paths


def write_manifest(m: Manifest, folder: str | Path) -> Path:
    p = Path(folder) / MANIFEST_NAME
    p.write_text(json.dumps(m.model_dump(mode="json"), indent=2, allow_nan=False) + "\n")
    return p
