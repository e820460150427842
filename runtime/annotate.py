"""Annotator (`--annotate PATH`): what the daemon saw, drawn so a person can check it at a glance.

Each face gets its box in the colour of its top expression, a tag "#id emotion NN%", and beside the box a bar
chart of all 7 probabilities. Streams become one video (.mp4 with mp4v, .avi with MJPG); stills are written
into a directory, each image under its own file name. Only called when enabled: the daemon's hot path pays nothing.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from runtime.errors import UserError, printable
from runtime.frames import Face, Frame
from runtime.labels import LABELS

_FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}
# BGR, one per label, chosen to be told apart at a glance (angry red, happy yellow, sad blue ...).
COLORS: dict[str, tuple[int, int, int]] = {
    "angry": (48, 48, 230),
    "disgust": (40, 150, 40),
    "fear": (180, 70, 170),
    "happy": (0, 210, 255),
    "sad": (210, 120, 30),
    "surprise": (230, 220, 60),
    "neutral": (190, 190, 190),
}
_SHORT = {label: label[:3] for label in LABELS}  # ang dis fea hap sad sur neu: keeps the chart narrow
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, color, thickness: int = 1) -> None:
    cv2.putText(img, text, org, _FONT, scale, color, thickness, cv2.LINE_AA)


def _darken(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, keep: float = 0.3) -> None:
    roi = img[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)]
    if roi.size:
        cv2.convertScaleAbs(roi, dst=roi, alpha=keep)


def _corners(face: Face) -> tuple[int, int, int, int]:
    x, y, w, h = face.detection.box
    return round(x), round(y), round(x + w), round(y + h)


def _panel_place(corners, frame_size, panel_size, pad, inset, tag_h, placed) -> tuple[int, int]:
    """Where a face's chart goes: to the right of its box, else to the left, else inside its top-left corner (a
    face filling a photo); of the places that fit the frame, the first that covers no chart already placed."""
    (x0, y0, x1, _), (w, h), (pw, ph) = corners, frame_size, panel_size
    candidates = [(x0 + inset, y0 + inset + (tag_h if y0 < tag_h else 0))]  # below the tag if that is inside
    if x0 - pad - pw >= 0:
        candidates.insert(0, (x0 - pad - pw, y0))
    if x1 + pad + pw <= w:
        candidates.insert(0, (x1 + pad, y0))
    clamped = [(min(max(x, 0), max(w - pw, 0)), min(max(y, 0), max(h - ph, 0))) for x, y in candidates]
    for x, y in clamped:
        if all(abs(x - qx) >= pw or abs(y - qy) >= ph for qx, qy in placed):
            return x, y
    return clamped[0]


def draw_faces(image: np.ndarray, faces: list[Face], caption: str | None = None) -> np.ndarray:
    """Draws onto image (BGR uint8, in place) and returns it."""
    h, w = image.shape[:2]
    s = max(1.0, min(h, w) / 480)  # grows with big frames, never smaller than readable
    font = 0.42 * s
    thick = max(1, round(s))
    row = round(14 * s)
    (_, label_h), _ = cv2.getTextSize("Ag", _FONT, font, thick)
    label_w = cv2.getTextSize("sur", _FONT, font, thick)[0][0]
    value_w = cv2.getTextSize("100", _FONT, font, thick)[0][0]
    bar_w = round(56 * s)
    pad = round(4 * s)
    panel_w = pad + label_w + pad + bar_w + pad + value_w + pad
    panel_h = pad + row * len(LABELS) + pad
    inset = 2 * thick + pad  # inside a box: clear of its border line
    tag_h = round(label_h * 1.15) + 3 * pad

    # Two passes: charts first, then boxes and tags on top, so a neighbour's chart never hides a face's tag.
    tops = [int(np.argmax(face.probs)) for face in faces]
    placed: list[tuple[int, int]] = []
    for face, top in zip(faces, tops, strict=True):
        probs = np.asarray(face.probs, dtype=np.float64)
        px, py = _panel_place(_corners(face), (w, h), (panel_w, panel_h), pad, inset, tag_h, placed)
        placed.append((px, py))
        _darken(image, px, py, px + panel_w, py + panel_h)
        for i, label in enumerate(LABELS):
            base_y = py + pad + i * row + (row + label_h) // 2
            bold = thick + 1 if i == top else thick
            _text(image, _SHORT[label], (px + pad, base_y), font, (255, 255, 255), bold)
            bar_x = px + pad + label_w + pad
            bar_top, bar_bot = py + pad + i * row + 2, py + pad + (i + 1) * row - 2
            cv2.rectangle(image, (bar_x, bar_top), (bar_x + bar_w, bar_bot), (90, 90, 90), 1)
            fill = round(bar_w * float(probs[i]))
            if fill > 0:
                cv2.rectangle(image, (bar_x, bar_top), (bar_x + fill, bar_bot), COLORS[label], cv2.FILLED)
            _text(image, f"{probs[i] * 100:.0f}", (bar_x + bar_w + pad, base_y), font, (255, 255, 255), thick)

    for face, top in zip(faces, tops, strict=True):
        color = COLORS[LABELS[top]]
        x0, y0, x1, y1 = _corners(face)
        cv2.rectangle(image, (x0, y0), (x1, y1), color, 2 * thick, cv2.LINE_AA)
        # Tag above the box (inside it if the box touches the frame's top).
        conf = float(face.probs[top]) * 100
        tag = f"{'' if face.id is None else f'#{face.id} '}{LABELS[top]} {conf:.0f}%"
        (tw, th), base = cv2.getTextSize(tag, _FONT, font * 1.15, thick)
        ty = y0 - pad if y0 - th - base - 2 * pad >= 0 else y0 + th + 2 * pad
        tx = min(max(x0, 0), max(w - tw - 2 * pad, 0))
        cv2.rectangle(image, (tx, ty - th - pad), (tx + tw + 2 * pad, ty + base), color, cv2.FILLED)
        _text(image, tag, (tx + pad, ty), font * 1.15, (0, 0, 0), thick)

    if caption:
        (cw, ch), base = cv2.getTextSize(caption, _FONT, font, thick)
        _darken(image, 0, 0, cw + 2 * pad, ch + base + 2 * pad)
        _text(image, caption, (pad, ch + pad), font, (255, 255, 255), thick)
    return image


class Annotator:
    """Annotator(path, stills=False) writes a video at path; Annotator(path, stills=True) a directory of images."""

    def __init__(self, path: str | Path, stills: bool, fps: float = 25.0):
        self.path = Path(path)
        self.stills = stills
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._names: set[str] = set()
        self.written = 0
        if stills:
            if self.path.exists() and not self.path.is_dir():
                raise UserError(f"annotate: {printable(self.path)} exists and is not a directory (stills need one)")
            self._mkdir(self.path)
        else:
            if self.path.suffix.lower() not in _FOURCC:
                raise UserError(f"annotate: video path must end in .mp4 or .avi, not {printable(self.path.name)!r}")
            try:
                str(self.path).encode("utf-8")  # cv2.VideoWriter crashes on a name that is not UTF-8
            except UnicodeEncodeError:
                raise UserError(f"annotate: {printable(self.path)}: the name is not UTF-8 (choose another)") from None
            self._mkdir(self.path.parent)

    @staticmethod
    def _mkdir(folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"annotate: cannot create directory {printable(folder)}: {e.strerror or e}") from None

    def write(self, frame: Frame, faces: list[Face]) -> None:
        image = frame.image.copy()  # the frame may still be referenced elsewhere; drawing must not change it
        if self.stills:
            draw_faces(image, faces)
            self._write_still(frame, image)
        else:
            draw_faces(image, faces, caption=f"frame {frame.index}")
            self._write_video(image)
        self.written += 1

    def _write_video(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if self._writer is None:
            fourcc = cv2.VideoWriter_fourcc(*_FOURCC[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                raise UserError(f"annotate: cannot open {printable(self.path)} for writing a video")
            self._size = (w, h)
        elif (w, h) != self._size:  # a source changing resolution mid-stream: keep the file's size
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)

    def _write_still(self, frame: Frame, image: np.ndarray) -> None:
        name = Path(frame.file).name if frame.file else f"frame_{frame.index:06d}.png"
        if name in self._names:  # two sources' files with one name (subfolders): keep both
            name = f"{Path(name).stem}_{frame.index}{Path(name).suffix}"
        self._names.add(name)
        target = self.path / name
        # Encoded in memory and written by Python: cv2.imwrite takes names as UTF-8 text and crashes on one that
        # is not (a source file's name from a foreign file system).
        try:
            ok, data = cv2.imencode(target.suffix or ".png", image)
        except cv2.error:
            ok = False
        if not ok:  # an extension OpenCV reads but cannot write: fall back to PNG
            target = target.with_name(target.name + ".png")
            ok, data = cv2.imencode(".png", image)
        try:
            target.write_bytes(data.tobytes())
        except OSError as e:
            raise UserError(f"annotate: cannot write {printable(target)}: {e.strerror or e}") from None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> Annotator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
