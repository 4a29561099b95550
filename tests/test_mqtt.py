"""MQTT publisher against a real Mosquitto broker started on a free 127.0.0.1 port.

A writer thread journals decisions as the daemon does (device.journal.Journal) while the panel's
publisher runs; the test subscriber holds a persistent QoS 2 session, so it also receives what was
published while it was away. Every wait synchronises on message counts or journal rows.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("paho.mqtt", reason="the MQTT publisher needs paho-mqtt (panel extra)")
pytest.importorskip("cv2", reason="panel tests write archive images with OpenCV (device extra)")

from panel_helpers import (Subscriber, broker, needs_mosquitto, panel_config, wait_until,  # noqa: E402
                           write_rows)

from device.journal import Journal  # noqa: E402
from device.panel.mqtt import MqttPublisher, decision_payload  # noqa: E402
from device.panel.reader import JournalReader  # noqa: E402
from device.panel.settings import MqttSettings  # noqa: E402
from device.panel.store import PanelStore  # noqa: E402

pytestmark = needs_mosquitto
ROOT = Path(__file__).resolve().parents[1]
DECISION_KEYS = {"id", "ts", "time", "frame", "name", "score", "threshold", "threshold_source", "decision", "reason",
                 "worst_tile", "bundle_digest", "latency_ms", "image"}


class Writer(threading.Thread):
    """Journals ``n`` decisions at about ``rate_hz`` (as the daemon does), then stops."""

    def __init__(self, path: Path, archive: Path, n: int, rate_hz: float = 300.0, start_frame: int = 0):
        super().__init__(daemon=True)
        self.path, self.archive, self.n, self.rate, self.start_frame = path, archive, n, rate_hz, start_frame
        self.written = 0

    def run(self):
        j = Journal(self.path)
        t0 = time.monotonic()
        for k in range(self.n):
            write_rows(j, self.archive, "R" if k % 9 == 4 else ("E" if k % 31 == 7 else "P"),
                       start_frame=self.start_frame + k)
            self.written = k + 1
            delay = t0 + (k + 1) / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        j.close()


def settings(port: int, **kw) -> MqttSettings:
    return MqttSettings(enabled=True, host="127.0.0.1", port=port, line="L1", station="S3", poll_s=0.02, **kw)


def status_fn():
    return {"service": "running", "camera": "ok", "alarm": False, "drift": "ok", "counters": {}, "bundle": {}}


@contextlib.contextmanager
def subscribed(tmp_path: Path, topic: str):
    """A real broker and a persistent test subscriber on ``topic``; yields ``(broker, subscriber)``."""
    with broker(tmp_path / "broker") as b:
        sub = Subscriber(b.port, topic)
        try:
            yield b, sub
        finally:
            sub.close()


@contextlib.contextmanager
def publisher(tmp_path: Path, jpath: Path, port: int, archive: str | None = None, **kw):
    """The panel's publisher over the journal, its cursor in the panel store; yields ``(reader, publisher)``."""
    with JournalReader(jpath) as reader, PanelStore(tmp_path / "panel.sqlite") as store, \
            MqttPublisher(settings(port, **kw), reader, store, status_fn, archive) as pub:
        yield reader, pub


def ids(sub: Subscriber) -> list[int]:
    return [m["id"] for m in sub.of("decision")]


def journal_ids(path: Path, table: str = "decisions") -> list[int]:
    with JournalReader(path) as r:
        return [x[0] for x in r.db().execute(f"SELECT id FROM {table} ORDER BY id")]


def test_every_decision_and_event_once_in_order(tmp_path):
    jpath, n = tmp_path / "journal.sqlite", 300
    Journal(jpath).close()
    with subscribed(tmp_path, "anomaly/L1/S3/#") as (b, sub):
        with publisher(tmp_path, jpath, b.port, str(tmp_path / "archive")) as (reader, pub):
            w = Writer(jpath, tmp_path / "archive", n)
            w.start()
            j = Journal(jpath)
            j.event("ready", "replay")
            w.join(60)
            j.event("stop", f"{n} parts")
            j.close()
            wait_until(lambda: len(sub.of("decision")) >= n and len(sub.of("event")) >= 2, 30,
                       lambda: f"{n} decisions and 2 events at the subscriber (publisher {pub.info()}, "
                               f"subscriber {len(sub.of('decision'))} decisions, {len(sub.of('event'))} events)")
            assert pub.wait_published(n, 2, timeout=10)
        assert ids(sub) == journal_ids(jpath) == list(range(1, n + 1))
        assert [e["kind"] for e in sub.of("event")] == ["ready", "stop"]
        d = sub.of("decision")[4]
        assert set(d) == DECISION_KEYS and d["decision"] == "REJECT" and d["image"].endswith("_reject.png")
        assert d["latency_ms"]["knn"] == pytest.approx(1.2) and d["worst_tile"] == [32, 24, 32, 24]
        status = sub.of("status")
        assert status[0]["state"] == "online" and status[-1]["state"] == "offline"   # clean close
        with PanelStore(tmp_path / "panel.sqlite") as store:       # the cursor is persisted
            assert store.get("mqtt.cursor.decisions") == str(n) and store.get("mqtt.cursor.events") == "2"


def test_broker_outage_loses_nothing_and_duplicates_nothing(tmp_path):
    """The broker is stopped mid-run and restarted: the rows written meanwhile wait in the journal,
    and every row reaches the subscriber exactly once, in order."""
    jpath, n = tmp_path / "journal.sqlite", 600
    Journal(jpath).close()
    with subscribed(tmp_path, "anomaly/L1/S3/decision") as (b, sub):
        with publisher(tmp_path, jpath, b.port, qos=2) as (reader, pub):
            w = Writer(jpath, tmp_path / "archive", n, rate_hz=250)
            w.start()
            wait_until(lambda: len(ids(sub)) >= 100, 30, "100 decisions before the outage")
            b.stop()
            wait_until(lambda: not pub.info()["connected"], 10, "the publisher to see the outage")
            at_stop = w.written
            wait_until(lambda: w.written >= at_stop + 100, 30, "100 more rows journaled during the outage")
            b.start()
            w.join(60)
            wait_until(lambda: len(ids(sub)) >= n, 60,
                       lambda: f"{n} decisions after the restart (publisher {pub.info()}, subscriber "
                               f"{len(ids(sub))}, missing {sorted(set(range(1, n + 1)) - set(ids(sub)))[:20]}, "
                               f"connected {sub.connected.is_set()})")
            assert pub.wait_published(n, timeout=10)
            assert pub.info()["connects"] >= 2
        got = ids(sub)
        assert got == list(range(1, n + 1)), (len(got), len(set(got)))


def test_panel_restart_resumes_at_the_stored_cursor(tmp_path):
    jpath = tmp_path / "journal.sqlite"
    j = Journal(jpath)
    write_rows(j, None, "P" * 50)
    with subscribed(tmp_path, "anomaly/L1/S3/decision") as (b, sub):
        for _ in range(2):                # two panel processes, one after the other
            with publisher(tmp_path, jpath, b.port) as (reader, pub):
                top = reader.max_ids()[0]
                assert pub.wait_published(top, timeout=20)
            write_rows(j, None, "PRP" * 10)                  # written while no panel runs
        with publisher(tmp_path, jpath, b.port) as (reader, pub):
            assert pub.wait_published(110, timeout=20)
        wait_until(lambda: len(ids(sub)) >= 110, 20, "110 decisions")
        assert ids(sub) == list(range(1, 111))
    j.close()


def test_no_backfill_starts_after_the_last_row(tmp_path):
    jpath = tmp_path / "journal.sqlite"
    j = Journal(jpath)
    write_rows(j, None, "P" * 20)
    with subscribed(tmp_path, "anomaly/L1/S3/decision") as (b, sub):
        with publisher(tmp_path, jpath, b.port, backfill=False) as (reader, pub):
            wait_until(lambda: pub.info()["connected"], 10, "the publisher to connect")
            write_rows(j, None, "RP")
            assert pub.wait_published(22, timeout=20)
        wait_until(lambda: len(ids(sub)) >= 2, 10, "2 decisions")
        assert ids(sub) == [21, 22]
    j.close()


def test_retained_status_and_last_will_of_the_panel_process(tmp_path):
    """`anomaly-device panel` publishes a retained online status; killed, the broker publishes its
    last will: status offline."""
    jpath = tmp_path / "journal.sqlite"
    j = Journal(jpath)
    j.event("ready", "replay")
    write_rows(j, None, "PPR")
    j.close()
    with broker(tmp_path / "broker") as b:
        cfg = panel_config(tmp_path, jpath, mqtt=f'enabled = true\nport = {b.port}\nline = "L1"\nstation = "S3"\n'
                                                  "status_every_s = 1.0\n")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        p = subprocess.Popen([sys.executable, "-m", "device.cli", "panel", "--config", str(cfg)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            late = Subscriber(b.port, "anomaly/L1/S3/status", client_id="late")
            wait_until(lambda: late.of("status") and late.of("status")[-1]["state"] == "online", 30,
                       "the online status")
            late.close()
            fresh = Subscriber(b.port, "anomaly/L1/S3/status", client_id="fresh")   # retained: seen on subscribe
            wait_until(lambda: fresh.of("status"), 10, "the retained status")
            st = fresh.of("status")[0]
            assert st["state"] == "online" and st["counters"]["parts"] == 3 and st["counters"]["rejects"] == 1
            assert st["service"] == "running"
            p.send_signal(signal.SIGKILL)
            p.wait(10)
            wait_until(lambda: fresh.of("status")[-1]["state"] == "offline", 20, "the last will")
            fresh.close()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_decision_payload_schema():
    row = {"id": 3, "ts": 1700000000.25, "frame": 9, "name": "a.png", "score": None, "threshold": 0.4,
           "threshold_source": "bundle", "decision": "ERROR", "reason": "cannot decode", "capture_ms": 0.5,
           "image": "/var/lib/anomaly-device/archive/20231114/000000009_error.png"}
    p = decision_payload(row, "/var/lib/anomaly-device/archive")
    assert set(p) == DECISION_KEYS
    assert p["image"] == "20231114/000000009_error.png" and p["time"] == "2023-11-14T22:13:20.250Z"
    assert p["latency_ms"] == {"capture": 0.5, "total": 0.5} and p["reason"] == "cannot decode"
    json.dumps(p)
