"""Every config `check-config` accepts is one the daemon can run; everything else is refused in one line.

A hypothesis fuzz throws random values at every key (huge, negative, NaN, inf, wrong types, random text, random
YAML) and checks that `load_config` either returns a Config whose every number is within the bounds below, or
raises UserError with a one-line message, never anything else. Explicit cases cover the issue's reports
(`classifier.threads: 1000`), files that are not config files (a FIFO would block a naive reader forever), and
the command line's `error:` line and exit code 2."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import types
import typing
from pathlib import Path

import annotated_types
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.config import Config, load_config, max_threads
from runtime.errors import UserError

REPO = Path(__file__).resolve().parents[1]

# What the daemon can run with (checked against every accepted config): (lowest, highest, lowest excluded,
# highest excluded, null allowed). Written out here rather than read from runtime.config, so a loosened bound fails.
BOUNDS: dict[str, tuple[float, float, bool, bool, bool]] = {
    "source.width": (1, 8192, False, False, True),
    "source.height": (1, 8192, False, False, True),
    "source.fps": (0.1, 1000, False, False, True),
    "source.stall_timeout_s": (0.5, 600, False, False, False),
    "source.reconnect_initial_s": (0.05, 60, False, False, False),
    "source.reconnect_max_s": (0.05, 3600, False, False, False),
    "events.stats_interval_s": (0, 86400, False, False, False),
    "output.mqtt.queue": (1, 100_000, False, False, False),
    "output.mqtt.keepalive_s": (5, 3600, False, False, False),
    "output.mqtt.connect_timeout_s": (0.1, 60, False, False, False),
    "output.mqtt.reconnect_initial_s": (0.05, 60, False, False, False),
    "output.mqtt.reconnect_max_s": (0.05, 3600, False, False, False),
    "detector.min_confidence": (0, 1, False, False, False),
    "detector.max_faces": (1, 100, False, False, False),
    "detector.workers": (1, 8, False, False, False),
    "detector.input_side": (128, 8192, False, False, True),
    "crop.margin": (-0.5, 3, True, False, True),
    "classifier.threads": (1, min(64, max_threads()), False, False, False),
    "tracking.iou_threshold": (0, 1, True, False, False),
    "tracking.max_missed": (0, 1000, False, False, False),
    "tracking.smoothing": (0, 1, False, True, False),
}
TEXTS = {  # paths, URLs and names
    "source.uri", "detector.model_path", "classifier.model", "output.annotate", "output.mqtt.username",
    "output.mqtt.password_file", "output.mqtt.ca_file", "output.mqtt.cert_file", "output.mqtt.key_file",
}  # fmt: skip
FUZZ_SETTINGS = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def leaves(model: type = Config, prefix: str = "") -> dict[str, object]:
    """Dotted key -> annotation, for every leaf field of the config."""
    out: dict[str, object] = {}
    for name, field in model.model_fields.items():
        if isinstance(field.default_factory, type):
            out |= leaves(field.default_factory, f"{prefix}{name}.")
        else:
            out[f"{prefix}{name}"] = field.annotation
    return out


def is_numeric(annotation: object) -> bool:
    if annotation in (int, float):
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(is_numeric(arg) for arg in typing.get_args(annotation))
    return False


def value_at(config: Config, dotted: str) -> object:
    node: object = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def assert_runnable(config: Config) -> None:
    """Every number finite and within BOUNDS, every text a possible path or URL."""
    for key, (low, high, low_open, high_open, nullable) in BOUNDS.items():
        value = value_at(config, key)
        if value is None:
            assert nullable, key
            continue
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)
        assert (low < value) if low_open else (low <= value), (key, value)
        assert (value < high) if high_open else (value <= high), (key, value)
    for key in TEXTS:
        value = value_at(config, key)
        if value is not None:
            assert value.strip() and value.isprintable(), (key, value)
            assert "\x00" not in value and "\n" not in value, (key, value)
            value.encode("utf-8")
    assert config.output.publishers and all(p.strip() for p in config.output.publishers)
    if config.source.fps is not None:
        assert config.source.stall_timeout_s >= 2 / config.source.fps


def assert_one_line(error: UserError) -> str:
    message = str(error)
    assert message and len(message.splitlines()) == 1 and message == message.strip(), repr(message)
    return message


def load_or_refuse(path: Path | None = None, overrides: dict | None = None) -> Config | None:
    """load_config's two allowed outcomes; any other exception fails the test."""
    try:
        config = load_config(path, overrides)
    except UserError as e:
        assert_one_line(e)
        return None
    assert_runnable(config)
    return config


# -- the fuzz ------------------------------------------------------------------------------------------------

HUGE = st.sampled_from([10**400, -(10**400), 2**63, -(2**63), 2**31, 10**30, 1e308, -1e308, 5e-324])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-2000, max_value=10000),
    HUGE,
    st.floats(),  # NaN, inf, -0.0, subnormals
    st.floats(min_value=-2, max_value=2000),
    st.text(),
    st.text(alphabet=st.characters(codec=None, exclude_categories=())),  # control characters, lone surrogates
    st.sampled_from(["", " ", "0", "1", "-1", "nan", ".inf", "yes", "true", "1e3", "０", "²", "99999", "\x00"]),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=4),
    st.dictionaries(st.text(max_size=5), SCALARS, max_size=3),
    st.binary(max_size=8),
)


NEAR_BOUNDS = st.one_of(
    st.integers(min_value=-10, max_value=10_000),
    st.floats(min_value=-1, max_value=2000),
    st.sampled_from([0, 0.0, 0.05, 0.1, 0.5, 1, 1.0, 2, 8, 9, 63, 64, 65, 100, 101, 127, 128, 600, 601, 1000, 1001,
                     8192, 8193, -0.5, -0.49, 3.0, 3.01, 0.999999]),
)  # fmt: skip


@st.composite
def raw_configs(draw) -> dict:
    """A config mapping: some known keys with random values, now and then an unknown key or a section that is
    not a mapping."""
    raw: dict = {}
    for dotted in draw(st.lists(st.sampled_from(sorted(leaves())), max_size=8, unique=True)):
        *sections, key = dotted.split(".")
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = draw(st.one_of(NEAR_BOUNDS, VALUES))
    if draw(st.integers(0, 9)) == 0:
        raw[draw(st.sampled_from(["source", "tracking", "sorce", ""]))] = draw(VALUES)
    if draw(st.integers(0, 9)) == 0:
        raw.setdefault("classifier", {})[draw(st.text(max_size=6))] = draw(SCALARS)
    return raw


@FUZZ_SETTINGS
@given(key=st.sampled_from(sorted(leaves())), value=st.one_of(NEAR_BOUNDS, VALUES))
def test_fuzzed_single_keys_give_a_runnable_config_or_one_line(key: str, value: object) -> None:
    """One key at a time, mostly numbers near and beyond the bounds: a loosened bound is found here."""
    load_or_refuse(None, {key: value})


@FUZZ_SETTINGS
@given(raw=raw_configs())
def test_fuzzed_overrides_give_a_runnable_config_or_one_line(raw: dict) -> None:
    """The values as they arrive from the command line and from code (no YAML in between)."""
    load_or_refuse(None, dict(flatten(raw)))


SUBSECTIONS = {"output.mqtt"}  # sections below the top level


def flatten(raw: dict, prefix: str = ""):
    """(dotted key, value) of a nested mapping as overrides take it: sections are walked into, any other value
    (a dict too, where a key wants a number) is a leaf."""
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and (not prefix or dotted in SUBSECTIONS):
            yield from flatten(value, f"{dotted}.")
        else:
            yield dotted, value


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "config.yaml"


@FUZZ_SETTINGS
@given(raw=raw_configs())
def test_fuzzed_yaml_files_give_a_runnable_config_or_one_line(raw: dict, scratch: Path) -> None:
    """The same values written as a YAML file (.nan, .inf, 400-digit integers, escaped control characters)."""
    try:
        text = yaml.safe_dump(raw, allow_unicode=False)
    except yaml.YAMLError:
        return  # not representable in YAML: a user cannot write it either
    scratch.write_text(text, encoding="utf-8")
    load_or_refuse(scratch)


YAML_TOKENS = st.sampled_from(
    ["source:", "classifier:", "threads:", "  ", "\n", "- ", "[", "]", "{", "}", ": ", "&a ", "*a", "!!int ",
     "!!float ", "!!binary ", "!!python/object:os.system ", ".nan", "-.inf", "1" + "0" * 5000, "'", '"', "\\ud800",
     "? ", "|", ">", "%YAML 1.1\n", "---\n", "...\n", "0x1F", "0o17", "1_000", "2001-12-14", "\t", "#"]
)  # fmt: skip


@FUZZ_SETTINGS
@given(
    pieces=st.lists(st.one_of(YAML_TOKENS, st.text(max_size=6)), max_size=30),
    tail=st.binary(max_size=4),
)
def test_fuzzed_file_contents_give_a_runnable_config_or_one_line(pieces: list[str], tail: bytes, scratch: Path) -> None:
    """Random YAML-ish text, sometimes ending in bytes that are not UTF-8."""
    scratch.write_bytes("".join(pieces).encode("utf-8", "surrogatepass") + tail)
    load_or_refuse(scratch)


# -- the bounds themselves -------------------------------------------------------------------------------------


def test_every_numeric_key_has_bounds_here_and_in_the_model() -> None:
    """A new numeric key must come with bounds (and be added to BOUNDS): nothing unbounded reaches the daemon."""
    numeric = {key for key, annotation in leaves().items() if is_numeric(annotation)}
    assert numeric == set(BOUNDS)
    for key in numeric:
        section, name = key.rsplit(".", 1)
        field = type(value_at(Config(), section)).model_fields[name]
        kinds = {type(m) for m in field.metadata}
        assert kinds & {annotated_types.Ge, annotated_types.Gt}, f"{key} has no lower bound"
        if key != "classifier.threads":  # its upper bound depends on the machine: a validator, tested below
            assert kinds & {annotated_types.Le, annotated_types.Lt}, f"{key} has no upper bound"


def test_the_defaults_and_the_repository_config_are_runnable() -> None:
    assert_runnable(Config())
    assert_runnable(load_config(REPO / "config.yaml"))


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("classifier.threads", 1000, ["classifier.threads", f"at most {max_threads()}", "1000"]),
        ("classifier.threads", 65, ["classifier.threads", "at most"]),
        ("classifier.threads", 0, ["classifier.threads", "greater than or equal to 1"]),
        ("source.stall_timeout_s", 0.1, ["source.stall_timeout_s", "0.5"]),
        ("source.stall_timeout_s", 601, ["source.stall_timeout_s", "600"]),
        ("source.stall_timeout_s", math.nan, ["source.stall_timeout_s", "finite"]),
        ("source.fps", math.inf, ["source.fps", "finite"]),
        ("source.width", 100_000, ["source.width", "8192"]),
        ("source.height", 0, ["source.height"]),
        ("detector.workers", 9, ["detector.workers", "8"]),
        ("detector.max_faces", 10**6, ["detector.max_faces", "100"]),
        ("detector.input_side", 10**400, ["detector.input_side", "digits"]),
        ("tracking.max_missed", 10**9, ["tracking.max_missed", "1000"]),
        ("crop.margin", -math.inf, ["crop.margin", "finite"]),
        ("source.uri", "", ["source.uri", "empty"]),
        ("source.uri", "   ", ["source.uri", "empty"]),
        ("source.uri", "clip\x00.mp4", ["source.uri", "control"]),
        ("source.uri", "\ud800", ["source.uri"]),
        ("source.uri", 123456, ["source.uri", "webcam index"]),
        ("source.uri", "²", ["source.uri", "webcam index"]),
        ("classifier.model", "", ["classifier.model", "empty"]),
        ("detector.model_path", "a\nb", ["detector.model_path", "control"]),
        ("output.annotate", " ", ["output.annotate", "empty"]),
        ("output.publishers", [], ["output.publishers"]),
        ("output.publishers", [""], ["output.publishers.0", "empty"]),
        ("output.publishers", ["stdout"] * 17, ["output.publishers", "16"]),
    ],
)
def test_values_the_daemon_cannot_run_with_are_refused_in_one_line(key: str, value: object, words: list[str]) -> None:
    with pytest.raises(UserError) as caught:
        load_config(None, {key: value})
    message = assert_one_line(caught.value)
    for word in words:
        assert word in message, message


def test_threads_1000_in_a_file_is_refused_with_the_limit(tmp_path: Path) -> None:
    """The issue's report: `classifier.threads: 1000` passed check-config, then a local file 'stalled' after 64 s."""
    path = tmp_path / "cam.yaml"
    path.write_text("classifier:\n  threads: 1000\n")
    with pytest.raises(UserError, match=r"classifier\.threads: at most \d+ on this machine") as caught:
        load_config(path)
    assert_one_line(caught.value)
    path.write_text(f"classifier:\n  threads: {max_threads()}\n")
    assert load_config(path).classifier.threads == max_threads()


def test_a_watchdog_shorter_than_two_frames_is_refused() -> None:
    with pytest.raises(UserError, match="two frame intervals") as caught:
        load_config(None, {"source.fps": 1.0, "source.stall_timeout_s": 1.5})
    assert_one_line(caught.value)
    assert load_config(None, {"source.fps": 1.0, "source.stall_timeout_s": 2.0}).source.fps == 1.0


# -- the file itself -------------------------------------------------------------------------------------------


@pytest.mark.timeout(10, method="signal")  # a hang fails this test, not the run
def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """Opened for reading, a FIFO waits for a writer forever: it must be refused without being read."""
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="FIFO") as caught:
        load_config(fifo)
    assert_one_line(caught.value)


@pytest.mark.timeout(10, method="signal")  # a hang fails this test, not the run
@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p.mkdir(), ["directory"]),
        (lambda p: p.write_bytes(b"# " + b"x" * (1 << 20) + b"\n"), ["bytes", "1048576"]),
        (lambda p: p.write_bytes(b"source:\n  uri: \xff\xfe\n"), ["not UTF-8", "0xff"]),
        (lambda p: p.write_bytes(b"\x00\x01\x02\x7fELF"), ["not valid YAML"]),
        (lambda p: p.write_text("classifier:\n  threads: 1" + "0" * 5000 + "\n"), ["not valid YAML"]),
        (lambda p: p.write_text("[" * 5_000), ["not valid YAML"]),
        (lambda p: p.write_text("source: !!python/object:os.system x\n"), ["not valid YAML"]),
        (lambda p: p.write_text("- source\n"), ["expected a mapping"]),
        (lambda p: p.write_text("a: &x [*x]\nsource: *x\n"), ["source"]),
    ],
    ids=["directory", "huge", "not-utf8", "binary", "5000-digits", "deep", "python-tag", "list", "self-alias"],
)
def test_files_that_are_not_configs_are_refused_in_one_line(tmp_path: Path, make, words: list[str]) -> None:
    path = tmp_path / "config.yaml"
    make(path)
    with pytest.raises(UserError) as caught:
        load_config(path)
    message = assert_one_line(caught.value)
    for word in words:
        assert word in message, message


@pytest.mark.timeout(10, method="signal")  # a hang fails this test, not the run
def test_devices_are_refused_without_reading() -> None:
    with pytest.raises(UserError, match="character device") as caught:
        load_config("/dev/zero")
    assert_one_line(caught.value)


def test_a_name_that_could_break_the_line_is_escaped(tmp_path: Path) -> None:
    path = tmp_path / "bad\nname\x1b[31m.yaml"
    path.write_text("classifier:\n  threads: 1000\n")
    with pytest.raises(UserError) as caught:
        load_config(path)
    assert "\x1b" not in assert_one_line(caught.value)


# -- the command line ------------------------------------------------------------------------------------------


def emotiond() -> Path:
    exe = Path(sys.executable).parent / "emotiond"
    if not exe.is_file():
        pytest.skip(f"emotiond is not installed next to {sys.executable} (pip install -e .)")
    return exe


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p.write_text("classifier:\n  threads: 1000\n"), ["classifier.threads", "at most"]),
        (lambda p: p.write_text("source:\n  stall_timeout_s: .nan\n"), ["source.stall_timeout_s", "finite"]),
        (lambda p: p.write_text("source:\n  uri: ''\n"), ["source.uri", "empty"]),
        (lambda p: os.mkfifo(p), ["FIFO"]),
        (lambda p: p.write_bytes(b"\xff\xfe\x00"), ["not UTF-8"]),
    ],
    ids=["threads-1000", "nan", "empty-uri", "fifo", "not-utf8"],
)
def test_check_config_prints_one_error_line_and_exits_2(tmp_path: Path, make, words: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    make(path)
    run = subprocess.run(
        [str(emotiond()), "check-config", "--config", str(path)],
        capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    for word in words:
        assert word in lines[0], lines[0]
