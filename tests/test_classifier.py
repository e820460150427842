"""The classifier on real FER2013 faces: both backends, both precisions, through the model set's manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.backends import backend_names
from runtime.classifier import Classifier, load_classifier
from runtime.errors import UserError
from runtime.preprocess import preprocess

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


def test_onnxruntime_int8_pools_in_fp32_before_quantizing(model_dir: Path, tmp_path: Path) -> None:
    """The daemon's onnxruntime session keeps the first max pool ahead of the first QuantizeLinear (FP32, in the
    first conv's fast block); with all of onnxruntime's passes on, quantization moves ahead of the pool, which then
    runs on uint8 in a slow generic kernel. The logits are bit-identical either way."""
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
        assert {"MaxPool", "QuantizeLinear"} <= set(ops[name]), ops[name]
    assert ops["runtime"].index("MaxPool") < ops["runtime"].index("QuantizeLinear"), ops["runtime"]
    assert ops["all_passes"].index("QuantizeLinear") < ops["all_passes"].index("MaxPool"), ops["all_passes"]
    faces = np.random.default_rng(0).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    x = {sessions["runtime"].get_inputs()[0].name: preprocess(faces, manifest.spec, mirrors=True)}
    np.testing.assert_array_equal(sessions["runtime"].run(None, x)[0], sessions["all_passes"].run(None, x)[0])
