"""The decision journal: SQLite in WAL mode, one committed row per decision *before* it is acted on.

Tables:
    ``decisions``: time (wall and monotonic), frame id/name, score, threshold, decision
    (``PASS``/``REJECT``/``ERROR``), per-stage latency (ms) and the scheduled reject time.
    ``events``: start, ready, stop, camera faults and recoveries, reloads, model errors.

With ``journal_mode=WAL`` each commit is durable against a process crash (SIGKILL):
only the frame in flight can be lost. ``synchronous=full`` also survives power loss at
the cost of an fsync per frame.

Example:
    >>> j = Journal(":memory:")
    >>> j.decision(frame=0, name="a.png", score=0.2, threshold=0.5, decision="PASS", t_trigger=1.0)
    1
    >>> j.summary()["decisions"]
    1
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

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
    worst_tile TEXT                -- tiled bundles: JSON [x, y, width, height] of the worst tile (working-size px)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT
);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts);
"""
ADDED_COLUMNS = ("threshold_source", "tile_grid", "worst_tile")
STAGES = ("capture_ms", "preprocess_ms", "inference_ms", "knn_ms", "decision_ms")


class Journal:
    """Append-only decision and event log.

    Args:
        path: SQLite file (parent folder created), or ``":memory:"``.
        synchronous: ``"normal"`` (WAL: crash-safe) or ``"full"`` (power-loss-safe).
    """

    def __init__(self, path: str | Path, synchronous: str = "normal"):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        self._db.executescript(SCHEMA)
        have = {r[1] for r in self._db.execute("PRAGMA table_info(decisions)")}
        for col in ADDED_COLUMNS:   # journals written by an older version gain the new columns
            if col not in have:
                self._db.execute(f"ALTER TABLE decisions ADD COLUMN {col} TEXT")
        self._insert = ("INSERT INTO decisions (ts, t_trigger, frame, name, score, threshold, decision, "
                        + ", ".join(STAGES) + ", reject_at, image, " + ", ".join(ADDED_COLUMNS)
                        + ") VALUES (" + ", ".join("?" * (14 + len(ADDED_COLUMNS))) + ")")

    def decision(self, frame: int, name: str, score: float | None, threshold: float, decision: str,
                 t_trigger: float, timing: dict[str, float] | None = None, reject_at: float | None = None,
                 image: str | None = None, threshold_source: str | None = None,
                 tiles: dict[str, Any] | None = None) -> int:
        """Commit one decision row; returns its id.

        ``tiles`` (tiled bundles): ``{"tile_grid": [[...]], "worst_tile": [x, y, w, h]}``.
        """
        timing = timing or {}
        tiles = tiles or {}
        grid, worst = tiles.get("tile_grid"), tiles.get("worst_tile")
        cur = self._db.execute(self._insert, (time.time(), t_trigger, frame, name, score, threshold, decision,
                                              *(timing.get(s) for s in STAGES), reject_at, image, threshold_source,
                                              json.dumps(grid) if grid is not None else None,
                                              json.dumps(worst) if worst is not None else None))
        return int(cur.lastrowid)

    def set_image(self, row_id: int, image: str) -> None:
        self._db.execute("UPDATE decisions SET image = ? WHERE id = ?", (image, row_id))

    def event(self, kind: str, message: str = "") -> None:
        """Record a service event (``start``, ``ready``, ``camera_fault``, ``reload_failed``…)."""
        self._db.execute("INSERT INTO events (ts, kind, message) VALUES (?, ?, ?)", (time.time(), kind, message))

    def decisions(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows, oldest first (the last ``limit`` when given)."""
        self._db.row_factory = sqlite3.Row
        try:
            if limit:
                rows = self._db.execute("SELECT * FROM (SELECT * FROM decisions ORDER BY id DESC LIMIT ?) "
                                        "ORDER BY id", (limit,)).fetchall()
            else:
                rows = self._db.execute("SELECT * FROM decisions ORDER BY id").fetchall()
            return [dict(r) for r in rows]
        finally:
            self._db.row_factory = None

    def events(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT ts, kind, message FROM (SELECT * FROM events ORDER BY id DESC LIMIT ?) "
                                "ORDER BY ts", (limit,)).fetchall()
        return [{"ts": r[0], "kind": r[1], "message": r[2]} for r in rows]

    def summary(self, window_s: float = 3600.0) -> dict[str, Any]:
        """Counts, rates over the last ``window_s`` and the camera state from the events."""
        db = self._db
        n, n_rej, n_err = db.execute("SELECT COUNT(*), COALESCE(SUM(decision = 'REJECT'), 0), "
                                     "COALESCE(SUM(decision = 'ERROR'), 0) FROM decisions").fetchone()
        since = time.time() - window_s
        w_n, w_rej, t0, t1 = db.execute("SELECT COUNT(*), COALESCE(SUM(decision = 'REJECT'), 0), MIN(ts), MAX(ts) "
                                        "FROM decisions WHERE ts >= ?", (since,)).fetchone()
        span = (t1 - t0) if w_n and w_n > 1 else 0.0
        cam = db.execute("SELECT kind, ts, message FROM events WHERE kind IN "
                         "('camera_fault', 'camera_ok', 'ready', 'stop') ORDER BY id DESC LIMIT 1").fetchone()
        last = db.execute("SELECT kind, ts, message FROM events ORDER BY id DESC LIMIT 1").fetchone()
        state = {"camera_fault": "fault", "camera_ok": "ok", "ready": "ok", "stop": "stopped"}
        return {"decisions": n, "rejects": n_rej, "errors": n_err,
                "window_s": window_s, "window_decisions": w_n, "window_rejects": w_rej,
                "fps": (w_n - 1) / span if span > 0 else 0.0,
                "reject_rate": (w_rej / w_n) if w_n else 0.0,
                "camera": state[cam[0]] if cam else "unknown", "camera_since": cam[1] if cam else None,
                "last_event": {"kind": last[0], "ts": last[1], "message": last[2]} if last else None}

    def integrity_ok(self) -> bool:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close. Idempotent."""
        if self._db is not None:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # pragma: no cover
                log.warning("journal checkpoint failed: %s", exc)
            self._db.close()
            self._db = None


def open_readonly(path: str | Path) -> Journal:
    """Open an existing journal for ``status`` (fails clearly if it is not there)."""
    from device.errors import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"{path}: no journal yet (has the daemon run with this config?)")
    return Journal(path)
