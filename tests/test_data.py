"""trainer.data: every layout users have, read into one form; every malformed input refused clearly."""

from __future__ import annotations

import csv
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import UserError
from runtime.labels import LABELS
from trainer import data

FER_ZIP = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fer2013" / "fer2013.zip"
CANONICAL_TRAIN = {
    "angry": 3995,
    "disgust": 436,
    "fear": 4097,
    "happy": 7215,
    "neutral": 4965,
    "sad": 4830,
    "surprise": 3171,
}


@pytest.fixture(scope="module")
def fer_names() -> list[str]:
    with zipfile.ZipFile(FER_ZIP) as zf:
        return [n for n in zf.namelist() if n.endswith(".jpg")]


def extract(names: list[str], dest: Path, rename=lambda n: n) -> Path:
    with zipfile.ZipFile(FER_ZIP) as zf:
        for n in names:
            out = dest / rename(n)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(zf.read(n))
    return dest


def few_per_class(names: list[str], top: str, k: int) -> list[str]:
    picked = []
    for label in LABELS:
        picked += sorted(n for n in names if n.startswith(f"{top}/{label}/"))[:k]
    return picked


def test_zip_reads_canonical_fer2013_counts():
    faces = data.load(FER_ZIP, cache=False)
    train = faces.split("Training")
    assert len(train) == 28709 and len(faces.split("PublicTest")) == 3589
    assert train.class_counts() == CANONICAL_TRAIN
    assert faces.images.shape[1:] == (48, 48) and faces.images.dtype == np.uint8
    assert faces.skipped == 0
    # the PublicTest faces that are pixel for pixel Training faces, which trainer.evaluate scores apart
    assert faces.split("PublicTest").seen_in(train).sum() == 280


def test_folder_and_zip_give_the_same_faces(tmp_path, fer_names):
    names = few_per_class(fer_names, "train", 3) + few_per_class(fer_names, "test", 2)
    folder = extract(names, tmp_path / "fer")
    zipped = tmp_path / "wrapped.zip"
    with zipfile.ZipFile(zipped, "w") as zf:  # a wrapper folder, as many downloads have
        for f in sorted(folder.rglob("*.jpg")):
            zf.write(f, "fer2013/" + f.relative_to(folder).as_posix())
    a, b = data.load(folder), data.load(zipped, cache=False)
    order_a, order_b = (
        np.lexsort((a.images.reshape(len(a), -1).sum(1), a.labels)),
        np.lexsort((b.images.reshape(len(b), -1).sum(1), b.labels)),
    )
    assert len(a) == len(b) == 7 * 5
    assert np.array_equal(a.images[order_a], b.images[order_b])
    assert np.array_equal(a.labels[order_a], b.labels[order_b])
    assert sorted(a.available_splits()) == ["PublicTest", "Training"]


def test_label_folders_map_to_fer2013_index_order(tmp_path, fer_names):
    expected = {"angry": 0, "disgust": 1, "fear": 2, "happy": 3, "sad": 4, "surprise": 5, "neutral": 6}
    for label, index in expected.items():
        names = [n for n in fer_names if n.startswith(f"test/{label}/")][:2]
        faces = data.load(extract(names, tmp_path / label))
        assert faces.labels.tolist() == [index, index]


def test_test_only_layouts_and_private_prefix(tmp_path, fer_names):
    names = few_per_class(fer_names, "test", 2)
    private = lambda n: n.replace("PublicTest_", "PrivateTest_", 1) if n.endswith(("0.jpg", "2.jpg", "4.jpg")) else n  # noqa: E731
    under_test = data.load(extract(names, tmp_path / "a", private))
    bare = data.load(extract(names, tmp_path / "b", lambda n: n.removeprefix("test/")))
    assert len(under_test) == len(bare) == 14
    assert set(under_test.splits) <= {"PublicTest", "PrivateTest"}
    assert (under_test.splits == "PrivateTest").sum() == sum(private(n) != n for n in names)
    assert set(bare.splits) == {"PublicTest"} and data.default_split(bare) == "PublicTest"


def write_csv(path: Path, faces: data.FaceSet, usage: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for img, label, u in zip(faces.images, faces.labels, usage, strict=True):
            w.writerow([int(label), " ".join(map(str, img.ravel())), u])


def test_kaggle_csv_reads_pixels_labels_and_usage(tmp_path, fer_names):
    faces = data.load(extract(few_per_class(fer_names, "test", 3), tmp_path / "fer"))
    usage = ["Training", "PublicTest", "PrivateTest"] * 7
    write_csv(tmp_path / "fer2013.csv", faces, usage)
    from_csv = data.load(tmp_path / "fer2013.csv")
    assert np.array_equal(from_csv.images, faces.images)
    assert np.array_equal(from_csv.labels, faces.labels)
    assert from_csv.splits.tolist() == usage


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("emotion,image,Usage\n0,1 2 3,Training\n", "expected CSV columns"),
        ("emotion,pixels,Usage\n0," + " ".join(["7"] * 100) + ",Training\n", "100 pixels, expected 2304"),
        ("emotion,pixels,Usage\n9," + " ".join(["7"] * 2304) + ",Training\n", "emotion 9"),
        ("emotion,pixels,Usage\n0," + " ".join(["7"] * 2304) + ",Validation\n", "unknown Usage"),
    ],
)
def test_malformed_csv_is_refused(tmp_path, content, message):
    (tmp_path / "fer2013.csv").write_text(content)
    with pytest.raises(UserError, match=message):
        data.load(tmp_path / "fer2013.csv")


def test_missing_path_unknown_layout_and_unknown_label_are_refused(tmp_path, fer_names):
    with pytest.raises(UserError, match="not found"):
        data.load(tmp_path / "nope.zip")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="unknown dataset layout"):
        data.load(tmp_path / "notes.txt")
    deep = extract(few_per_class(fer_names, "test", 1), tmp_path / "deep", lambda n: "x/y/" + n)
    (deep / "z").mkdir()  # two top folders: no single wrapper to look through
    (deep / "z" / "q.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="unknown dataset layout"):
        data.load(deep)
    odd = extract(few_per_class(fer_names, "test", 1), tmp_path / "odd", lambda n: n.replace("/happy/", "/joyful/"))
    with pytest.raises(UserError, match="unknown label folder 'joyful'"):
        data.load(odd)


def test_unreadable_images_are_skipped_counted_and_reported(tmp_path, fer_names, capsys):
    folder = extract(few_per_class(fer_names, "test", 2), tmp_path / "fer")
    (folder / "test" / "sad" / "PublicTest_broken.jpg").write_bytes(b"not a jpeg")
    faces = data.load(folder)
    assert faces.skipped == 1 and len(faces) == 14
    assert "1 unreadable image(s) skipped" in capsys.readouterr().err


def test_evaluate_cli_reports_bad_data_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.evaluate", "--model", str(tmp_path / "m.pt"), "--data", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: model not found")


def test_sharpness_warning_fires_when_one_split_is_blurred_and_not_on_sharp_splits():
    """The data report's check against altered editions: Training and the eval split compared by median Laplacian
    variance; a warning only, nothing is blurred to match."""
    import cv2

    from trainer.sharpness import RATIO, compare_splits, sharpness

    faces = data.load(FER_ZIP)
    train, test = faces.split("Training").images, faces.split("PublicTest").images
    report, warning = compare_splits(train, test, "PublicTest")
    assert warning is None, warning  # the shared edition is sharp in every split
    assert report.startswith("sharpness (median Laplacian variance): Training ") and "PublicTest" in report
    assert 1 / 1.5 < sharpness(train) / sharpness(test) < 1.5

    sharp_a, sharp_b = test[:600], test[600:1200]  # real faces, two disjoint halves of one split
    assert compare_splits(sharp_a, sharp_b, "PublicTest")[1] is None

    def blurred(images: np.ndarray, sigma: float) -> np.ndarray:
        return np.stack([cv2.GaussianBlur(face, (0, 0), sigma) for face in images])

    # the edition once shared: Training blurred with sigma ~2.75 px at 48x48, PublicTest sharp
    _, warning = compare_splits(blurred(sharp_a, 2.75), sharp_b, "PublicTest")
    assert warning is not None and warning.startswith("warning: ") and "\n" not in warning
    assert "the Training images look blurred" in warning
    _, warning = compare_splits(sharp_a, blurred(sharp_b, 1.0), "PublicTest")  # the other way round, milder
    assert warning is not None and "the PublicTest images look blurred" in warning
    # a trace of blur (sigma 0.5: about 2x less sharp) stays under the threshold
    assert sharpness(sharp_a) / sharpness(blurred(sharp_a, 0.5)) < RATIO
    assert compare_splits(blurred(sharp_a, 0.5), sharp_b, "PublicTest")[1] is None
