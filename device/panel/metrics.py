"""Prometheus metrics derived from the journal (``/metrics``, prometheus-client).

Nothing is counted in the panel's memory that the journal does not hold: the counters are the
journal's row counts by decision (read incrementally by row id, so they equal ``SELECT COUNT(*)``
at every scrape and survive a panel restart; rows the service's retention deletes later are not
subtracted, so they never go down), the histograms are bucket counts of the journal's scores and
per-stage latencies, the gauges come from the journal's events. A collector computes them at
scrape time.

Metrics (all prefixed ``anomaly_``):
    counters: ``parts_total``, ``rejects_total``, ``errors_total``, ``passes_total``,
    ``missed_triggers_total``; histograms: ``score`` (buckets around the threshold),
    ``score_ratio`` (score / threshold), ``stage_latency_seconds{stage}``; gauges: ``camera_up``,
    ``alarm``, ``drift_state`` (0 ok, 1 warning, 2 drift, -1 unknown), ``service_up``,
    ``threshold``, ``frames_per_second``, ``last_decision_timestamp_seconds``; info:
    ``bundle_info{digest, threshold_source}``; publisher: ``mqtt_connected``,
    ``mqtt_published_total{topic}``, ``mqtt_backlog_rows``.

Example:
    >>> registry = build_registry(JournalCollector(reader, status_fn))     # doctest: +SKIP
    >>> prometheus_client.generate_latest(registry)            # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable

from device.panel.reader import STAGES, Counts, JournalReader

log = logging.getLogger(__name__)

RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1,
                   0.25, 1.0)
DRIFT_CODES = {"ok": 0, "warning": 1, "drift": 2}


class _Hist:
    """Cumulative bucket counts of one SQL expression over the journal, updated incrementally."""

    def __init__(self, expr: str, bounds: tuple[float, ...], where: str = "1"):
        self.expr, self.bounds, self.where = expr, bounds, where
        self.counts = [0] * len(bounds)
        self.sum, self.n = 0.0, 0

    def update(self, reader: JournalReader, after: int, upto: int) -> None:
        c, s, n = reader.bucket_counts(self.expr, list(self.bounds), after, upto, self.where)
        self.counts = [a + b for a, b in zip(self.counts, c)]
        self.sum += s
        self.n += n

    def buckets(self) -> list[tuple[str, float]]:
        return [(repr(float(b)), c) for b, c in zip(self.bounds, self.counts)] + [("+Inf", self.n)]


class JournalCollector:
    """A prometheus-client custom collector reading the journal at scrape time.

    Args:
        reader: the read-only journal.
        status_fn: returns the panel's status fields (state, bundle, threshold…).
        mqtt_info: returns the publisher's ``info()`` (None: no publisher).
    """

    def __init__(self, reader: JournalReader, status_fn: Callable[[], dict[str, Any]],
                 mqtt_info: Callable[[], dict[str, Any]] | None = None):
        self.reader = reader
        self.status_fn = status_fn
        self.mqtt_info = mqtt_info
        self._lock = threading.Lock()
        self._hists: dict[str, _Hist] | None = None
        self._upto = 0
        self._warming: threading.Thread | None = None
        self._totals = Counts()          # monotonic: rows seen, never decreased by the journal's retention

    def _new_histograms(self, threshold: float | None) -> dict[str, _Hist]:
        thr = threshold if threshold and threshold > 0 else 1.0
        cols = self.reader.columns()
        return {"score": _Hist("score", tuple(round(thr * r, 6) for r in RATIO_BUCKETS)),
                "ratio": _Hist("score / threshold", RATIO_BUCKETS, "threshold > 0"),
                **{s: _Hist(f"{s} / 1000.0", LATENCY_BUCKETS) for s in STAGES if s in cols}}

    def warm(self) -> None:
        """Build the histograms over every row the journal holds (seconds on a million rows), off
        the scrape path; until then /metrics carries the counters and gauges without them."""
        try:
            _, top, _, _ = self.reader.bounds()
            hists = self._new_histograms(self.status_fn().get("bundle", {}).get("threshold"))
            for h in hists.values():
                h.update(self.reader, 0, top)
        except Exception as exc:   # no journal yet, or it went away: the next scrape tries again
            log.info("metrics: histograms not built yet (%s)", exc)
            return
        with self._lock:
            self._hists, self._upto = hists, top
        log.info("metrics: histograms built over %d rows", top)

    def _histograms(self, top: int) -> dict[str, _Hist] | None:
        """The histograms brought up to row ``top``; None while the first build runs."""
        with self._lock:
            if self._hists is None or top < self._upto:
                self._hists = None
                if self._warming is None or not self._warming.is_alive():
                    self._warming = threading.Thread(target=self.warm, name="metrics-warm", daemon=True)
                    self._warming.start()
                return None
            if top > self._upto:
                for h in self._hists.values():
                    h.update(self.reader, self._upto, top)
                self._upto = top
            return self._hists

    def start_warm(self) -> None:
        """Start building the histograms in the background (at service start)."""
        try:
            self._histograms(self.reader.bounds()[1])
        except Exception as exc:   # no journal yet: the first scrape after it exists starts it
            log.debug("metrics: %s", exc)

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Start the first build if needed and wait for it (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._histograms(self.reader.bounds()[1]) is not None:
                return True
            t = self._warming
            if t is not None:
                t.join(min(0.2, max(0.0, deadline - time.monotonic())))
        return False

    def totals(self) -> Counts:
        """Decisions and missed triggers journaled, accumulated by row id (the journal's retention
        deleting old rows does not lower them; a replaced journal starts them again)."""
        with self._lock:
            _, top, _, etop = self.reader.bounds()
            t = self._totals
            if top < t.last_id or etop < t.last_event_id:
                log.warning("journal %s: row ids went back; counters start again", self.reader.path)
                t = self._totals = Counts()
            t.add(self.reader.count_range(t.last_id, top))
            t.missed_triggers += self.reader.missed_range(t.last_event_id, etop)
            t.last_id, t.last_event_id = top, etop
            return dataclasses.replace(t)

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            InfoMetricFamily)

        c = self.totals()
        st = self.status_fn()
        for name, value, doc in (("parts", c.parts, "Decisions journaled (parts inspected)"),
                                 ("rejects", c.rejects, "REJECT decisions"),
                                 ("errors", c.errors, "ERROR decisions (could not be scored; rejected)"),
                                 ("passes", c.passes, "PASS decisions"),
                                 ("missed_triggers", c.missed_triggers, "Triggers missed while busy (events)")):
            yield CounterMetricFamily(f"anomaly_{name}", doc, value=value)
        hists = self._histograms(c.last_id)
        if hists is not None:
            yield from self._histogram_families(hists, HistogramMetricFamily)
        yield from self._gauges(st, GaugeMetricFamily, InfoMetricFamily)
        yield from self._mqtt(CounterMetricFamily, GaugeMetricFamily, c.last_id)

    @staticmethod
    def _histogram_families(hists: dict[str, _Hist], Histogram):
        score = Histogram("anomaly_score", "Anomaly score of scored parts (buckets: threshold x 0.1 … x 5 at panel "
                                           "start)")
        score.add_metric([], hists["score"].buckets(), hists["score"].sum)
        yield score
        ratio = Histogram("anomaly_score_ratio", "Score divided by the threshold it was decided against (> 1: reject)")
        ratio.add_metric([], hists["ratio"].buckets(), hists["ratio"].sum)
        yield ratio
        lat = Histogram("anomaly_stage_latency_seconds", "Per-stage latency of the frame path", labels=["stage"])
        for s in STAGES:
            if s in hists:
                lat.add_metric([s[:-3]], hists[s].buckets(), hists[s].sum)
        yield lat

    def _gauges(self, st: dict[str, Any], Gauge, Info):
        b = st.get("bundle", {})
        for name, value, doc in (
                ("camera_up", st.get("camera") == "ok", "1 while the camera delivers frames"),
                ("service_up", st.get("service") == "running", "1 while the inspection service runs"),
                ("alarm", st.get("alarm", False), "1 while the alarm condition holds"),
                ("drift_state", DRIFT_CODES.get(st.get("drift"), -1), "0 ok, 1 warning, 2 drift, -1 unknown"),
                ("threshold", b.get("threshold"), "Threshold of the last decision"),
                ("frames_per_second", st.get("fps"), "Decisions per second over the last minute"),
                ("last_decision_timestamp_seconds", st.get("last_decision_ts"), "Unix time of the last decision")):
            if value is not None:
                yield Gauge(f"anomaly_{name}", doc, value=float(value))
        yield Info("anomaly_bundle", "The bundle deciding (digest of its manifest)",
                   value={"digest": str(b.get("digest") or ""),
                          "threshold_source": str(b.get("threshold_source") or ""),
                          "path": str(b.get("path") or "")})

    def _mqtt(self, Counter, Gauge, top: int):
        if self.mqtt_info is None:
            return
        info = self.mqtt_info()
        yield Gauge("anomaly_mqtt_connected", "1 while the MQTT publisher is connected", value=float(info["connected"]))
        pub = Counter("anomaly_mqtt_published", "Messages acknowledged by the broker (this process)",
                      labels=["topic"])
        for k, v in info["published"].items():
            pub.add_metric([k], v)
        yield pub
        yield Gauge("anomaly_mqtt_backlog_rows", "Journal decisions not yet acknowledged by the broker",
                    value=float(max(0, top - info["cursor"]["decision"])))


def build_registry(collector: JournalCollector, process: bool = True):
    """A registry holding the journal collector (and the panel's own process metrics)."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    if process:
        ProcessCollector(namespace="anomaly_panel", registry=reg)
    return reg
