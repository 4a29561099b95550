"""systemd/anomaly-device.service: verifies cleanly and keeps a low security exposure."""
from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "anomaly-device.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed "
                                   "(apt-get install systemd; CI: scripts/ci-deps.sh)")


def unit_for_test(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an existing binary (verify fails on a missing one)."""
    text = UNIT.read_text()
    exe = re.search(r"^ExecStart=(\S+)", text, re.M).group(1)
    out = tmp_path / UNIT.name
    out.write_text(text.replace(exe, sys.executable))
    return out


def parse_unit() -> dict[str, list[str]]:
    """Service-section settings (repeated keys collected)."""
    values: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        k, _, v = line.partition("=")
        values.setdefault(f"{section}{k}", []).append(v)
    return values


def test_unit_settings():
    u = parse_unit()
    s = lambda k: u.get(f"[Service]{k}", [None])[-1]  # noqa: E731
    assert s("Type") == "notify" and s("Restart") == "on-failure" and int(s("WatchdogSec")) > 0
    assert s("User") == "anomaly" and s("SupplementaryGroups").split() == ["video", "gpio"]
    assert s("ProtectSystem") == "strict" and s("NoNewPrivileges") == "yes" and s("PrivateTmp") == "yes"
    assert s("DevicePolicy") == "closed"
    assert sorted(u["[Service]DeviceAllow"]) == ["char-dma_heap rw", "char-gpiochip rw", "char-media rw",
                                                  "char-video4linux rw"]
    assert s("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert " run --config " in s("ExecStart")


@needs_analyze
def test_systemd_analyze_verify_no_warnings(tmp_path):
    unit = unit_for_test(tmp_path)
    r = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr


@needs_analyze
def test_systemd_analyze_security_exposure(tmp_path):
    unit = unit_for_test(tmp_path)
    r = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert float(m.group(1)) <= 3.0, r.stdout
