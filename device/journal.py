"""The decision journal: SQLite in WAL mode, one committed row per decision *before* it is acted on.

Tables:
    ``decisions``: time (wall and monotonic), frame id/name, score, threshold, decision
    (``PASS``/``REJECT``/``ERROR``), per-stage latency (ms), the scheduled reject time, the
    bundle digest and the reason of the decision.
    ``events``: start, ready, stop, camera faults and recoveries, reloads, model errors, pulses
    that could not be fired.

With ``journal_mode=WAL`` each commit is durable against a process crash (SIGKILL):
only the frame in flight can be lost. ``synchronous=full`` also survives power loss at
the cost of an fsync per frame.

Faults: any failure to write (disk full, read-only file or mount, I/O error) raises
:class:`JournalError` naming the file and the cause; the daemon then holds the reject line at
its safe level, raises the alarm and exits non-zero. :func:`open_readonly` (``status``) never
writes: it works for an unprivileged user and on a full disk.

Retention (``keep_days``, ``max_mb``): a background thread with its own connection deletes the
oldest rows in small batches, off the frame path, with the archive images they point at.

Example:
    >>> with Journal(":memory:") as j:
    ...     j.decision(frame=0, name="a.png", score=0.2, threshold=0.5, decision="PASS", t_trigger=1.0)
    ...     j.summary()["decisions"]
    1
    1
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable

from device.errors import AnomalyError
from device.lifecycle import ClosedError, Closing

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,              -- wall clock (unix seconds)
    t_trigger REAL NOT NULL,       -- time.monotonic() of the trigger / capture
    frame INTEGER NOT NULL,
    name TEXT,
    score REAL,
    threshold REAL,
    decision TEXT NOT NULL CHECK (decision IN ('PASS', 'REJECT', 'ERROR')),
    capture_ms REAL, preprocess_ms REAL, inference_ms REAL, knn_ms REAL, decision_ms REAL,
    reject_at REAL,                -- time.monotonic() the reject pulse is scheduled for (NULL: none)
    image TEXT,                    -- archived image path (NULL: not archived)
    threshold_source TEXT,         -- where the threshold came from (bundle, config:threshold, config:target_frr=…)
    tile_grid TEXT,                -- tiled bundles: JSON rows x columns of tile scores
    worst_tile TEXT,               -- tiled bundles: JSON [x, y, width, height] of the worst tile (working-size px)
    bundle_digest TEXT,            -- digest of the bundle that decided
    reason TEXT                    -- why this decision (e.g. the error of an ERROR)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT
);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts);
"""
ADDED_COLUMNS = ("threshold_source", "tile_grid", "worst_tile", "bundle_digest", "reason")
STAGES = ("capture_ms", "preprocess_ms", "inference_ms", "knn_ms", "decision_ms")
ROW_BYTES = 200            # a decision row with its index entry, on disk (measured: 144-200 B)
CACHE_KIB = 512            # SQLite page cache per connection: appends need little, and RSS stays flat
_CAUSES = (("FULL", "disk full"), ("READONLY", "read-only (file, folder or filesystem not writable)"),
           ("IOERR", "I/O error"), ("CORRUPT", "database corrupt"), ("NOTADB", "not a journal (not an SQLite file)"),
           ("CANTOPEN", "cannot open the file"), ("BUSY", "locked by another process"),
           ("PERM", "permission denied"))


class JournalError(AnomalyError, OSError):
    """The journal cannot be written or read (disk full, read-only, I/O error, not a database)."""


def _diagnose(path: str) -> str | None:
    """What the file system says about ``path``: read-only mount, unwritable file or folder, no space."""
    import os

    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    try:
        vfs = os.statvfs(folder)
    except OSError:
        return None
    if vfs.f_flag & os.ST_RDONLY:
        return "read-only filesystem"
    if p.exists() and not os.access(p, os.W_OK):
        return "read-only file"
    if not os.access(folder, os.W_OK):
        return "folder not writable"
    if vfs.f_bavail == 0:
        return "disk full"
    return None


def describe_sqlite_error(exc: BaseException, path: str | None = None) -> str:
    """Short cause of an SQLite error: ``disk full (database or disk is full)``; with ``path``, an
    unclear one (``unable to open database file``) is explained by the file system's state."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if path and path != ":memory:" and not any(c in name for c in ("FULL", "NOTADB", "CORRUPT")):
        fs = _diagnose(path)
        if fs == "disk full":
            return f"disk full ({text})"
        if fs:
            return f"read-only ({fs}: {text})"
    for code, cause in _CAUSES:
        if code in name:
            return f"{cause} ({text})"
    low = text.lower()
    for needle, cause in (("disk is full", "disk full"), ("readonly", "read-only"), ("read-only", "read-only"),
                          ("not a database", "not a journal (not an SQLite file)"), ("disk i/o", "I/O error"),
                          ("unable to open", "cannot open the file")):
        if needle in low:
            return f"{cause} ({text})"
    return text


class Journal(Closing):
    """Append-only decision and event log; a context manager (``close()`` is idempotent).

    Args:
        path: SQLite file (parent folder created), or ``":memory:"``.
        synchronous: ``"normal"`` (WAL: crash-safe) or ``"full"`` (power-loss-safe).
        keep_days: delete decisions and events older than this (0: keep forever).
        max_mb: keep the journal's files under this size, deleting the oldest rows (0: no cap).
        prune_interval_s, prune_every_rows: retention runs this often, and after this many decisions
            (default: about 5 % of ``max_mb`` in rows, 100 to 2000, so the files stay under the cap).
        on_prune: ``callback(stats)`` after each retention pass (in the retention thread).

    Raises:
        JournalError: the file cannot be created, opened or written.
    """

    def __init__(self, path: str | Path, synchronous: str = "normal", keep_days: float = 0.0, max_mb: float = 0.0,
                 prune_interval_s: float = 30.0, prune_every_rows: int | None = None,
                 on_prune: Callable[[dict], None] | None = None, *, readonly: bool = False):
        self.path = str(path)
        self.readonly = readonly
        self._db: sqlite3.Connection | None = None
        self._retention: _Retention | None = None
        self._rows = 0
        self.faulted = False                       # a write failed: closing stays quiet about it
        if prune_every_rows is None:
            prune_every_rows = int(min(2000, max(100, max_mb * 1e6 * 0.05 / ROW_BYTES))) if max_mb > 0 else 2000
        self._prune_every = max(1, int(prune_every_rows))
        try:
            self._db = self._connect_ro() if readonly else self._connect_rw(synchronous, max_mb)
        except JournalError:
            self._abandon()
            raise
        except sqlite3.Error as exc:
            self._abandon()
            raise JournalError(f"journal {self.path}: {describe_sqlite_error(exc, self.path)}") from None
        except OSError as exc:
            self._abandon()
            raise JournalError(f"journal {self.path}: cannot create or open it ({exc.strerror or exc})") from None
        self._insert = ("INSERT INTO decisions (ts, t_trigger, frame, name, score, threshold, decision, "
                        + ", ".join(STAGES) + ", reject_at, image, " + ", ".join(ADDED_COLUMNS)
                        + ") VALUES (" + ", ".join("?" * (14 + len(ADDED_COLUMNS))) + ")")
        if not readonly and self.path != ":memory:" and (keep_days > 0 or max_mb > 0):
            self._retention = _Retention(self.path, keep_days, max_mb, prune_interval_s, on_prune)

    # ------------------------------------------------------------------ opening
    def _connect_rw(self, synchronous: str, max_mb: float) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        self._db = db
        if not db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")     # retention can give freed pages back
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        if max_mb > 0:                                         # a small WAL under a small cap
            pages = int(min(1000, max(16, _wal_allowance(max_mb * 1e6) // 4096)))
            db.execute(f"PRAGMA wal_autocheckpoint = {pages}")
            db.execute(f"PRAGMA journal_size_limit = {pages * 4096}")
        db.executescript(SCHEMA)
        have = {r[1] for r in db.execute("PRAGMA table_info(decisions)")}
        for col in ADDED_COLUMNS:   # journals written by an older version gain the new columns
            if col not in have:
                db.execute(f"ALTER TABLE decisions ADD COLUMN {col} TEXT")
        return db

    def _connect_ro(self) -> sqlite3.Connection:
        """Read-only connection that creates nothing: with the daemon's ``-wal`` and ``-shm`` present it
        reads through them (``mode=ro``); otherwise the file is complete on its own and is read as is
        (``immutable=1``: no -shm is created, e.g. root-owned next to the service user's journal)."""
        p = Path(self.path)
        if not p.is_file():
            raise JournalError(f"{self.path}: no journal yet (has the daemon run with this config?)")
        base = "file:" + urllib.parse.quote(str(p.resolve())) + "?mode=ro"
        live = Path(f"{p}-wal").exists() and Path(f"{p}-shm").exists()
        for uri in ([base, base + "&immutable=1"] if live else [base + "&immutable=1"]):
            self._abandon()
            try:
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                break
            except sqlite3.Error as exc:
                if "not a database" in str(exc) or uri.endswith("immutable=1"):
                    raise
                log.debug("journal %s: %s; reading the file as it is on disk", self.path, exc)
        if "decisions" not in tables:
            raise JournalError(f"{self.path}: not a decision journal (an SQLite file with no decisions table)")
        return self._db

    def _abandon(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:  # pragma: no cover
                pass
            self._db = None

    # ------------------------------------------------------------------ writing
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ClosedError(f"journal {self.path} is closed")
        return self._db

    def _write(self, sql: str, params: tuple, what: str) -> sqlite3.Cursor:
        db = self._conn()
        if self.readonly:
            raise JournalError(f"journal {self.path}: opened read-only, cannot write {what}")
        try:
            return db.execute(sql, params)
        except sqlite3.Error as exc:
            self.faulted = True
            raise JournalError(f"journal {self.path}: {describe_sqlite_error(exc, self.path)}; "
                               f"cannot write {what}") from None

    def decision(self, frame: int, name: str, score: float | None, threshold: float, decision: str,
                 t_trigger: float, timing: dict[str, float] | None = None, reject_at: float | None = None,
                 image: str | None = None, threshold_source: str | None = None,
                 tiles: dict[str, Any] | None = None, bundle_digest: str | None = None,
                 reason: str | None = None) -> int:
        """Commit one decision row; returns its id.

        ``tiles`` (tiled bundles): ``{"tile_grid": [[...]], "worst_tile": [x, y, w, h]}``.

        Raises:
            JournalError: the row could not be committed (the caller must not act on the decision).
        """
        timing = timing or {}
        tiles = tiles or {}
        grid, worst = tiles.get("tile_grid"), tiles.get("worst_tile")
        cur = self._write(self._insert, (time.time(), t_trigger, frame, name, score, threshold, decision,
                                         *(timing.get(s) for s in STAGES), reject_at, image, threshold_source,
                                         json.dumps(grid) if grid is not None else None,
                                         json.dumps(worst) if worst is not None else None,
                                         bundle_digest, reason), f"the decision of frame {frame}")
        self._rows += 1
        if self._retention is not None and self._rows % self._prune_every == 0:
            self._retention.wake()
        return int(cur.lastrowid)

    def set_image(self, row_id: int, image: str) -> None:
        self._write("UPDATE decisions SET image = ? WHERE id = ?", (image, row_id), f"the image of row {row_id}")

    def event(self, kind: str, message: str = "") -> None:
        """Record a service event (``start``, ``ready``, ``camera_fault``, ``reload_failed``…)."""
        self._write("INSERT INTO events (ts, kind, message) VALUES (?, ?, ?)", (time.time(), kind, message),
                    f"event {kind!r}")

    # ------------------------------------------------------------------ reading
    def _read(self, sql: str, params: tuple = ()) -> list:
        db = self._conn()
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {describe_sqlite_error(exc)}") from None

    def decisions(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows, oldest first (the last ``limit`` when given)."""
        db = self._conn()
        db.row_factory = sqlite3.Row
        try:
            if limit:
                rows = self._read("SELECT * FROM (SELECT * FROM decisions ORDER BY id DESC LIMIT ?) ORDER BY id",
                                  (limit,))
            else:
                rows = self._read("SELECT * FROM decisions ORDER BY id")
            return [dict(r) for r in rows]
        finally:
            db.row_factory = None

    def events(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._read("SELECT ts, kind, message FROM (SELECT * FROM events ORDER BY id DESC LIMIT ?) "
                          "ORDER BY id", (limit,))
        return [{"ts": r[0], "kind": r[1], "message": r[2]} for r in rows]

    def summary(self, window_s: float = 3600.0) -> dict[str, Any]:
        """Counts, rates over the last ``window_s`` and the camera state from the events."""
        (n, n_rej, n_err), = self._read("SELECT COUNT(*), COALESCE(SUM(decision = 'REJECT'), 0), "
                                        "COALESCE(SUM(decision = 'ERROR'), 0) FROM decisions")
        since = time.time() - window_s
        (w_n, w_rej, t0, t1), = self._read("SELECT COUNT(*), COALESCE(SUM(decision = 'REJECT'), 0), MIN(ts), "
                                           "MAX(ts) FROM decisions WHERE ts >= ?", (since,))
        span = (t1 - t0) if w_n and w_n > 1 else 0.0
        cam = self._read("SELECT kind, ts, message FROM events WHERE kind IN "
                         "('camera_fault', 'camera_ok', 'ready', 'stop') ORDER BY id DESC LIMIT 1")
        last = self._read("SELECT kind, ts, message FROM events ORDER BY id DESC LIMIT 1")
        cam, last = (cam[0] if cam else None), (last[0] if last else None)
        state = {"camera_fault": "fault", "camera_ok": "ok", "ready": "ok", "stop": "stopped"}
        return {"decisions": n, "rejects": n_rej, "errors": n_err,
                "window_s": window_s, "window_decisions": w_n, "window_rejects": w_rej,
                "fps": (w_n - 1) / span if span > 0 else 0.0,
                "reject_rate": (w_rej / w_n) if w_n else 0.0,
                "camera": state[cam[0]] if cam else "unknown", "camera_since": cam[1] if cam else None,
                "last_event": {"kind": last[0], "ts": last[1], "message": last[2]} if last else None}

    # Read-only queries of the life-cycle commands (device.versions, device.learn, status).
    def last_ids(self) -> tuple[int, int]:
        """``(last decision id, last event id)``, 0 when empty: a mark to read "since" from."""
        (d, e), = self._read("SELECT (SELECT COALESCE(MAX(id), 0) FROM decisions), "
                             "(SELECT COALESCE(MAX(id), 0) FROM events)")
        return int(d), int(e)

    def decisions_by_id(self, ids) -> dict[int, dict[str, Any]]:
        """The decision rows with these ids (missing ids are absent), by id."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        try:
            cur = self._conn().execute(f"SELECT * FROM decisions WHERE id IN ({','.join('?' * len(ids))})", ids)
            cols = [c[0] for c in cur.description]
            return {r[0]: dict(zip(cols, r)) for r in cur.fetchall()}
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {describe_sqlite_error(exc)}") from None

    def last_with_digest(self, digest: str, after: int = 0) -> int | None:
        """Id of the newest decision after row ``after`` made by a bundle whose digest starts with
        ``digest`` (a 12+ character prefix is enough); ``None`` when there is none."""
        (i,), = self._read("SELECT MAX(id) FROM decisions WHERE id > ? AND substr(bundle_digest, 1, ?) = ?",
                           (int(after), len(digest), digest))
        return None if i is None else int(i)

    def events_since(self, event_id: int, kinds=None) -> list[dict[str, Any]]:
        """Events after ``event_id`` (oldest first), optionally only of ``kinds``; each with its ``id``."""
        sql, args = "SELECT id, ts, kind, message FROM events WHERE id > ?", [int(event_id)]
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += list(kinds)
        return [{"id": r[0], "ts": r[1], "kind": r[2], "message": r[3]} for r in self._read(sql + " ORDER BY id", tuple(args))]

    def last_event(self, kind: str) -> dict[str, Any] | None:
        """The newest event of ``kind`` (e.g. ``drift``), or ``None``."""
        r = self._read("SELECT id, ts, kind, message FROM events WHERE kind = ? ORDER BY id DESC LIMIT 1", (kind,))
        return {"id": r[0][0], "ts": r[0][1], "kind": r[0][2], "message": r[0][3]} if r else None

    def archived_since(self, ts: float, limit: int, decisions=("PASS", "REJECT")) -> list[dict[str, Any]]:
        """``{"id", "decision", "image", "tiled"}`` of the newest ``limit`` decisions since wall time
        ``ts`` that have an archived image, newest first (``tiled``: a tiled bundle decided it)."""
        marks = ",".join("?" * len(decisions))
        rows = self._read(f"SELECT id, decision, image, tile_grid IS NOT NULL FROM decisions WHERE ts >= ? AND image "
                          f"IS NOT NULL AND decision IN ({marks}) ORDER BY id DESC LIMIT ?", (ts, *decisions, int(limit)))
        return [{"id": r[0], "decision": r[1], "image": r[2], "tiled": bool(r[3])} for r in rows]

    def integrity_ok(self) -> bool:
        return self._read("PRAGMA integrity_check")[0][0] == "ok"

    # ------------------------------------------------------------------ retention and closing
    def prune_now(self, timeout: float = 30.0) -> dict | None:
        """Run one retention pass now (in the retention thread) and return its stats; None without
        retention. Raises TimeoutError when the pass does not finish within ``timeout``."""
        self._conn()
        return self._retention.run_once(timeout) if self._retention is not None else None

    def close(self) -> None:
        """Stop retention, checkpoint the WAL into the main file and close. Idempotent; a journal
        that faulted (disk full…) closes without raising."""
        if self._retention is not None:
            self._retention.close()
            self._retention = None
        if self._db is not None:
            if not self.readonly:
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as exc:
                    (log.debug if self.faulted else log.warning)(
                        "journal %s: checkpoint at close failed: %s", self.path, describe_sqlite_error(exc))
            self._abandon()


def open_readonly(path: str | Path) -> Journal:
    """Open an existing journal for reading only (``status``): nothing is created or written, so it
    works for an unprivileged user, next to a running daemon and on a full disk.

    Raises:
        JournalError: no such file, not an SQLite file, or an SQLite file that is not a journal.
    """
    try:
        return Journal(path, readonly=True)
    except JournalError:
        raise


def _file_size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _wal_allowance(max_bytes: float) -> float:
    """Bytes of the journal's cap left to the WAL (the rest is for the database file)."""
    return min(4 * 1024 * 1024, max(256 * 1024, 0.15 * max_bytes))


class _Retention:
    """Deletes old rows (and their archive images) in a thread with its own connection."""

    BATCH = 200

    def __init__(self, path: str, keep_days: float, max_mb: float, interval_s: float,
                 on_prune: Callable[[dict], None] | None):
        self.path, self.keep_s, self.max_bytes = path, keep_days * 86400.0, max_mb * 1e6
        self.interval_s, self.on_prune = max(0.01, interval_s), on_prune
        self._wake, self._stop = threading.Event(), threading.Event()
        self._done = threading.Condition()
        self._started = self._finished = 0
        self._last: dict | None = None
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="journal-retention", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def run_once(self, timeout: float) -> dict:
        with self._done:
            target = self._started + 1           # a pass that starts after this call
            self._wake.set()
            if not self._done.wait_for(lambda: self._finished >= target or not self._thread.is_alive(), timeout):
                raise TimeoutError(f"journal {self.path}: retention pass did not finish in {timeout:g} s")
            return dict(self._last or {})

    def _run(self) -> None:
        db = None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            while not self._stop.is_set():
                self._wake.clear()
                with self._done:
                    self._started += 1
                    n = self._started
                try:
                    stats = self.prune(db)
                    self._warned = False
                except sqlite3.Error as exc:
                    stats = {"error": describe_sqlite_error(exc)}
                    if not self._warned:
                        log.warning("journal %s: retention failed, will retry: %s", self.path, stats["error"])
                        self._warned = True
                with self._done:
                    self._finished, self._last = n, stats
                    self._done.notify_all()
                if self.on_prune is not None:
                    self.on_prune(stats)
                self._wake.wait(self.interval_s)
        except Exception:  # pragma: no cover - never let retention take the service down
            log.exception("journal %s: retention thread stopped", self.path)
        finally:
            if db is not None:
                db.close()
            with self._done:
                self._done.notify_all()

    def prune(self, db: sqlite3.Connection) -> dict:
        """One pass: rows older than ``keep_days``, then the oldest rows while over ``max_mb``."""
        stats = {"rows": 0, "images": 0, "events": 0}
        if self.keep_s > 0:
            cutoff = time.time() - self.keep_s
            while not self._stop.is_set() and self._delete(db, "WHERE ts < ?", (cutoff,), stats):
                pass
            stats["events"] += db.execute("DELETE FROM events WHERE ts < ?", (cutoff,)).rowcount
        if self.max_bytes > 0:
            self._cap(db, stats)
        stats["bytes"] = self._used(db)
        if stats["rows"]:
            log.debug("journal %s: retention deleted %d row(s), %d image(s)", self.path, stats["rows"], stats["images"])
        return stats

    def _cap(self, db: sqlite3.Connection, stats: dict) -> None:
        """Under ``max_mb``: from 90 % of the database's share of the cap, delete the oldest rows down to
        85 % in small batches, checkpointing between them so the WAL stays small. Freed pages are
        reused by new rows, so the file stops growing; only a file left larger than its share (a lowered
        cap, an older journal) is shrunk, a few pages at a time."""
        target = self.max_bytes - _wal_allowance(self.max_bytes) - 64 * 1024
        if self._used(db) > 0.9 * target:
            while not self._stop.is_set() and self._used(db) > 0.85 * target and self._delete(db, "", (), stats):
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            oldest = db.execute("SELECT MIN(ts) FROM decisions").fetchone()[0]
            if oldest is not None:     # events older than every kept decision, but keep the last 100
                stats["events"] += db.execute(
                    "DELETE FROM events WHERE ts < ? AND id < (SELECT COALESCE(MAX(id), 0) - 100 FROM events)",
                    (oldest,)).rowcount
        while not self._stop.is_set() and _file_size(self.path) > target and \
                db.execute("PRAGMA freelist_count").fetchone()[0] > 0:
            db.execute("PRAGMA incremental_vacuum(64)")     # journals created by this version (auto_vacuum)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                break
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")      # the pass ends with an empty WAL (writer idle)

    @staticmethod
    def _used(db: sqlite3.Connection) -> int:
        pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        return pages * db.execute("PRAGMA page_size").fetchone()[0]

    def _delete(self, db: sqlite3.Connection, where: str, params: tuple, stats: dict) -> int:
        """Delete one small batch of the oldest matching rows and their images; returns the count."""
        rows = db.execute(f"SELECT id, image FROM decisions {where} ORDER BY id LIMIT {self.BATCH}",
                          params).fetchall()
        if not rows:
            return 0
        ids = [r[0] for r in rows]
        db.execute(f"DELETE FROM decisions WHERE id IN ({','.join('?' * len(ids))})", ids)
        stats["rows"] += len(ids)
        from device.archive import overlay_path

        for _, image in rows:
            for i, f in enumerate((image, overlay_path(image)) if image else ()):    # the picture and its overlay
                try:
                    Path(f).unlink()
                    stats["images"] += i == 0
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.debug("journal retention: cannot delete %s: %s", f, exc)
        time.sleep(0)                      # let the frame loop in between batches
        return len(ids)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10.0)
