"""Small command-line faults: each is a one-line error and a non-zero exit, never a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gpiozero", reason="selftest needs gpiozero (device extra)")

from daemon_helpers import bundle_dir, write_config, write_frames  # noqa: F401,E402

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "device.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_selftest_with_the_alarm_on_the_usual_reject_pin(bundle_dir, tmp_path):
    write_frames(tmp_path / "frames", "NND")
    cfg = write_config(tmp_path / "d.toml", bundle_dir, f'source = "folder"\npath = "{tmp_path / "frames"}"',
                       tmp_path / "j.sqlite", "[outputs]\nalarm_pin = 17\n")
    r = _cli("selftest", "--config", cfg, "--frames", 3, "--json")
    assert r.returncode == 0 and '"ok": true' in r.stdout and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("args, says", [
    (["selftest", "--frames", "-3"], "--frames: expected an integer >= 1, found -3"),
    (["status", "--last", "-1"], "--last: expected an integer >= 0, found -1"),
    (["status", "--window", "nan"], "--window: expected a finite number"),
    (["score", "--bundle", "b", "--threads", "0", "x.png"], "--threads: expected an integer >= 1, found 0"),
    (["project-bundle", "a", "b", "--dims", "0"], "--dims: expected an integer >= 1, found 0"),
])
def test_bad_numbers_on_the_command_line(args, says):
    r = _cli(*args)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_pin_collisions_are_refused_by_check_config(bundle_dir, tmp_path):
    cfg = write_config(tmp_path / "d.toml", bundle_dir, f'source = "folder"\npath = "{tmp_path}"',
                       tmp_path / "j.sqlite", "[outputs]\nreject_pin = 17\nalarm_pin = 27\nbusy_pin = 27\n")
    r = _cli("check-config", "--config", cfg)
    assert r.returncode == 2 and "[outputs].busy_pin: GPIO27 is already used by [outputs].alarm_pin" in r.stderr


def test_check_config_pass_means_run_starts(bundle_dir, tmp_path):
    """What check-config passes, run starts on (and the reverse: what run refuses, check-config refused)."""
    write_frames(tmp_path / "frames", "N")
    good = write_config(tmp_path / "d.toml", bundle_dir, f'source = "folder"\npath = "{tmp_path / "frames"}"',
                        tmp_path / "j.sqlite", '[outputs]\npin_factory = "mock"\n')
    assert _cli("check-config", "--config", good).returncode == 0
    r = _cli("run", "--config", good, timeout=120)
    assert r.returncode == 0, r.stderr                          # the replay ends: a clean stop
    bad = write_config(tmp_path / "e.toml", bundle_dir, f'source = "folder"\npath = "{tmp_path / "frames"}"',
                       tmp_path / "adir", '[outputs]\npin_factory = "bogus"\n')
    (tmp_path / "adir").mkdir()
    for cmd in ("check-config", "run"):
        r = _cli(cmd, "--config", bad)
        assert r.returncode == 2 and "pin_factory" in r.stderr and "is a directory" in r.stderr, (cmd, r.stderr)
