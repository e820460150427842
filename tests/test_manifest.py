"""Any model set folder loads or is refused in one line: a manifest with missing, empty, wrong or escaping entries,
files that are missing, not regular or not matching their SHA-256, and manifests that are not small UTF-8 JSON
objects. A manifest may not name files outside its folder, by path or by symlink.

Each test edits its own copy of a model set (the shipped one, or the session's export: conftest's `model_dir`),
with the copy's hashes recomputed, so a re-export of the shipped set running meanwhile cannot disturb them."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import UserError
from runtime.manifest import MANIFEST_NAME, load_manifest, manifest_path, sha256_file, verified_files
from runtime.preprocess import PreprocessSpec

SPEC_FIELDS = {f.name for f in dataclasses.fields(PreprocessSpec)}


def read(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def write(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


def rehash(folder: Path, manifest: dict) -> dict:
    for variant in manifest["variants"].values():
        variant["files"] = {rel: sha256_file(folder / rel) for rel in variant["files"]}
    return manifest


@pytest.fixture
def model_set(model_dir: Path, tmp_path: Path) -> Path:
    """A private, loadable copy: the preprocessing spec as this version reads it (no input blur), hashes fresh."""
    folder = tmp_path / "set"
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("*.tmp", "*.partial"))
    manifest = read(folder)
    if "blur_sigma" in SPEC_FIELDS:  # before the blur contract was removed: no blur
        manifest["preprocess"]["blur_sigma"] = 0.0
    else:
        manifest["preprocess"].pop("blur_sigma", None)
    write(folder, rehash(folder, manifest))
    return folder


def load_set(folder: Path) -> None:
    """What loading a model set checks: the manifest, then every variant's files."""
    manifest, where = load_manifest(folder)
    for variant in manifest.variants.values():
        verified_files(manifest, where, variant)


def refused(folder: Path, *words: str) -> str:
    with pytest.raises(UserError) as caught:
        load_set(folder)
    message = str(caught.value)
    assert message and len(message.splitlines()) == 1 and message == message.strip(), repr(message)
    for word in words:
        assert word in message, message
    return message


def first_variant(manifest: dict) -> dict:
    return next(iter(manifest["variants"].values()))


def first_file(manifest: dict) -> str:
    return next(iter(first_variant(manifest)["files"]))


# -- the copy itself loads -------------------------------------------------------------------------------------


def test_the_copied_set_loads_through_its_folder_manifest_or_a_file(model_set: Path) -> None:
    load_set(model_set)
    first = model_set / first_file(read(model_set))
    for path in (model_set, model_set / MANIFEST_NAME, first):
        assert manifest_path(path) == model_set / MANIFEST_NAME


@pytest.mark.timeout(120, method="signal")
def test_the_copied_set_classifies(model_set: Path) -> None:
    from runtime.classifier import load_classifier

    clf = load_classifier(model_set, backend="onnxruntime", precision="int8")
    probs = clf.predict(np.full((2, 48, 48), 128, np.uint8))
    assert probs.shape == (2, 7) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)


def test_files_in_a_subfolder_and_symlinks_inside_the_folder_are_fine(model_set: Path) -> None:
    manifest = read(model_set)
    variant = first_variant(manifest)
    rel = first_file(manifest)
    (model_set / "sub").mkdir()
    shutil.move(model_set / rel, model_set / "sub" / rel)
    (model_set / "alias").symlink_to(model_set / "sub")
    variant["files"] = {f"alias/{rel}" if r == rel else r: digest for r, digest in variant["files"].items()}
    write(model_set, manifest)
    load_set(model_set)


def test_an_upper_case_digest_is_the_same_digest(model_set: Path) -> None:
    manifest = read(model_set)
    files = first_variant(manifest)["files"]
    files[first_file(manifest)] = files[first_file(manifest)].upper()
    write(model_set, manifest)
    load_set(model_set)


# -- defects: each one line ------------------------------------------------------------------------------------

Edit = Callable[[Path, dict], None]


def set_file_entry(name: str, source: str | None = None) -> Edit:
    """Replace the first variant's first entry by `name`, with the digest of `source` (default: the old file)."""

    def edit(folder: Path, manifest: dict) -> None:
        variant = first_variant(manifest)
        old = first_file(manifest)
        digest = sha256_file(folder / (source or old))
        variant["files"] = {
            (name if rel == old else rel): (digest if rel == old else d) for rel, d in variant["files"].items()
        }

    return edit


def outside_symlink(folder: Path, manifest: dict) -> None:
    outside = folder.parent / "elsewhere"
    outside.mkdir()
    rel = first_file(manifest)
    shutil.copy2(folder / rel, outside / rel)
    (folder / "escape.bin").symlink_to(outside / rel)
    set_file_entry("escape.bin", rel)(folder, manifest)


def outside_symlinked_folder(folder: Path, manifest: dict) -> None:
    outside = folder.parent / "elsewhere"
    outside.mkdir()
    rel = first_file(manifest)
    shutil.copy2(folder / rel, outside / rel)
    (folder / "sub").symlink_to(outside, target_is_directory=True)
    set_file_entry(f"sub/{rel}", rel)(folder, manifest)


def symlink_loop(folder: Path, manifest: dict) -> None:
    (folder / "loop").symlink_to(folder / "loop")
    variant = first_variant(manifest)
    variant["files"]["loop"] = "0" * 64


def replace_first_file(make: Callable[[Path], None]) -> Edit:
    def edit(folder: Path, manifest: dict) -> None:
        path = folder / first_file(manifest)
        path.unlink()
        make(path)

    return edit


def tamper(folder: Path, manifest: dict) -> None:
    with (folder / first_file(manifest)).open("ab") as f:
        f.write(b"tampered")


def setter(*keys: str, value: object) -> Edit:
    def edit(_folder: Path, manifest: dict) -> None:
        node = manifest
        for key in keys[:-1]:
            node = node[key] if isinstance(node, dict) else node[int(key)]
        node[keys[-1]] = value

    return edit


def deleter(*keys: str) -> Edit:
    def edit(_folder: Path, manifest: dict) -> None:
        node = manifest
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return edit


def in_first_variant(edit: Callable[[dict], None]) -> Edit:
    return lambda _folder, manifest: edit(first_variant(manifest))


DEFECTS: dict[str, tuple[Edit, list[str]]] = {
    # missing
    "no labels": (deleter("labels"), ["labels", "required"]),
    "no variants key": (deleter("variants"), ["variants", "required"]),
    "no input": (deleter("input"), ["input", "required"]),
    "no model_id": (deleter("model_id"), ["model_id", "required"]),
    "no preprocess.std_floor": (deleter("preprocess", "std_floor"), ["preprocess.std_floor", "missing"]),
    "no preprocess.size": (deleter("preprocess", "size"), ["preprocess.size", "missing"]),
    # empty
    "empty model_id": (setter("model_id", value=" "), ["model_id", "empty"]),
    "empty variants": (setter("variants", value={}), ["variants", "empty"]),
    "empty files": (in_first_variant(lambda v: v.__setitem__("files", {})), ["files", "empty"]),
    "empty file entry": (set_file_entry(""), ["file entry", "empty"]),
    "empty input name": (setter("input", "name", value=""), ["input.name", "empty"]),
    # wrong
    "wrong format": (setter("format", value="emotiond-model/2"), ["format"]),
    "unknown key": (setter("extra", value=1), ["unknown key", "extra"]),
    "labels reordered": (setter("labels", value=["happy", "angry", "disgust", "fear", "sad", "surprise", "neutral"]),
                         ["labels", "differ"]),
    "tta_flip as text": (setter("tta_flip", value="true"), ["tta_flip", "boolean"]),
    "shape as text": (setter("input", "shape", value="batch,1,44,44"), ["input.shape"]),
    "files as a list": (in_first_variant(lambda v: v.__setitem__("files", ["model.onnx"])), ["files"]),
    "unknown backend": (in_first_variant(lambda v: v.__setitem__("backend", "tensorflow")), ["backend"]),
    "size as float": (setter("preprocess", "size", value=48.0), ["preprocess.size", "integer"]),
    "crop as text": (setter("preprocess", "crop", value="44"), ["preprocess.crop", "integer"]),
    "huge size": (setter("preprocess", "size", value=10**9), ["preprocess.size"]),
    "other size": (setter("preprocess", "size", value=64), ["preprocess.size", "48x48"]),
    "std_floor zero": (setter("preprocess", "std_floor", value=0), ["std_floor", "> 0"]),
    "std_floor bool": (setter("preprocess", "std_floor", value=True), ["std_floor"]),
    "unknown preprocess key": (setter("preprocess", "sharpen", value=1.0), ["preprocess", "sharpen"]),
    "input shape vs crop": (setter("input", "shape", value=["batch", 1, 40, 40]), ["input shape", "disagrees"]),
    "static batch": (setter("input", "shape", value=[1, 1, 44, 44]), ["input.shape", "batch"]),
    "output of 5": (setter("output", "shape", value=["batch", 5]), ["output.shape", "7"]),
    "float16 input": (setter("input", "dtype", value="float16"), ["input.dtype", "float32"]),
    "digest not hex": (in_first_variant(lambda v: v["files"].__setitem__(next(iter(v["files"])), "xyz")),
                       ["SHA-256", "64 hex"]),
    # escaping
    "absolute entry": (set_file_entry("/etc/hostname"), ["absolute"]),
    "dot-dot entry": (set_file_entry("../set/model.onnx"), ["'..'", "outside its folder"]),
    "dot-dot in the middle": (set_file_entry("sub/../../x"), ["'..'"]),
    "backslash entry": (set_file_entry("..\\x"), ["backslash"]),
    "the folder itself": (set_file_entry("."), ["outside the model folder"]),
    "symlink out": (outside_symlink, ["escape.bin", "outside the model folder"]),
    "symlinked folder out": (outside_symlinked_folder, ["outside the model folder"]),
    "symlink loop": (symlink_loop, ["loop"]),
    # the files
    "file missing": (replace_first_file(lambda p: None), ["missing"]),
    "file is a directory": (replace_first_file(lambda p: p.mkdir()), ["not a regular file"]),
    "file is a FIFO": (replace_first_file(os.mkfifo), ["not a regular file"]),
    "file tampered": (tamper, ["SHA-256 differs"]),
}  # fmt: skip


@pytest.mark.timeout(30, method="signal")
@pytest.mark.parametrize("case", list(DEFECTS))
def test_each_defect_is_refused_in_one_line(model_set: Path, case: str) -> None:
    edit, words = DEFECTS[case]
    manifest = read(model_set)
    edit(model_set, manifest)
    write(model_set, manifest)
    refused(model_set, *words)


MANIFEST_FILES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "missing": (lambda p: None, ["manifest not found"]),
    "not JSON": (lambda p: p.write_text('{"format": '), ["not valid JSON"]),
    "NaN": (lambda p: p.write_text('{"format": NaN}'), ["not valid JSON", "NaN"]),
    "an array": (lambda p: p.write_text("[]"), ["expected a JSON object", "array"]),
    "a string": (lambda p: p.write_text('"manifest"'), ["expected a JSON object", "string"]),
    "empty": (lambda p: p.write_text(""), ["not valid JSON"]),
    "not UTF-8": (lambda p: p.write_bytes(b'{"model_id": "\xff"}'), ["not UTF-8"]),
    "deep": (lambda p: p.write_text("[" * 100_000), ["not valid JSON"]),
    "5000 digits": (lambda p: p.write_text('{"x": 1' + "0" * 5000 + "}"), ["not valid JSON"]),
    "huge": (lambda p: p.write_bytes(b" " * (2 << 20) + b"{}"), ["bytes"]),
    "a directory": (lambda p: p.mkdir(), ["directory"]),
    "a FIFO": (os.mkfifo, ["FIFO"]),
}


@pytest.mark.timeout(30, method="signal")
@pytest.mark.parametrize("case", list(MANIFEST_FILES))
def test_a_manifest_that_is_not_a_small_json_object_is_refused_in_one_line(model_set: Path, case: str) -> None:
    make, words = MANIFEST_FILES[case]
    (model_set / MANIFEST_NAME).unlink()
    make(model_set / MANIFEST_NAME)
    refused(model_set, *words)


def test_a_name_that_could_break_the_line_is_escaped(model_set: Path) -> None:
    manifest = read(model_set)
    set_file_entry("a\nb\x1b[31m")(model_set, manifest)
    write(model_set, manifest)
    assert "\x1b" not in refused(model_set, "control characters")
