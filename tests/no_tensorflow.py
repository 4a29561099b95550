"""Run code as the device runs it: in a fresh Python whose TensorFlow and Keras imports fail (no
TensorFlow on the Pi's path). The run fails (exit 97, saying what) if they were imported anyway.

Example:
    >>> r = device_cli_without_tensorflow(["verify", "bundle/"])      # doctest: +SKIP
    >>> r.returncode                                                   # doctest: +SKIP
    0
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("tensorflow", "keras", "tf_keras")
PRELUDE = textwrap.dedent(f"""\
    import atexit, importlib.abc, os, sys
    _BLOCKED = {BLOCKED!r}
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in _BLOCKED:
                raise ImportError("blocked: " + name)
    def _check():
        got = sorted({{m.split(".")[0] for m in sys.modules}} & set(_BLOCKED))
        if got:
            sys.stderr.write("imported anyway: " + ", ".join(got) + "\\n")
            sys.stderr.flush()
            os._exit(97)
    sys.meta_path.insert(0, _Block())
    atexit.register(_check)
""")


def run_without_tensorflow(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -c code args...`` from the checkout, TensorFlow blocked; output captured as text."""
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def device_cli_without_tensorflow(argv, timeout: float = 300) -> subprocess.CompletedProcess:
    """``anomaly-device ARGV`` with TensorFlow blocked."""
    return run_without_tensorflow("import sys\nfrom device.cli import main\nsys.exit(main(sys.argv[1:]))\n", *argv,
                                  timeout=timeout)
