"""Shared pieces of the unit-file tests: the settings of a unit and ``systemd-analyze`` on it.

``systemd-analyze`` comes with systemd (``scripts/ci-deps.sh`` installs it in CI); tests that need it
skip with the reason when it is absent.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed "
                                   "(apt-get install systemd; CI: scripts/ci-deps.sh)")


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """``"[Section]Key" -> values`` (a repeated key collects every value, in order)."""
    values: dict[str, list[str]] = {}
    section = None
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        k, _, v = line.partition("=")
        values.setdefault(f"{section}{k}", []).append(v)
    return values


def unit_for_test(unit: Path, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an existing binary (verify fails on a missing one)."""
    text = unit.read_text()
    exe = re.search(r"^ExecStart=(\S+)", text, re.M).group(1)
    out = tmp_path / unit.name
    out.write_text(text.replace(exe, sys.executable))
    return out


def analyze_verify(unit: Path, tmp_path: Path) -> None:
    """``systemd-analyze verify`` passes without a warning."""
    r = subprocess.run([ANALYZE, "verify", str(unit_for_test(unit, tmp_path))], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr


def exposure(unit: Path, tmp_path: Path) -> float:
    """``systemd-analyze security``'s overall exposure level of the unit (0 best, 10 worst)."""
    r = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(unit_for_test(unit, tmp_path))],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    return float(m.group(1))
