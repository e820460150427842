"""The systemd units as systemd itself reads them: `systemd-analyze verify` finds nothing, and the exposure score of
`systemd-analyze security` stays under 2.5 (it was 5.4 before the hardening), with ExecStart pointed at the real
executable of this checkout."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "systemd"
MAX_EXPOSURE = 2.5

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@pytest.fixture(scope="module")
def units(tmp_path_factory) -> Path:
    """The units with /opt/emotiond's executable replaced by this environment's (verify checks that it exists)."""
    folder = tmp_path_factory.mktemp("units")
    exe = str(Path(sys.executable).parent / "emotiond")
    for unit in UNITS.glob("*.service"):
        (folder / unit.name).write_text(unit.read_text().replace("/opt/emotiond/.venv/bin/emotiond", exe))
    return folder


@pytest.mark.parametrize("unit", ["emotiond.service", "emotiond@.service"])
def test_units_verify_clean(units, unit):
    name = unit.replace("@.", "@cam.")
    run = subprocess.run(
        ["systemd-analyze", "verify", name], cwd=units, capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0 and run.stderr.strip() == "", run.stderr


@pytest.mark.parametrize("unit", ["emotiond.service", "emotiond@.service"])
def test_units_expose_little(units, unit):
    name = unit.replace("@.", "@cam.")
    run = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", name], cwd=units, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", run.stdout)
    assert score, run.stdout + run.stderr
    assert float(score.group(1)) <= MAX_EXPOSURE, run.stdout
