"""The README is part of the contract users code against: its example event must be a valid event of the shipped
model, its config table must name every key the daemon accepts with the built-in default, its commands and links
must exist, its figures must be those of the committed results, and it stays a short manual."""

from __future__ import annotations

import json
import re
import shlex
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from runtime.classifier import DEFAULT_MODEL_DIR
from runtime.cli import build_parser
from runtime.config import Config
from runtime.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "models" / "README.md"]
DOCS += [REPO / "benchmarks" / "README.md"]


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end >= 0 else None]


def config_keys(model: BaseModel, prefix: str = "") -> dict[str, object]:
    """Dotted key -> built-in default, for every leaf of the config."""
    keys = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            keys |= config_keys(value, f"{prefix}{name}.")
        else:
            keys[f"{prefix}{name}"] = value
    return keys


def as_yaml(value: object) -> str:
    """How the README's table writes a default: YAML flow style."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(as_yaml(v) for v in value) + "]"
    if isinstance(value, str) and yaml.safe_load(value) != value:
        return json.dumps(value)  # a string YAML would read as something else ("0") is quoted
    return str(value)


def test_the_example_event_is_a_valid_event_of_the_shipped_model(event_validator):
    blocks = re.findall(r"```json\n(.*?)```", section("Events"), re.S)
    assert blocks, "no JSON example under ## Events"
    event = json.loads(blocks[0])
    event_validator.validate(event)
    manifest, _ = load_manifest(DEFAULT_MODEL_DIR)
    assert event["model"] == manifest.model_id
    assert list(event["faces"][0]["probs"]) == list(manifest.labels)


def test_the_config_table_names_every_key_with_its_default():
    rows = dict(re.findall(r"^\| `([a-z_]+\.[a-z_.]+)` \| `([^`]*)` \|", README, re.M))
    keys = config_keys(Config())
    assert set(keys) <= set(rows), f"undocumented config keys: {sorted(set(keys) - set(rows))}"
    wrong = {key: (rows[key], as_yaml(default)) for key, default in keys.items() if rows[key] != as_yaml(default)}
    assert not wrong, f"README default vs built-in default: {wrong}"


def test_the_readme_is_a_short_manual():
    assert len(README.encode()) < 15_000


def shell_commands() -> list[list[str]]:
    """Each command of the README's sh blocks as words: comments dropped, split at pipes and &&, without sudo."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words: list[str] = []
            for token in [*lexer, "&&"]:
                if token in ("|", "&&", ";", "<<<", ">", "<"):
                    commands.append(words[1:] if words[:1] == ["sudo"] else words)
                    words = []
                else:
                    words.append(token)
    return [c for c in commands if c]


def test_every_emotiond_command_of_the_readme_parses():
    parser = build_parser()
    found = [c for c in shell_commands() if c[0].endswith("emotiond")]
    assert len(found) >= 10
    for words in found:
        try:
            parser.parse_args(words[1:])
        except SystemExit:
            pytest.fail(f"the README's command does not parse: {shlex.join(words)}")


def test_every_module_and_make_target_of_the_readme_exists():
    makefile = (REPO / "Makefile").read_text()
    for words in shell_commands():
        if words[0] == "make":
            target = next(w for w in words[1:] if "=" not in w)
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M) or target.startswith(".venv/"), target
        if "-m" in words and words[0].endswith("python"):
            module = words[words.index("-m") + 1]
            assert find_spec(module) is not None, f"no module {module}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_local_link_and_image_exists(doc):
    text = doc.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"[a-z]+://", target):
            assert (doc.parent / target).exists(), f"{doc.name} links to a missing {target}"


def results(name: str) -> dict:
    return json.loads((REPO / "benchmarks" / "results" / f"{name}.json").read_text())


def table_row(title: str, first_cell: str) -> list[str]:
    for line in section(title).splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if first_cell in cells[0]:
            return cells
    raise AssertionError(f"no row {first_cell!r} under ## {title}")


@pytest.mark.parametrize(("name", "suffix"), [("default", ""), ("large", "_large")])
def test_the_model_table_quotes_the_manifest_and_the_committed_results(name, suffix):
    if not (DEFAULT_MODEL_DIR.parent / name).is_dir():
        pytest.skip(f"no shipped model set {name}")
    manifest, _ = load_manifest(DEFAULT_MODEL_DIR.parent / name)
    variant = manifest.variants["onnx-int8"]
    row = table_row("Models", f"emotiond {name}")
    wild = results(f"wild_faces{suffix}")
    assert row[1] == f"{variant.metrics['publictest_accuracy']:.3f}"
    assert row[2] == f"{wild['accuracy']:.3f} ({wild['balanced_accuracy']:.3f})"
    assert row[3] == f"{results(f'latency{suffix}')['targets']['per_face_fit<=1.0ms'][0]:.2f}"
    assert row[4] == f"{variant.metrics['file_size_bytes'] / 1e6:.2f} MB"
    if name == "default":
        low, high = wild["accuracy_ci95"]
        assert f"the default's 95% interval: {low:.3f}-{high:.3f}" in section("Models")


def test_the_fer_row_quotes_the_committed_baseline():
    baseline = results("fer_baseline")
    fer, fer_publictest = baseline["fer"], baseline["publictest"]["fer"]
    assert table_row("Models", "`fer`")[1:3] == [
        f"{fer_publictest['accuracy']:.3f}",
        f"{fer['accuracy']:.3f} ({fer['balanced_accuracy']:.3f})",
    ]


def test_the_performance_table_quotes_the_committed_latency_run():
    latency = results("latency")
    text = section("Performance")
    assert f"| {latency['daemon_vs_bare']['daemon_fps']:.0f} (" in text
    assert f"loop: {latency['daemon_vs_bare']['bare_loop_fps']:.0f})" in text
    p50, p99 = (latency["targets"][k][0] for k in ("processing_p50<=5ms", "processing_p99<=8ms"))
    assert f"| {p50:.1f} / {p99:.1f} ms |" in text


def test_the_http_endpoints_and_their_limits_are_those_of_the_server():
    from runtime import http_preview

    text = section("Usage")
    for endpoint in ("/events", "/stream.mjpg", "/healthz"):
        assert f"| `GET {endpoint}` |" in text and f"GET {endpoint}" in http_preview.__doc__
    assert f"at most {http_preview.MAX_FPS} frames/s, {http_preview.MAX_WIDTH} px wide" in text
    assert f"503 when none came for {http_preview.HEALTHY_S:g} s" in text
