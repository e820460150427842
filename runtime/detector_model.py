"""Find, fetch and verify the BlazeFace short-range face detector model (.tflite).

Resolution order: an explicit path (config) -> the local cache -> fetch into the cache.

Current mediapipe releases ship no model files, and the Tasks API refuses a .tflite without
its TFLite metadata. The file with that metadata ships inside the `mediapipe==0.10.21` wheel,
so the fetch downloads that wheel with pip (it only needs a Python package index, not Google's
model storage), takes the one file out of it and deletes the wheel. The wheel is never
installed: the runtime keeps using the current mediapipe release. The pinned SHA-256 is checked
on every fetch and on every load, so a truncated, tampered or different model is never used.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from runtime.errors import UserError

DETECTOR_FILENAME = "face_detection_short_range.tflite"
DETECTOR_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"
WHEEL_REQUIREMENT = "mediapipe==0.10.21"
WHEEL_MEMBER = f"mediapipe/modules/face_detection/{DETECTOR_FILENAME}"
# One fixed target, whatever the local platform: the .tflite inside is the same in every wheel,
# and a pinned target makes the download (and its hash) reproducible.
WHEEL_TARGET = ("--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "--only-binary=:all:", "--no-deps")
FETCH_TIMEOUT_S = 900
FIX_HINT = "run `emotiond fetch-models --force` to fetch it again"


def cache_dir() -> Path:
    """$EMOTIOND_CACHE_DIR if set (used as is), else $XDG_CACHE_HOME/emotiond, else ~/.cache/emotiond."""
    explicit = os.environ.get("EMOTIOND_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "emotiond"


def cached_model_path() -> Path:
    return cache_dir() / DETECTOR_FILENAME


def read_verified(path: str | Path) -> bytes:
    """The model file's bytes, after checking the pinned SHA-256; UserError if missing or different.

    Returning the verified bytes (rather than a path) lets the detector load exactly what was checked.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"face detector model not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read face detector model {path}: {e.strerror or e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != DETECTOR_SHA256:
        raise UserError(
            f"face detector model {path} has SHA-256 {digest[:12]}..., expected {DETECTOR_SHA256[:12]}... "
            f"(BlazeFace short-range from {WHEEL_REQUIREMENT}); delete it or {FIX_HINT}"
        )
    return data


def resolve_detector_model(path: str | Path | None = None, allow_fetch: bool = True) -> Path:
    """The verified model file: `path` if given, else the cached copy, else a fresh fetch."""
    if path is not None:
        path = Path(path).expanduser()
        read_verified(path)
        return path
    cached = cached_model_path()
    if cached.is_file():
        read_verified(cached)
        return cached
    if not allow_fetch:
        raise UserError(f"face detector model is not in the cache ({cached}); run `emotiond fetch-models`")
    return fetch_detector_model()


def fetch_detector_model(force: bool = False) -> Path:
    """Download the mediapipe wheel from the package index, keep only the detector model, verify it, cache it."""
    target = cached_model_path()
    if target.is_file() and not force:
        read_verified(target)
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the model cache directory {target.parent}: {e.strerror or e}") from None
    with tempfile.TemporaryDirectory(prefix="emotiond-wheel-") as tmp:
        wheel = _download_wheel(Path(tmp))
        data = _extract_model(wheel)
        wheel.unlink()  # ~35 MB: gone as soon as the model is out, not only when the directory is cleaned up
    digest = hashlib.sha256(data).hexdigest()
    if digest != DETECTOR_SHA256:
        raise UserError(
            f"the detector model inside {wheel.name} has SHA-256 {digest[:12]}..., expected "
            f"{DETECTOR_SHA256[:12]}...: the package index served a different file; refusing it"
        )
    _write_atomic(target, data)
    return target


def _download_wheel(folder: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", WHEEL_REQUIREMENT, *WHEEL_TARGET, "-d", str(folder)]
    cmd += ["--quiet", "--disable-pip-version-check", "--no-input"]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise UserError(
            f"downloading {WHEEL_REQUIREMENT} (for the face detector model) took over {FETCH_TIMEOUT_S} s; "
            "check the network or set the detector model path in the config"
        ) from None
    wheels = sorted(folder.glob("mediapipe-*.whl"))
    if run.returncode != 0 or not wheels:
        raise UserError(
            f"could not download {WHEEL_REQUIREMENT} with pip to get the face detector model "
            f"({_pip_reason(run.stderr)}); check the network / package index, or set the detector "
            f"model path in the config to a local {DETECTOR_FILENAME}"
        )
    return wheels[0]


def _pip_reason(stderr: str) -> str:
    """pip's one most telling line: its last ERROR line, else its last line (warnings come first)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    reason = (errors or lines or ["pip failed without a message"])[-1]
    return reason[:300]


def _extract_model(wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(WHEEL_MEMBER)
    except KeyError:
        raise UserError(f"{wheel.name} does not contain {WHEEL_MEMBER}") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"downloaded wheel {wheel.name} is unreadable ({e})") from None


def _write_atomic(target: Path, data: bytes) -> None:
    """Write beside the target, then rename over it: a crash or a concurrent fetch never leaves half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the model is no secret, other users may share the cache
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write the face detector model to {target}: {e.strerror or e}") from None
