"""Progress of ``fit``'s stages: a bar on a terminal, a few plain log lines otherwise.

On a TTY (stderr) each stage draws one line that redraws itself (``\\r``); when stderr is a
file or a pipe (CI logs, ``2> fit.log``) no control codes are written: the stage logs a line at
its start, every ~25 % and at its end. ``Progress(..., enabled=False)`` is silent.

Example:
    >>> import io
    >>> out = io.StringIO()
    >>> with Progress("search", 4, stream=out) as bar:
    ...     for _ in range(4):
    ...         bar.step()
    >>> "\\r" in out.getvalue()
    False
"""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)

WIDTH = 28


class Progress:
    """One stage's progress (a context manager; :meth:`close` is idempotent).

    Args:
        stage: the stage's name (``search``, ``device features`` ...).
        total: steps in the stage (forward passes, images ...).
        stream: where a TTY bar goes (default stderr); a non-TTY stream gets nothing and the
            stage logs instead.
        enabled: False: silent.
    """

    def __init__(self, stage: str, total: int, stream=None, enabled: bool = True):
        self.stage, self.total = stage, max(1, int(total))
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.done, self.note = 0, ""
        self.t0 = time.monotonic()
        self._logged = -1
        self._closed = False
        if enabled and not self.tty:
            log.info("%s: started (%d steps)", stage, self.total)
        self._draw()

    def step(self, n: int = 1, note: str = "") -> None:
        """``n`` more steps done; ``note`` is shown beside the bar (e.g. the last candidate)."""
        self.done = min(self.total, self.done + n)
        self.note = note or self.note
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        el = time.monotonic() - self.t0
        if self.tty:
            full = int(WIDTH * self.done / self.total)
            line = (f"\r{self.stage:<16} [{'#' * full}{'.' * (WIDTH - full)}] {self.done}/{self.total} "
                    f"{el:5.0f} s {self.note[:40]}")
            self.stream.write(line.ljust(100))
            self.stream.flush()
            return
        quarter = 4 * self.done // self.total
        if 0 < self.done < self.total and quarter > self._logged:
            self._logged = quarter
            log.info("%s: %d/%d (%.0f s)%s", self.stage, self.done, self.total, el,
                     f" {self.note}" if self.note else "")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        el = time.monotonic() - self.t0
        if self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
        else:
            log.info("%s: done, %d/%d in %.0f s", self.stage, self.done, self.total, el)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
