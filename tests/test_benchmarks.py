"""The benchmarks' quick modes: real pipeline, real models, real clips; the structure of what they report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import classifier as classifier_bench
from benchmarks import latency
from runtime.labels import LABEL_INDEX
from runtime.manifest import load_manifest

STAGE_KEYS = {"p50", "p95", "p99", "max"}


def test_latency_quick_mode_reports_every_stage_engine_and_comparison(model_dir, tmp_path, capsys):
    out = tmp_path / "latency.json"
    code = latency.main(["--frames", "30", "--repeats", "1", "--model", str(model_dir), "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    engines = {r["engine"] for r in result["runs"]}
    assert {"onnxruntime fp32", "onnxruntime int8", "openvino fp32", "openvino int8"} <= engines
    assert {(r["clip_faces"], r["threads"]) for r in result["runs"]} == {(k, t) for k in (1, 4, 8) for t in (1, 2)}
    for run in result["runs"]:
        assert run["frames"] == 30
        assert set(run["stages_ms"]) == set(latency.STAGES)
        for stage, numbers in run["stages_ms"].items():
            assert set(numbers) == STAGE_KEYS, stage
            assert 0 <= numbers["p50"] <= numbers["p95"] <= numbers["p99"] <= numbers["max"], (stage, numbers)
        assert run["fps"] > 0 and run["cpu_ms_per_frame"] > 0
        # every frame holds clip_faces photos; BlazeFace short-range finds the single big face every time and
        # only some of 4-8 small ones (faces of ~70 px in 640x480), but always several
        if run["clip_faces"] == 1:
            assert run["faces_per_frame"] >= 0.95, run
        else:
            assert run["faces_per_frame"] >= 1.5, run
    daemon = result["daemon_vs_bare"]
    assert daemon["daemon_fps"] > 0 and daemon["bare_loop_fps"] > 0
    # one round here (--repeats 1): the median of the rounds' ratios is that round's ratio
    assert abs(daemon["ratio"] - daemon["daemon_runs"][0] / daemon["bare_runs"][0]) < 0.01
    live = result["live"]
    assert live["processed"] >= 1 and live["processed"] + live["dropped"] <= live["frames_in_clip"]
    assert result["machine"]["cores"] >= 1 and result["machine"]["versions"]["onnxruntime"]
    assert set(result["targets"]) >= {"daemon_vs_bare_ratio>=1.0", "processing_p50<=5ms", "live_latency_flat"}
    # the per-face budget is judged on the daemon's default engine, one thread, fitted over the clips
    fit = result["after_detection_fit"]["onnxruntime int8, 1 thread(s)"]["per_face_ms"]
    budget = latency.PER_FACE_BUDGET_MS
    assert result["targets"][f"per_face_fit<={budget}ms"] == [fit, fit <= budget]
    # the per-frame + per-face fit of the time after detection, for every engine and thread count
    fits = result["after_detection_fit"]
    assert set(fits) == {f"{r['engine']}, {r['threads']} thread(s)" for r in result["runs"]}
    for fit in fits.values():
        assert "1" in fit["medians_ms_by_faces"] and len(fit["medians_ms_by_faces"]) >= 2, fit
        # the line through the medians it reports (its sign is a measurement: a loaded machine's 30 frames can
        # tilt it either way; the benchmark's own runs, not this quick one, say what a face costs)
        counts = [int(k) for k in fit["medians_ms_by_faces"]]
        slope, intercept = np.polyfit(counts, list(fit["medians_ms_by_faces"].values()), 1,
                                      w=np.sqrt(list(fit["frames_by_faces"].values())))  # fmt: skip
        assert (fit["per_face_ms"], fit["per_frame_ms"]) == pytest.approx((slope, intercept), abs=0.01), fit
    # the work after detection in three machine states, with and without flip TTA, on the same frames
    states = result["after_detection_states"]
    assert set(states) == set(latency.TTA_SETTINGS)
    flip, no_flip = (states[label]["back_to_back"]["frames_by_clip_faces"] for label in ("flip", "no_flip"))
    for k in ("1", "4", "8"):  # frames with faces alternate between the two settings
        assert 0 <= flip[k] - no_flip[k] <= 1 and flip[k] + no_flip[k] >= 25, (flip, no_flip)
    for by_state in states.values():
        assert tuple(by_state) == latency.AFTER_DETECTION_STATES
        for summary in by_state.values():
            assert set(summary["per_face_p50_ms_by_clip_faces"]) == {"1", "4", "8"}
            assert all(ms > 0 for ms in summary["per_face_p50_ms_by_clip_faces"].values()), summary
            assert summary["fit"]["per_face_ms"] > 0, summary
    printed = capsys.readouterr().out
    assert "back_to_back" in printed
    assert "daemon vs bare decode+detect loop" in printed and "target processing_p50<=5ms" in printed
    assert "ms per frame +" in printed


def test_daemon_ratio_is_the_median_of_each_rounds_own_ratio(monkeypatch):
    # the machine slows down between rounds; within a round the daemon is 1.1x, 1.2x, 0.9x the bare loop
    bare = iter([300.0, 200.0, 100.0])
    daemon = iter([330.0, 240.0, 90.0])
    monkeypatch.setattr(
        latency, "bare_loop_fps", lambda clip, model, input_side=None: next(bare) if input_side is None else 1.0
    )
    monkeypatch.setattr(latency, "daemon_fps", lambda clip: next(daemon))
    result = latency.compare_daemon(None, None, repeats=3)
    assert result["ratio"] == 1.1  # the medians' ratio would be 240 / 200 = 1.2
    assert result["bare_runs"] == [300.0, 200.0, 100.0] and result["daemon_runs"] == [330.0, 240.0, 90.0]
    assert (result["bare_loop_fps"], result["daemon_fps"]) == (200.0, 240.0)


def test_latency_refuses_zero_rounds(capsys):
    assert latency.main(["--repeats", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --repeats must be at least 1"


def test_after_detection_fit_splits_frame_and_face_costs():
    # 1.0 ms per frame + 0.25 per face, with a slow outlier frame the medians ignore
    pairs = [(n, 1.0 + 0.25 * n) for n in (1, 2, 4) for _ in range(9)] + [(4, 50.0)]
    assert latency.after_detection_fit(pairs) == {
        "per_frame_ms": 1.0, "per_face_ms": 0.25, "medians_ms_by_faces": {"1": 1.25, "2": 1.5, "4": 2.0},
        "frames_by_faces": {"1": 9, "2": 9, "4": 10},
    }  # fmt: skip
    # a face count seen in few frames weighs less: 100 frames each on the line, 5 frames well off it (an unweighted
    # line through the three medians would give 0.875 ms per face)
    pairs = [(n, 1.0 + 0.25 * n) for n in (1, 2) for _ in range(100)] + [(3, 3.0)] * 5
    assert latency.after_detection_fit(pairs)["per_face_ms"] == 0.4
    assert latency.after_detection_fit([(1, 1.0)] * 9 + [(3, 2.0)] * 4) is None  # one face count is no line


def test_latency_refuses_a_missing_source(tmp_path, capsys):
    assert latency.main(["--source", str(tmp_path / "nope.mp4"), "--frames", "5"]) == 2
    assert capsys.readouterr().err.strip() == f"error: source not found: {tmp_path / 'nope.mp4'}"


def test_classifier_benchmark_rows_per_engine_and_batch(model_dir, tmp_path):
    out = tmp_path / "classifier.json"
    args = ["--model", str(model_dir), "--threads", "1", "--seconds", "0.02", "--rounds", "2", "--json", str(out)]
    assert classifier_bench.main(args) == 0
    result = json.loads(out.read_text())
    manifest, _ = load_manifest(model_dir)
    exported = {f"{v.backend} {v.precision}" for v in manifest.variants.values()}
    network = {(r["engine"], r["batch"]) for r in result["rows"] if r["what"] == "network"}
    assert {(e, b) for e in exported for b in (1, 8, 32)} <= network
    predict = {(r["engine"], r["what"]) for r in result["rows"] if r["what"].startswith("predict")}
    paced = {f"predict(tta_flip={flip}){pace}" for flip in (False, True) for pace in ("", " every 33 ms")}
    assert {(e, w) for e in exported for w in paced} <= predict  # back to back and at a camera's pace
    for r in result["rows"]:
        assert r["ms_per_face"] > 0
        if r["what"].endswith("every 33 ms"):
            assert r["faces_per_s"] is None  # the camera's pace sets the rate, not the call
        else:
            assert abs(r["faces_per_s"] - 1000 / r["ms_per_face"]) / r["faces_per_s"] < 0.01
    # side by side: every exported network and onnxruntime INT8 with all passes, at every batch, with the ratios
    paired = result["side_by_side"]
    batches = {str(b) for b in classifier_bench.SIDE_BY_SIDE_BATCHES}
    assert set(paired["ms_per_face"]) == exported | {classifier_bench.ALL_PASSES}
    assert all(set(v) == batches and min(v.values()) > 0 for v in paired["ms_per_face"].values())
    assert set(paired["int8_speedup"]) == {"onnxruntime", "openvino"}
    assert all(set(v) == batches for v in paired["int8_speedup"].values())
    assert set(paired["onnxruntime_int8_all_passes_over_runtime"]) == batches


def test_classifier_benchmark_refuses_zero_rounds(capsys):
    assert classifier_bench.main(["--rounds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --rounds must be at least 1"


def test_wild_faces_pipeline_accuracy_per_class(model_dir, tmp_path):
    from benchmarks import wild_faces

    out = tmp_path / "wild.json"
    assert wild_faces.main(["--limit", "14", "--json", str(out), "--", "--model", str(model_dir)]) == 0
    result = json.loads(out.read_text())
    assert result["photos"] == 14 and result["faces_found"] >= 13
    assert sum(c["photos"] for c in result["per_class"].values()) == 14
    assert len(result["per_class"]) >= 5  # spread over the classes
    assert sum(map(sum, result["confusion"])) == result["faces_found"]
    assert 0 <= result["accuracy"] <= result["accuracy_found"] <= 1
    low, high = result["accuracy_ci95"]
    assert 0 <= low < result["accuracy"] < high <= 1


def test_wild_faces_scores_the_best_face_of_each_photo_with_a_wilson_interval():
    from benchmarks import wild_faces

    truth = {f"{i}.jpg": LABEL_INDEX["happy"] for i in range(10)}
    faces = [{"score": 0.9, "emotion": "happy"}, {"score": 0.5, "emotion": "sad"}]  # the best-scored face answers
    events = [{"type": "frame", "file": f"/x/{i}.jpg", "faces": faces if i < 7 else faces[1:]} for i in range(9)]
    result = wild_faces.score(events, truth)  # 7 right, 2 wrong, one photo without an event: a miss
    assert (result["accuracy"], result["faces_found"], result["missed"]) == (0.7, 9, ["9.jpg"])
    assert result["accuracy_ci95"] == [0.3968, 0.8922]  # Wilson score interval, 7 of 10


def test_crop_margin_reports_each_setting_and_their_mean(tmp_path):
    from benchmarks import crop_margin

    out = tmp_path / "crop_margin.json"
    args = ["--margins", "0.1,0.2", "--centers", "0.25", "--json", str(out), "--examples", ""]
    assert crop_margin.main(args) == 0
    report = json.loads(out.read_text())
    settings = {(r["margin"], r["center"]) for r in report["results"]}
    assert settings == {(0.1, 0.25), (0.2, 0.25)} and report["photos"] == 210
    mean = report["mean_over_settings"]
    assert mean["accuracy_all"] == pytest.approx(sum(r["accuracy_all"] for r in report["results"]) / 2)
    assert mean["nll"] == pytest.approx(sum(r["nll"] for r in report["results"]) / 2) and mean["nll"] > 0


def test_prior_correction_is_the_identity_at_tau_0_and_evens_out_the_prior_at_tau_1():
    from benchmarks.photo_tricks import corrected

    prior = np.array([0.14, 0.015, 0.14, 0.25, 0.17, 0.11, 0.175])
    probs = np.stack([prior, np.roll(prior, 1)])
    assert corrected(probs, prior, 0.0) == pytest.approx(probs)
    assert corrected(probs, prior, 1.0)[0] == pytest.approx(np.full(7, 1 / 7))  # a face that only echoes the prior
    assert corrected(probs, prior, 0.5).sum(axis=1) == pytest.approx([1.0, 1.0])


def test_photo_tricks_scores_the_default_checkpoint_as_crop_margin_and_evaluate_do(tmp_path):
    from benchmarks import crop_margin, photo_tricks

    out = tmp_path / "tricks.json"
    assert photo_tricks.main(["--json", str(out)]) == 0
    rows = next(iter(json.loads(out.read_text())["models"].values()))
    assert set(rows) == {"crops: runtime", "crops: 3 margins", "crops: 3 centres", "crops: 3x3"} | {
        f"prior tau {t:g}" for t in photo_tricks.PRIOR_TAUS
    }
    assert len(set(photo_tricks.crop_sets()["3x3"])) == 9
    # The runtime's crop: what crop_margin measures at the same setting.
    ref = tmp_path / "margin.json"
    margin, center = crop_margin.DEFAULT_MARGIN, crop_margin.DEFAULT_CENTER
    args = ["--margins", str(margin), "--centers", str(center), "--json", str(ref), "--examples", ""]
    assert crop_margin.main(args) == 0
    [setting] = json.loads(ref.read_text())["results"]
    assert rows["crops: runtime"]["accuracy"] == pytest.approx(setting["accuracy_all"])
    assert rows["crops: runtime"]["nll"] == pytest.approx(setting["nll"], abs=1e-4)
    # PublicTest: the default's figure in models/README.md; tau 1 trades accuracy for balanced accuracy there.
    plain, even = rows["crops: runtime"]["publictest"], rows["prior tau 1"]["publictest"]
    assert plain["accuracy"] == pytest.approx(0.6952, abs=0.001)
    assert even["balanced_accuracy"] > plain["balanced_accuracy"] and even["accuracy"] < plain["accuracy"]
