"""scripts/install-pi.sh without a Pi: its options, and the requirements it installs read from
setup.cfg (one declaration of each extra). The install itself is proven by scripts/arm64-proof.sh;
its syntax by tests/test_device_config.py."""
from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install-pi.sh"
BASH = shutil.which("bash") or "/bin/bash"


def extra_reqs(*args: str) -> list[str]:
    """The script's own ``extra_reqs`` function, run on this checkout."""
    code = f'SRC={str(ROOT)!r}; eval "$(sed -n \'/^extra_reqs() {{/,/^}}/p\' {str(SCRIPT)!r})"; extra_reqs "$@"'
    r = subprocess.run([BASH, "-c", code, "extra_reqs", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def declared(extra: str) -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return [r.strip() for r in cfg["options.extras_require"][extra].splitlines() if r.strip()]


def test_options():
    r = subprocess.run([BASH, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--panel" in r.stdout and "anomaly-panel" in r.stdout
    assert "set -euo" not in r.stdout                         # the help is the header comment only
    r = subprocess.run([BASH, str(SCRIPT), "--panle"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown option --panle" in r.stderr


def test_requirements_come_from_setup_cfg():
    assert extra_reqs("panel") == declared("panel") != []
    device = extra_reqs("device", "numpy", "opencv-python-headless", "gpiozero", "Pillow")   # those come from apt
    assert device == [r for r in declared("device") if r.split(">")[0] not in
                      ("numpy", "opencv-python-headless", "gpiozero", "Pillow")]
    assert any(r.startswith("pydantic") for r in device) and any(r.startswith("ai-edge-litert") for r in device)
