"""systemd notifications (``sd_notify``) without a dependency: one datagram to ``$NOTIFY_SOCKET``.

``READY=1`` once the bundle and camera are up, ``WATCHDOG=1`` from the frame loop
(rate-limited to half of ``$WATCHDOG_USEC``), ``STATUS=...``, ``RELOADING=1``,
``STOPPING=1``. Outside systemd (no ``$NOTIFY_SOCKET``) every call is a cheap no-op.

Example:
    >>> n = Notifier(env={})
    >>> n.ready(), n.enabled
    (False, False)
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends ``sd_notify`` messages.

    Args:
        env: environment to read ``NOTIFY_SOCKET`` / ``WATCHDOG_USEC`` / ``WATCHDOG_PID`` from.
    """

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr: str | bytes | None = None
        if addr.startswith("@"):
            self._addr = "\0" + addr[1:]          # abstract namespace
        elif addr.startswith("/"):
            self._addr = addr
        self._sock = None
        if self._addr is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0.0
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines; returns whether a message went out."""
        if self._sock is None:
            return False
        try:
            # Never block the frame loop on a busy systemd: drop the message instead.
            self._sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self._addr)
            return True
        except BlockingIOError:
            log.warning("sd_notify(%s) dropped: notification socket full", fields[0] if fields else "")
            return False
        except OSError as exc:
            log.warning("sd_notify(%s) failed: %s", fields[0] if fields else "", exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self, force: bool = False) -> bool:
        """``WATCHDOG=1`` at most every ``WatchdogSec / 2`` (or every call when ``force``)."""
        if self._sock is None or not self.watchdog_s:
            return False
        now = time.monotonic()
        if not force and now - self._last_ping < self.watchdog_s / 2:
            return False
        self._last_ping = now
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
