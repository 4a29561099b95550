"""The panel's own store (SQLite): users, sessions, marks, the audit of actions, the MQTT cursor.

The inspection journal is never written by the panel; everything the panel must remember lives
here: who may log in (argon2 hashes), open sessions (only a hash of each cookie token is kept),
the operators' marks on decisions (a reject confirmed good, a pass that was a missed defect),
every action with who, when, the command run, its exit code and output, and the id of the last
journal row the MQTT publisher delivered.

Example:
    >>> with PanelStore(":memory:") as s:
    ...     s.add_user("ana", "correct horse battery staple")
    ...     s.check_password("ana", "correct horse battery staple"), s.check_password("ana", "x")
    (True, False)
"""
from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,              -- argon2id (argon2-cffi), never the password
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 TEXT PRIMARY KEY,   -- the cookie holds the token, the store only its hash
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    client TEXT
);
CREATE TABLE IF NOT EXISTS marks (
    decision_id INTEGER PRIMARY KEY, -- journal row id
    kind TEXT NOT NULL CHECK (kind IN ('good', 'defect')),
    user TEXT NOT NULL,
    ts REAL NOT NULL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    user TEXT,
    action TEXT NOT NULL,
    detail TEXT,                     -- JSON
    argv TEXT,                       -- JSON list (commands run)
    status TEXT NOT NULL,            -- running, ok, failed, refused, done
    rc INTEGER,
    output TEXT,
    finished REAL,
    client TEXT
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
MARK_KINDS = ("good", "defect")
OUTPUT_LIMIT = 200_000


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class PanelStore:
    """The panel's SQLite store (created on first use). Thread-safe; a context manager.

    Args:
        path: SQLite file (parent folder created) or ``":memory:"``.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def _q(self, sql: str, args: tuple | list = ()) -> list[sqlite3.Row]:
        with self._lock:
            if self._db is None:
                raise sqlite3.ProgrammingError("panel store closed")
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        """Close the database. Idempotent."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> "PanelStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ users
    def add_user(self, name: str, password: str, replace: bool = False) -> None:
        """Create (or with ``replace`` reset) a user; the password is stored as an argon2id hash.

        Raises:
            ValueError: empty name, short password, or the user exists and ``replace`` is false.
        """
        if not name or not name.isprintable() or len(name) > 64 or name != name.strip():
            raise ValueError(f"user name must be 1..64 printable characters without surrounding spaces, "
                             f"found {name!r}")
        if len(password) < 8:
            raise ValueError("password must have at least 8 characters")
        h = _hasher().hash(password)
        with self._lock:
            if self._q("SELECT 1 FROM users WHERE name = ?", (name,)) and not replace:
                raise ValueError(f"user {name!r} exists (use --replace to set a new password)")
            self._q("INSERT INTO users (name, hash, created) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE "
                    "SET hash = excluded.hash", (name, h, time.time()))
            self._q("DELETE FROM sessions WHERE user = ?", (name,))

    def remove_user(self, name: str) -> bool:
        with self._lock:
            self._q("DELETE FROM sessions WHERE user = ?", (name,))
            return bool(self._q("DELETE FROM users WHERE name = ? RETURNING name", (name,)))

    def users(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._q("SELECT name, created FROM users ORDER BY name")]

    def check_password(self, name: str, password: str) -> bool:
        """True when ``password`` matches; a hash made with older parameters is upgraded."""
        from argon2.exceptions import InvalidHashError, VerificationError

        rows = self._q("SELECT hash FROM users WHERE name = ?", (name,))
        ph = _hasher()
        if not rows:
            try:   # same work for an unknown user, so timing does not tell which names exist
                ph.verify(_dummy_hash(), password + "x")
            except VerificationError:
                pass
            return False
        try:
            ph.verify(rows[0]["hash"], password)
        except (VerificationError, InvalidHashError):
            return False
        if ph.check_needs_rehash(rows[0]["hash"]):
            self._q("UPDATE users SET hash = ? WHERE name = ?", (ph.hash(password), name))
        return True

    # ------------------------------------------------------------------ sessions
    def create_session(self, user: str, hours: float, client: str = "") -> tuple[str, str]:
        """A new session; returns ``(cookie token, CSRF token)``."""
        token, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time()
        self._q("DELETE FROM sessions WHERE expires < ?", (now,))
        self._q("INSERT INTO sessions (token_sha256, user, csrf, created, expires, client) VALUES (?, ?, ?, ?, ?, ?)",
                (token_hash(token), user, csrf, now, now + hours * 3600.0, client))
        return token, csrf

    def session(self, token: str | None) -> dict[str, Any] | None:
        """The live session of a cookie token (None: unknown or expired)."""
        if not token:
            return None
        rows = self._q("SELECT user, csrf, expires FROM sessions WHERE token_sha256 = ? AND expires > ?",
                       (token_hash(token), time.time()))
        return dict(rows[0]) if rows else None

    def end_session(self, token: str | None) -> None:
        if token:
            self._q("DELETE FROM sessions WHERE token_sha256 = ?", (token_hash(token),))

    # ------------------------------------------------------------------ marks
    def set_mark(self, decision_id: int, kind: str | None, user: str, note: str = "") -> None:
        """Mark a journal row ``good`` or ``defect``; ``kind=None`` removes the mark."""
        if kind is None:
            self._q("DELETE FROM marks WHERE decision_id = ?", (decision_id,))
            return
        if kind not in MARK_KINDS:
            raise ValueError(f"mark must be one of {MARK_KINDS}, found {kind!r}")
        self._q("INSERT INTO marks (decision_id, kind, user, ts, note) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(decision_id) DO UPDATE SET kind = excluded.kind, user = excluded.user, "
                "ts = excluded.ts, note = excluded.note", (decision_id, kind, user, time.time(), note))

    def marks(self, kind: str | None = None, ids: list[int] | None = None) -> dict[int, dict[str, Any]]:
        sql, args = "SELECT * FROM marks WHERE 1", []
        if kind:
            sql, args = sql + " AND kind = ?", [kind]
        if ids is not None:
            if not ids:
                return {}
            sql += f" AND decision_id IN ({','.join('?' * len(ids))})"
            args += list(ids)
        return {r["decision_id"]: dict(r) for r in self._q(sql + " ORDER BY decision_id", args)}

    # ------------------------------------------------------------------ audit
    def record(self, user: str | None, action: str, detail: dict | None = None, status: str = "done",
               argv: list | None = None, rc: int | None = None, output: str | None = None,
               client: str = "") -> int:
        """Append an audit row; returns its id."""
        now = time.time()
        rows = self._q("INSERT INTO actions (ts, user, action, detail, argv, status, rc, output, finished, client) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                       (now, user, action, json.dumps(detail or {}), json.dumps(argv) if argv else None, status, rc,
                        output[-OUTPUT_LIMIT:] if output else output, None if status == "running" else now, client))
        return int(rows[0][0])

    def finish(self, action_id: int, status: str, rc: int | None, output: str, argv: list | None = None,
               detail: dict | None = None) -> None:
        """Complete a ``running`` audit row."""
        sets, args = "status = ?, rc = ?, output = ?, finished = ?", [status, rc, output[-OUTPUT_LIMIT:], time.time()]
        if argv is not None:
            sets, args = sets + ", argv = ?", args + [json.dumps(argv)]
        if detail is not None:
            sets, args = sets + ", detail = ?", args + [json.dumps(detail)]
        self._q(f"UPDATE actions SET {sets} WHERE id = ?", (*args, action_id))

    def update_output(self, action_id: int, output: str) -> None:
        self._q("UPDATE actions SET output = ? WHERE id = ?", (output[-OUTPUT_LIMIT:], action_id))

    def action(self, action_id: int) -> dict[str, Any] | None:
        rows = self._q("SELECT * FROM actions WHERE id = ?", (action_id,))
        return _action(rows[0]) if rows else None

    def actions(self, limit: int = 50, kinds: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM actions", []
        if kinds:
            sql, args = sql + f" WHERE action IN ({','.join('?' * len(kinds))})", list(kinds)
        return [_action(r) for r in self._q(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]

    def fail_running(self) -> int:
        """Mark actions left ``running`` by a previous process as failed (at start-up)."""
        return len(self._q("UPDATE actions SET status = 'failed', output = COALESCE(output, '') || "
                           "'\n(panel restarted while this ran)', finished = ? WHERE status = 'running' "
                           "RETURNING id", (time.time(),)))

    # ------------------------------------------------------------------ key-value (MQTT cursor)
    def get(self, key: str, default: str | None = None) -> str | None:
        rows = self._q("SELECT value FROM kv WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def put(self, key: str, value: str) -> None:
        self._q("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value))


def _action(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    d["detail"] = json.loads(d["detail"]) if d.get("detail") else {}
    d["argv"] = json.loads(d["argv"]) if d.get("argv") else None
    return d


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(_hasher().hash(secrets.token_urlsafe(16)))
    return _DUMMY[0]
