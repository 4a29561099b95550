"""Login rate limiting and CSRF token checks for the panel.

Passwords are argon2id hashes in the panel store (:class:`~device.panel.store.PanelStore`);
sessions are random tokens in an HttpOnly, SameSite=Strict cookie, each with its own CSRF token
that every state-changing form must carry (the login form, before any session exists, carries a
token matched against a cookie of its own).

Example:
    >>> rl = RateLimiter(attempts=2, window_s=60)
    >>> rl.failure("ip:10.0.0.9", now=0); rl.failure("ip:10.0.0.9", now=1)
    >>> rl.retry_after("ip:10.0.0.9", now=2)
    58.0
    >>> rl.retry_after("ip:10.0.0.9", now=61)
    0.0
"""
from __future__ import annotations

import collections
import hmac
import threading
import time


class RateLimiter:
    """At most ``attempts`` failures per key within ``window_s`` (a sliding window)."""

    def __init__(self, attempts: int, window_s: float):
        self.attempts, self.window_s = attempts, window_s
        self._fails: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def _prune(self, key: str, now: float) -> collections.deque:
        q = self._fails[key]
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, *keys: str, now: float | None = None) -> float:
        """Seconds until one more attempt is allowed for every key (0: allowed now)."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        with self._lock:
            for key in keys:
                q = self._prune(key, now)
                if len(q) >= self.attempts:
                    wait = max(wait, float(q[len(q) - self.attempts] + self.window_s - now))
                if not q:
                    self._fails.pop(key, None)
        return wait

    def failure(self, *keys: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for key in keys:
                self._fails[key].append(now)

    def reset(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._fails.pop(key, None)


def same_token(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two tokens; False when either is missing."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))
