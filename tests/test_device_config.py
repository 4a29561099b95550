"""Config validation, pulse scheduler, sd_notify and projected k-NN: fast unit tests (no TensorFlow)."""
from __future__ import annotations

import socket

import numpy as np
import pytest

from device.config import load_config, parse_config
from device.errors import ConfigError
from device.notify import Notifier
from device.scoring import KNNScorer, ProjectedKNNScorer, fit_pca

GOOD = """
[bundle]
path = "bundle"
threads = 1

[camera]
source = "folder"
path = "frames"
roi = [10, 20, 300, 200]

[trigger]
mode = "gpio"
pin = 4

[outputs]
reject_pin = 17
reject_delay_ms = 350
reject_width_ms = 40
safe_level = "active"
alarm_pin = 27
alarm_after_rejects = 3
"""


def test_good_config_and_relative_paths(tmp_path):
    p = tmp_path / "device.toml"
    p.write_text(GOOD)
    cfg = load_config(p)
    assert cfg.bundle.path == str(tmp_path / "bundle") and cfg.camera.path == str(tmp_path / "frames")
    assert cfg.camera.roi == (10, 20, 300, 200) and cfg.trigger.pin == 4
    assert cfg.outputs.reject_delay_ms == 350.0 and cfg.outputs.safe_level == "active"
    assert cfg.journal.path == "/var/lib/anomaly-device/journal.sqlite"   # the state directory, not /etc


def test_every_unknown_key_and_bad_value_is_named(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("""
[bundle]
path = "b"
threads = "two"
treshold = 0.5

[camera]
source = "webcam"
path = "f"
awb_gains = [1.5]

[outputs]
reject_pin = 60
reject_width_ms = -5
safe_level = "maybe"

[extras]
x = 1
""")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "8 problem(s)" in msg
    for needle in ("[bundle].threads: expected a valid integer, found string 'two'",
                   "[bundle].treshold: unknown key; expected one of path, threads, threshold, target_frr",
                   "[camera].source: expected 'folder', 'video', 'opencv' or 'picamera2', found string 'webcam'",
                   "[camera].awb_gains: expected 2 numbers, found [1.5]",
                   "[outputs].reject_pin: expected <= 53, found integer 60",
                   "[outputs].reject_width_ms: expected >= 0.1, found integer -5",
                   "[outputs].safe_level: expected 'inactive' or 'active', found string 'maybe'",
                   "[extras]: unknown section"):
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize("doc,needle", [
    ({"camera": {"source": "folder", "path": "f"}}, "[bundle].path: required key missing"),
    ({"bundle": {"path": "b"}, "camera": {"source": "video"}}, "[camera].path: required when source = 'video'"),
    ({"bundle": {"path": "b", "threshold": 0.3, "target_frr": 0.01}}, "give one or the other"),
    ({"bundle": {"path": "b"}, "trigger": {"mode": "gpio"}}, "[trigger].pin: required when mode = 'gpio'"),
    ({"bundle": {"path": "b"}, "outputs": {"reject_pin": 17, "alarm_pin": 17}},
     "[outputs].alarm_pin: GPIO17 is already used by [outputs].reject_pin"),
    ({"bundle": {"path": "b"}, "camera": {"retry_initial_s": 5.0, "retry_max_s": 1.0}}, "[camera].retry_max_s"),
    ({"bundle": {"path": "b"}, "outputs": {"reject_active_high": 1}}, "expected a valid boolean, found integer 1"),
    ({"bundle": {"path": "b"}, "outputs": {"reject_pin": 17, "ready_pin": 17}},
     "[outputs].ready_pin: GPIO17 is already used by [outputs].reject_pin"),
    ({"bundle": {"path": "b", "threshold": float("nan")}}, "[bundle].threshold: expected a finite number"),
    ({"bundle": {"path": "b", "threshold": float("inf")}}, "[bundle].threshold: expected a finite number"),
    ({"bundle": {"path": "b", "threshold": -0.5}}, "[bundle].threshold: expected >= 0"),
    ({"bundle": {"path": "b", "target_frr": 1.0}}, "[bundle].target_frr: expected < 1"),
    ({"bundle": {"path": "b"}, "journal": {"path": ""}}, "[journal].path: expected a non-empty string"),
    ({"bundle": {"path": "b"}, "camera": {"source": "folder", "path": ""}}, "[camera].path: required when source"),
    ({"bundle": {"path": "b"}, "camera": {"roi": [0, 0, 10]}}, "[camera].roi: expected 4 integers"),
    ({"bundle": {"path": "b"}, "trigger": {"pin": [4]}}, "[trigger].pin: expected a valid integer, found array"),
    ({"bundle": "b"}, "bundle: expected a table [bundle], found string"),
])
def test_cross_field_problems(doc, needle):
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    assert needle in str(e.value)


def test_toml_syntax_and_missing_file(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("[bundle]\npath = \n")
    with pytest.raises(ConfigError, match=r"x.toml: TOML syntax error: .*line 2"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")


def test_check_config_cli_exit_codes(tmp_path, capsys):
    from device.cli import main

    p = tmp_path / "d.toml"
    p.write_text(GOOD.replace("threads = 1", "threads = 0"))
    assert main(["check-config", "--config", str(p), "--no-bundle"]) == 2
    assert "[bundle].threads: expected >= 1, found integer 0" in capsys.readouterr().err
    p.write_text(GOOD + f'\n[journal]\npath = "{tmp_path / "j.sqlite"}"\n')
    assert main(["check-config", "--config", str(p), "--no-bundle"]) == 0
    assert "config OK" in capsys.readouterr().out
    assert main(["check-config", "--config", str(p)]) == 2   # bundle folder does not exist
    assert "bundle directory not found" in capsys.readouterr().err


# The pulse scheduler's timing (queued, merged, never early or short) is tested with an injected
# clock in tests/test_gpio.py.


def test_outputs_hold_safe_level_and_alarm():
    pytest.importorskip("gpiozero")
    from gpiozero.pins.mock import MockFactory

    from device.gpio import Outputs

    f = MockFactory()
    out = Outputs(reject_pin=17, alarm_pin=27, safe_level="active", pin_factory=f)
    assert f.pin(17).state == 1          # safe (active) until running
    out.run_mode()
    assert f.pin(17).state == 0
    out.fault(True)
    out.set_alarm(True)
    assert f.pin(17).state == 1 and f.pin(27).state == 1
    out.fault(False)
    out.set_alarm(False)
    assert f.pin(17).state == 0 and f.pin(27).state == 0
    out.close()
    out.close()                           # idempotent
    assert f.pin(17).state == 1


def test_notifier_datagrams_and_watchdog_rate(tmp_path):
    path = str(tmp_path / "n.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(1)
    n = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    assert n.enabled and n.watchdog_s == 2.0
    assert n.ready("up")
    assert srv.recv(100) == b"READY=1\nSTATUS=up"
    assert n.watchdog() and not n.watchdog()    # second within WatchdogSec/2: skipped
    assert srv.recv(100) == b"WATCHDOG=1"
    assert not Notifier(env={}).ready()
    assert Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s == 0
    n.close()
    srv.close()


def test_projected_knn_full_rank_equals_knn_and_low_rank_keeps_ranking():
    rng = np.random.default_rng(0)
    # Normal features near a 20-dim subspace; anomalies shifted far along it.
    basis = rng.normal(size=(20, 256)).astype(np.float32)
    bank = rng.normal(size=(500, 20)).astype(np.float32) @ basis + 0.01 * rng.normal(size=(500, 256)).astype(np.float32)
    normal = rng.normal(size=(50, 20)).astype(np.float32) @ basis
    anom = normal + 12.0 * basis[0]
    full = KNNScorer(bank, 2)
    mean, comps, ev = fit_pca(bank, 256)
    same = ProjectedKNNScorer(bank, 2, mean, comps)
    q = np.vstack([normal, anom])
    np.testing.assert_allclose(same.score(q), full.score(q), rtol=1e-3, atol=1e-3)
    mean, comps, ev = fit_pca(bank, 32)
    assert ev > 0.99 and comps.shape == (32, 256)
    low = ProjectedKNNScorer(bank, 2, mean, comps)
    s = low.score(q)
    assert s[:50].max() < s[50:].min()      # anomalies still separated
    assert low.leave_one_out().shape == (500,)
    with pytest.raises(ValueError, match="projection does not fit the bank"):
        ProjectedKNNScorer(bank, 1, mean[:10], comps)
    with pytest.raises(ValueError, match="PCA dims must be in 1..256"):
        fit_pca(bank, 300)


def test_shipped_example_config_is_valid():
    from pathlib import Path

    from device.config import BundleConfig, OutputsConfig, example_config

    path = Path(__file__).resolve().parents[1] / "systemd" / "device.example.toml"
    assert path.read_text() == example_config(), "regenerate: anomaly-device config-example > " + str(path)
    cfg = load_config(path)
    assert cfg.camera.source == "picamera2" and cfg.outputs == OutputsConfig()     # defaults, one source of truth
    assert cfg.bundle == BundleConfig(path="/var/lib/anomaly-device/bundle")


def test_install_script_syntax():
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for script in ("scripts/install-pi.sh", "scripts/ci-deps.sh"):
        r = subprocess.run([shutil.which("bash") or "/bin/bash", "-n", str(root / script)], capture_output=True,
                           text=True)
        assert r.returncode == 0, (script, r.stderr)
