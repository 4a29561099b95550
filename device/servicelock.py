"""Who holds the camera: a lock + pid file the inspection service keeps in its state directory.

The service (``anomaly-device run``) takes an exclusive ``flock`` on
``<journal folder>/anomaly-device.pid`` for as long as it runs and writes its pid and
command there. Other commands use it to

* refuse to open the camera while the service holds it (``capture``), and
* find the pid to send ``SIGHUP`` to (``deploy``, ``rollback``).

The kernel drops a ``flock`` when its process exits, however it exits (SIGKILL included),
so a stale pid file left behind is never mistaken for a running service.

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with ServiceLock(d + "/anomaly-device.pid", "capture"):
    ...     holder(d + "/anomaly-device.pid")["command"]
    'capture'
    >>> holder(d + "/anomaly-device.pid") is None
    True
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from pathlib import Path

from device.errors import AnomalyError

log = logging.getLogger(__name__)

PID_FILE = "anomaly-device.pid"


class ServiceBusyError(AnomalyError, RuntimeError):
    """Another process (the service, or a capture) holds the camera lock."""


def pid_file_for(cfg) -> Path | None:
    """The lock file of the service configured by ``cfg``: beside its journal (its state
    directory). ``None`` for an in-memory journal (no state directory)."""
    return pid_file_beside(cfg.journal.path)


def pid_file_beside(journal_path) -> Path | None:
    """The lock file beside the journal at ``journal_path`` (``None`` for ``":memory:"``).

    Example:
        >>> str(pid_file_beside("/var/lib/anomaly-device/journal.sqlite"))
        '/var/lib/anomaly-device/anomaly-device.pid'
    """
    path = str(journal_path)
    if not path or path == ":memory:":
        return None
    return Path(path).parent / PID_FILE


def holder(path: str | Path | None) -> dict | None:
    """``{"pid": int, "command": str}`` of the live process holding the lock at ``path``,
    or ``None`` when nobody holds it (no file, or a stale file left by a dead process)."""
    if path is None:
        return None
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.debug("cannot open %s: %s", path, exc)
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            return _read_info(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)    # we got it: nobody holds it
        return None
    finally:
        os.close(fd)


def _read_info(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096).decode("utf-8", "replace")
    try:
        info = json.loads(raw)
        return {"pid": int(info["pid"]), "command": str(info.get("command", "?"))}
    except (ValueError, KeyError, TypeError):
        return {"pid": None, "command": raw.strip()[:80] or "?"}


class ServiceLock:
    """Exclusive lock on the service's pid file, held until :meth:`close`.

    Args:
        path: lock file (see :func:`pid_file_for`); ``None`` makes a no-op lock.
        command: what the holder is (``"run"``, ``"capture"``), shown to whoever is refused.

    Raises:
        ServiceBusyError: on enter, when another live process holds the lock.
    """

    def __init__(self, path: str | Path | None, command: str = "run"):
        self.path = Path(path) if path is not None else None
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> "ServiceLock":
        if self.path is None or self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            info = _read_info(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
            os.close(fd)
            if info is None:
                raise
            raise ServiceBusyError(f"{self.path}: the camera is held by `anomaly-device {info['command']}` "
                                   f"(pid {info['pid']}); stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": self.command}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def close(self) -> None:
        """Release the lock (the file stays; it is only meaningful while locked). Idempotent."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ServiceLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.close()


def hold_service_lock(cfg, command: str = "run", journal_path=None) -> ServiceLock:
    """Take the camera lock for the service configured by ``cfg`` (the daemon calls this in
    ``start()`` and closes it in ``shutdown()``); ``journal_path``: the journal the daemon
    writes when it is not the configured one (``selftest``'s in-memory journal: no lock).

    Raises:
        ServiceBusyError: a capture or another service instance holds the camera.
    """
    path = pid_file_for(cfg) if journal_path is None else pid_file_beside(journal_path)
    return ServiceLock(path, command).acquire()
