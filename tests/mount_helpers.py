"""Real file-system faults for tests: a tiny tmpfs (disk full) and bind mounts (read-only). Both need
root; without it (or in a container without CAP_SYS_ADMIN) the test skips, saying so: the injected
faults of the same tests cover the logic."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def mount(*args: str) -> bool:
    """``mount ARGS``; True when it worked."""
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str = "512k"):
    """A tmpfs of ``size`` mounted at ``folder`` (created) for the block; lazily unmounted after."""
    if not IS_ROOT:
        pytest.skip("mounting a small tmpfs needs root (the injected-fault tests cover this case)")
    folder.mkdir()
    if not mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
        pytest.skip("cannot mount a tmpfs here (container without CAP_SYS_ADMIN)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
