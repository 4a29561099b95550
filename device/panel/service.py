"""The panel service: journal reader, panel store, action runner, MQTT publisher, metrics, web app.

``anomaly-device panel --config FILE`` builds one :class:`PanelService` and serves it with
uvicorn until SIGTERM. Tests and the benchmark run it in a thread (:meth:`PanelService.serve_in_thread`).

Example:
    >>> with PanelService(load_panel_config("device.toml")) as svc:     # doctest: +SKIP
    ...     url = svc.serve_in_thread()
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from device.panel.actions import ActionRunner
from device.panel.auth import RateLimiter
from device.panel.reader import JournalMissing, JournalReader
from device.panel.panel_config import PanelConfig
from device.panel.settings import is_loopback, split_bind
from device.panel.store import PanelStore

log = logging.getLogger(__name__)


def shift_start(shifts: list[str], now: float | None = None) -> float:
    """Unix time the current shift began (shift start times are local ``HH:MM``).

    Example:
        >>> import time
        >>> t = time.mktime((2026, 5, 4, 15, 30, 0, 0, 0, -1))
        >>> time.localtime(shift_start(["06:00", "14:00", "22:00"], t))[3:5]
        (14, 0)
    """
    now = time.time() if now is None else now
    lt = time.localtime(now)
    best = None
    for day in (0, -1):
        for s in shifts:
            h, m = map(int, s.split(":"))
            t = time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday + day, h, m, 0, 0, 0, -1))
            if t <= now and (best is None or t > best):
                best = t
        if best is not None:
            return best
    return now - 86400.0   # pragma: no cover - unreachable with at least one shift


def hour_start(now: float | None = None) -> float:
    now = time.time() if now is None else now
    lt = time.localtime(now)
    return time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, lt.tm_hour, 0, 0, 0, 0, -1))


class PanelService:
    """Everything the panel process owns. A context manager; :meth:`close` is idempotent.

    Args:
        cfg: the device config with its ``[panel]`` and ``[mqtt]`` sections.
        bind: ``HOST:PORT`` overriding ``[panel] bind``.
        publish: start the MQTT publisher when ``[mqtt] enabled``.
    """

    def __init__(self, cfg: PanelConfig, bind: str | None = None, publish: bool = True):
        from device.panel.metrics import JournalCollector, build_registry

        self.cfg = cfg
        self.bind = bind or cfg.panel.bind
        self.host, self.port = split_bind(self.bind)
        self.reader = JournalReader(cfg.device.journal.path)
        self.store = PanelStore(cfg.panel.store)
        stale = self.store.fail_running()
        if stale:
            log.warning("%d action(s) were still running when the panel stopped; marked failed", stale)
        self.runner = ActionRunner(self.store, cfg.source_file, cfg.panel.command or None,
                                   cfg.panel.action_timeout_s)
        self.limiter = RateLimiter(cfg.panel.login_attempts, cfg.panel.login_window_s)
        self.publisher = None
        if publish and cfg.mqtt.enabled:
            from device.panel.mqtt import MqttPublisher

            self.publisher = MqttPublisher(cfg.mqtt, self.reader, self.store, self.status_fields,
                                           cfg.device.journal.archive_dir or None)
        self.collector = JournalCollector(self.reader, self.status_fields,
                                          self.publisher.info if self.publisher else None)
        self.registry = build_registry(self.collector)
        self._status_cache: tuple[float, dict] = (0.0, {})
        self._status_lock = threading.Lock()
        self._digest_cache: tuple[Any, str | None] = (None, None)
        self._calibration: tuple[str | None, list[float] | None] = (None, None)
        self._server = None
        self._thread: threading.Thread | None = None
        self._closed = False
        from device.panel.web import create_app

        self.app = create_app(self)

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> "PanelService":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def lan_open(self) -> bool:
        """Bound beyond loopback."""
        return not is_loopback(self.host)

    def _uvicorn(self):
        import uvicorn

        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning", access_log=False,
                                proxy_headers=False, server_header=False, lifespan="off")
        self._server = uvicorn.Server(config)
        return self._server

    def serve(self) -> int:
        """Start the publisher and serve until SIGTERM/SIGINT (blocking); returns 0."""
        if self.publisher is not None:
            self.publisher.start()
        self.collector.start_warm()
        log.info("panel on http://%s:%d/ (journal %s%s)", self.host, self.port, self.reader.path,
                 ", read-only pages open to the LAN" if self.lan_open and self.cfg.panel.lan_readonly else "")
        self._uvicorn().run()
        return 0

    def serve_in_thread(self, timeout: float = 20.0) -> str:
        """Serve from a background thread (tests, benchmarks); returns the base URL once listening."""
        if self.publisher is not None:
            self.publisher.start()
        self.collector.start_warm()
        server = self._uvicorn()
        self._thread = threading.Thread(target=server.run, name="panel-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"panel did not start listening on {self.bind}")
            time.sleep(0.02)
        if self.port == 0:
            sock = server.servers[0].sockets[0]
            self.port = sock.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving, the publisher, the runner; close the store and the reader. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self.publisher is not None:
            self.publisher.close()
        self.runner.close()
        self.store.close()
        self.reader.close()
        log.info("panel stopped")

    # ------------------------------------------------------------------ what the pages show
    def bundle_digest(self) -> str | None:
        """Digest of the configured bundle (cached until its manifest changes)."""
        from device.bundle import bundle_digest

        path = Path(self.cfg.device.bundle.path) / "manifest.json"
        try:
            st = path.stat()
            key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        except OSError:
            return None
        if self._digest_cache[0] != key:
            try:
                self._digest_cache = (key, bundle_digest(path.parent))
            except Exception as exc:
                log.warning("bundle digest of %s: %s", path.parent, exc)
                self._digest_cache = (key, None)
        return self._digest_cache[1]

    def calibration_scores(self) -> list[float] | None:
        """The configured bundle's calibration scores (verified; cached per digest)."""
        digest = self.bundle_digest()
        if digest is None:
            return None
        if self._calibration[0] != digest:
            from device.bundle import load_bundle

            try:
                cal = load_bundle(self.cfg.device.bundle.path).calibration_scores
                self._calibration = (digest, None if cal is None else [float(v) for v in cal])
            except Exception as exc:
                log.warning("calibration scores of %s: %s", self.cfg.device.bundle.path, exc)
                self._calibration = (digest, None)
        return self._calibration[1]

    def status_fields(self) -> dict[str, Any]:
        """Service state, counters and bundle (the MQTT status, the metrics' gauges); cached 0.25 s."""
        with self._status_lock:
            t, cached = self._status_cache
            if time.monotonic() - t < 0.25 and cached:
                return cached
            try:
                fields = self._status_now()
            except JournalMissing as exc:
                fields = {"service": "unknown", "camera": "unknown", "alarm": False, "alarm_reasons": [],
                          "drift": "unknown", "drift_message": None,
                          "journal": str(exc), "counters": {}, "bundle": {"digest": self.bundle_digest(),
                                                                       "path": self.cfg.device.bundle.path}}
            self._status_cache = (time.monotonic(), fields)
            return fields

    def _status_now(self) -> dict[str, Any]:
        o = self.cfg.device.outputs
        st = self.reader.state(o.alarm_after_rejects, o.alarm_on_camera_fault, o.alarm_on_model_error,
                               self.cfg.device.drift.alarm)
        c = self.reader.counts()
        last = self.reader.last_decision()
        digest = (last or {}).get("bundle_digest") or self.bundle_digest()
        return {"service": st["service"], "camera": st["camera"], "alarm": st["alarm"],
                "alarm_reasons": st["alarm_reasons"], "drift": st["drift"], "drift_message": st["drift_message"],
                "model_error": st["model_error"],
                "counters": {"parts": c.parts, "rejects": c.rejects, "errors": c.errors, "passes": c.passes,
                             "missed_triggers": c.missed_triggers},
                "bundle": {"digest": digest, "path": self.cfg.device.bundle.path,
                           "threshold": last["threshold"] if last else None,
                           "threshold_source": last.get("threshold_source") if last else None},
                "fps": self.reader.rate(60.0), "last_decision_id": last["id"] if last else None,
                "last_decision_ts": last["ts"] if last else None}

    def live(self) -> dict[str, Any]:
        """Everything the live page shows (its JSON API)."""
        now = time.time()
        st = self.status_fields()
        if "journal" in st:        # no journal yet: the same page, empty, saying so
            zero = {"parts": 0, "rejects": 0, "errors": 0, "passes": 0, "reject_rate": 0.0}
            return {"now": now, "journal": st["journal"], "state": {**st, "fps": 0.0},
                    "counts": {"total": zero, "hour": zero, "shift": zero}, "last": None, "last_image": None,
                    "latency_ms": {}, "events": [], "mqtt": self.publisher.info() if self.publisher else None}
        out: dict[str, Any] = {"now": now, "journal": None, "state": st}
        tot = self.reader.counts()
        out["counts"] = {"total": _rates(tot)}
        for name, since in (("hour", hour_start(now)), ("shift", shift_start(self.cfg.panel.shifts, now))):
            out["counts"][name] = {**_rates(self.reader.window_counts(name, since)), "since": since}
        out["last"] = self.reader.last_decision()
        img = self.reader.last_with_image()
        out["last_image"] = ({"id": img["id"], "decision": img["decision"], "score": img["score"],
                              "threshold": img["threshold"], "ts": img["ts"], "tile_grid": img.get("tile_grid"),
                              "worst_tile": img.get("worst_tile"),
                              "overlay": self.image_path(img, overlay=True) is not None} if img else None)
        out["latency_ms"] = self.reader.stage_medians(200)
        out["mqtt"] = self.publisher.info() if self.publisher else None
        out["events"] = self.reader.recent_events(8)
        return out

    def image_path(self, row: dict[str, Any], overlay: bool = False) -> Path | None:
        """The archived image of a decision (``overlay``: the score-overlay picture the archive writes
        beside a tiled bundle's clean frame, :func:`device.archive.overlay_path`), only if it exists
        and lies inside the archive folder."""
        from device.archive import overlay_path

        archive = self.cfg.device.journal.archive_dir
        if not row.get("image") or not archive:
            return None
        root = Path(archive).resolve()
        name = overlay_path(row["image"]) if overlay else Path(row["image"])
        try:
            p = name.resolve()
            p.relative_to(root)
        except (ValueError, OSError):
            log.warning("decision %s: image %s is outside the archive %s; not served", row.get("id"), name, root)
            return None
        return p if p.is_file() else None


def _rates(c) -> dict[str, Any]:
    return {"parts": c.parts, "rejects": c.rejects, "errors": c.errors, "passes": c.passes,
            "reject_rate": (c.rejects + c.errors) / c.parts if c.parts else 0.0}


def panel_process_identity() -> str:
    """``user (uid)`` of this process, shown with every action."""
    try:
        import pwd

        return f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})"
    except (ImportError, KeyError):  # pragma: no cover
        return f"uid {os.getuid()}"
