"""The README is part of the contract users code against: its example event must be a valid event of the shipped
model, and its config table must name every key the daemon accepts, with the built-in default."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from pydantic import BaseModel

from runtime.classifier import DEFAULT_MODEL_DIR
from runtime.config import Config
from runtime.manifest import load_manifest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


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
