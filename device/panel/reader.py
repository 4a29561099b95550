"""Read-only access to the inspection journal (and the image archive) for the panel.

The journal is opened with SQLite's ``mode=ro`` URI and ``PRAGMA query_only``: the panel's
process cannot write it (a write raises ``sqlite3.OperationalError``: attempt to write a readonly
database). In WAL mode a reader never blocks the daemon's writer. When the daemon is stopped and
the panel may not create the ``-shm`` file (the hardened unit gives it read access only), the
journal is read as an immutable snapshot until the daemon writes again.

Totals are counted incrementally (rows after the last id seen), so polling a journal of millions
of rows costs only the new rows; time filters are turned into row-id ranges through the ``ts``
index (the daemon appends rows in time order).

Example:
    >>> r = JournalReader("/var/lib/anomaly-device/journal.sqlite")   # doctest: +SKIP
    >>> r.counts().parts                                               # doctest: +SKIP
    1200
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import statistics
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STAGES = ("capture_ms", "preprocess_ms", "inference_ms", "knn_ms", "decision_ms")
NON_PASS = ("REJECT", "ERROR")
SERVICE_EVENTS = {"start": "starting", "ready": "running", "stop": "stopped", "bundle_error": "failed"}
CAMERA_EVENTS = {"camera_fault": "fault", "camera_ok": "ok", "ready": "ok", "stop": "stopped"}


class JournalMissing(Exception):
    """The journal file does not exist (yet)."""


@dataclasses.dataclass
class Counts:
    """Decisions by kind up to row ``last_id``; missed triggers from the events up to ``last_event_id``.

    Example:
        >>> c = Counts(parts=10, rejects=2, errors=1)
        >>> c.add(Counts(parts=3, rejects=1)); (c.parts, c.rejects, c.passes)
        (13, 3, 9)
    """

    parts: int = 0
    rejects: int = 0
    errors: int = 0

    @property
    def passes(self) -> int:
        """The other decisions: a journal's decision is PASS, REJECT or ERROR (its CHECK constraint)."""
        return self.parts - self.rejects - self.errors

    def add(self, other: "Counts") -> None:
        """Add ``other``'s decisions and missed triggers (the row marks are the caller's)."""
        self.parts += other.parts
        self.rejects += other.rejects
        self.errors += other.errors
        self.missed_triggers += other.missed_triggers

    last_id: int = 0
    missed_triggers: int = 0
    last_event_id: int = 0


def _add(c: Counts, rows) -> None:
    """Add ``(decision, count)`` rows of a GROUP BY to ``c``."""
    for decision, n in rows:
        c.add(Counts(parts=n, rejects=n if decision == "REJECT" else 0, errors=n if decision == "ERROR" else 0))


def decode_row(row: sqlite3.Row | dict) -> dict[str, Any]:
    """A decisions row as a dict with its JSON columns (``tile_grid``, ``worst_tile``) parsed."""
    d = dict(row)
    for key in ("tile_grid", "worst_tile"):
        v = d.get(key)
        if isinstance(v, str):
            try:
                d[key] = json.loads(v)
            except ValueError:
                d[key] = None
    return d


class JournalReader:
    """Read-only, thread-safe (one connection per thread) view of a decision journal.

    Args:
        path: the journal file the daemon writes (``[journal] path``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.RLock()
        self._conns: list[sqlite3.Connection] = []
        self._counts = Counts()
        self._counts_mark = (-1, -1)     # (first decision id, first event id) when last counted
        self._windows: dict[str, tuple[float, int, Counts]] = {}
        self._image_scan = (0, None)     # (last id scanned, last row with an image)
        self._series: dict[float, dict] = {}
        self._closed = False

    # ------------------------------------------------------------------ connections
    def _open(self) -> tuple[sqlite3.Connection, bool]:
        if not self.path.is_file():
            raise JournalMissing(f"{self.path}: no journal yet (has the inspection service run?)")
        uri = self.path.resolve().as_uri() + "?mode=ro"
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=5.0)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA query_only = 1")
        try:
            db.execute("SELECT 1 FROM decisions LIMIT 1").fetchall()
            return db, False
        except sqlite3.OperationalError as exc:
            db.close()
            if Path(str(self.path) + "-wal").exists():
                raise
            # WAL journal of a stopped daemon and no right to create its -shm: read a snapshot.
            log.info("journal %s: reading a snapshot (%s); live again when the service writes", self.path, exc)
            db = sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA query_only = 1")
            return db, True

    def db(self) -> sqlite3.Connection:
        """This thread's read-only connection (opened on first use).

        Raises:
            JournalMissing: the journal file does not exist.
        """
        if self._closed:
            raise JournalMissing(f"{self.path}: reader closed")
        db = getattr(self._local, "db", None)
        if db is not None and self._local.snapshot and Path(str(self.path) + "-wal").exists():
            db.close()
            db = None
        if db is None:
            db, snap = self._open()
            self._local.db, self._local.snapshot = db, snap
            with self._lock:
                self._conns.append(db)
        return db

    def columns(self) -> set[str]:
        """Columns of ``decisions`` (newer daemons add e.g. ``bundle_digest`` and ``reason``)."""
        return {r[1] for r in self.db().execute("PRAGMA table_info(decisions)")}

    def close(self) -> None:
        """Close every connection. Idempotent."""
        with self._lock:
            self._closed = True
            for db in self._conns:
                try:
                    db.close()
                except sqlite3.Error:  # pragma: no cover
                    pass
            self._conns.clear()

    def __enter__(self) -> "JournalReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ counts
    def count_range(self, after_id: int, upto_id: int) -> Counts:
        """Decisions with ``after_id < id <= upto_id`` by kind (``last_id`` = ``upto_id``)."""
        c = Counts(last_id=upto_id)
        if upto_id > after_id:
            _add(c, self.db().execute("SELECT decision, COUNT(*) FROM decisions WHERE id > ? AND id <= ? "
                                      "GROUP BY decision", (after_id, upto_id)))
        return c

    def missed_range(self, after_id: int, upto_id: int) -> int:
        """Missed-trigger events with ``after_id < id <= upto_id``."""
        if upto_id <= after_id:
            return 0
        return self.db().execute("SELECT COUNT(*) FROM events WHERE id > ? AND id <= ? AND kind LIKE 'missed%'",
                                 (after_id, upto_id)).fetchone()[0]

    def bounds(self) -> tuple[int, int, int, int]:
        """(first, last decision id, first, last event id); 0 for an empty table."""
        db = self.db()         # one aggregate per statement: SQLite reads MIN/MAX(id) from the b-tree's ends
        q = [db.execute(f"SELECT {f}(id) FROM {t}").fetchone()[0] or 0
             for t in ("decisions", "events") for f in ("MIN", "MAX")]
        return q[0], q[1], q[2], q[3]

    def counts(self) -> Counts:
        """The rows the journal holds, by kind. Incremental: only rows after the last call are read;
        counted again from scratch when the service's retention has deleted old rows."""
        with self._lock:
            lo, top, elo, etop = self.bounds()
            c, mark = self._counts, self._counts_mark
            if (lo, elo) != mark or top < c.last_id or etop < c.last_event_id:
                c = Counts()
                self._counts_mark = (lo, elo)
                self._windows = {k: v for k, v in self._windows.items() if top >= v[2].last_id}
            c.add(self.count_range(c.last_id, top))
            c.last_id = top
            c.missed_triggers += self.missed_range(c.last_event_id, etop)
            c.last_event_id = etop
            self._counts = c
            return dataclasses.replace(c)

    def window_counts(self, name: str, since: float) -> Counts:
        """Decisions with ``ts >= since`` (e.g. this hour, this shift), cached per ``name``."""
        with self._lock:
            db = self.db()
            top = db.execute("SELECT MAX(id) FROM decisions").fetchone()[0] or 0
            cached = self._windows.get(name)
            if cached is None or cached[0] != since or top < cached[2].last_id:
                first = self.first_id_at(since)
                c = Counts(last_id=first - 1 if first else top)
            else:
                c = cached[2]
            if top > c.last_id:
                _add(c, db.execute("SELECT decision, COUNT(*) FROM decisions WHERE id > ? AND id <= ? "
                                   "AND ts >= ? GROUP BY decision", (c.last_id, top, since)))
                c.last_id = top
            self._windows[name] = (since, top, c)
            return dataclasses.replace(c)

    # ------------------------------------------------------------------ rows
    def first_id_at(self, ts: float) -> int | None:
        """Id of the first decision at or after ``ts`` (via the ``ts`` index), None if none."""
        r = self.db().execute("SELECT id FROM decisions WHERE ts >= ? ORDER BY ts LIMIT 1", (ts,)).fetchone()
        return r[0] if r else None

    def last_id_before(self, ts: float) -> int | None:
        """Id of the last decision before ``ts``, None if none."""
        r = self.db().execute("SELECT id FROM decisions WHERE ts < ? ORDER BY ts DESC LIMIT 1", (ts,)).fetchone()
        return r[0] if r else None

    def last_decision(self) -> dict[str, Any] | None:
        r = self.db().execute("SELECT * FROM decisions ORDER BY id DESC LIMIT 1").fetchone()
        return decode_row(r) if r else None

    def decision(self, row_id: int) -> dict[str, Any] | None:
        r = self.db().execute("SELECT * FROM decisions WHERE id = ?", (row_id,)).fetchone()
        return decode_row(r) if r else None

    def decisions_by_id(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        if not ids:
            return {}
        q = ",".join("?" * len(ids))
        return {r["id"]: decode_row(r) for r in self.db().execute(f"SELECT * FROM decisions WHERE id IN ({q})", ids)}

    def decisions_after(self, after_id: int, limit: int) -> list[dict[str, Any]]:
        """Rows with ``id > after_id``, oldest first (the publisher's cursor walk)."""
        rows = self.db().execute("SELECT * FROM decisions WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
        return [decode_row(r) for r in rows]

    def events_after(self, after_id: int, limit: int) -> list[dict[str, Any]]:
        rows = self.db().execute("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
        return [dict(r) for r in rows]

    def max_ids(self) -> tuple[int, int]:
        """(last decision id, last event id)."""
        db = self.db()
        return (db.execute("SELECT MAX(id) FROM decisions").fetchone()[0] or 0,
                db.execute("SELECT MAX(id) FROM events").fetchone()[0] or 0)

    def recent_events(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.db().execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]

    def last_with_image(self) -> dict[str, Any] | None:
        """The newest decision with an archived image (rescans the last rows: images are set after insert)."""
        with self._lock:
            scanned, found = self._image_scan
            db = self.db()
            r = db.execute("SELECT * FROM decisions WHERE id > ? AND image IS NOT NULL ORDER BY id DESC LIMIT 1",
                           (max(scanned - 100, 0),)).fetchone()
            if r is not None:
                found = decode_row(r)
            top = db.execute("SELECT MAX(id) FROM decisions").fetchone()[0] or 0
            self._image_scan = (top, found)
            return found

    def gallery(self, decisions: tuple[str, ...] = NON_PASS, since: float | None = None,
                until: float | None = None, before_id: int | None = None, limit: int = 48) -> list[dict[str, Any]]:
        """Newest first, filtered by decision kind and time range; ``before_id`` pages back."""
        lo, hi = 0, before_id - 1 if before_id else None
        if since is not None:
            first = self.first_id_at(since)
            if first is None:
                return []
            lo = first
        if until is not None:
            last = self.last_id_before(until)
            if last is None:
                return []
            hi = last if hi is None else min(hi, last)
        q = ",".join("?" * len(decisions))
        sql = f"SELECT * FROM decisions WHERE decision IN ({q}) AND id >= ?"
        args: list[Any] = [*decisions, lo]
        if hi is not None:
            sql += " AND id <= ?"
            args.append(hi)
        rows = self.db().execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [decode_row(r) for r in rows]

    # ------------------------------------------------------------------ aggregates
    def recent(self, n: int, columns: str = "*") -> list[sqlite3.Row]:
        """The last ``n`` decision rows, newest first."""
        return self.db().execute(f"SELECT {columns} FROM decisions ORDER BY id DESC LIMIT ?", (n,)).fetchall()

    def stage_medians(self, n: int = 200) -> dict[str, float | None]:
        """Median per-stage latency (ms) over the last ``n`` decisions."""
        have = self.columns()
        stages = [s for s in STAGES if s in have]
        if not stages:
            return {}
        rows = self.recent(n, ", ".join(stages))
        out: dict[str, float | None] = {}
        for i, s in enumerate(stages):
            v = [r[i] for r in rows if r[i] is not None]
            out[s] = statistics.median(v) if v else None
        return out

    def rate(self, window_s: float = 60.0, now: float | None = None) -> float:
        """Decisions per second over the last ``window_s``."""
        now = time.time() if now is None else now
        n, t0, t1 = self.db().execute("SELECT COUNT(*), MIN(ts), MAX(ts) FROM decisions WHERE ts >= ?",
                                      (now - window_s,)).fetchone()
        return (n - 1) / (t1 - t0) if n and n > 1 and t1 > t0 else 0.0

    def series(self, since: float, bucket_s: float) -> list[dict[str, Any]]:
        """Per time bucket since ``since``: count, rejects, errors, mean and max score, max threshold.

        Buckets are cached per ``bucket_s`` (the journal is append-only): a call reads only the rows
        added since the last one, plus any older range not read before.
        """
        with self._lock:
            first = self.first_id_at(since)
            if first is None:
                return []
            lo, top, _, _ = self.bounds()
            c = self._series.get(bucket_s)
            if c is None or top < c["to"] or lo != c["lo"]:
                c = self._series[bucket_s] = {"from": first, "to": first - 1, "lo": lo, "b": {}}
            if first < c["from"]:
                self._merge_buckets(c["b"], bucket_s, first, c["from"] - 1)
                c["from"] = first
            if top > c["to"]:
                self._merge_buckets(c["b"], bucket_s, c["to"] + 1, top)
                c["to"] = top
            k0 = int(since // bucket_s)
            return [{"t": k * bucket_s, "n": b[0], "rejects": b[1], "errors": b[2],
                     "mean": b[3] / b[4] if b[4] else None, "max": b[5], "threshold": b[6], "first_ts": b[7]}
                    for k, b in sorted(c["b"].items()) if k >= k0]

    def _merge_buckets(self, buckets: dict, bucket_s: float, id_lo: int, id_hi: int) -> None:
        rows = self.db().execute(
            "SELECT CAST(ts / ? AS INTEGER) AS b, COUNT(*), SUM(decision = 'REJECT'), SUM(decision = 'ERROR'), "
            "TOTAL(score), COUNT(score), MAX(score), MAX(threshold), MIN(ts) FROM decisions "
            "WHERE id >= ? AND id <= ? GROUP BY b", (bucket_s, id_lo, id_hi))
        for k, n, rj, er, ssum, sn, mx, thr, t0 in rows:
            old = buckets.get(k)
            if old is None:
                buckets[k] = [n, rj or 0, er or 0, ssum, sn, mx, thr, t0]
                continue
            buckets[k] = [old[0] + n, old[1] + (rj or 0), old[2] + (er or 0), old[3] + ssum, old[4] + sn,
                          _max(old[5], mx), _max(old[6], thr), min(old[7], t0)]

    def points(self, since: float, limit: int) -> list[tuple[float, float | None, float, str]]:
        """Raw ``(ts, score, threshold, decision)`` since ``since`` (at most ``limit``, newest kept)."""
        first = self.first_id_at(since)
        if first is None:
            return []
        rows = self.db().execute("SELECT ts, score, threshold, decision FROM decisions WHERE id >= ? "
                                 "ORDER BY id DESC LIMIT ?", (first, limit)).fetchall()
        return [tuple(r) for r in reversed(rows)]

    def pass_scores(self, n: int) -> list[float]:
        """Scores of the last ``n`` PASS decisions."""
        rows = self.db().execute("SELECT score FROM decisions WHERE decision = 'PASS' AND score IS NOT NULL "
                                 "ORDER BY id DESC LIMIT ?", (n,))
        return [r[0] for r in rows]

    def bucket_counts(self, expr: str, bounds: list[float], after_id: int, upto_id: int,
                      where: str = "1") -> tuple[list[int], float, int]:
        """Cumulative histogram of ``expr`` over rows ``after_id < id <= upto_id``: counts of
        ``expr <= b`` for each bound, the sum and the count of non-NULL values (one pass, each row
        into its first bucket)."""
        case = "CASE " + " ".join(f"WHEN v <= {float(b)!r} THEN {i}" for i, b in enumerate(bounds)) + \
            f" ELSE {len(bounds)} END"
        rows = self.db().execute(
            f"SELECT {case} AS k, COUNT(*), TOTAL(v) FROM (SELECT {expr} AS v FROM decisions "
            f"WHERE id > ? AND id <= ? AND {where}) WHERE v IS NOT NULL GROUP BY k", (after_id, upto_id)).fetchall()
        per = [0] * (len(bounds) + 1)
        total = 0.0
        for k, n, sv in rows:
            per[k] += n
            total += sv
        cum, acc = [], 0
        for n in per[:-1]:
            acc += n
            cum.append(acc)
        return cum, total, acc + per[-1]

    # ------------------------------------------------------------------ state
    def last_event(self, kind: str) -> dict[str, Any] | None:
        """The newest event of ``kind``, as :meth:`device.journal.Journal.last_event` gives it (so
        :func:`device.drift.journal_state` reads the panel's view as it reads the journal)."""
        return self.last_event_of((kind,))

    def last_event_of(self, kinds: tuple[str, ...]) -> dict[str, Any] | None:
        q = ",".join("?" * len(kinds))
        r = self.db().execute(f"SELECT * FROM events WHERE kind IN ({q}) ORDER BY id DESC LIMIT 1", kinds).fetchone()
        return dict(r) if r else None

    def state(self, alarm_after_rejects: int = 0, alarm_on_camera_fault: bool = True,
              alarm_on_model_error: bool = True, drift_alarm: bool = False) -> dict[str, Any]:
        """Service, camera, model, drift and alarm state as the journal's events tell them."""
        svc = self.last_event_of(tuple(SERVICE_EVENTS))
        cam = self.last_event_of(tuple(CAMERA_EVENTS))
        model = self.last_event_of(("model_error", "model_ok"))
        from device.drift import journal_state      # the one parser of the drift watch's events

        drift_st = journal_state(self) or {"level": "unknown", "reason": None}
        drift, drift_reason = drift_st["level"], drift_st["reason"]
        camera = CAMERA_EVENTS[cam["kind"]] if cam else "unknown"
        model_error = bool(model and model["kind"] == "model_error")
        explicit = self.last_event_of(("alarm_on", "alarm_off", "alarm"))
        if explicit is not None:
            alarm = explicit["kind"] != "alarm_off"
            reasons = [explicit.get("message") or explicit["kind"]] if alarm else []
        else:
            reasons = []
            if alarm_on_camera_fault and camera == "fault":
                reasons.append("camera fault")
            if alarm_on_model_error and model_error:
                reasons.append("scoring error")
            if drift_alarm and drift == "drift":
                reasons.append("drift")
            if alarm_after_rejects > 0:
                last = self.recent(alarm_after_rejects, "decision")
                if len(last) == alarm_after_rejects and all(r[0] != "PASS" for r in last):
                    reasons.append(f"{alarm_after_rejects} rejects in a row")
            alarm = bool(reasons)
        return {"service": SERVICE_EVENTS[svc["kind"]] if svc else "unknown",
                "service_since": svc["ts"] if svc else None,
                "camera": camera, "camera_since": cam["ts"] if cam else None,
                "model_error": model_error, "drift": drift,
                "drift_message": drift_reason,
                "alarm": alarm, "alarm_reasons": reasons}


def _max(a, b):
    return b if a is None else a if b is None else max(a, b)
