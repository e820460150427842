"""`python -m export` end to end on the real training checkpoint and FER2013: every gate recomputed from real data,
the manifest, the runtime loader's refusals, and each kind of bad input as a user meets it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from runtime.classifier import load_classifier
from runtime.errors import UserError
from runtime.labels import LABELS
from runtime.manifest import sha256_file
from runtime.preprocess import DEFAULT_SPEC, PreprocessSpec, preprocess

REPO = Path(__file__).resolve().parents[1]
FER_ZIP = REPO.parent / "shared" / "datasets" / "fer2013" / "fer2013.zip"
CHECKPOINT = REPO / "models" / "default" / "best.pt"
MODEL_FILES = {
    "manifest.json",
    "model.onnx",
    "model.int8.onnx",
    "model.xml",
    "model.bin",
    "model.int8.xml",
    "model.int8.bin",
}
VARIANTS = {
    "onnx-fp32": ("onnxruntime", "fp32"),
    "onnx-int8": ("onnxruntime", "int8"),
    "openvino-fp32": ("openvino", "fp32"),
    "openvino-int8": ("openvino", "int8"),
}

pytestmark = pytest.mark.skipif(not (FER_ZIP.is_file() and CHECKPOINT.is_file()), reason="needs FER2013 and best.pt")


def run_export(*args: str | Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "export", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed copy of the checkpoint: training rewrites best.pt whenever it improves."""
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    shutil.copy2(CHECKPOINT, path)
    return path


@pytest.fixture(scope="session")
def export_run(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("export") / "model"
    return run_export("--checkpoint", source, "--out", out), out


@pytest.fixture(scope="session")
def exported(export_run) -> Path:
    run, out = export_run
    assert run.returncode == 0, run.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def manifest(exported: Path) -> dict:
    return json.loads((exported / "manifest.json").read_text())


@pytest.fixture(scope="session")
def publictest():
    from trainer import data

    return data.load(FER_ZIP).split("PublicTest")


@pytest.mark.slow
def test_export_writes_exactly_the_model_set_and_nothing_beside_it(export_run, exported: Path) -> None:
    run, _ = export_run
    assert {p.name for p in exported.iterdir()} == MODEL_FILES
    assert sorted(p.name for p in exported.parent.iterdir()) == ["model"]  # no staging folder, no failed report
    assert "Traceback" not in run.stderr
    assert all(f"PASS  {name}" in run.stdout for name in VARIANTS)


@pytest.mark.slow
def test_manifest_describes_source_data_files_and_metrics(manifest: dict, exported: Path, source: Path) -> None:
    import torch

    ckpt = torch.load(source, map_location="cpu", weights_only=False)
    assert manifest["labels"] == list(LABELS)
    # the checkpoint's contract, as this version reads it (an old checkpoint's blur_sigma 0 is dropped)
    assert manifest["preprocess"] == PreprocessSpec.from_dict(ckpt["preprocess"]).to_dict()
    assert "blur_sigma" not in manifest["preprocess"]
    assert manifest["input"]["shape"] == ["batch", *DEFAULT_SPEC.input_shape]
    assert manifest["output"]["shape"] == ["batch", len(LABELS)]
    assert manifest["tta_flip"] == ckpt["tta_flip"]
    assert manifest["training_data_fingerprint"] == ckpt["data_fingerprint"] != ""
    src = manifest["source_checkpoint"]
    assert (src["path"], src["sha256"], src["epoch"], src["arch"]) == (
        str(source),
        sha256_file(source),
        ckpt["epoch"],
        ckpt["arch"],
    )
    assert manifest["created_by"] == f"python -m export --checkpoint {source} --out {exported}"
    assert datetime.fromisoformat(manifest["created_at"]).tzinfo is not None
    assert {n: (v["backend"], v["precision"]) for n, v in manifest["variants"].items()} == VARIANTS
    for variant in manifest["variants"].values():
        for rel, digest in variant["files"].items():
            assert sha256_file(exported / rel) == digest
        m = variant["metrics"]
        assert m["file_size_bytes"] == sum((exported / rel).stat().st_size for rel in variant["files"])
        assert m["publictest_n"] == 3589
        for key in ("publictest_accuracy", "publictest_balanced_accuracy", "agreement_with_pytorch"):
            assert 0.0 <= m[key] <= 1.0
    int8, fp32 = manifest["variants"]["onnx-int8"]["metrics"], manifest["variants"]["onnx-fp32"]["metrics"]
    assert int8["file_size_bytes"] < fp32["file_size_bytes"] / 3  # INT8 weights really are bytes


@pytest.mark.slow
def test_onnx_model_carries_its_own_metadata(exported: Path, manifest: dict) -> None:
    import onnx

    for name in ("model.onnx", "model.int8.onnx"):
        props = {p.key: p.value for p in onnx.load(str(exported / name)).metadata_props}
        assert props["model_id"] == manifest["model_id"]
        assert json.loads(props["labels"]) == list(LABELS)
        assert json.loads(props["preprocess"]) == manifest["preprocess"]


def test_onnx_int8_has_7_bit_signed_weights_and_an_fp32_first_conv(exported: Path) -> None:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(exported / "model.int8.onnx")).graph
    produced_by = {out: node for node in graph.node for out in node.output}
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    first, rest = convs[0], convs[1:]
    assert first.input[1] in weights and weights[first.input[1]].dtype == np.float32  # read straight, FP32
    assert rest
    for conv in rest:
        dequantize = produced_by[conv.input[1]]
        assert dequantize.op_type == "DequantizeLinear", conv.name
        q = weights[dequantize.input[0]]
        # S8 weights in 7 bits: no int16 saturation in onnxruntime's U8S8 kernels on CPUs without VNNI
        assert q.dtype == np.int8 and q.min() >= -64 and q.max() <= 64, (conv.name, q.min(), q.max())


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fp32_logits_match_pytorch_within_1e4_on_256_real_faces(exported: Path, source: Path, publictest, backend):
    import torch

    from trainer import checkpoint

    model, spec = checkpoint.build(checkpoint.load(source))
    x = preprocess(publictest.images[np.random.default_rng(1).choice(len(publictest), 256, replace=False)], spec)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = load_classifier(exported, backend, "fp32", threads=2).logits(x)
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_gates_hold_and_manifest_accuracy_is_what_the_runtime_scores(exported, manifest, publictest, backend):
    name = {"onnxruntime": "onnx-int8", "openvino": "openvino-int8"}[backend]
    m = manifest["variants"][name]["metrics"]
    fp32 = manifest["variants"][m["fp32_reference"]]["metrics"]
    assert m["agreement_with_fp32"] >= 0.97
    assert fp32["publictest_accuracy"] - m["publictest_accuracy"] <= 0.01
    clf = load_classifier(exported, backend, "int8", threads=2)  # tta_flip from the manifest, as the runtime does
    probs = np.concatenate([clf.predict(publictest.images[i : i + 512]) for i in range(0, len(publictest), 512)])
    accuracy = float((probs.argmax(1) == publictest.labels).mean())
    assert accuracy == pytest.approx(m["publictest_accuracy"], abs=1e-6)


def _copy(exported: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "precision", "file"), [("onnxruntime", "int8", "model.int8.onnx"), ("openvino", "fp32", "model.bin")]
)
def test_runtime_refuses_a_tampered_model_file(exported, tmp_path, backend, precision, file) -> None:
    folder = _copy(exported, tmp_path)
    raw = bytearray((folder / file).read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit: still a loadable model, no longer the one that passed the gates
    (folder / file).write_bytes(bytes(raw))
    with pytest.raises(UserError, match="SHA-256"):
        load_classifier(folder, backend, precision)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize(
    ("shape", "crop"),
    [(["batch", 1, 40, 40], 40), ([1, 1, 44, 44], 44)],
    ids=["other-size", "fixed-batch"],
)
def test_runtime_refuses_a_manifest_whose_input_spec_disagrees_with_the_model(exported, tmp_path, backend, shape, crop):
    folder = _copy(exported, tmp_path)
    m = json.loads((folder / "manifest.json").read_text())
    m["input"]["shape"], m["preprocess"]["crop"] = shape, crop  # a self-consistent manifest, a model that is not
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match=r"input[ .]shape"):  # the manifest check or the model check
        load_classifier(folder, backend, "fp32")


# --- bad input: one line on stderr, exit code 2, nothing left at --out ---------------------------------------


def _small_dataset(path: Path, train: int) -> Path:
    """A real FER2013 zip in miniature: `train` Training images and 300 PublicTest images."""
    with zipfile.ZipFile(FER_ZIP) as src, zipfile.ZipFile(path, "w") as dst:
        names = [n for n in src.namelist() if n.endswith(".jpg")]
        picked = [n for n in names if n.startswith("train/")][:train]
        picked += [n for n in names if "/PublicTest_" in n][:300]
        for n in picked:
            dst.writestr(n, src.read(n))
    return path


def _other_architecture(source: Path, path: Path) -> Path:
    import torch

    from trainer import checkpoint

    ckpt = torch.load(source, map_location="cpu", weights_only=False)
    width = ckpt["model_args"]["width"]
    ckpt["model_args"] = {**ckpt["model_args"], "width": width * 2}  # weights of one width in a network twice as wide
    checkpoint.save(path, {k: v for k, v in ckpt.items() if k != "format"})
    return path


BAD_INPUTS = {
    "missing checkpoint": (lambda src, tmp: ["--checkpoint", tmp / "nope.pt"], "checkpoint not found"),
    "corrupt checkpoint": (
        lambda src, tmp: ["--checkpoint", _truncated(src, tmp / "half.pt")],
        "corrupt",
    ),
    "other architecture": (
        lambda src, tmp: ["--checkpoint", _other_architecture(src, tmp / "other.pt")],
        "weights do not fit architecture",
    ),
    "checkpoint trained on blurred faces": (
        lambda src, tmp: ["--checkpoint", _blurred(src, tmp / "blurred.pt")],
        "blurred.pt was trained on blurred faces (blur_sigma 2.75), which this version no longer supports: "
        "retrain it on sharp data",
    ),
    "calibration data missing": (
        lambda src, tmp: ["--checkpoint", src, "--data", tmp / "missing.zip"],
        "calibration data: dataset not found",
    ),
    "calibration data too small": (
        lambda src, tmp: ["--checkpoint", src, "--data", _small_dataset(tmp / "small.zip", 40)],
        "calibration data too small",
    ),
    "output not writable": (
        lambda src, tmp: ["--checkpoint", src, "--out", _file(tmp / "a-file") / "model"],
        "cannot write output folder",
    ),
    "output is another folder": (
        lambda src, tmp: ["--checkpoint", src, "--out", _file(tmp / "other" / "notes.txt").parent],
        "refusing to replace",
    ),
}


def _blurred(source: Path, path: Path) -> Path:
    """The checkpoint as the old trainer wrote it for the blurred FER2013 edition: a preprocess spec with blur_sigma."""
    import torch

    from trainer import checkpoint

    ckpt = torch.load(source, map_location="cpu", weights_only=False)
    ckpt["preprocess"] = {**ckpt["preprocess"], "blur_sigma": 2.75}
    checkpoint.save(path, {k: v for k, v in ckpt.items() if k != "format"})
    return path


def _truncated(src: Path, path: Path) -> Path:
    path.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return path


def _file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a folder\n")
    return path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_error_exit_2_and_nothing_written(case: str, source: Path, tmp_path: Path) -> None:
    make_args, message = BAD_INPUTS[case]
    args = make_args(source, tmp_path)
    if "--out" not in args:
        args += ["--out", tmp_path / "model"]
    out = Path(args[args.index("--out") + 1])
    before = {p.name for p in out.parent.iterdir()} if out.parent.is_dir() else set()
    run = run_export(*args)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], run.stderr
    after = {p.name for p in out.parent.iterdir()} if out.parent.is_dir() else set()
    assert after == before  # no output folder, no staging folder, no report


# --- publishing: all or nothing (the heavy steps replaced by stand-ins; the folder logic is what is tested) ----


def _fake_export(monkeypatch: pytest.MonkeyPatch, passed: bool) -> None:
    from export import pipeline, prepare

    def run(prep, folder: Path, created_by: str, log):
        (folder / "model.onnx").write_bytes(b"new")
        (folder / "manifest.json").write_text("{}")
        gate = {"name": "onnx-fp32: max |logit - PyTorch logit|", "value": 0.5, "limit": 1e-4, "passed": passed}
        pytorch = {"publictest_accuracy": 0.5, "publictest_balanced_accuracy": 0.5}
        return None, {"passed": passed, "gates": [gate], "variants": {}, "pytorch": pytorch, "model_id": "m"}

    monkeypatch.setattr(prepare, "prepare", lambda *args: None)
    monkeypatch.setattr(pipeline, "run", run)


def _previous_model_set(tmp_path: Path) -> Path:
    out = tmp_path / "model"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    (out / "model.onnx").write_bytes(b"old")
    return out


def test_failed_gate_exits_1_keeps_previous_model_set_and_writes_report(monkeypatch, tmp_path, capsys) -> None:
    from export.cli import main

    out = _previous_model_set(tmp_path)
    _fake_export(monkeypatch, passed=False)
    assert main(["--checkpoint", "unused.pt", "--out", str(out)]) == 1
    assert (out / "model.onnx").read_bytes() == b"old"
    report = json.loads((tmp_path / "model.failed-report.json").read_text())
    assert report["passed"] is False and not report["gates"][0]["passed"]
    assert "failed 1 gate(s)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.failed-report.json"]


def test_passing_export_replaces_previous_model_set_whole(monkeypatch, tmp_path) -> None:
    from export.cli import main

    out = _previous_model_set(tmp_path)
    (tmp_path / "model.failed-report.json").write_text("{}")  # from an earlier failed attempt
    _fake_export(monkeypatch, passed=True)
    assert main(["--checkpoint", "unused.pt", "--out", str(out)]) == 0
    assert (out / "model.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert out.stat().st_mode & 0o055 == 0o055 & ~_umask()  # an ordinary folder, not mkdtemp's private one


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
