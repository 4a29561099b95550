"""Keep native libraries' chatter (TensorFlow, its converter, LiteRT) out of the default output.

TensorFlow and LiteRT write from C++ straight to file descriptors 1 and 2 (``INFO: Created
TensorFlow Lite XNNPACK delegate``, absl's ``WARNING: All log messages before absl::InitializeLog()``,
oneDNN notices, the converter's ``TensorSpec`` dumps), where Python's logging cannot filter them.
:func:`quiet_native` captures both descriptors around such a call and writes back only what is not
known noise: error lines always come through, and everything comes through when the block raises
or when debug logging is on (``-v``).

Example:
    >>> import os
    >>> with quiet_native(keep_errors_only=True):
    ...     _ = os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from typing import Iterator

log = logging.getLogger(__name__)

#: Lines that are errors in the libraries' own formats (absl ``E``/``F`` prefixes, TFLite ``ERROR:``).
ERROR_LINE = re.compile(r"^\s*([EF]\d{4} |ERROR|FATAL|Traceback|\w*Error\b)|error:", re.IGNORECASE)
#: Informational lines of LiteRT / TensorFlow that are noise on the default output.
NOISE_LINE = re.compile(r"^(INFO: |WARNING: All log messages before absl::InitializeLog|[IW]\d{4} )")
_LOCK = threading.RLock()   # descriptors are process-wide: one capture at a time


def verbose() -> bool:
    """Debug logging is on (``-v``): show the libraries' output as it is."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def quiet_native(keep_errors_only: bool = False, fds: tuple[int, ...] = (1, 2)) -> Iterator[None]:
    """Capture what native code writes to ``fds`` during the block, then write back what matters.

    Args:
        keep_errors_only: write back only error lines (a converter's dumps); otherwise everything
            except :data:`NOISE_LINE` lines.
        fds: descriptors to capture (1: stdout, 2: stderr).

    With debug logging, or when stdout/stderr are not real descriptors (some test runners), nothing
    is captured. When the block raises, everything captured is written back first. Captures are
    serialised (the descriptors are the process's); other threads' output during one is written
    back after it, filtered the same way.
    """
    if verbose():
        yield
        return
    with _LOCK:
        yield from _captured(keep_errors_only, fds)


def _captured(keep_errors_only: bool, fds: tuple[int, ...]) -> Iterator[None]:
    saved: list[tuple[int, int, object]] = []
    try:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd in fds:
            tmp = tempfile.TemporaryFile()
            saved.append((fd, os.dup(fd), tmp))
            os.dup2(tmp.fileno(), fd)
    except (OSError, ValueError) as exc:     # no real descriptors: nothing to silence
        log.debug("quiet_native: not capturing (%s)", exc)
        _restore(saved, keep="all")
        yield
        return
    ok = False
    try:
        yield
        ok = True
    finally:
        _restore(saved, keep=("errors" if keep_errors_only else "not-noise") if ok else "all")


def _restore(saved: list, keep: str) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # pragma: no cover
            pass
    for fd, dup, tmp in saved:
        os.dup2(dup, fd)
        os.close(dup)
        tmp.seek(0)
        text = tmp.read().decode("utf-8", "replace")
        tmp.close()
        lines = text.splitlines(keepends=True)
        if keep == "errors":
            lines = [ln for ln in lines if ERROR_LINE.search(ln)]
        elif keep == "not-noise":
            lines = [ln for ln in lines if not NOISE_LINE.match(ln)]
        if lines:
            os.write(fd, "".join(lines).encode())


def quiet_tensorflow() -> None:
    """Import TensorFlow without its import-time notices (oneDNN, CPU features, absl pre-init) and
    turn its Python-side logging down to warnings (errors only for absl); a no-op with ``-v``."""
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_native():
        import tensorflow  # noqa: F401
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # pragma: no cover - absl comes with TensorFlow
        pass
