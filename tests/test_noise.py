"""Default output is a few meaningful lines: native libraries' notices only with -v (issue 9 #15)."""
from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from device.quiet import quiet_native

ROOT = Path(__file__).resolve().parents[1]
HAVE_TF = importlib.util.find_spec("tensorflow") is not None
LITERT_INFO = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"


@pytest.fixture
def info_logging():
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.INFO)
    yield
    root.setLevel(old)


def test_native_notices_dropped_errors_kept(capfd, info_logging):
    with quiet_native():
        os.write(2, LITERT_INFO)
        os.write(2, b"ERROR: tensor 3 has a bad shape\n")
        os.write(1, b"a real line\n")
    out, err = capfd.readouterr()
    assert "XNNPACK" not in err and "ERROR: tensor 3" in err and out == "a real line\n"


def test_errors_only_mode_and_everything_back_when_the_call_fails(capfd, info_logging):
    with quiet_native(keep_errors_only=True):
        os.write(1, b"  args_0 (POSITIONAL_ONLY): TensorSpec(shape=(None, 32, 32, 3))\n")
        os.write(2, b"E0000 00:00:1.0 converter.cc:1] something broke\n")
    out, err = capfd.readouterr()
    assert out == "" and "something broke" in err
    with pytest.raises(RuntimeError):
        with quiet_native(keep_errors_only=True):
            os.write(1, b"Saved artifact at '/tmp/x'\n")
            raise RuntimeError("conversion failed")
    out, err = capfd.readouterr()
    assert "Saved artifact" in out                     # the context of a failure is not hidden


def test_verbose_shows_everything(capfd):
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.DEBUG)
    try:
        with quiet_native():
            os.write(2, LITERT_INFO)
    finally:
        root.setLevel(old)
    assert "XNNPACK" in capfd.readouterr().err


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TF, reason="TensorFlow (trainer extra) not installed")
def test_converter_and_interpreter_print_nothing_by_default():
    """A real (tiny) conversion and interpreter, in a fresh process whose output is a pipe (as under
    systemd or in a log file): no TensorSpec dump, no absl/oneDNN notice, no XNNPACK line, no
    control codes; with debug logging the converter's dump is there."""
    code = """
import logging, sys
logging.basicConfig(level=%s)
from device.quiet import quiet_tensorflow
quiet_tensorflow()
import numpy as np, keras
from trainer.convert import convert
from device.extractor import TFLiteExtractor
m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D()])
blob = convert(m, representative=np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8))
print(TFLiteExtractor(blob)(np.zeros((1, 8, 8, 3), np.uint8)).shape)
"""
    quiet = _run(code % "logging.INFO")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    text = quiet.stdout + quiet.stderr
    for noise in ("TensorSpec", "Saved artifact", "absl::InitializeLog", "oneDNN", "XNNPACK", "fully_quantize",
                  "Statistics for quantized inputs"):
        assert noise not in text, f"{noise!r} in the default output:\n{text[-3000:]}"
    assert not any(c in text for c in "\r\b\x1b")
    assert quiet.stdout.strip() == "(1, 4)"
    lines = [ln for ln in quiet.stderr.splitlines() if ln.strip()]
    assert len(lines) <= 2 and all("trainer.convert" in ln for ln in lines), lines
    loud = _run(code.replace("quiet_tensorflow()", "") % "logging.DEBUG")
    assert loud.returncode == 0 and "TensorSpec" in loud.stdout + loud.stderr
