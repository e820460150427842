"""The model manifest: `manifest.json` beside an exported model set, the only way models are loaded.

It names the labels, the input spec and preprocessing, every file with its SHA-256, the training
data fingerprint, the source checkpoint and metrics per variant. A file whose hash disagrees with
the manifest is refused.

Whatever a model set folder holds, loading it either succeeds or ends in ONE UserError line: the manifest must be
a regular file of at most 1 MiB of UTF-8 JSON (no NaN), one object of the right shape with the right types (strict:
"true" is not a boolean, 48.0 is not a size), every file entry a non-empty relative path that stays inside the
folder (no absolute path, no "..", no symlink leading out), and every file present, regular and matching its SHA-256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import stat
import typing
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.config import read_text, shown_value, validation_line
from runtime.errors import UserError, printable
from runtime.labels import LABELS
from runtime.preprocess import DEFAULT_SPEC, BlurredSpecError, PreprocessSpec

FORMAT = "emotiond-model/1"
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20  # the shipped one is 5 KB
SHIPPED_MODELS = Path(__file__).resolve().parent / "models"  # package data: one folder per model set
DEFAULT_MODEL_DIR = SHIPPED_MODELS / "default"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
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


def shipped_model_sets() -> list[str]:
    return sorted(p.name for p in SHIPPED_MODELS.iterdir() if (p / MANIFEST_NAME).is_file())


def model_dir(value: str | None) -> Path:
    """classifier.model -> the model set's folder: a path as given (~ expanded), else the name of a set shipped
    with emotiond (`--model large`); None: the default set. UserError naming both kinds if neither exists."""
    from runtime.errors import user_path

    if not value:
        return DEFAULT_MODEL_DIR
    path = user_path(value)
    if path.exists():
        return path
    if re.fullmatch(r"[a-z0-9][a-z0-9_-]*", value) and (SHIPPED_MODELS / value / MANIFEST_NAME).is_file():
        return SHIPPED_MODELS / value
    names = ", ".join(shipped_model_sets())
    raise UserError(
        f"model not found: {printable(value)} (a model set folder with manifest.json, or one of the shipped sets: {names})"
    )


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
    if not p.exists():
        raise UserError(f"model manifest not found: {printable(p)}")
    return p  # a FIFO, a directory or a device named manifest.json: refused by read_text, before reading


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _json_type(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def load_manifest(path: str | Path) -> tuple[Manifest, Path]:
    """(manifest, its folder). Checks the contract (labels, preprocessing, tensors) and that every file entry names
    a file inside the folder; the files themselves are checked by `verified_files`."""
    p = manifest_path(path)
    where = printable(p)
    text = read_text(p, "model manifest", MAX_MANIFEST_BYTES)
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise UserError(f"{where}: not valid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, a 5000-digit integer
        raise UserError(" ".join(f"{where}: not valid JSON: {printable(str(e)[:200])}".split())) from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object, got {_json_type(data)}")
    try:
        m = Manifest.model_validate(data, strict=True)
    except ValidationError as e:
        raise UserError(validation_line(e, where)) from None
    if tuple(m.labels) != LABELS:
        raise UserError(f"{where}: labels {shown_value(m.labels)} differ from emotiond's {list(LABELS)}")
    if not m.model_id.strip():
        raise UserError(f"{where}: model_id is empty")
    spec = _spec(m, p)
    if [d for d in m.input.shape[1:]] != list(spec.input_shape):
        raise UserError(
            f"{where}: input shape {shown_value(m.input.shape)} disagrees with preprocessing {spec.input_shape}"
        )
    for what, tensor, rest in (("input", m.input, None), ("output", m.output, [len(LABELS)])):
        if not tensor.name.strip():
            raise UserError(f"{where}: {what}.name is empty")
        if tensor.dtype != "float32":
            raise UserError(f"{where}: {what}.dtype {shown_value(tensor.dtype)}: emotiond feeds and reads float32")
        if not tensor.shape or not isinstance(tensor.shape[0], str):
            raise UserError(
                f"{where}: {what}.shape {shown_value(tensor.shape)} must start with a named (dynamic) batch axis: "
                "emotiond classifies all faces of a frame in one batch"
            )
        if rest is not None and tensor.shape[1:] != rest:
            raise UserError(
                f"{where}: output.shape {shown_value(tensor.shape)}: expected [batch, {len(LABELS)}] "
                "(one logit per label)"
            )
    if not m.variants:
        raise UserError(f"{where}: variants is empty: no model to load")
    for name, variant in m.variants.items():
        if not variant.files:
            raise UserError(f"{where}: variants.{printable(name)}.files is empty: no model file to load")
        for rel, digest in variant.files.items():
            entry_path(p.parent, rel, where)
            if not _SHA256.fullmatch(digest):
                raise UserError(
                    f"{where}: variants.{printable(name)}.files[{shown_value(rel)}]: {shown_value(digest)} is not a "
                    "SHA-256 (64 hex digits)"
                )
    return m, p.parent


def _spec(m: Manifest, p: Path) -> PreprocessSpec:
    """The preprocessing spec, each field present and of its declared type (a float size or a string std_floor
    would pass the spec's own checks and fail later, on the first face)."""
    where = printable(p)
    hints = typing.get_type_hints(PreprocessSpec)
    for field in dataclasses.fields(PreprocessSpec):
        key = f"preprocess.{field.name}"
        if field.name not in m.preprocess:
            raise UserError(f"{where}: {key} is missing")
        value, kind = m.preprocess[field.name], hints.get(field.name)
        if kind is int and (type(value) is not int or not 1 <= value <= 1024):
            raise UserError(f"{where}: {key} must be an integer 1..1024 (got {shown_value(value)})")
        if kind is float and (type(value) not in (int, float) or not math.isfinite(value) or value < 0):
            raise UserError(f"{where}: {key} must be a finite number >= 0 (got {shown_value(value)})")
        if kind is str and type(value) is not str:
            raise UserError(f"{where}: {key} must be a string (got {shown_value(value)})")
    try:
        spec = PreprocessSpec.from_dict(m.preprocess)
    except BlurredSpecError as e:  # from before the input blur contract was removed
        raise UserError(f"model set {printable(p.parent)} was {e}: re-export it from a sharp-data checkpoint") from None
    except (TypeError, ValueError) as e:
        raise UserError(" ".join(f"{where}: preprocess: {printable(e)}".split())) from None
    if spec.size != DEFAULT_SPEC.size:
        raise UserError(
            f"{where}: preprocess.size {spec.size}: emotiond's face crops are {DEFAULT_SPEC.size}x{DEFAULT_SPEC.size}"
        )
    if getattr(spec, "std_floor", 1.0) <= 0:
        raise UserError(f"{where}: preprocess.std_floor must be > 0 (a flat face would divide by zero)")
    return spec


def entry_path(folder: Path, rel: str, where: str = "model manifest") -> Path:
    """The file a manifest entry names: a relative POSIX path inside `folder`, symlinks resolved; else UserError."""
    shown = shown_value(rel)
    if not rel.strip() or any(not c.isprintable() for c in rel):
        raise UserError(f"{where}: file entry {shown} is empty or holds control characters")
    if "\\" in rel:
        raise UserError(f"{where}: file entry {shown} holds a backslash (entries are relative POSIX paths)")
    pure = PurePosixPath(rel)
    if pure.is_absolute():
        raise UserError(f"{where}: file entry {shown} is an absolute path: entries must be relative to the manifest")
    if ".." in pure.parts:
        raise UserError(f"{where}: file entry {shown} contains '..': a manifest may not name files outside its folder")
    try:
        root = folder.resolve()
        target = (folder / pure).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise UserError(f"{where}: file entry {shown} cannot be resolved: {printable(e)}") from None
    if target == root or root not in target.parents:
        raise UserError(
            f"{where}: file entry {shown} resolves to {printable(target)}, outside the model folder {printable(root)}"
        )
    return folder / pure


def verified_files(m: Manifest, folder: Path, variant: Variant) -> list[Path]:
    """The variant's files, each inside the folder, present, regular and checked against its SHA-256."""
    paths = []
    for rel, digest in variant.files.items():
        f = entry_path(folder, rel, printable(folder / MANIFEST_NAME))
        try:
            st = os.stat(f)
        except FileNotFoundError:
            raise UserError(f"model file missing: {printable(f)}") from None
        except OSError as e:
            raise UserError(f"cannot read model file {printable(f)}: {e.strerror or e}") from None
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"model file {printable(f)} is not a regular file")
        try:
            actual = sha256_file(f)
        except OSError as e:
            raise UserError(f"cannot read model file {printable(f)}: {e.strerror or e}") from None
        if actual != digest.lower():
            raise UserError(
                f"model file {printable(f)} does not match its manifest (SHA-256 differs): refusing to load it"
            )
        paths.append(f)
    if not paths:
        raise UserError(f"{printable(folder / MANIFEST_NAME)}: the variant lists no files: no model file to load")
    return paths


def write_manifest(m: Manifest, folder: str | Path) -> Path:
    p = Path(folder) / MANIFEST_NAME
    p.write_text(json.dumps(m.model_dump(mode="json"), indent=2, allow_nan=False) + "\n")
    return p
