"""FER2013 in every layout users have, loaded into one in-memory form.

Layouts:
- the Kaggle CSV `fer2013.csv` (columns `emotion,pixels,Usage`);
- image folders `train/<label>/*.jpg` and `test/<label>/*.jpg`, as a directory or a .zip;
- a test split alone: `test/<label>/*.jpg` or `<label>/*.jpg`.
File-name prefixes `PublicTest_` / `PrivateTest_` pick those splits; other files under `test/`
(or a bare label folder) count as `PublicTest`, files under `train/` as `Training`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from runtime.errors import UserError
from runtime.labels import LABEL_INDEX, LABELS

SPLITS = ("Training", "PublicTest", "PrivateTest")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".webp"}
SIDE = 48
CACHE_VERSION = 1


@dataclass
class FaceSet:
    images: np.ndarray  # uint8 (N, 48, 48)
    labels: np.ndarray  # int64 (N,), FER2013 index order
    splits: np.ndarray  # str (N,), one of SPLITS
    source: str
    skipped: int = 0  # unreadable images, counted and reported

    def __len__(self) -> int:
        return len(self.labels)

    def split(self, name: str) -> FaceSet:
        if name == "all":
            return self
        keep = self.splits == name
        return FaceSet(self.images[keep], self.labels[keep], self.splits[keep], self.source, 0)

    def available_splits(self) -> list[str]:
        return [s for s in SPLITS if (self.splits == s).any()]

    def fingerprint(self) -> str:
        """SHA-256 over pixels, labels and splits: identifies the exact data a model saw."""
        h = hashlib.sha256()
        for a in (self.images, self.labels.astype(np.int64), self.splits.astype("U11")):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def seen_in(self, other: FaceSet) -> np.ndarray:
        """Which faces are pixel-identical to a face of `other`. FER2013's PublicTest holds 280 faces that are also
        Training faces (../shared/datasets/README.md): a model can score those by memory, so they are reported apart."""

        def key(im: np.ndarray) -> bytes:
            return hashlib.blake2b(im.tobytes(), digest_size=16).digest()

        seen = {key(im) for im in other.images}
        return np.array([key(im) in seen for im in self.images], bool)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(LABELS))
        return {name: int(c) for name, c in zip(LABELS, counts, strict=True)}


def default_split(faces: FaceSet) -> str:
    """The split to score when none is named: PublicTest, else PrivateTest, else everything."""
    for name in ("PublicTest", "PrivateTest"):
        if (faces.splits == name).any():
            return name
    return "all"


def load(path: str | os.PathLike, cache: bool = True) -> FaceSet:
    """Read a dataset in any supported layout; raise UserError on anything malformed."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"dataset not found: {p}")
    cache_file = _cache_path(p) if cache else None
    if cache_file is not None and cache_file.exists():
        try:
            with np.load(cache_file) as z:
                return FaceSet(z["images"], z["labels"], z["splits"], str(p), int(z["skipped"]))
        except (OSError, ValueError, KeyError):
            pass  # a broken cache is rebuilt, never trusted
    if p.is_file() and p.suffix.lower() == ".csv":
        faces = _load_csv(p)
    elif p.is_file() and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            faces = _load_tree(p, names, zf.read)
    elif p.is_dir():
        names = [f.relative_to(p).as_posix() for f in sorted(p.rglob("*")) if f.is_file()]
        faces = _load_tree(p, names, lambda n: (p / n).read_bytes())
    else:
        raise UserError(f"unknown dataset layout: {p} (expected fer2013.csv, a folder or a .zip)")
    if faces.skipped:
        print(f"warning: {faces.skipped} unreadable image(s) skipped in {p}", file=sys.stderr)
    if cache_file is not None:
        _save_cache(cache_file, faces)
    return faces


def _load_csv(path: Path) -> FaceSet:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["emotion", "pixels"]:
            raise UserError(f"{path}: expected CSV columns emotion,pixels,Usage, got {header}")
        has_usage = len(header) >= 3 and header[2].strip() == "Usage"
        images, labels, splits = [], [], []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                label = int(row[0])
                pixels = np.array(row[1].split(), dtype=np.int64)
            except (ValueError, IndexError):
                raise UserError(f"{path}:{line_no}: malformed row") from None
            if not 0 <= label < len(LABELS):
                raise UserError(f"{path}:{line_no}: emotion {label} is not in 0..{len(LABELS) - 1}")
            if pixels.size != SIDE * SIDE:
                raise UserError(f"{path}:{line_no}: {pixels.size} pixels, expected {SIDE * SIDE}")
            if pixels.min() < 0 or pixels.max() > 255:
                raise UserError(f"{path}:{line_no}: pixel values outside 0..255")
            usage = row[2].strip() if has_usage and len(row) > 2 else "PublicTest"
            if usage not in SPLITS:
                raise UserError(f"{path}:{line_no}: unknown Usage {usage!r} (expected one of {SPLITS})")
            images.append(pixels.astype(np.uint8).reshape(SIDE, SIDE))
            labels.append(label)
            splits.append(usage)
    if not images:
        raise UserError(f"{path}: no rows")
    return FaceSet(np.stack(images), np.array(labels, np.int64), np.array(splits), str(path))


def _load_tree(root: Path, names: list[str], read) -> FaceSet:
    files = [(n, PurePosixPath(n).parts) for n in names]
    files = [(n, p) for n, p in files if not any(s.startswith(".") or s == "__MACOSX" for s in p)]
    # A zip or folder may wrap everything in one top folder (fer2013/train/...): look through it.
    known_tops = {"train", "test", *LABEL_INDEX}
    while files and all(len(p) > 2 for _, p in files) and len({p[0] for _, p in files}) == 1:
        if files[0][1][0] in known_tops:
            break
        files = [(n, p[1:]) for n, p in files]
    images, labels, splits, skipped = [], [], [], 0
    for name, parts in files:
        if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if len(parts) == 3 and parts[0] in ("train", "test"):
            top, label, fname = parts
        elif len(parts) == 2:
            top, (label, fname) = "test", parts
        else:
            raise UserError(f"unknown dataset layout in {root}: {name} (expected train|test/<label>/<image>)")
        if label not in LABEL_INDEX:
            raise UserError(f"unknown label folder {label!r} in {root} (expected one of {', '.join(LABELS)})")
        img = _decode(read(name))
        if img is None:
            skipped += 1
            continue
        images.append(img)
        labels.append(LABEL_INDEX[label])
        if top == "train":
            splits.append("Training")
        else:
            splits.append("PrivateTest" if fname.startswith("PrivateTest") else "PublicTest")
    if not images:
        if skipped:
            raise UserError(f"no readable images in {root} ({skipped} unreadable)")
        raise UserError(f"unknown dataset layout: no images found under {root}")
    return FaceSet(np.stack(images), np.array(labels, np.int64), np.array(splits), str(root), skipped)


def _decode(data: bytes) -> np.ndarray | None:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None:
        return None
    if img.shape != (SIDE, SIDE):
        img = cv2.resize(img, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    return img


def _cache_path(p: Path) -> Path | None:
    try:
        st = p.stat()
    except OSError:
        return None
    if p.is_dir():  # a folder's content can change without its mtime changing: do not cache
        return None
    key = hashlib.sha256(f"{CACHE_VERSION}|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "emotiond" / "datasets"
    return base / f"{key}.npz"


def _save_cache(path: Path, faces: FaceSet) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, images=faces.images, labels=faces.labels, splits=faces.splits, skipped=faces.skipped)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    except OSError:
        pass  # the cache is an optimisation only
