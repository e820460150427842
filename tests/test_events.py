"""Events: every kind validates against the JSON Schema shipped in the repository, and encode never writes bad JSON."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from runtime.events import (
    SCHEMA_PATH,
    SCHEMA_VERSION,
    STATUS_STATES,
    EventBuilder,
    encode,
    load_schema,
    new_session_id,
)
from runtime.frames import Detection, Face, Frame
from runtime.labels import LABELS

WIDTH, HEIGHT = 640, 480


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def valid(validator: Draft202012Validator, event: dict) -> dict:
    """Validates the event as a consumer sees it: after encoding and parsing the line."""
    line = encode(event)
    parsed = json.loads(line)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(parsed)]
    assert not errors, errors
    return parsed


def make_frame(index: int = 0, file: str | None = None) -> Frame:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    return Frame(image=image, index=index, capture_ns=time.monotonic_ns(), wall_time=time.time(), file=file)


def make_face(box, probs, face_id: int | None = 1, score: float = 0.91) -> Face:
    keypoints = np.zeros((6, 2), np.float32)
    probs = np.asarray(probs, np.float32)
    return Face(detection=Detection(box=box, score=score, keypoints=keypoints), probs=probs, id=face_id)


PROBS_HAPPY = [0.02, 0.01, 0.03, 0.81, 0.05, 0.03, 0.05]
PROBS_SAD = [0.05, 0.02, 0.10, 0.03, 0.60, 0.02, 0.18]
LATENCY = {"decode": 1.2, "detect": 2.51234, "crop": 0.08, "classify": 0.31, "track": 0.01, "total": 4.2}


@pytest.fixture
def builder() -> EventBuilder:
    return EventBuilder(new_session_id(), source="0", model_id="fer-resnet-int8")


def test_schema_file_is_valid_draft_2020_12_and_its_examples_validate(validator):
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {e["type"] for e in schema["examples"]} == {"frame", "status", "stats"}
    for example in schema["examples"]:
        valid(validator, example)


def test_builder_states_are_the_schemas_states():
    assert list(STATUS_STATES) == load_schema()["$defs"]["status"]["properties"]["state"]["enum"]


def test_frame_without_faces_validates(validator, builder):
    event = valid(validator, builder.frame(make_frame(7), [], WIDTH, HEIGHT, LATENCY))
    assert event["type"] == "frame" and event["schema"] == SCHEMA_VERSION
    assert event["faces"] == [] and event["frame"] == 7 and event["file"] is None
    assert event["size"] == {"width": WIDTH, "height": HEIGHT}
    assert event["model"] == "fer-resnet-int8" and event["source"] == "0"
    assert event["latency_ms"]["detect"] == 2.512  # ms rounded to µs keeps lines short


def test_frame_with_one_face_carries_all_seven_probabilities_and_the_top_label(validator, builder):
    face = make_face((100.4, 50.6, 120.0, 130.0), PROBS_HAPPY, face_id=3)
    event = valid(validator, builder.frame(make_frame(), [face], WIDTH, HEIGHT, LATENCY))
    (record,) = event["faces"]
    assert list(record["probs"]) == list(LABELS)
    assert record["probs"] == dict(zip(LABELS, PROBS_HAPPY, strict=True))  # float32 printed as 0.81, not 0.8100000024
    assert record["emotion"] == "happy" and record["confidence"] == 0.81
    assert record["id"] == 3 and record["score"] == 0.91
    assert record["box"] == {"x": 100, "y": 51, "w": 120, "h": 130}
    assert record["box_norm"] == {"x": 0.1562, "y": 0.1062, "w": 0.1875, "h": 0.2708}


def test_frame_with_several_faces_keeps_boxes_inside_the_frame(validator, builder):
    faces = [
        make_face((10, 20, 100, 100), PROBS_HAPPY, face_id=1),
        make_face((-30.0, 400.0, 90.0, 120.0), PROBS_SAD, face_id=2),  # past the left and bottom border
        make_face((600.0, -10.0, 80.0, 60.0), PROBS_SAD, face_id=4),  # past the right and top border
    ]
    event = valid(validator, builder.frame(make_frame(), faces, WIDTH, HEIGHT, LATENCY))
    assert [f["id"] for f in event["faces"]] == [1, 2, 4]
    assert [f["emotion"] for f in event["faces"]] == ["happy", "sad", "sad"]
    for record in event["faces"]:
        box, norm = record["box"], record["box_norm"]
        assert box["x"] + box["w"] <= WIDTH and box["y"] + box["h"] <= HEIGHT
        assert all(0.0 <= v <= 1.0 for v in norm.values())
        assert norm["x"] + norm["w"] <= 1.0 and norm["y"] + norm["h"] <= 1.0
    assert event["faces"][1]["box"] == {"x": 0, "y": 400, "w": 60, "h": 80}
    assert event["faces"][2]["box"] == {"x": 600, "y": 0, "w": 40, "h": 50}


def test_still_frame_names_its_file_and_has_no_face_id(validator, builder):
    face = make_face((5, 5, 40, 40), PROBS_SAD, face_id=None)
    event = valid(validator, builder.frame(make_frame(2, file="photos/b.jpg"), [face], WIDTH, HEIGHT, {}))
    assert event["file"] == "photos/b.jpg" and event["faces"][0]["id"] is None


def test_times_are_capture_times_in_utc_iso_unix_and_monotonic_ms(validator, builder):
    frame = make_frame()
    frame.wall_time, frame.capture_ns = 1_700_000_000.1234, 5_000_123_456_789
    event = valid(validator, builder.frame(frame, [], WIDTH, HEIGHT, {}))
    assert event["time"] == "2023-11-14T22:13:20.123Z"
    assert event["unix"] == 1_700_000_000.123
    assert event["mono_ms"] == 5_000_123.457


def test_status_event_validates_for_every_state_with_known_and_extra_fields(validator, builder):
    for state in STATUS_STATES:
        valid(validator, builder.status(state))
    event = valid(validator, builder.status("offline", "camera unplugged", retry_s=2.0, pid=1234, attempt=3))
    assert event["state"] == "offline" and event["detail"] == "camera unplugged" and event["attempt"] == 3


def test_unknown_status_state_is_refused_where_it_is_made(builder):
    with pytest.raises(ValueError, match="unknown status state"):
        builder.status("onlnie")


def test_stats_event_validates_with_latency_percentiles(validator, builder):
    pct = {"p50": 2.5, "p95": 3.9, "p99": 5.25, "max": 9.1}
    event = builder.stats(
        interval_s=10.0,
        frames=250,
        dropped=3,
        fps=np.float32(25.0),  # numpy scalars from the statistics code encode as plain numbers
        faces=np.int64(251),
        frames_total=2500,
        dropped_total=12,
        uptime_s=100.2,
        latency_ms={"detect": pct, "total": pct},
        reconnects=0,
    )
    assert valid(validator, event)["fps"] == 25.0


def test_schema_refuses_unknown_keys_and_missing_probabilities(validator, builder):
    face = make_face((10, 20, 100, 100), PROBS_HAPPY)
    event = json.loads(encode(builder.frame(make_frame(), [face], WIDTH, HEIGHT, LATENCY)))
    assert validator.is_valid(event)
    assert not validator.is_valid({**event, "colour": "red"})
    del event["faces"][0]["probs"]["neutral"]
    assert not validator.is_valid(event)
    status = json.loads(encode(builder.status("online")))
    assert not validator.is_valid({**status, "nested": {"not": "a scalar"}})


def test_seq_counts_from_zero_across_all_event_types(builder):
    events = [
        builder.status("starting"),
        builder.frame(make_frame(0), [], WIDTH, HEIGHT, {}),
        builder.frame(make_frame(1), [], WIDTH, HEIGHT, {}),
        builder.stats(interval_s=1.0, frames=2, dropped=0, fps=2.0, faces=0),
        builder.status("stopping"),
    ]
    assert [e["seq"] for e in events] == [0, 1, 2, 3, 4]
    assert len({e["session"] for e in events}) == 1


def test_each_session_id_is_new():
    assert len({new_session_id() for _ in range(100)}) == 100


def test_frames_without_faces_can_be_skipped_without_a_gap_in_seq():
    builder = EventBuilder("s1", source="clip.mp4", model_id="m", emit_empty=False)
    assert builder.frame(make_frame(0), [], WIDTH, HEIGHT, {}) is None
    face = make_face((10, 20, 100, 100), PROBS_HAPPY)
    assert builder.frame(make_frame(1), [face], WIDTH, HEIGHT, {})["seq"] == 0


def test_nan_probability_raises_instead_of_writing_invalid_json(builder):
    face = make_face((10, 20, 100, 100), [np.nan, 0, 0, 1, 0, 0, 0])
    with pytest.raises(ValueError):
        encode(builder.frame(make_frame(), [face], WIDTH, HEIGHT, {}))
    with pytest.raises(ValueError):
        encode(builder.frame(make_frame(), [], WIDTH, HEIGHT, {"total": float("inf")}))


def test_encode_writes_one_compact_ascii_line(builder):
    face = make_face((10, 20, 100, 100), PROBS_HAPPY)
    event = builder.frame(make_frame(file="fotos/été.jpg"), [face, face], WIDTH, HEIGHT, LATENCY)
    line = encode(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert b": " not in line and b", " not in line
    line.decode("ascii")
    assert json.loads(line) == event
    assert len(line) < 1000  # two faces fit in well under a kilobyte
