"""Make samples/faces.mp4: wild-faces photos held still on a 640x480 canvas, a few frames each.

    .venv/bin/python samples/make_sample.py [--out samples/faces.mp4]

Deterministic: the same photos, positions and frame counts every time (the mp4v encoder of OpenCV is
deterministic too). The photos are LFW pictures from ../shared/datasets/wild-faces (Apache-2.0 per its README).
tests/conftest.py builds its test clip with `build_clip` from this file, so the two never drift apart.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import cv2
import numpy as np

WILD_ZIP = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "wild-faces" / "wild-faces.zip"
SIZE = (640, 480)  # width, height
PHOTO = 240  # side of a photo on the canvas (the 350x350 originals, scaled)
BACKGROUND = (52, 48, 44)  # BGR, plain: compresses to nothing and holds no face-like texture


def photo_names(zip_path: Path = WILD_ZIP) -> list[str]:
    with zipfile.ZipFile(zip_path) as zf:
        return sorted(n for n in zf.namelist() if n.lower().endswith(".jpg"))


def pick(names: list[str], count: int) -> list[str]:
    """`count` photos spread evenly over the sorted list (so over every expression folder)."""
    step = len(names) / count
    return [names[int(i * step + step / 2)] for i in range(count)]


def read_photo(zf: zipfile.ZipFile, name: str, side: int = PHOTO) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(zf.read(name), np.uint8), cv2.IMREAD_COLOR)
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)


def layout(segment: int, faces: int) -> list[tuple[int, int]]:
    """Top-left corners for `faces` photos in segment number `segment`: positions move between segments."""
    w, h = SIZE
    if faces == 2:
        return [(40, (h - PHOTO) // 2), (w - PHOTO - 40, (h - PHOTO) // 2)]
    xs = (40, (w - PHOTO) // 2, w - PHOTO - 40)
    ys = (20, (h - PHOTO) // 2, h - PHOTO - 20)
    return [(xs[segment % 3], ys[(segment // 3) % 3])]


def build_clip(
    out: Path,
    photos: int = 8,
    frames_per_photo: int = 10,
    blank_frames: int = 4,
    pairs: int = 1,
    fps: float = 25.0,
    zip_path: Path = WILD_ZIP,
) -> list[int]:
    """Write the clip; returns the number of faces placed in each frame (0 for blank frames).

    Layout: `blank_frames` empty frames, then `photos` single-photo segments (the last `pairs` of them show
    two photos side by side), each held still for `frames_per_photo` frames, then `blank_frames` empty frames.
    """
    names = pick(photo_names(zip_path), photos + pairs)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, SIZE)
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {out}")
    blank = np.empty((SIZE[1], SIZE[0], 3), np.uint8)
    blank[:] = BACKGROUND
    counts: list[int] = []
    try:
        with zipfile.ZipFile(zip_path) as zf:
            segments = [[n] for n in names[: photos - pairs]]
            rest = names[photos - pairs :]
            segments += [rest[2 * i : 2 * i + 2] for i in range(pairs)]
            for _ in range(blank_frames):
                writer.write(blank)
                counts.append(0)
            for i, segment in enumerate(segments):
                canvas = blank.copy()
                for name, (x, y) in zip(segment, layout(i, len(segment)), strict=True):
                    canvas[y : y + PHOTO, x : x + PHOTO] = read_photo(zf, name)
                for _ in range(frames_per_photo):
                    writer.write(canvas)
                    counts.append(len(segment))
            for _ in range(blank_frames):
                writer.write(blank)
                counts.append(0)
    finally:
        writer.release()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "faces.mp4")
    args = parser.parse_args()
    counts = build_clip(args.out, photos=12, frames_per_photo=12, blank_frames=6, pairs=2)
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {len(counts)} frames, {sum(c > 0 for c in counts)} with faces, {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
