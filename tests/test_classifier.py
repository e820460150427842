"""The classifier on real FER2013 faces: both backends, both precisions, through the model set's manifest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.backends import backend_names
from runtime.classifier import Classifier, load_classifier
from runtime.errors import UserError
from runtime.preprocess import DEFAULT_SPEC, preprocess

FER_ZIP = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fer2013" / "fer2013.zip"
VARIANTS = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8")]
IDS = [f"{b}-{p}" for b, p in VARIANTS]


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """12 real PublicTest faces, uint8 (12, 48, 48)."""
    if not FER_ZIP.is_file():
        pytest.skip(f"FER2013 not found at {FER_ZIP}")
    from trainer import data

    test = data.load(FER_ZIP).split("PublicTest")
    return test.images[np.linspace(0, len(test) - 1, 12).astype(int)]


@pytest.fixture(scope="module", params=VARIANTS, ids=IDS)
def clf(request, model_dir: Path) -> Classifier:
    backend, precision = request.param
    return load_classifier(model_dir, backend, precision, threads=1)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_predict_gives_one_probability_row_per_face(clf: Classifier, faces: np.ndarray) -> None:
    p = clf.predict(faces)
    assert p.shape == (len(faces), 7) and p.dtype == np.float32
    assert np.all(p >= 0) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_no_faces_give_an_empty_result(clf: Classifier) -> None:
    assert clf.predict(np.zeros((0, 48, 48), np.uint8)).shape == (0, 7)
    assert clf.logits(np.zeros((0, 1, 44, 44), np.float32)).shape == (0, 7)


def test_a_batch_equals_each_face_alone(clf: Classifier, faces: np.ndarray) -> None:
    alone = np.concatenate([clf.predict(faces[i : i + 1]) for i in range(len(faces))])
    np.testing.assert_allclose(clf.predict(faces), alone, atol=1e-5)


def test_tta_flip_is_the_mean_of_face_and_mirror(clf: Classifier, faces: np.ndarray, model_dir: Path) -> None:
    x = preprocess(faces, clf.spec)
    plain, mirrored = softmax(clf.logits(x)), softmax(clf.logits(np.ascontiguousarray(x[..., ::-1])))
    on = load_classifier(model_dir, clf.backend, clf.precision, tta_flip=True)
    off = load_classifier(model_dir, clf.backend, clf.precision, tta_flip=False)
    np.testing.assert_allclose(on.predict(faces), (plain + mirrored) / 2, atol=1e-5)
    np.testing.assert_allclose(off.predict(faces), plain, atol=1e-5)
    # with the flip, a face and its mirror image get the same answer; in INT8 up to a rounding step, since the
    # mirrored face's float input differs in the last bits (blur, standardization) and can round the other way
    atol = 1e-5 if clf.precision == "fp32" else 2e-3
    np.testing.assert_allclose(on.predict(faces[:, :, ::-1]), on.predict(faces), atol=atol)


def test_tta_flip_defaults_to_the_manifest(clf: Classifier) -> None:
    assert clf.tta_flip == clf.manifest.tta_flip


def test_classifier_names_its_model_and_variant(clf: Classifier) -> None:
    variant = clf.manifest.variants[clf.variant_name]
    assert (variant.backend, variant.precision) == (clf.backend, clf.precision)
    assert clf.model_id == clf.manifest.model_id


def test_backends_are_found_by_name() -> None:
    assert backend_names() == ["onnxruntime", "openvino"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "tensorflow"}, "unknown classifier backend 'tensorflow'"),
        ({"threads": 0}, "threads must be at least 1"),
    ],
)
def test_bad_classifier_settings_are_user_errors(model_dir: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_classifier(model_dir, **kwargs)


def test_a_folder_without_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="manifest not found"):
        load_classifier(tmp_path)


def test_onnxruntime_int8_session_keeps_quantization_where_export_put_it(model_dir: Path, tmp_path: Path) -> None:
    """The daemon's onnxruntime session runs with QDQPropagationTransformer off: with it on, quantization moves
    ahead of a max pool that directly follows the first (FP32) conv, which then runs on uint8 in a slow generic
    kernel (the stride-2 student of earlier releases lost 25% to it). The logits are bit-identical either way.
    Where the model has such a pool, the op order is checked both ways."""
    import onnx

    from runtime.backends.onnxruntime_backend import make_session
    from runtime.manifest import load_manifest, verified_files

    manifest, folder = load_manifest(model_dir)
    model = verified_files(manifest, folder, manifest.find("onnxruntime", "int8")[1])[0]
    ops = {}
    sessions = {}
    for name, all_passes in (("runtime", False), ("all_passes", True)):
        saved = tmp_path / f"{name}.onnx"
        sessions[name] = make_session(model, 1, save_optimized=saved, all_passes=all_passes)
        ops[name] = [n.op_type for n in onnx.load(str(saved)).graph.node]
    exported = [n.op_type for n in onnx.load(str(model)).graph.node if n.op_type in ("Conv", "MaxPool")]
    if exported[:2] == ["Conv", "MaxPool"]:  # a pool right after the first conv
        assert ops["runtime"].index("MaxPool") < ops["runtime"].index("QuantizeLinear"), ops["runtime"]
        assert ops["all_passes"].index("QuantizeLinear") < ops["all_passes"].index("MaxPool"), ops["all_passes"]
    faces = np.random.default_rng(0).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    x = {sessions["runtime"].get_inputs()[0].name: preprocess(faces, manifest.spec, mirrors=True)}
    np.testing.assert_array_equal(sessions["runtime"].run(None, x)[0], sessions["all_passes"].run(None, x)[0])


# --- model sets exported before the input blur contract was removed ------------------------------------------------

SHIPPED = Path(__file__).resolve().parents[1] / "runtime" / "models" / "default"


def legacy_copy(tmp_path: Path, sigma: float) -> Path:
    """A copy of the shipped model set whose manifest carries the old contract's `blur_sigma` (whatever the shipped
    manifest says today). Only manifest.json is edited: it lists each model file's SHA-256 and is not hashed itself,
    and the model files are left byte for byte, so the copy passes the loader's integrity checks. (The files' own
    embedded metadata, ONNX metadata_props and OpenVINO rt_info, repeat the spec but are not read by the loader.)"""
    if not (SHIPPED / "manifest.json").is_file():
        pytest.skip(f"no shipped model set at {SHIPPED}")
    folder = tmp_path / f"legacy-{sigma}"
    shutil.copytree(SHIPPED, folder)
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["preprocess"]["blur_sigma"] = sigma
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def refusal(folder: Path) -> str:
    return (
        f"model set {folder} was trained on blurred faces (blur_sigma 2.75), which this version no longer supports: "
        "re-export it from a sharp-data checkpoint"
    )


@pytest.mark.parametrize(("backend", "precision"), VARIANTS, ids=IDS)
def test_a_model_set_trained_on_blurred_faces_is_refused(tmp_path: Path, backend: str, precision: str) -> None:
    folder = legacy_copy(tmp_path, 2.75)
    with pytest.raises(UserError) as e:
        load_classifier(folder, backend, precision)
    assert str(e.value) == refusal(folder)
    with pytest.raises(UserError) as e:  # whichever file of the set is named
        load_classifier(folder / "model.int8.onnx", backend, precision)
    assert str(e.value) == refusal(folder)


def test_the_commands_refuse_a_blurred_model_set_in_one_line(tmp_path: Path, emotiond: Path, faces: np.ndarray):
    import cv2

    folder = legacy_copy(tmp_path, 2.75)
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), cv2.resize(faces[0], (192, 192)))
    runs = {
        "emotiond run": [str(emotiond), "run", "--source", str(image), "--model", str(folder)],
        "trainer.evaluate": [sys.executable, "-m", "trainer.evaluate", "--model", str(folder), "--data", str(FER_ZIP)],
    }
    for name, cmd in runs.items():
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 2, (name, proc.stderr)
        assert proc.stderr == f"error: {refusal(folder)}\n", (name, proc.stderr)
        assert proc.stdout == "", name


def test_a_model_set_exported_with_blur_sigma_0_loads_as_without_it(tmp_path: Path, faces: np.ndarray) -> None:
    legacy = legacy_copy(tmp_path, 0.0)
    today = tmp_path / "today"
    shutil.copytree(legacy, today)
    manifest = json.loads((today / "manifest.json").read_text())
    del manifest["preprocess"]["blur_sigma"]
    (today / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for backend, precision in VARIANTS:
        old, new = load_classifier(legacy, backend, precision), load_classifier(today, backend, precision)
        assert old.spec == new.spec == DEFAULT_SPEC
        np.testing.assert_array_equal(old.predict(faces), new.predict(faces))
        x = preprocess(faces, old.spec)
        np.testing.assert_array_equal(old.logits(x), new.logits(x))
