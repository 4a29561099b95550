"""Life cycle of the long-lived objects (journal, outputs, image archive): the error a closed one raises.

Each of them is a context manager whose ``close()`` is idempotent (gpiozero's style); any other
call after ``close()`` raises :class:`ClosedError`, naming the object, instead of failing somewhere
inside with ``AttributeError`` on ``None``.

Example:
    >>> from device.journal import Journal
    >>> with Journal(":memory:") as j:
    ...     _ = j.event("start")
    >>> j.close()                      # idempotent
    >>> j.event("again")
    Traceback (most recent call last):
    ...
    device.lifecycle.ClosedError: journal :memory: is closed
"""
from __future__ import annotations

from device.errors import AnomalyError


class ClosedError(AnomalyError, RuntimeError):
    """A journal, output set or image archive was used after ``close()``."""


class Closing:
    """Mixin: ``with obj:`` closes it on exit; subclasses implement ``close()``."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


def wait_drained(q, thread, timeout: float) -> bool:
    """Wait until every item put on ``q`` (a :class:`queue.Queue` that ``thread`` works off, calling
    ``task_done()`` for each) has been handled; False on timeout or when the thread has died.
    The ``flush()`` of the background writers (image archive, drift watch).

    Example:
        >>> import queue, threading
        >>> q = queue.Queue()
        >>> def work():
        ...     while True:
        ...         q.get()
        ...         q.task_done()
        >>> t = threading.Thread(target=work, daemon=True)
        >>> t.start(); q.put(1); q.put(2)
        >>> wait_drained(q, t, 5.0)
        True
    """
    import time

    end = time.monotonic() + timeout
    with q.all_tasks_done:
        while q.unfinished_tasks:
            left = end - time.monotonic()
            if left <= 0 or not thread.is_alive():
                return False
            q.all_tasks_done.wait(left)
    return True
