"""systemd/anomaly-device.service: verifies cleanly and keeps a low security exposure."""
from __future__ import annotations

from systemd_helpers import UNITS, analyze_verify, exposure, needs_analyze, unit_settings

UNIT = UNITS / "anomaly-device.service"


def test_unit_settings():
    u = unit_settings(UNIT)
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
    analyze_verify(UNIT, tmp_path)


@needs_analyze
def test_systemd_analyze_security_exposure(tmp_path):
    assert exposure(UNIT, tmp_path) <= 3.0
