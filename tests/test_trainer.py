"""Training sanity on real FER2013 images: it learns, it resumes exactly, it reports correctly."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from runtime.errors import UserError
from runtime.labels import LABELS
from runtime.manifest import sha256_file
from runtime.preprocess import DEFAULT_SPEC, center_crop, preprocess, standardize
from trainer import checkpoint, data
from trainer.config import TrainConfig, load_config
from trainer.distill import Ensemble, Teacher, distill_loss, load_teacher, load_teachers, soften
from trainer.metrics import confusion_matrix, summarize
from trainer.models import build_model
from trainer.train import predict_with_tta, run

FER_ZIP = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fer2013" / "fer2013.zip"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "models" / "default" / "best.pt"


@pytest.fixture(scope="module")
def small_fer(tmp_path_factory) -> Path:
    """A real FER2013 subset in the folder layout: 301 training and 70 PublicTest images."""
    root = tmp_path_factory.mktemp("fer_small")
    with zipfile.ZipFile(FER_ZIP) as zf:
        names = zf.namelist()
        for top, per_class in (("train", 43), ("test", 10)):
            for label in LABELS:
                for n in sorted(x for x in names if x.startswith(f"{top}/{label}/"))[:per_class]:
                    (root / n).parent.mkdir(parents=True, exist_ok=True)
                    (root / n).write_bytes(zf.read(n))
    return root


def quick_config(data_dir: Path, out: Path, *overrides: str, **flags):
    base = ["model.width=16", "batch_size=32", "warmup_epochs=1", "threads=2"]
    return load_config(None, [*base, *overrides], data=str(data_dir), out=str(out), **flags)


@pytest.mark.slow  # 25 epochs: under a minute on an idle 2-core machine, 3.5 min beside another training run
def test_small_real_subset_overfits(small_fer, tmp_path):
    # Behaviour only: how long training takes depends on the machine, and timing belongs to benchmarks/.
    cfg = quick_config(
        small_fer,
        tmp_path / "run",
        "augment.enabled=false",
        "model.dropout=0",
        "ema_decay=0",
        "label_smoothing=0",
        "lr=0.05",
        "tta_flip=false",
        epochs=25,
    )
    run(cfg)
    ckpt = checkpoint.load(tmp_path / "run" / "last.pt")
    model, spec = checkpoint.build(ckpt)
    train = data.load(small_fer).split("Training")
    acc = (predict_with_tta(model, preprocess(train.images, spec), False).argmax(1) == train.labels).mean()
    assert acc > 0.9, f"train accuracy {acc:.3f} after overfitting"


def test_resumed_run_continues_with_the_same_state(small_fer, tmp_path):
    straight = tmp_path / "straight"
    run(quick_config(small_fer, straight, epochs=3))
    split = tmp_path / "split"
    run(quick_config(small_fer, split, epochs=3), stop_after=2)
    assert checkpoint.load(split / "last.pt")["epoch"] == 2
    moved = tmp_path / "moved"  # a run continued on another machine or in another folder lives on there
    shutil.copytree(split, moved)
    run(quick_config(small_fer, moved, epochs=3), resume=True)
    a, b = checkpoint.load(straight / "last.pt"), checkpoint.load(moved / "last.pt")
    assert b["epoch"] == 3 and [h["epoch"] for h in b["history"]] == [1, 2, 3]
    for key in a["train_model"]:
        assert torch.allclose(a["train_model"][key].float(), b["train_model"][key].float(), atol=1e-5), key
    assert (moved / "log.csv").read_text().count("\n") == 4  # header + 3 epochs
    assert b["config"]["out"] == str(moved) and f"out: {moved}" in (moved / "config.yaml").read_text()
    assert checkpoint.load(split / "last.pt")["epoch"] == 2


def test_checkpoint_describes_itself(small_fer, tmp_path):
    run(quick_config(small_fer, tmp_path / "r", epochs=1))
    ckpt = checkpoint.load(tmp_path / "r" / "best.pt")
    assert ckpt["labels"] == list(LABELS)
    assert ckpt["preprocess"]["crop"] == 44 and ckpt["arch"] == "vgg"
    assert ckpt["config"]["model"]["width"] == 16
    assert len(ckpt["data_fingerprint"]) == 64
    assert (tmp_path / "r" / "config.yaml").read_text().count("width: 16") == 1


def test_stride_two_stem_runs_the_stages_at_half_resolution(small_fer, tmp_path):
    run(quick_config(small_fer, tmp_path / "r", "model.stem_stride=2", "model.depths=[1,2,2]", epochs=1))
    model, spec = checkpoint.build(checkpoint.load(tmp_path / "r" / "best.pt"))  # rebuilt from the checkpoint alone
    x = torch.zeros(2, *spec.input_shape)
    assert model.features[0][0].stride == (2, 2)
    assert model.features[0](x).shape == (2, 16, 22, 22)
    assert model(x).shape == (2, len(LABELS))


def test_a_resnet_run_rebuilds_from_its_checkpoint_and_exports_friendly_ops(small_fer, tmp_path):
    run(
        quick_config(small_fer, tmp_path / "r", "arch=resnet", "model.depths=[1,1,1]", "augment.cutmix_p=0.5", epochs=1)
    )
    model, spec = checkpoint.build(checkpoint.load(tmp_path / "r" / "best.pt"))
    x = torch.zeros(2, *spec.input_shape)
    assert model(x).shape == (2, len(LABELS))
    ops = {type(m).__name__ for m in model.modules() if not list(m.children())}
    assert ops <= {"Conv2d", "BatchNorm2d", "ReLU", "Identity", "AdaptiveAvgPool2d", "Dropout", "Linear"}, ops
    assert model.features[-1].conv2[0].out_channels == 64  # stages at 16, 32, 64 channels


def test_cutmix_pastes_a_box_from_another_face_and_weights_the_loss_by_area():
    from trainer.augment import cutmix, mixed_loss
    from trainer.config import AugmentConfig

    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 44, 44).contiguous()
    g = torch.Generator().manual_seed(0)
    mixed, how = cutmix(x, AugmentConfig(cutmix_p=1.0), g)
    perm, lam = how
    for i in range(4):  # each face keeps lam of its own pixels, the rest come from face perm[i]
        own = (mixed[i] == i).float().mean().item()
        assert own == (1.0 if perm[i] == i else pytest.approx(lam))
        assert ((mixed[i] == i) | (mixed[i] == perm[i])).all()
    assert (perm != torch.arange(4)).any() and 0 < lam < 1
    y = torch.tensor([0, 1, 2, 3])
    assert mixed_loss(lambda t: t.float().sum(), y, how) == pytest.approx(lam * 6 + (1 - lam) * 6)
    assert cutmix(x, AugmentConfig(cutmix_p=0.0), g) == (x, None)


def test_downscaled_faces_lose_their_fine_detail_and_only_when_asked(small_fer):
    from trainer.augment import augment_batch
    from trainer.config import AugmentConfig

    faces = torch.from_numpy(standardize(data.load(small_fer).split("PublicTest").images[:16], DEFAULT_SPEC))
    faces = faces.unsqueeze(1)  # the trainer's input: whole standardized faces, cropped by augment_batch
    plain = dict(rotate_deg=0, scale=(1, 1), translate_px=0, flip=False, brightness=0, contrast=0, erase_p=0)

    def detail(x):  # mean squared Laplacian: what a lower resolution takes away
        k = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)
        return torch.nn.functional.conv2d(x, k).pow(2).mean().item()

    size = DEFAULT_SPEC.crop
    centre = torch.from_numpy(center_crop(faces[:, 0].numpy(), DEFAULT_SPEC))
    same = augment_batch(faces, size, AugmentConfig(**plain), torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, centre, atol=1e-5, rtol=0)  # with nothing on: the centre crop
    cfg = AugmentConfig(**plain, downscale_p=1.0, downscale_px=(12, 12))
    soft = augment_batch(faces, size, cfg, torch.Generator().manual_seed(0))
    assert detail(soft) < 0.2 * detail(centre)
    small = torch.nn.functional.interpolate(centre, size=(12, 12), mode="area")
    torch.testing.assert_close(soft, torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear"))
    half = augment_batch(faces, size, cfg.model_copy(update={"downscale_p": 0.5}), torch.Generator().manual_seed(1))
    changed = (half - centre).abs().flatten(1).max(1).values > 1e-4
    assert 0 < changed.sum() < len(faces)
    with pytest.raises(ValueError, match="lowest <= highest"):
        AugmentConfig(downscale_px=(30, 20))


def test_a_run_can_start_from_a_checkpoints_weights(small_fer, tmp_path, capsys):
    run(quick_config(small_fer, tmp_path / "a", epochs=1))
    source = checkpoint.load(tmp_path / "a" / "best.pt")
    # a learning rate of almost nothing: the weights it ends with are those it started from
    tuned = run(quick_config(small_fer, tmp_path / "b", f"init={tmp_path / 'a' / 'best.pt'}", "lr=1e-9",
                             "ema_decay=0", epochs=1))  # fmt: skip
    assert "starting from the weights of" in capsys.readouterr().err
    weights = checkpoint.load(tmp_path / "b" / "best.pt")["model"]
    convs = [k for k in weights if k.endswith("weight") and weights[k].dim() == 4]
    assert convs and all(torch.allclose(weights[k], source["model"][k], atol=1e-6) for k in convs)
    assert tuned["history"][0]["val_acc"] == pytest.approx(source["metrics"]["PublicTest"]["accuracy"], abs=0.02)
    with pytest.raises(UserError, match=r"init: .* is vgg .*'width': 16.*this run vgg .*'width': 8"):
        run(quick_config(small_fer, tmp_path / "c", f"init={tmp_path / 'a' / 'best.pt'}", "model.width=8", epochs=1))
    with pytest.raises(UserError, match=r"init: checkpoint not found"):
        run(quick_config(small_fer, tmp_path / "d", f"init={tmp_path / 'none.pt'}", epochs=1))
    other = _with_preprocess(tmp_path / "a" / "best.pt", tmp_path / "other.pt", std_floor=0.05)
    with pytest.raises(UserError, match=r"init: .*other\.pt preprocesses faces as .*0\.05.*, this version as"):
        run(quick_config(small_fer, tmp_path / "e", f"init={other}", epochs=1))
    resumable = tmp_path / "a" / "last.pt"
    _with_preprocess(resumable, resumable, std_floor=0.05)
    with pytest.raises(UserError, match=r"a/last\.pt preprocesses faces as .*0\.05.*, this version as"):
        run(quick_config(small_fer, tmp_path / "a", epochs=2), resume=True)


def test_a_soup_is_the_mean_of_its_checkpoints_scored_and_ready_to_export(small_fer, tmp_path):
    from trainer.soup import main as soup_main

    run(quick_config(small_fer, tmp_path / "a", epochs=2), stop_after=1)
    first = tmp_path / "a1.pt"
    shutil.copyfile(tmp_path / "a" / "best.pt", first)
    run(quick_config(small_fer, tmp_path / "a", epochs=2), resume=True)  # its continuation: one trajectory
    second = tmp_path / "a" / "last.pt"  # epoch 2
    out = tmp_path / "soup" / "best.pt"
    assert soup_main([str(first), str(second), "--out", str(out), "--threads", "2"]) == 0
    made, a, b = (checkpoint.load(p) for p in (out, first, second))
    assert [p["path"] for p in made["soup"]] == [str(first), str(second)]
    assert made["soup"][1]["sha256"] == sha256_file(second) and made["epoch"] == b["epoch"]
    weights = [k for k, v in made["model"].items() if v.is_floating_point()]
    assert weights and all(torch.allclose(made["model"][k], (a["model"][k] + b["model"][k]) / 2) for k in weights)
    # scored as a trained epoch is: trainer.evaluate gives the accuracy the soup recorded
    model, spec = checkpoint.build(made, out)
    faces = data.load(small_fer).split("PublicTest")
    probs = predict_with_tta(model, preprocess(faces.images, spec), tta_flip=made["tta_flip"])
    assert made["metrics"]["PublicTest"]["accuracy"] == pytest.approx((probs.argmax(1) == faces.labels).mean())
    other = tmp_path / "w8"
    run(quick_config(small_fer, other, "model.width=8", epochs=1))
    for args, message in (
        ([str(first)], "at least two checkpoints"),
        ([str(first), str(other / "best.pt")], r"w8/best\.pt differs from .*a1\.pt in model_args"),
        ([str(first), str(tmp_path / "none.pt")], "checkpoint not found"),
        ([str(first), str(second), "--out", str(tmp_path)], "is a folder"),
        ([str(first), str(second), "--out", "/proc/soup.pt"], "cannot write /proc/soup.pt"),
    ):
        out_args = [] if "--out" in args else ["--out", str(tmp_path / "x.pt")]
        proc = subprocess.run([sys.executable, "-m", "trainer.soup", *args, *out_args],
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert re.search(message, proc.stderr) and not (tmp_path / "x.pt").exists()


def test_distillation_targets_are_the_teachers_tempered_probabilities():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0, 0.3, -0.2, 1.0]])
    for t in (1.0, 2.0, 4.0):
        soft = soften(torch.softmax(logits, 1), t)
        torch.testing.assert_close(soft, torch.softmax(logits / t, 1))
        assert distill_loss(logits, soft, t).abs().item() < 1e-6  # a student that agrees exactly learns nothing
        assert distill_loss(logits.flip(1), soft, t).item() > 0.1


def test_an_online_teacher_labels_the_batch_the_student_sees():
    torch.manual_seed(0)
    net = build_model("vgg", width=4, depths=[1, 1], dropout=0.0).eval()
    net.head.weight.data *= 30  # an untrained net answers almost the same for every face: spread its answers
    x = torch.randn(6, 1, 44, 44)
    idx, t = torch.arange(6), 2.0
    online = Teacher(t, model=net)
    mirrored_mean = (torch.softmax(net(x), 1) + torch.softmax(net(x.flip(-1)), 1)) / 2
    torch.testing.assert_close(online.answer(x), soften(mirrored_mean, t))  # of x itself, face and mirror
    agreeing = torch.log(mirrored_mean)  # a student whose answer is the teacher's on this very batch
    assert online.loss(agreeing, idx, x, None, bf16=False).abs().item() < 1e-5
    other = torch.randn_like(x)
    assert online.loss(agreeing, idx, other, None, bf16=False).item() > 1e-3  # not on another batch
    # fixed labels: looked up by image, and blended by area for a CutMix batch
    fixed = Teacher(t, fixed=soften(torch.softmax(net(x), 1).detach(), t))
    assert fixed.loss(net(x), idx, x, None, bf16=False).abs().item() < 1e-5
    assert fixed.loss(net(x), idx.roll(1), x, None, bf16=False).item() > 1e-4
    perm = idx.roll(1)
    assert fixed.loss(net(x), idx, x, (perm, 0.25), bf16=False).item() == pytest.approx(
        0.75 * fixed.loss(net(x), perm, x, None, bf16=False).item(), rel=1e-4
    )


def test_an_online_distilled_run_trains_and_records_its_mode(small_fer, tmp_path, capsys):
    run(quick_config(small_fer, tmp_path / "teacher", epochs=1))
    teacher = str(tmp_path / "teacher" / "best.pt")
    fixed = run(quick_config(small_fer, tmp_path / "fixed", f"distill.teacher={teacher}", epochs=1))
    online = run(quick_config(small_fer, tmp_path / "online", f"distill.teacher={teacher}", "distill.online=true",
                              epochs=1))  # fmt: skip
    assert "online: it labels every augmented batch" in capsys.readouterr().err
    # same seed, same batches: ignoring `online` would give the fixed run's term to the last digit
    assert online["history"][0]["train_kd"] != pytest.approx(fixed["history"][0]["train_kd"], rel=1e-6)
    assert checkpoint.load(tmp_path / "online" / "best.pt")["config"]["distill"]["online"] is True


def test_an_exported_model_set_teaches_as_its_checkpoint_does(small_fer, tmp_path, capsys):
    # the shipped set and the checkpoint it was exported from: the INT8 OpenVINO model labels faces as PyTorch does
    shipped = Path("runtime/models/default")
    exported, identity = load_teacher(shipped / "model.int8.xml", DEFAULT_SPEC, threads=2)
    original, _ = load_teacher("models/default/best.pt", DEFAULT_SPEC)
    # pinned by its variant's files: a copy whose manifest says it was made later is the same teacher (a run goes on
    # with a teacher exported again), the FP32 variant of the set another
    copy = tmp_path / "copy"
    shutil.copytree(shipped, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "created_at": "2030-01-01T00:00:00+00:00"}))
    assert load_teacher(copy / "model.int8.xml", DEFAULT_SPEC)[1] == identity
    assert load_teacher(shipped / "model.xml", DEFAULT_SPEC)[1] != identity
    faces = preprocess(data.load(small_fer).split("PublicTest").images[:200], DEFAULT_SPEC)
    p_exported, p_original = predict_with_tta(exported, faces, True), predict_with_tta(original, faces, True)
    assert (p_exported.argmax(1) == p_original.argmax(1)).mean() >= 0.95
    assert np.abs(p_exported - p_original).max() < 0.2
    taught = run(quick_config(small_fer, tmp_path / "s", f"distill.teacher={shipped}", "distill.online=true", epochs=1))
    assert "online" in capsys.readouterr().err and taught["history"][0]["train_kd"] > 0
    assert checkpoint.load(tmp_path / "s" / "best.pt")["teacher_sha256"] == load_teacher(shipped, DEFAULT_SPEC)[1]
    with pytest.raises(UserError, match=r"distill\.teacher: .*manifest"):
        run(quick_config(small_fer, tmp_path / "s2", f"distill.teacher={tmp_path}", epochs=1))


def test_an_ensemble_of_teachers_answers_the_mean_of_their_probabilities():
    torch.manual_seed(0)
    nets = [build_model("vgg", width=4, depths=[1, 1], dropout=0.0).eval() for _ in range(3)]
    for net in nets:
        net.head.weight.data *= 30  # spread the untrained nets' answers apart
    x = torch.randn(5, 1, 44, 44)
    with torch.no_grad():
        mean = torch.stack([torch.softmax(n(x), 1) for n in nets]).mean(0)
        torch.testing.assert_close(torch.softmax(Ensemble(nets)(x), 1), mean)
        assert not torch.allclose(mean, torch.softmax(nets[0](x), 1), atol=1e-3)


def test_a_run_distilled_from_a_list_of_teachers_pins_the_list(small_fer, tmp_path, capsys):
    a, b = tmp_path / "a" / "best.pt", tmp_path / "b" / "best.pt"
    run(quick_config(small_fer, a.parent, epochs=1))
    run(quick_config(small_fer, b.parent, "seed=1", epochs=1))
    both = f"distill.teacher=[{a},{b}]"
    taught = run(quick_config(small_fer, tmp_path / "s", both, epochs=1))
    assert f"distilling from {a} + {b}: it agrees" in capsys.readouterr().err and taught["history"][0]["train_kd"] > 0
    pinned = checkpoint.load(tmp_path / "s" / "best.pt")["teacher_sha256"]
    _, one = load_teachers([str(a)], DEFAULT_SPEC)
    _, swapped = load_teachers([str(b), str(a)], DEFAULT_SPEC)
    assert one == sha256_file(a) and len({pinned, one, swapped}) == 3  # the list, in its order, is the teacher
    b.write_bytes(a.read_bytes())  # one member of the ensemble changed: --resume refuses to go on
    with pytest.raises(UserError, match="not the checkpoint this run started with"):
        run(quick_config(small_fer, tmp_path / "s", both, epochs=2), resume=True)


def test_distilled_run_learns_from_a_teacher_checkpoint(small_fer, tmp_path, capsys):
    run(quick_config(small_fer, tmp_path / "teacher", epochs=1))
    teacher = str(tmp_path / "teacher" / "best.pt")
    alone = run(quick_config(small_fer, tmp_path / "alone", epochs=1))
    taught = run(quick_config(small_fer, tmp_path / "student", f"distill.teacher={teacher}", epochs=1))
    err = capsys.readouterr().err
    assert "distilling from" in err
    # the data report compares the splits' sharpness; these real, unaltered faces draw no warning
    assert "sharpness (median Laplacian variance): Training " in err and "warning" not in err
    # same seed, same batches: only the teacher's term can change the loss
    assert alone["history"][0]["train_loss"] != pytest.approx(taught["history"][0]["train_loss"], rel=1e-3)
    # the log keeps the two terms apart: cross-entropy comparable with a run without a teacher, and the blend
    a, t = alone["history"][0], taught["history"][0]
    assert a["train_kd"] is None and a["train_ce"] == pytest.approx(a["train_loss"], rel=1e-6)
    w = checkpoint.load(tmp_path / "student" / "best.pt")["config"]["distill"]["weight"]
    assert t["train_loss"] == pytest.approx((1 - w) * t["train_ce"] + w * t["train_kd"], rel=1e-4)
    header = (tmp_path / "student" / "log.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["epoch", "train_loss", "train_ce", "train_kd"]
    ckpt = checkpoint.load(tmp_path / "student" / "best.pt")
    assert ckpt["config"]["distill"]["teacher"] == teacher and len(ckpt["teacher_sha256"]) == 64
    (tmp_path / "teacher" / "best.pt").write_bytes((tmp_path / "alone" / "best.pt").read_bytes())
    with pytest.raises(UserError, match="not the checkpoint this run started with"):
        run(quick_config(small_fer, tmp_path / "student", f"distill.teacher={teacher}", epochs=2), resume=True)
    with pytest.raises(UserError, match=r"distill\.teacher: checkpoint not found"):
        run(quick_config(small_fer, tmp_path / "s2", f"distill.teacher={tmp_path / 'none.pt'}", epochs=1))
    other = _with_preprocess(tmp_path / "teacher" / "best.pt", tmp_path / "other.pt", std_floor=0.05)
    with pytest.raises(UserError, match="preprocesses faces differently"):
        run(quick_config(small_fer, tmp_path / "s3", f"distill.teacher={other}", epochs=1))
    blurred = _with_preprocess(tmp_path / "teacher" / "best.pt", tmp_path / "blurred.pt", blur_sigma=2.75)
    with pytest.raises(UserError, match=r"distill\.teacher: checkpoint .*blurred\.pt was trained on blurred faces"):
        run(quick_config(small_fer, tmp_path / "s4", f"distill.teacher={blurred}", epochs=1))


def _with_preprocess(source: Path, path: Path, **changes) -> Path:
    """A copy of checkpoint `source` whose preprocessing spec is changed (old keys such as blur_sigma included)."""
    ckpt = torch.load(source, map_location="cpu", weights_only=False)
    ckpt["preprocess"] = {**ckpt["preprocess"], **changes}
    checkpoint.save(path, {k: v for k, v in ckpt.items() if k != "format"})
    return path


def test_checkpoint_holds_no_blur_contract(small_fer, tmp_path):
    run(quick_config(small_fer, tmp_path / "r", epochs=1))
    ckpt = checkpoint.load(tmp_path / "r" / "best.pt")
    assert ckpt["preprocess"] == DEFAULT_SPEC.to_dict() and "blur_sigma" not in ckpt["preprocess"]
    assert "blur_report" not in ckpt and "input_blur" not in ckpt["config"]
    assert "input_blur" not in (tmp_path / "r" / "config.yaml").read_text()


def test_old_checkpoints_load_without_blur_and_are_refused_with_it(small_fer, tmp_path):
    run(quick_config(small_fer, tmp_path / "r", epochs=1))
    best = tmp_path / "r" / "best.pt"
    sharp = _with_preprocess(best, tmp_path / "sharp.pt", blur_sigma=0.0)  # as the old trainer wrote for sharp data
    _, spec = checkpoint.build(checkpoint.load(sharp), sharp)
    assert spec == DEFAULT_SPEC
    blurred = _with_preprocess(best, tmp_path / "blurred.pt", blur_sigma=2.75)
    expected = (
        f"checkpoint {blurred} was trained on blurred faces (blur_sigma 2.75), which this version no longer "
        "supports: retrain it on sharp data"
    )
    with pytest.raises(UserError) as e:
        checkpoint.build(checkpoint.load(blurred), blurred)
    assert str(e.value) == expected
    # the commands that read checkpoints say so in one line, exit code 2
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.evaluate", "--model", str(blurred), "--data", str(small_fer)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr == f"error: {expected}\n", proc.stderr


def test_an_old_run_resumes_without_blur_and_is_refused_with_it(small_fer, tmp_path):
    for name, sigma in (("sharp", 0.0), ("blurred", 2.75)):
        run(quick_config(small_fer, tmp_path / name, epochs=2), stop_after=1)
        last = tmp_path / name / "last.pt"
        state = torch.load(last, map_location="cpu", weights_only=False)
        state["preprocess"] = {**state["preprocess"], "blur_sigma": sigma}  # what the old trainer wrote
        state["config"]["input_blur"] = "auto"
        checkpoint.save(last, {k: v for k, v in state.items() if k != "format"})
    assert run(quick_config(small_fer, tmp_path / "sharp", epochs=2), resume=True)["history"][-1]["epoch"] == 2
    assert checkpoint.load(tmp_path / "sharp" / "last.pt")["preprocess"] == DEFAULT_SPEC.to_dict()
    with pytest.raises(UserError, match=r"last\.pt was trained on blurred faces \(blur_sigma 2\.75\)"):
        run(quick_config(small_fer, tmp_path / "blurred", epochs=2), resume=True)


def test_the_input_blur_key_is_gone(small_fer, tmp_path):
    assert "input_blur" not in TrainConfig.model_fields
    assert quick_config(small_fer, tmp_path, "input_blur=0") == quick_config(small_fer, tmp_path)  # old no-op
    for value in ("auto", "2.75"):
        with pytest.raises(UserError, match=r"config key input_blur: .* is no longer supported"):
            quick_config(small_fer, tmp_path, f"input_blur={value}")


def test_metrics_match_a_hand_computed_confusion_matrix():
    # true angry x3, happy x2, sad x1; predictions: angry right twice, one angry->happy,
    # happy right twice, sad->angry.
    labels = np.array([0, 0, 0, 3, 3, 4])
    preds = np.array([0, 0, 3, 3, 3, 0])
    cm = confusion_matrix(labels, preds)
    assert cm[0, 0] == 2 and cm[0, 3] == 1 and cm[3, 3] == 2 and cm[4, 0] == 1 and cm.sum() == 6
    m = summarize(cm)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_recall"]["angry"] == pytest.approx(2 / 3)
    assert m["per_class_recall"]["happy"] == 1.0 and m["per_class_recall"]["sad"] == 0.0
    assert m["per_class_recall"]["fear"] is None  # absent classes do not count
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    # F1: angry P=2/3 R=2/3 -> 2/3; happy P=2/3 R=1 -> 0.8; sad 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)


def test_evaluate_scores_the_publictest_faces_also_in_training_apart(small_fer, tmp_path):
    """Three Training images copied into PublicTest are counted as seen, and the two accuracies add up."""
    data_dir = tmp_path / "fer"
    shutil.copytree(small_fer, data_dir)
    copies = sorted((data_dir / "train" / "happy").iterdir())[:3]
    for i, src in enumerate(copies):
        shutil.copy(src, data_dir / "test" / "happy" / f"PublicTest_copy{i}.jpg")
    train = {cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).tobytes() for p in data_dir.glob("train/*/*.jpg")}
    test = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).tobytes() for p in data_dir.glob("test/*/*.jpg")]
    expected_seen = sum(face in train for face in test)
    assert expected_seen >= 3
    out_json = tmp_path / "eval.json"
    command = [sys.executable, "-m", "trainer.evaluate", "--model", str(DEFAULT_CHECKPOINT), "--data", str(data_dir)]
    proc = subprocess.run(
        [*command, "--json", str(out_json)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out_json.read_text())
    seen = result["seen_in_training"]
    assert result["n"] == 73 and seen["n"] == expected_seen
    assert seen["n"] * seen["accuracy"] + (73 - seen["n"]) * seen["accuracy_unseen"] == pytest.approx(
        73 * result["accuracy"]
    )
    assert f"{seen['n']} faces, accuracy {seen['accuracy']:.4f}" in proc.stdout


def test_evaluate_command_writes_json_and_plot(small_fer, tmp_path):
    run(quick_config(small_fer, tmp_path / "r", epochs=1))
    out_json, out_png = tmp_path / "eval.json", tmp_path / "cm.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.evaluate",
            "--model",
            str(tmp_path / "r" / "best.pt"),
            "--data",
            str(small_fer),
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out_json.read_text())
    assert {"accuracy", "balanced_accuracy", "macro_f1", "per_class_recall", "per_class", "confusion", "n"} <= set(
        result
    )
    assert result["n"] == 70 and result["split"] == "PublicTest"
    assert f"{result['accuracy']:.4f}" in proc.stdout
    # per class: precision, recall, F1 and support, agreeing with the confusion matrix
    cm = np.array(result["confusion"])
    assert list(result["per_class"]) == list(LABELS)
    for i, (name, m) in enumerate(result["per_class"].items()):
        assert m["support"] == cm[i].sum() == 10
        assert m["recall"] == pytest.approx(cm[i, i] / 10) == result["per_class_recall"][name]
        if cm[:, i].sum():
            assert m["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum())
        assert m["precision"] is None or m["f1"] == pytest.approx(
            0 if cm[i, i] == 0 else 2 * m["precision"] * m["recall"] / (m["precision"] + m["recall"])
        )
        assert name in proc.stdout
    assert np.mean([m["f1"] for m in result["per_class"].values()]) == pytest.approx(result["macro_f1"])
    assert "precision" in proc.stdout and "F1" in proc.stdout
    png = out_png.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert height > width  # the confusion matrix with the per-class table below it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/nonexistent/fer.zip"], "error: dataset not found"),
        (["--set", "epochs=many"], "error: config key epochs"),
        (["--set", "optimiser=sgd"], "error: config key optimiser"),
        (["--set", "model.width=0"], "error: config key model.width"),
        (["--set", "input_blur=auto"], "error: config key input_blur"),
        (["--set", "distill.teacher=[]"], "error: config key distill.teacher: Value error, an empty list"),
        (["--resume", "--out", "/tmp/emotiond-no-such-run"], "error: checkpoint not found"),
    ],
)
def test_trainer_cli_refuses_bad_input_in_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr


RECIPES = sorted((Path(__file__).resolve().parents[1] / "trainer" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_committed_recipe_validates_and_names_files_the_repository_has(recipe: Path):
    """A recipe that no longer validates, or whose teacher or starting weights are gone, would fail only when
    somebody starts a two-hour run with it."""
    repo = recipe.parents[2]
    cfg = load_config(recipe)
    assert Path(cfg.out).parts[0] == "models", f"{recipe.name}: runs belong under models/, not {cfg.out}"
    for what, path in [("distill.teacher", t) for t in cfg.distill.teachers] + [("init", cfg.init)]:
        if path is not None and Path(path).parts[0] == "models" and "exported" in Path(path).parts:
            # models/X/exported/ is not committed (.gitignore): `python -m export` makes it from models/X/best.pt
            path = Path(*Path(path).parts[:2], "best.pt")
        assert path is None or (repo / path).exists(), f"{recipe.name}: {what} {path} is not in the repository"
