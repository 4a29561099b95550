"""systemd/anomaly-panel.service: verifies cleanly, keeps a low exposure, reads the inspection
service's state read-only under its own user."""
from __future__ import annotations

from systemd_helpers import UNITS, analyze_verify, exposure, needs_analyze, unit_settings

UNIT = UNITS / "anomaly-panel.service"


def test_unit_settings():
    u = unit_settings(UNIT)
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
    analyze_verify(UNIT, tmp_path)


@needs_analyze
def test_systemd_analyze_security_exposure(tmp_path):
    assert exposure(UNIT, tmp_path) <= 2.0
