"""systemd/anomaly-panel.service: verifies cleanly, keeps a low exposure, reads the inspection
service's state read-only under its own user."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "anomaly-panel.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed "
                                   "(apt-get install systemd; CI: scripts/ci-deps.sh)")


def settings() -> dict[str, list[str]]:
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


def unit_for_test(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an existing binary (verify fails on a missing one)."""
    text = UNIT.read_text()
    exe = re.search(r"^ExecStart=(\S+)", text, re.M).group(1)
    out = tmp_path / UNIT.name
    out.write_text(text.replace(exe, sys.executable))
    return out


def test_unit_settings():
    u = settings()
    s = lambda k: u.get(f"[Service]{k}", [None])[-1]  # noqa: E731
    assert " panel --config " in s("ExecStart") and s("Restart") == "on-failure"
    assert s("User") == "anomaly-panel" != "anomaly" and s("SupplementaryGroups").split() == ["anomaly"]
    assert s("ProtectSystem") == "strict" and s("NoNewPrivileges") == "yes" and s("CapabilityBoundingSet") == ""
    assert s("ReadOnlyPaths") == "/var/lib/anomaly-device"             # the journal and the archive
    assert [p for p in u["[Service]ReadWritePaths"]] == ["-/var/lib/anomaly-device/bundles"]
    assert "PrivateNetwork" not in " ".join(u) and set(s("RestrictAddressFamilies").split()) == \
        {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert int(s("Nice")) > 0 and s("MemoryMax")                        # never slows the frame path
    assert s("StateDirectory") == "anomaly-panel" and s("UMask") == "0077"


@needs_analyze
def test_systemd_analyze_verify_no_warnings(tmp_path):
    r = subprocess.run([ANALYZE, "verify", str(unit_for_test(tmp_path))], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr


@needs_analyze
def test_systemd_analyze_security_exposure(tmp_path):
    r = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(unit_for_test(tmp_path))],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert float(m.group(1)) <= 2.0, r.stdout
