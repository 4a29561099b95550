"""MQTT publisher: every journal decision and event, and a retained status, to a broker.

**The journal is the spool.** The publisher reads rows after the last one the broker
acknowledged (its cursor, kept in the panel store), hands at most ``max_inflight`` of them to
paho-mqtt, and moves the cursor only over acknowledged rows, in order. While the broker is away
nothing is read: the rows wait in the journal. After a reconnection paho re-sends the
unacknowledged messages of the persistent session (``clean_session=False``) in their order, and
only then are newer rows read; with QoS 2 the broker drops any copy it already had, so each row
reaches it exactly once, in order (QoS 1: at least once; every payload carries the journal row
``id`` for consumers to deduplicate). A panel restart resumes at the stored cursor.

Topics (``[mqtt]`` prefix, line, station): ``<prefix>/<line>/<station>/decision``, ``…/event``
and the retained ``…/status``, whose last will is ``{"state": "offline"}``. Payloads are JSON;
``docs/INTEGRATION.md`` documents them.

Example:
    >>> with MqttPublisher(settings, reader, store, status_fn) as pub:    # doctest: +SKIP
    ...     pub.wait_published(decision_id=120, timeout=10)
"""
from __future__ import annotations

import collections
import json
import logging
import posixpath
import threading
import time
from typing import Any, Callable

from device.panel.reader import STAGES, JournalMissing, JournalReader

log = logging.getLogger(__name__)

SETTLE_S = 0.25     # the daemon sets a row's archived image right after inserting it
FETCH = 500         # journal rows read at once per table
SAVE_EVERY_S = 0.2  # the cursors are stored this often (and at close); a crash re-publishes at most this much
STATUS_CHECK_S = 0.5  # the status fields are compared this often (published on a change, or every status_every_s)
CURSOR_KEYS = {"decision": "mqtt.cursor.decisions", "event": "mqtt.cursor.events"}


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with milliseconds."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def image_name(image: str | None, archive_dir: str | None) -> str | None:
    """The archived image's path relative to the archive folder (its name on the panel).

    Example:
        >>> image_name("/var/lib/a/archive/20261129/000000012_reject.png", "/var/lib/a/archive")
        '20261129/000000012_reject.png'
    """
    if not image:
        return None
    if archive_dir:
        root = archive_dir.rstrip("/") + "/"
        if image.startswith(root):          # the daemon writes paths under its archive_dir
            return image[len(root):]
    return posixpath.basename(image)


def decision_payload(row: dict[str, Any], archive_dir: str | None = None) -> dict[str, Any]:
    """The ``decision`` message of a journal row (see docs/INTEGRATION.md).

    Example:
        >>> p = decision_payload({"id": 7, "ts": 0.5, "frame": 3, "name": "a.png", "score": 0.9,
        ...                       "threshold": 0.5, "decision": "REJECT", "knn_ms": 1.5})
        >>> p["id"], p["decision"], p["latency_ms"]["knn"], p["time"]
        (7, 'REJECT', 1.5, '1970-01-01T00:00:00.500Z')
    """
    lat = {s[:-3]: row.get(s) for s in STAGES if row.get(s) is not None}
    if lat:
        lat["total"] = round(sum(lat.values()), 4)
    return {"id": row["id"], "ts": row["ts"], "time": iso(row["ts"]), "frame": row.get("frame"),
            "name": row.get("name"), "score": row.get("score"), "threshold": row.get("threshold"),
            "threshold_source": row.get("threshold_source"), "decision": row["decision"],
            "reason": row.get("reason"), "worst_tile": row.get("worst_tile"),
            "bundle_digest": row.get("bundle_digest"), "latency_ms": lat,
            "image": image_name(row.get("image"), archive_dir)}


def event_payload(row: dict[str, Any]) -> dict[str, Any]:
    """The ``event`` message of a journal event row."""
    return {"id": row["id"], "ts": row["ts"], "time": iso(row["ts"]), "kind": row["kind"],
            "message": row.get("message")}


class MqttPublisher:
    """Publishes the journal to MQTT from a background thread. A context manager.

    Args:
        settings: :class:`~device.panel.settings.MqttSettings`.
        reader: the journal (read-only).
        store: the panel store (keeps the cursors).
        status_fn: returns the status fields (service, camera, alarm, drift, counters, bundle).
        archive_dir: the image archive folder (image names are given relative to it).
    """

    def __init__(self, settings, reader: JournalReader, store, status_fn: Callable[[], dict[str, Any]],
                 archive_dir: str | None = None):
        self.s = settings
        self.reader = reader
        self.store = store
        self.status_fn = status_fn
        self.archive_dir = archive_dir
        self._cond = threading.Condition()
        self._pending: dict[str, collections.deque] = {"decision": collections.deque(),
                                                       "event": collections.deque()}
        self._mids: dict[int, tuple[str, list]] = {}
        self._early: set[int] = set()
        self.cursor = {"decision": 0, "event": 0}      # last acknowledged row id per table
        self.sent = {"decision": 0, "event": 0}        # last row id handed to paho
        self.fetched = {"decision": 0, "event": 0}     # last row id read into the queue
        self._queue: dict[str, collections.deque] = {"decision": collections.deque(), "event": collections.deque()}
        self.published = {"decision": 0, "event": 0}   # acknowledged messages (this process)
        self.connected = False
        self.connects = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        self._last_status: tuple | None = None
        self._status_at = 0.0
        self._saved: dict | None = None      # cursors as last stored (None: not loaded yet)
        self._saved_at = self._status_checked = 0.0

    # ------------------------------------------------------------------ life cycle
    def start(self) -> "MqttPublisher":
        """Load the cursors, connect (in the background) and start publishing. With no journal
        yet (the service never ran) the cursors are loaded as soon as it exists."""
        try:
            self._load_cursors()
        except JournalMissing:
            log.info("mqtt: no journal yet; publishing starts with its first row")
        self._client = self._make_client()
        self._client.connect_async(self.s.host, self.s.port, self.s.keepalive)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._loop, name="mqtt-publisher", daemon=True)
        self._thread.start()
        log.info("mqtt: publishing to %s:%d as %s under %s (QoS %d)", self.s.host, self.s.port,
                 self.s.effective_client_id, self.s.topic("#")[:-2], self.s.qos)
        return self

    def __enter__(self) -> "MqttPublisher":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, drain_s: float = 5.0) -> None:
        """Wait up to ``drain_s`` for acknowledgements, publish the ``offline`` status, disconnect,
        save the cursors. Idempotent."""
        if self._client is None:
            return
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)
        deadline = time.monotonic() + drain_s
        with self._cond:
            while self.connected and self._mids and time.monotonic() < deadline:
                self._cond.wait(0.05)
        client, self._client = self._client, None
        try:
            if self.connected:
                info = client.publish(self.s.topic("status"), json.dumps(self._offline()), qos=1, retain=True)
                info.wait_for_publish(timeout=max(0.5, deadline - time.monotonic()))
            client.disconnect()
        except Exception as exc:  # pragma: no cover - broker vanished while closing
            log.warning("mqtt: closing: %s", exc)
        client.loop_stop()
        if self._saved is not None:
            self._save_cursors(force=True)

    # ------------------------------------------------------------------ paho
    def _make_client(self):
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.s.effective_client_id,
                        clean_session=False, protocol=mqtt.MQTTv311)
        c.max_inflight_messages_set(self.s.max_inflight)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, 30)
        c.will_set(self.s.topic("status"), json.dumps({"state": "offline", "reason": "connection lost"}),
                   qos=1, retain=True)
        password = self.s.read_password()
        if self.s.username:
            c.username_pw_set(self.s.username, password)
        if self.s.tls:
            c.tls_set(ca_certs=self.s.ca_file or None, certfile=self.s.cert_file or None,
                      keyfile=self.s.key_file or None)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        return c

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            log.error("mqtt: broker %s:%d refused the connection: %s", self.s.host, self.s.port, reason_code)
            return
        with self._cond:
            self.connected = True
            self.connects += 1
            self._last_status = None          # publish the status again
            self._cond.notify_all()
        log.info("mqtt: connected to %s:%d (session present: %s)", self.s.host, self.s.port,
                 getattr(flags, "session_present", "?"))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        with self._cond:
            self.connected = False
            self._cond.notify_all()
        if not self._stop.is_set():
            log.warning("mqtt: disconnected from %s:%d (%s); rows wait in the journal", self.s.host,
                        self.s.port, reason_code)

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None):
        with self._cond:
            entry = self._mids.pop(mid, None)
            if entry is None:
                self._early.add(mid)
                return
            self._acked(*entry)

    def _acked(self, table: str, item: list) -> None:
        """Mark one message acknowledged and move the table's cursor over the acknowledged prefix."""
        item[1] = True
        self.published[table] += 1
        q = self._pending[table]
        while q and q[0][1]:
            self.cursor[table] = q.popleft()[0]
        self._cond.notify_all()

    # ------------------------------------------------------------------ cursors
    def _load_cursors(self) -> None:
        top = dict(zip(("decision", "event"), self.reader.max_ids()))
        for table, key in CURSOR_KEYS.items():
            stored = self.store.get(key)
            if stored is None:
                self.cursor[table] = 0 if self.s.backfill else top[table]
            else:
                self.cursor[table] = int(stored)
                if self.cursor[table] > top[table]:
                    log.warning("mqtt: stored %s cursor %d is past the journal's last row %d (new journal?); "
                                "publishing from its start", table, self.cursor[table], top[table])
                    self.cursor[table] = 0
            self.sent[table] = self.fetched[table] = self.cursor[table]
        self._save_cursors(force=True)

    def _save_cursors(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._saved_at < SAVE_EVERY_S:
            return
        with self._cond:
            cur = dict(self.cursor)
        self._saved_at = now
        if force or cur != self._saved:
            for table, key in CURSOR_KEYS.items():
                self.store.put(key, str(cur[table]))
            self._saved = cur

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        loaded = self._saved is not None
        while not self._stop.is_set():
            try:
                if not loaded:
                    self._load_cursors()
                    loaded = True
                    log.info("mqtt: from decision %d / event %d", self.cursor["decision"], self.cursor["event"])
                self._step()
            except JournalMissing:       # no journal yet: the service has not run
                self._stop.wait(1.0)
            except Exception as exc:     # the journal busy, the broker gone mid-call: retry, never die
                log.warning("mqtt: %s: %s", type(exc).__name__, exc)
                self._stop.wait(1.0)

    def _step(self) -> None:
        with self._cond:
            room = self.s.max_inflight - len(self._mids)
            if not self.connected or room <= 0:
                self._cond.wait(self.s.poll_s)
                return
        self._maybe_status()
        if not self._queue["decision"] and not self._queue["event"]:
            self._refill()
        n = 0
        while n < room and self.connected and not self._stop.is_set():
            qd, qe = self._queue["decision"], self._queue["event"]
            if not qd and not qe:
                break
            table = "event" if qe and (not qd or qe[0]["ts"] <= qd[0]["ts"]) else "decision"
            self._publish(table, self._queue[table].popleft())
            n += 1
        self._save_cursors()
        if n == 0:
            self._stop.wait(self.s.poll_s)

    def _refill(self) -> None:
        """Read up to FETCH new rows of each table (one read per table, not one per message),
        merged by time: a table whose read was full bounds how far the other may go."""
        got = {"decision": self.reader.decisions_after(self.fetched["decision"], FETCH),
               "event": self.reader.events_after(self.fetched["event"], FETCH)}
        dec = got["decision"]
        if dec and time.time() - dec[-1]["ts"] < SETTLE_S and dec[-1]["id"] >= self.reader.max_ids()[0]:
            dec.pop()      # the newest row may still get its image name: wait for the next frame or SETTLE_S
        cutoff = min([rows[-1]["ts"] for rows in got.values() if len(rows) >= FETCH] or [float("inf")])
        for table, rows in got.items():
            keep = [r for r in rows if r["ts"] <= cutoff]
            if keep:
                self._queue[table].extend(keep)
                self.fetched[table] = keep[-1]["id"]

    def _publish(self, table: str, row: dict[str, Any]) -> None:
        payload = decision_payload(row, self.archive_dir) if table == "decision" else event_payload(row)
        item = [row["id"], False]
        with self._cond:
            self._pending[table].append(item)
            self.sent[table] = row["id"]
        info = self._client.publish(self.s.topic(table), json.dumps(payload), qos=self.s.qos)
        with self._cond:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self._acked(table, item)
            else:
                self._mids[info.mid] = (table, item)

    @staticmethod
    def _offline() -> dict[str, Any]:
        return {"state": "offline", "ts": time.time(), "time": iso(time.time()), "reason": "panel stopped"}

    def _maybe_status(self) -> None:
        now = time.monotonic()
        if self._last_status is not None and now - self._status_checked < STATUS_CHECK_S:
            return
        self._status_checked = now
        fields = self.status_fn()
        key = tuple((k, json.dumps(v, sort_keys=True)) for k, v in sorted(fields.items()) if k != "counters")
        now = time.monotonic()
        if key == self._last_status and now - self._status_at < self.s.status_every_s:
            return
        self._last_status, self._status_at = key, now
        payload = {"state": "online", "ts": time.time(), "time": iso(time.time()), **fields,
                   "publisher": {"cursor": dict(self.cursor), "connects": self.connects}}
        self._client.publish(self.s.topic("status"), json.dumps(payload), qos=1, retain=True)

    # ------------------------------------------------------------------ for tests and the page
    def wait_published(self, decision_id: int | None = None, event_id: int | None = None,
                       timeout: float = 10.0) -> bool:
        """Wait until the cursors reach the given row ids; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ((decision_id is None or self.cursor["decision"] >= decision_id)
                       and (event_id is None or self.cursor["event"] >= event_id)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def info(self) -> dict[str, Any]:
        """Connection state, cursors and counts (for the page and /metrics)."""
        with self._cond:
            return {"connected": self.connected, "connects": self.connects, "cursor": dict(self.cursor),
                    "published": dict(self.published), "inflight": len(self._mids)}
