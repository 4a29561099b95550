"""The frame loop: trigger -> capture -> score -> journal -> reject pulse.

Order per part (the journal row is committed *before* any output acts on it)::

    t = trigger.wait()            free-run / photo-eye / software (PLC handshake: BUSY on at the trigger)
    frame = camera.read()         CameraError -> fault: safe level, alarm, retry with back-off
    result = detector.inspect()   (camera ROI crop first; any failure is an ERROR result)
    journal.decision(...)         SQLite WAL commit
    reject.pulse(t + delay, width) on the scheduler thread; handshake PASS/FAIL + RESULT, BUSY off;
    drift watch; alarm; archive; WATCHDOG=1

The service holds the camera lock (:mod:`device.servicelock`) from start to stop: a second
service or a ``capture`` is refused, and ``deploy`` finds the pid to send ``SIGHUP`` to. At
start and on each reload the drift watch (:class:`~device.drift.DriftMonitor`, ``[drift]``) is
set up for the bundle and every difference between ``[camera]`` and the bundle's capture record
is journaled as a ``warning`` event. A drift state change is a ``drift`` event
(``"<level>: <reason>"``); ``[drift] alarm`` raises the alarm in the ``drift`` state.

PLC handshake (:mod:`device.handshake`, pins in ``[outputs]``): READY means the service can
inspect a part: started, bundle loaded, camera up, journal writable. It drops on a camera fault,
a journal fault and at stop (every line then at its safe level). A frame that cannot be scored
(model error) does not drop READY: that part still gets its FAIL result and strobe, and the
alarm follows ``alarm_on_model_error``. A trigger while BUSY or not READY is missed: counted where
it arrives (gpiozero's callback thread for the photo-eye) and journaled as ``missed_trigger``.

Signals: ``SIGTERM``/``SIGINT`` finish the current frame, let queued reject pulses
fire (up to ``delay + width + 0.5 s``), set the outputs to the safe level, exit 0.
A reject pulse that cannot be fired is journaled (``pulse_dropped``, naming the decision rows).

Journal faults (disk full, read-only file or mount, I/O error): nothing is acted on without its
row; the reject line goes to its safe level, the alarm is raised, one line names the journal and
the cause, and the service exits with :data:`EXIT_JOURNAL_FAULT` so systemd restarts it.
``SIGHUP`` reloads config and bundle between frames; if either is bad the old ones keep
running and the reason is logged and journaled. ``SIGUSR1`` fires the software trigger.

Example:
    >>> d = Daemon(load_config("device.toml"), pin_factory=MockFactory())   # doctest: +SKIP
    >>> d.run()                                                             # doctest: +SKIP
    0
"""
from __future__ import annotations

import collections
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from device.camera import CameraError, EndOfStream, FrameSource, make_source
from device.drift import EVENT as DRIFT_EVENT
from device.config import DeviceConfig, load_config
from core.decision import Decision
from device.camera import crop  # noqa: F401 (the camera ROI, applied before the bundle's preprocessing)
from device.detector import build_detector  # noqa: F401
from device.errors import BundleError
from device.journal import Journal, JournalError
from device.notify import Notifier

log = logging.getLogger(__name__)

EXIT_JOURNAL_FAULT = 3   # the journal cannot be written: exit non-zero so systemd restarts the service


#: sections whose keys need a restart, but for these, which a reload applies
RELOADABLE = {"outputs": ("reject_delay_ms", "reject_width_ms", "alarm_after_rejects", "alarm_on_camera_fault",
                          "alarm_on_model_error"),
              "journal": ()}


def _restart_only_kept(old: DeviceConfig, new: DeviceConfig) -> DeviceConfig:
    """``new`` with the running values of keys that only a restart can change (pins, journal path)."""
    for sec, reloadable in RELOADABLE.items():
        a, b = getattr(old, sec).model_dump(), getattr(new, sec).model_dump()
        changed = sorted(k for k in a if a[k] != b[k] and k not in reloadable)
        if changed:
            log.warning("reload: [%s] %s need a restart; keeping the running values", sec, ", ".join(changed))
            new = new.replace(**{sec: {k: a[k] for k in changed}})
    return new


class Daemon:
    """The appliance service.

    Args:
        cfg: validated configuration.
        config_path: file re-read on ``SIGHUP`` (``None``: reload keeps ``cfg`` but reloads the bundle).
        pin_factory: gpiozero factory instance; default from ``[outputs].pin_factory``.
        source: frame source instance (tests); default from ``[camera]``.
        notifier: :class:`~device.notify.Notifier` (default: from the environment).
        max_frames: stop after this many decisions (selftest, benchmarks).
        journal: an open :class:`~device.journal.Journal` to use instead of ``[journal].path``.
    """

    def __init__(self, cfg: DeviceConfig, config_path: str | Path | None = None, pin_factory=None,
                 source: FrameSource | None = None, notifier: Notifier | None = None,
                 max_frames: int | None = None, journal: Journal | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self._pin_factory = pin_factory
        self._given_source = source
        self.notifier = notifier if notifier is not None else Notifier()
        self.max_frames = max_frames
        self.journal = journal
        self._own_journal = journal is None
        self.detector = None
        self.outputs = None
        self.trigger = None
        self.source: FrameSource | None = None
        self.archive = None
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.frames = 0
        self.passes = 0
        self.rejects_in_row = 0
        self.camera_up = False
        self.camera_fault_since: float | None = None
        self.model_error = False
        self.last_timing: dict[str, float] = {}
        self.last_result = None
        self.t_ready: float | None = None
        self.t_start = time.monotonic()
        self._backoff = cfg.camera.retry_initial_s
        self._last_status = time.monotonic()
        self._dropped: collections.deque = collections.deque()   # (tags, reason) from the pulse thread
        self.journal_fault: JournalError | None = None
        self.handshake = None            # device.handshake.Handshake when [outputs] names its pins
        self.drift = None                # device.drift.DriftWorker (its DriftMonitor) while [drift] enabled
        self.drift_level = "ok"          # the drift state last journaled (the alarm follows it)
        self._drift_parts: list = []     # parts waiting to be handed to the watch as one batch
        self.drift_ms: collections.deque = collections.deque(maxlen=1000)   # the watch's cost per frame (its thread)
        self._missed: collections.deque = collections.deque()    # (t, reason) from the trigger's thread
        self._lock = None                # the camera lock (device.servicelock)
        self._refused = False            # start refused: another process holds the lock
        self._shut = False

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ----------------------------------------------------------------- control
    def request_stop(self, *_):
        """Finish the current frame, then stop (``SIGTERM``)."""
        self._stop.set()

    def request_reload(self, *_):
        """Reload config and bundle between frames (``SIGHUP``)."""
        self._reload.set()

    def _sigusr1(self, *_):
        from device.trigger import SoftwareTrigger

        if isinstance(self.trigger, SoftwareTrigger):
            self.trigger.fire()

    def install_signal_handlers(self) -> dict:
        """Install SIGTERM/SIGINT/SIGHUP/SIGUSR1 handlers (main thread only); returns the old ones."""
        handlers = {signal.SIGTERM: self.request_stop, signal.SIGINT: self.request_stop,
                    signal.SIGHUP: self.request_reload, signal.SIGUSR1: self._sigusr1}
        return {s: signal.signal(s, h) for s, h in handlers.items()}

    # ----------------------------------------------------------------- set-up
    def _make_outputs(self, cfg: DeviceConfig):
        from device.gpio import Outputs, make_pin_factory

        if self._pin_factory is None:
            self._pin_factory = make_pin_factory(cfg.outputs.pin_factory)
        o = cfg.outputs
        return Outputs(o.reject_pin, o.reject_active_high, o.alarm_pin, o.alarm_active_high,
                       o.safe_level, pin_factory=self._pin_factory, on_dropped=self._pulses_dropped)

    def _pulses_dropped(self, rows: list, reason: str) -> None:
        """Reject pulses that could not be fired (any thread): journaled by :meth:`_journal_dropped`."""
        self._dropped.append((list(rows), reason))

    def _journal_dropped(self) -> None:
        """Journal ``pulse_dropped`` events (main thread) for pulses reported by the outputs."""
        while self._dropped:
            rows, reason = self._dropped.popleft()
            msg = f"{len(rows)} reject pulse(s) {reason}: decision row(s) {', '.join(map(str, rows))}"
            log.error("%s", msg)
            self.journal.event("pulse_dropped", msg)

    def _make_trigger(self, cfg: DeviceConfig):
        """The configured trigger; with a handshake, a trigger queued from another thread (photo-eye,
        SIGUSR1) is accepted or missed right where it arrives (:meth:`_gate`)."""
        from device.trigger import make_trigger

        trig = make_trigger(cfg.trigger, self._pin_factory)
        if self.handshake is not None and hasattr(trig, "gate"):
            trig.gate = self._gate
        return trig

    def _gate(self, t: float) -> bool:
        """BUSY on, or the trigger is missed (busy or not ready): runs in the trigger's thread."""
        why = self.handshake.accept(t)
        if why is not None:
            self._missed.append((t, why))
        return why is None

    def _journal_missed(self) -> None:
        """Journal ``missed_trigger`` events (main thread) for triggers refused in :meth:`_gate`."""
        if not self._missed:
            return
        n, why = 0, collections.Counter()
        while self._missed:
            why[self._missed.popleft()[1]] += 1
            n += 1
        msg = (f"{n} trigger(s) missed, part(s) not inspected: " + ", ".join(f"{c} {w}" for w, c in why.items())
               + (f" (total {self.handshake.missed})" if self.handshake is not None else ""))
        log.warning("%s", msg)
        self.journal.event("missed_trigger", msg)

    def _make_archive(self, cfg: DeviceConfig):
        j = cfg.journal
        if not j.archive_dir:
            return None
        from device.archive import ImageArchive

        return ImageArchive(j.archive_dir, j.archive_max_mb, j.archive_max_age_days)

    def start(self) -> None:
        """Journal, camera lock, bundle (+ drift watch), outputs and handshake, trigger, camera; then
        ``READY=1`` (and the handshake's READY line).

        Raises:
            ServiceBusyError: a capture or another service holds the camera (journaled, nothing started).
            BundleError: the bundle fails verification (the service exits non-zero).
        """
        from device import preprocess

        preprocess.MAX_PIXELS = self.cfg.camera.max_pixels          # arrays too: one limit per service
        if self.journal is None:
            j = self.cfg.journal
            self.journal = Journal(j.path, j.synchronous, keep_days=j.keep_days, max_mb=j.max_mb)
        self._take_lock()
        self.journal.event("start", f"config {self.cfg.source_file}, bundle {self.cfg.bundle.path}")
        self.notifier.status("loading bundle")
        try:
            self.detector = build_detector(self.cfg)
        except BundleError as exc:
            self.journal.event("bundle_error", str(exc))
            raise
        log.info("bundle %s (%s): threshold %.6f (%s), bank %s", self.cfg.bundle.path,
                 self.detector.bundle.short_digest, self.detector.threshold.value, self.detector.threshold.source,
                 self.detector.bundle.bank.shape)
        self._watch_bundle()
        self.outputs = self._make_outputs(self.cfg)
        from device.handshake import Handshake

        self.handshake = Handshake.from_config(self.cfg.outputs, self._pin_factory)
        self.trigger = self._make_trigger(self.cfg)
        self.archive = self._make_archive(self.cfg)
        self.source = self._given_source or make_source(self.cfg.camera)
        self.notifier.status("opening camera")
        while not self._stop.is_set() and not self._open_camera():
            self._stop.wait(self._next_backoff())
        if self._stop.is_set():
            return
        self.outputs.run_mode()
        self.t_ready = time.monotonic()
        self.journal.event("ready", f"{self.source.name}; bundle {self.detector.bundle.digest}; "
                                    f"start-to-ready {self.t_ready - self.t_start:.3f} s")
        if self.handshake is not None:
            self.handshake.set_ready(True)
        self.notifier.ready(f"inspecting ({self.source.name})")
        log.info("ready in %.3f s: %s -> %s", self.t_ready - self.t_start, self.source.name,
                 f"GPIO{self.cfg.outputs.reject_pin}" if self.cfg.outputs.reject_pin is not None else "no reject line")

    def _take_lock(self) -> None:
        """The camera lock beside the journal this daemon writes (none for an in-memory journal);
        refused: journaled as ``start_refused``, nothing else is started, and no ``stop`` is journaled."""
        from device.servicelock import ServiceBusyError, hold_service_lock

        try:
            self._lock = hold_service_lock(self.cfg, "run", None if self._own_journal else self.journal.path)
        except ServiceBusyError as exc:
            self._refused = True
            self.journal.event("start_refused", str(exc))
            raise

    def _watch_bundle(self) -> None:
        """For the bundle just loaded (start, reload): the capture-record differences as ``warning``
        events, and a fresh drift watch (its start journaled as a ``drift`` event, so ``status``
        never shows the state of an earlier run)."""
        from device.capture import capture_mismatches
        from device.drift import DriftMonitor, DriftWorker

        bundle = self.detector.bundle
        for line in capture_mismatches(self.cfg.camera, bundle.manifest):
            log.warning("capture conditions: %s", line)
            self.journal.event("warning", line)
        self._stop_drift()
        d = self.cfg.drift
        if d.enabled:
            self.drift = DriftWorker(DriftMonitor.from_bundle(bundle, self.detector.threshold.value, d))
        self.drift_level = "ok" if d.enabled else "off"
        msg = f"ok: watch started for bundle {bundle.short_digest} ({self.drift.monitor.describe()})" if \
            self.drift else "off: [drift] enabled = false"
        self.journal.event(DRIFT_EVENT, msg)

    def _stop_drift(self) -> None:
        """Evaluate the frames still queued for the drift watch, journal what they changed, stop it."""
        if self.drift is not None:
            if self._drift_parts:                       # a batch not yet full: its scores still count
                self.drift.submit_many(self._drift_parts, None)
                self._drift_parts = []
            self.drift.close()
            self._journal_drift()
            self.drift_ms.extend(self.drift.cost_ms)
            self.drift = None

    # ----------------------------------------------------------------- camera faults
    def _next_backoff(self) -> float:
        b = self._backoff
        self._backoff = min(self._backoff * 2, self.cfg.camera.retry_max_s)
        return b

    def _open_camera(self) -> bool:
        try:
            self.source.open()
        except CameraError as exc:
            self._camera_fault(exc)
            return False
        if self.camera_fault_since is not None:
            down = time.monotonic() - self.camera_fault_since
            log.info("camera %s recovered after %.1f s", self.source.name, down)
            self.journal.event("camera_ok", f"{self.source.name} recovered after {down:.1f} s")
            self.outputs.fault(False)
            if self.handshake is not None:
                self.handshake.fault(False)
        self.camera_up, self.camera_fault_since = True, None
        self._backoff = self.cfg.camera.retry_initial_s
        self._update_alarm()
        return True

    def _camera_fault(self, exc: Exception) -> None:
        first = self.camera_fault_since is None
        if first:
            self.camera_fault_since = time.monotonic()
            log.error("camera fault: %s", exc)
            self.journal.event("camera_fault", str(exc))
            self.notifier.status(f"camera fault: {exc}")
        else:
            log.debug("camera still down: %s", exc)
        if self.camera_up:
            self.source.close()
        self.camera_up = False
        if self.outputs is not None:
            self.outputs.fault(True)
        if self.handshake is not None:
            self.handshake.fault(True)       # READY off; a part accepted before the fault gets no result
        self._update_alarm()
        self._feed_watchdog()

    def _feed_watchdog(self) -> None:
        """Keep-alive only while healthy: camera up, or down for less than the grace period."""
        if self.camera_fault_since is not None and \
                time.monotonic() - self.camera_fault_since > self.cfg.service.camera_fault_grace_s:
            return
        self.notifier.watchdog()

    def _update_alarm(self) -> None:
        o = self.cfg.outputs
        alarm = ((o.alarm_after_rejects > 0 and self.rejects_in_row >= o.alarm_after_rejects)
                 or (o.alarm_on_camera_fault and self.camera_fault_since is not None)
                 or (o.alarm_on_model_error and self.model_error)
                 or (self.cfg.drift.alarm and self.drift_level == "drift"))
        if self.outputs is not None:
            self.outputs.set_alarm(alarm)

    # ----------------------------------------------------------------- the loop
    def step(self) -> bool:
        """Handle one trigger; returns False when the source is exhausted."""
        if self._dropped:
            self._journal_dropped()
        if self._missed:
            self._journal_missed()
        if self.drift is not None and self.drift.changes:
            self._journal_drift()
            self._update_alarm()
        if not self.camera_up:
            end = time.monotonic() + self._next_backoff()
            while not self._stop.is_set() and time.monotonic() < end:
                self._feed_watchdog()          # only within camera_fault_grace_s
                self._stop.wait(min(1.0, max(0.0, end - time.monotonic())))
            if not self._stop.is_set():
                self._open_camera()
            return True
        t_trig = self.trigger.wait(self.cfg.trigger.timeout_s)
        if t_trig is None:
            self._feed_watchdog()
            return True
        if self.handshake is not None and not self._handshake_accepted(t_trig):
            return True
        t0 = time.perf_counter()
        try:
            frame = self.source.read()
        except EndOfStream as exc:
            log.info("%s", exc)
            return False
        except CameraError as exc:
            self._camera_fault(exc)
            return True
        t1 = time.perf_counter()
        free_run = self.cfg.trigger.mode == "free-run"
        t_ref = frame.t_capture if free_run else t_trig
        self._decide(frame, t_ref, (t1 - t0) * 1e3)
        self._feed_watchdog()
        return True

    def _handshake_accepted(self, t_trig: float) -> bool:
        """BUSY for the trigger just taken: a queued (photo-eye, SIGUSR1) trigger was accepted where it
        arrived, unless a fault since then dropped it (no result: missed); free-run accepts here."""
        hs = self.handshake
        if getattr(self.trigger, "gate", None) is not None:
            if hs.pending == t_trig:
                return True
            self._missed.append((t_trig, "accepted before a fault"))
            return False
        why = hs.accept(t_trig)
        if why is not None:
            self._missed.append((t_trig, why))
        return why is None

    def _decide(self, frame, t_ref: float, capture_ms: float) -> None:
        """One part: score and decide (:meth:`Detector.inspect`, ERROR on any failure), journal the
        row, then act on it (reject pulse, handshake result, drift watch, alarm), then archive the
        image (writer thread)."""
        t1 = time.perf_counter()
        result = self._inspect(frame)
        verdict = result.verdict
        rejects = verdict.decision is not Decision.PASS
        if rejects or self.model_error:
            self._track_model_state(frame, result)
        reject_at = t_ref + self.cfg.outputs.reject_delay_ms / 1e3 if rejects and self.outputs.reject else None
        t3 = time.perf_counter()
        timing = dict(result.timing, capture_ms=capture_ms)
        timing["decision_ms"] = (t3 - t1) * 1e3 - sum(result.timing.values())
        grid = result.tile_grid if result.spec.tiled else None
        row = self.journal.decision(
            frame.index, frame.name, verdict.score, verdict.threshold.value, verdict.decision.value, t_ref, timing,
            reject_at, threshold_source=verdict.threshold.source, bundle_digest=self.detector.bundle.digest,
            reason=verdict.reason or None,
            tiles={"tile_grid": grid, "worst_tile": list(result.worst_tile)} if grid else None)
        t4 = time.perf_counter()
        if reject_at is not None:
            self._schedule_reject(frame, reject_at, row)
        if self.handshake is not None:
            self.handshake.result(verdict.decision)
        self.rejects_in_row = self.rejects_in_row + 1 if rejects else 0
        self._watch_drift(frame, result)
        self._update_alarm()
        self.frames += 1
        self._archive(frame, result, row)
        timing["journal_ms"] = (t4 - t3) * 1e3
        timing["after_capture_ms"] = (t4 - t1) * 1e3
        self.last_timing = timing
        self.last_result = result

    def _roi(self, frame) -> np.ndarray | None:
        """The frame after the camera ROI (``None``: no image, or the ROI does not fit it)."""
        if frame.image is None:
            return None
        try:
            return crop(frame.image, self.cfg.camera.roi)
        except CameraError:
            return None

    def _watch_drift(self, frame, result) -> None:
        """Hand the part to the drift watch (its own thread: the frame path only queues a reference)
        and journal the state changes it reported since the last part."""
        if self.drift is not None:
            self._drift_parts.append((result.score, result.decision))
            if len(self._drift_parts) >= self.cfg.drift.image_every:
                self.drift.submit_many(self._drift_parts, self._roi(frame))
                self._drift_parts = []
        if self.drift is not None and self.drift.changes:
            self._journal_drift()

    def _journal_drift(self) -> None:
        """Each drift state change as a ``drift`` event (main thread); the alarm follows the journaled state."""
        while self.drift is not None and self.drift.changes:
            change = self.drift.changes.popleft()
            (log.info if change.level == "ok" else log.warning)("drift watch: %s", change.message)
            self.journal.event(DRIFT_EVENT, change.message)
            self.drift_level = change.level

    def _inspect(self, frame):
        """The frame's :class:`~device.detector.FrameResult`; a frame the source could not decode
        or whose ROI does not fit is an ERROR result (fail closed), like any scoring failure."""
        det = self.detector
        error = getattr(frame, "error", None)
        if error or frame.image is None:
            return det.error(f"cannot decode frame: {error or 'no image'}")
        try:
            image = crop(frame.image, self.cfg.camera.roi)
        except CameraError as exc:
            return det.error(str(exc))
        return det.inspect(image)

    def _track_model_state(self, frame, result) -> None:
        """``model_error`` / ``model_ok`` events on changes (not one per frame); the alarm follows
        ``[outputs] alarm_on_model_error`` while frames cannot be scored."""
        if result.decision is Decision.ERROR:
            if not self.model_error:
                log.error("frame %d (%s): %s", frame.index, frame.name, result.reason)
                self.journal.event("model_error", f"frame {frame.index} ({frame.name}): {result.reason}")
            self.model_error = True
        elif self.model_error:
            self.model_error = False
            self.journal.event("model_ok", f"frame {frame.index} scored")

    def _schedule_reject(self, frame, reject_at: float, row: int) -> None:
        late = time.monotonic() - reject_at
        if late > 0.002 and self.cfg.outputs.reject_delay_ms > 0:   # with no delay every pulse is "late"
            log.warning("frame %d: reject pulse %.1f ms late (processing slower than the delay)",
                        frame.index, late * 1e3)
        self.outputs.pulse(reject_at, self.cfg.outputs.reject_width_ms / 1e3, tag=row)

    def _archive(self, frame, result, row: int) -> None:
        """Every reject and one pass in ``archive_pass_every`` (the first one included), as the clean
        frame after the camera ROI (what ``learn`` learns from); tiled bundles also get their tile (or
        patch) map drawn over it as a sibling ``*_overlay.png`` (:func:`device.archive.overlay_path`),
        drawn off the frame path."""
        if self.archive is None:
            return
        every = self.cfg.journal.archive_pass_every
        if not result.rejects:
            self.passes += 1
        if not (result.rejects or (every and (self.passes - 1) % every == 0)):
            return
        image = self._roi(frame)
        if image is None:
            image = frame.image              # the ROI does not fit the frame (an ERROR row): keep it whole
        if image is None:
            return
        overlay = None
        if result.tile_scores is not None and result.spec.tiled:
            overlay = (result.tile_scores, result.spec, result.threshold.value, None, result.patch_scores)
        path = self.archive.submit(image, frame.index, str(result.decision), overlay=overlay)
        if path:
            self.journal.set_image(row, path)

    def _status(self) -> None:
        every = self.cfg.service.status_every_s
        now = time.monotonic()
        if every and now - self._last_status >= every:
            self._last_status = now
            s = f"{self.frames} parts, camera {'ok' if self.camera_up else 'FAULT'}, alarm {self.outputs.alarm_on}"
            log.info("status: %s", s)
            self.notifier.status(s)

    # ----------------------------------------------------------------- reload
    def reload(self) -> bool:
        """Swap in a new config and bundle atomically; on any error keep the old ones."""
        self.notifier.reloading()
        old = self.cfg
        try:
            new = load_config(self.config_path) if self.config_path else old
            det = build_detector(new)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with the new ones, keep inspecting
            log.error("reload failed, keeping the running bundle and config: %s", exc)
            self.journal.event("reload_failed", str(exc))
            self.notifier.ready(f"reload failed: {str(exc)[:200]}")
            return False
        new = _restart_only_kept(old, new)
        old_det, self.detector, self.cfg = self.detector, det, new
        old_det.close()
        if new.trigger != old.trigger:
            self.trigger.close()
            self.trigger = self._make_trigger(new)
        if new.camera != old.camera and self._given_source is None:
            self.source.close()
            self.camera_up = False
            self.source = make_source(new.camera)
            self._open_camera()
        msg = (f"bundle {new.bundle.path} ({det.bundle.digest}), threshold {det.threshold.value:.6f} "
               f"({det.threshold.source})")
        log.info("reloaded: %s", msg)
        self.journal.event("reload", msg)
        self._watch_bundle()
        self._update_alarm()
        self.notifier.ready(f"reloaded: {msg}")
        return True

    # ----------------------------------------------------------------- run / stop
    def run(self, signals: bool = True) -> int:
        """Start, loop until stopped or the replay ends, shut down safely; returns the exit code."""
        old = self.install_signal_handlers() if signals else {}
        # The pulse thread must get the GIL within ~1 ms of its deadline, not Python's default 5 ms.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, 0.0005))
        code = 0
        try:
            self.start()
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                if not self.step():
                    break
                if self.max_frames is not None and self.frames >= self.max_frames:
                    break
                self._status()
        except JournalError as exc:
            code = self._on_journal_fault(exc)
        finally:
            self.shutdown()
            sys.setswitchinterval(switch)
            for s, h in old.items():
                signal.signal(s, h)
        return EXIT_JOURNAL_FAULT if self.journal_fault is not None else code

    def _on_journal_fault(self, exc: JournalError) -> int:
        """Safe level, alarm, one line naming the journal and the cause; the exit code for systemd."""
        self.journal_fault = exc
        if self.handshake is not None:
            self.handshake.fault(True)          # READY off: nothing more is inspected
        if self.outputs is not None:
            self.outputs.fault(True)            # queued pulses of journaled rejects still fire
            self.outputs.set_alarm(True)
        log.critical("%s; reject line held at its safe level, alarm raised, exiting (status %d) for a restart",
                     exc, EXIT_JOURNAL_FAULT)
        self.notifier.status(f"journal fault: {exc}"[:200])
        return EXIT_JOURNAL_FAULT

    def shutdown(self) -> None:
        """Handshake lines to their safe level, queued pulses fire, outputs go to the safe level,
        journal flushed, camera lock released. Idempotent. After a journal fault nothing more is
        written to the journal and the alarm stays raised."""
        if self._shut:
            return
        self._shut = True
        self.notifier.stopping()
        if self.handshake is not None:
            self.handshake.close()             # READY off first: the PLC stops triggering
        if self.source is not None:
            self.source.close()
        if self.trigger is not None:
            self.trigger.close()
            self.trigger = None
        if self.outputs is not None:
            o = self.cfg.outputs
            if self.journal_fault is None:
                self.outputs.set_alarm(False)
            self.outputs.close(drain_s=(o.reject_delay_ms + o.reject_width_ms) / 1e3 + 0.5)
            self.outputs = None
        if self.archive is not None:
            self.archive.close()
            self.archive = None
        if self.journal is not None:
            if self.journal_fault is None and not self._refused:
                try:
                    self._stop_drift()
                    self._journal_dropped()
                    self._journal_missed()
                    self.journal.event("stop", f"{self.frames} parts")
                except JournalError as exc:     # the fault showed only now: still one clear line
                    self._on_journal_fault(exc)
            if self._own_journal:
                self.journal.close()
                self.journal = None
        if self.drift is not None:             # not journaled (journal fault): just stop the thread
            self.drift.close()
            self.drift = None
        if self._lock is not None:
            self._lock.close()                 # last: a deploy waiting on the journal sees the stop first
            self._lock = None
        self.notifier.close()
