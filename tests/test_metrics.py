"""/metrics parsed with the Prometheus text parser: counters equal the journal's counts, histograms
its scores and latencies, gauges its events."""
from __future__ import annotations

import sqlite3

import pytest

pytest.importorskip("prometheus_client", reason="the metrics need prometheus-client (panel extra)")
httpx = pytest.importorskip("httpx", reason="panel tests need httpx (dev extra)")
pytest.importorskip("cv2", reason="panel tests write archive images with OpenCV (device extra)")

from panel_helpers import fake_bundle, panel_config, running_panel, wait_until, write_rows  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from device.bundle import bundle_digest  # noqa: E402
from device.journal import Journal  # noqa: E402


def scrape(c: httpx.Client) -> dict[str, dict]:
    """``{sample name: {labels tuple: value}}`` of one scrape."""
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def one(m: dict, name: str, **labels) -> float:
    return m[name][tuple(sorted(labels.items()))]


def scrape_when(c: httpx.Client, name: str, value: float, what: str) -> dict:
    """Scrape until ``name`` reads ``value`` (the panel's state is cached for 0.25 s)."""
    def ready():
        m = scrape(c)
        return m if one(m, name) == value else None
    return wait_until(ready, 5, what)


def journal_counts(path) -> dict[str, int]:
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT decision, COUNT(*) FROM decisions GROUP BY decision").fetchall())
    finally:
        db.close()


@pytest.fixture
def station(tmp_path):
    j = Journal(tmp_path / "journal.sqlite")
    j.event("start", "test")
    j.event("ready", "folder")
    write_rows(j, None, "PPRPPEPPRP" * 20)
    fake_bundle(tmp_path / "bundle")
    return tmp_path, j, panel_config(tmp_path, tmp_path / "journal.sqlite", None, tmp_path / "bundle")


def test_counters_and_histograms_equal_the_journal(station):
    tmp, j, cfg = station
    jpath = tmp / "journal.sqlite"
    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        assert svc.collector.wait_ready(30)          # the histograms' first build runs off the scrape path
        for extra in ("", "RRREP" * 7):            # the daemon goes on: the next scrape follows
            if extra:
                write_rows(j, None, extra, start_frame=1000)
                j.event("missed_trigger", "trigger while busy")
            m = scrape(c)
            want = journal_counts(jpath)
            assert one(m, "anomaly_parts_total") == sum(want.values())
            assert one(m, "anomaly_rejects_total") == want.get("REJECT", 0)
            assert one(m, "anomaly_errors_total") == want.get("ERROR", 0)
            assert one(m, "anomaly_passes_total") == want.get("PASS", 0)
            assert one(m, "anomaly_missed_triggers_total") == (1 if extra else 0)
            db = sqlite3.connect(jpath)
            scores = [r[0] for r in db.execute("SELECT score FROM decisions WHERE score IS NOT NULL")]
            thr = db.execute("SELECT threshold FROM decisions ORDER BY id DESC LIMIT 1").fetchone()[0]
            n_lat = db.execute("SELECT COUNT(knn_ms) FROM decisions").fetchone()[0]
            db.close()
            assert one(m, "anomaly_score_count") == len(scores)
            assert one(m, "anomaly_score_sum") == pytest.approx(sum(scores))
            assert one(m, "anomaly_score_bucket", le=repr(float(thr))) == sum(s <= thr for s in scores)
            assert one(m, "anomaly_score_ratio_bucket", le="1.0") == sum(s <= thr for s in scores)
            assert one(m, "anomaly_score_ratio_bucket", le="+Inf") == len(scores)
            assert one(m, "anomaly_stage_latency_seconds_count", stage="knn") == n_lat
            assert one(m, "anomaly_stage_latency_seconds_bucket", stage="knn", le="0.002") == n_lat   # 1.2 ms
            assert one(m, "anomaly_stage_latency_seconds_bucket", stage="knn", le="0.001") == 0


def test_counters_never_go_down_when_retention_deletes_rows(station):
    tmp, j, cfg = station
    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        before = one(scrape(c), "anomaly_parts_total")
        db = sqlite3.connect(tmp / "journal.sqlite")        # as the service's retention does
        db.execute("DELETE FROM decisions WHERE id <= 50")
        db.commit()
        db.close()
        write_rows(j, None, "PR", start_frame=2000)
        assert one(scrape(c), "anomaly_parts_total") == before + 2        # counters: rows seen, monotonic
        live = c.get("/api/live").json()
        assert live["counts"]["total"]["parts"] == before + 2 - 50     # the page: what the journal holds


def test_histograms_are_built_off_the_scrape_path(station):
    """The first scrape never waits for the histograms over the whole journal (seconds on a
    million rows): until they are built it carries counters and gauges only; then all of them."""
    import threading

    from device.panel.service import PanelService
    from device.panel.panel_config import load_panel_config

    tmp, j, cfg = station
    release = threading.Event()
    with PanelService(load_panel_config(cfg)) as svc:
        build = svc.collector.warm
        svc.collector.warm = lambda: (release.wait(30), build())     # a slow first build
        with httpx.Client(base_url=svc.serve_in_thread()) as c:
            first = scrape(c)
            assert one(first, "anomaly_parts_total") == 200 and "anomaly_camera_up" in first
            assert "anomaly_score_count" not in first
            release.set()
            assert svc.collector.wait_ready(30)
            m = scrape(c)
            assert one(m, "anomaly_score_count") == 180 and one(m, "anomaly_parts_total") == 200


def test_gauges_follow_the_events(station):
    tmp, j, cfg = station
    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        m = scrape(c)
        assert one(m, "anomaly_camera_up") == 1 and one(m, "anomaly_service_up") == 1
        assert one(m, "anomaly_alarm") == 0 and one(m, "anomaly_drift_state") == -1
        assert one(m, "anomaly_threshold") == 0.5
        info = next(k for k in m["anomaly_bundle_info"])
        assert dict(info)["digest"] == bundle_digest(tmp / "bundle")
        j.event("camera_fault", "no frame in 2 s")
        j.event("drift", "warning: brightness 120 vs 100 (+20 %, limit 15 %)")
        m = scrape_when(c, "anomaly_camera_up", 0, "camera_up 0 after a camera fault")
        assert one(m, "anomaly_alarm") == 1 and one(m, "anomaly_drift_state") == 1
        j.event("camera_ok", "recovered")
        j.event("drift", "ok: back within limits")
        m = scrape_when(c, "anomaly_camera_up", 1, "camera_up 1 after the recovery")
        assert one(m, "anomaly_alarm") == 0 and one(m, "anomaly_drift_state") == 0
        assert "anomaly_panel_process_resident_memory_bytes" in m


def test_rejects_in_a_row_raise_the_alarm_gauge(station):
    tmp, j, cfg = station
    cfg.write_text(cfg.read_text().replace("[journal]\n", "[outputs]\nalarm_after_rejects = 3\n\n[journal]\n"))
    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        write_rows(j, None, "RRR", start_frame=3000)
        assert one(scrape_when(c, "anomaly_alarm", 1, "the alarm after 3 rejects in a row"), "anomaly_camera_up") == 1
        write_rows(j, None, "P", start_frame=3100)
        scrape_when(c, "anomaly_alarm", 0, "the alarm to clear after a pass")
    j.close()


def test_grafana_dashboard_uses_exported_metrics(station):
    """Every metric the shipped dashboard queries is one /metrics exports."""
    import json
    import re
    from pathlib import Path

    tmp, j, cfg = station
    dash = json.loads((Path(__file__).resolve().parents[1] / "docs/grafana/anomaly-station.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dash["annotations"]["list"]] + \
        [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    used = set(re.findall(r"\banomaly_[a-z_]+", " ".join(exprs)))
    cfg.write_text(cfg.read_text() + "\n[mqtt]\nenabled = true\nport = 1\n")      # the publisher's metrics too
    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        assert svc.collector.wait_ready(30)
        exported = set(scrape(c))
    assert used and used <= exported, used - exported
