"""Drift watch: is the line still showing the model what it was trained on?

Two cheap signals, combined into one state ``ok`` / ``warning`` / ``drift`` with its reason:

1. **PASS scores against the bundle's calibration scores.** A rolling window of the scores
   of passed parts is compared with the bundle's held-out normal scores *truncated at the
   running threshold* (a PASS score is by definition <= threshold, so both sides are the
   same conditional distribution when nothing has changed) by a two-sample
   Kolmogorov-Smirnov test. ``p < warn_p`` is a warning, ``p < drift_p`` drift (left again
   once ``p`` is :data:`EXIT_FACTOR` times above the limit).
   The test runs on every ``score_every``-th PASS score (its cost is ~0.1 ms).
   Limits: the p-value uses the asymptotic Kolmogorov distribution (accurate for a window
   and calibration set of a few dozen scores or more; the test is skipped below
   ``min_scores``); it assumes independent parts — a run of near-identical parts makes it
   over-confident, which is why the default levels are far below the usual 0.05 and a level
   must persist for ``persist`` evaluations; a scene that is rejected outright brings no
   PASS scores at all, which is what the image statistics are for.
2. **Image statistics against the training images.** Per frame, on a grey copy
   downscaled to :data:`STATS_WIDTH` pixels wide: mean brightness and sharpness (variance
   of the Laplacian). The median over the last ``stats_window`` frames is compared with the
   median of the training images, which the bundle records (``image_stats``, see
   :func:`image_stats`). Brightness: drift when ``|median - reference| / max(reference, 16)``
   exceeds ``brightness_tolerance`` (warning at half of it). Sharpness: drift when the ratio
   leaves ``[1 / (1 + t), 1 + t]`` for ``t = sharpness_tolerance`` (warning at half of ``t``;
   a level is left below :data:`EXIT_RATIO` of its limit).
   A bundle without ``image_stats`` falls back to the first ``reference_frames`` frames of
   the run as reference, and every state says so.

A level must hold for ``persist`` consecutive updates (frames) before the state moves (up or
down), so a single odd frame does not flap the state. :meth:`DriftMonitor.update` returns
the new :class:`DriftState` only when the level changes: that is what the service journals.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> m = DriftMonitor(rng.normal(1, 0.1, 300), threshold=2.0, window=200, persist=1)
    >>> [m.update_values(s, "PASS") for s in rng.normal(1, 0.1, 200)].count(None)
    200
    >>> changes = [m.update_values(s, "PASS") for s in rng.normal(1.3, 0.1, 200)]
    >>> m.state.level
    'drift'
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import logging
import math
from typing import Any, Iterable

import numpy as np

log = logging.getLogger(__name__)

LEVELS = ("ok", "warning", "drift")
STATS_WIDTH = 160          # frames are downscaled to this width for the statistics
BRIGHTNESS_FLOOR = 16.0    # relative brightness change is taken against max(reference, this)
EXIT_FACTOR = 10.0         # a score-test level is left once p exceeds EXIT_FACTOR x its limit
EXIT_RATIO = 0.8           # an image-statistics level is left below EXIT_RATIO x its limit


# ---------------------------------------------------------------- image statistics
def frame_stats(image: np.ndarray) -> tuple[float, float]:
    """``(mean brightness, sharpness)`` of a uint8 RGB or grey frame, on a grey copy
    :data:`STATS_WIDTH` pixels wide (bilinear resize). Sharpness is the variance of the Laplacian.

    Example:
        >>> b, s = frame_stats(np.full((48, 64, 3), 100, np.uint8))
        >>> round(b), round(s)
        (100, 0)
    """
    import cv2

    h, w = image.shape[:2]
    if w > STATS_WIDTH:     # bilinear: ~0.05 ms for 640x480 RGB (area: ~0.3 ms); the same on both sides
        image = cv2.resize(image, (STATS_WIDTH, max(8, round(h * STATS_WIDTH / w))), interpolation=cv2.INTER_LINEAR)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    mean = float(cv2.mean(grey)[0])
    _, std = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_32F))
    return mean, float(std[0, 0]) ** 2


def _summary(values: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(values)), "mean": float(values.mean()), "std": float(values.std()),
            "p05": float(np.percentile(values, 5)), "p95": float(np.percentile(values, 95))}


def image_stats(images: Iterable) -> dict[str, Any]:
    """The bundle's ``image_stats`` record for its training images (paths or arrays).

    Returns:
        ``{"method", "n", "brightness": {median, mean, std, p05, p95}, "sharpness": {...}}``.

    Example:
        >>> image_stats([np.full((32, 32), v, np.uint8) for v in (90, 100, 110)])["brightness"]["median"]
        100.0
    """
    from device.preprocess import decode_image

    vals = np.array([frame_stats(decode_image(im) if not isinstance(im, np.ndarray) else im) for im in images],
                    np.float64).reshape(-1, 2)
    if len(vals) == 0:
        raise ValueError("image_stats needs at least one image")
    return {"method": f"grey, bilinear-downscaled to {STATS_WIDTH} px wide; brightness = mean, "
                      "sharpness = variance of the Laplacian",
            "n": int(len(vals)), "brightness": _summary(vals[:, 0]), "sharpness": _summary(vals[:, 1])}


# ---------------------------------------------------------------- the two-sample test
def kolmogorov_sf(lam: float) -> float:
    """Survival function of the Kolmogorov distribution, ``P(K > lam)``."""
    if lam < 0.2:
        return 1.0
    k = np.arange(1, 101)
    return float(min(1.0, max(0.0, 2.0 * np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * k * k * lam * lam)))))


def ks_2samp(a_sorted: np.ndarray, b_sorted: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov ``(D, p)`` of two *sorted* samples (asymptotic p-value
    with Stephens' small-sample correction, as in Numerical Recipes ``kstwo``).

    Example:
        >>> d, p = ks_2samp(np.arange(100.0), np.arange(100.0) + 50)
        >>> d, p < 1e-8
        (0.5, True)
    """
    n, m = len(a_sorted), len(b_sorted)
    both = np.concatenate([a_sorted, b_sorted])
    d = float(np.max(np.abs(np.searchsorted(a_sorted, both, "right") / n
                            - np.searchsorted(b_sorted, both, "right") / m)))
    en = math.sqrt(n * m / (n + m))
    return d, kolmogorov_sf((en + 0.12 + 0.11 / en) * d)


# ---------------------------------------------------------------- the monitor
@dataclasses.dataclass(frozen=True)
class DriftState:
    """The watch's verdict: ``level`` (ok / warning / drift), a one-line ``reason`` and the
    figures behind it (``signals``)."""

    level: str
    reason: str
    signals: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def message(self) -> str:
        return f"{self.level}: {self.reason}"


@dataclasses.dataclass
class _Signal:
    level: str = "ok"
    reason: str = ""
    figures: dict = dataclasses.field(default_factory=dict)


class DriftMonitor:
    """Rolling drift watch over decisions and frames (see the module docstring).

    Args:
        calibration_scores: the bundle's held-out normal scores (``None``: score test off).
        threshold: the running threshold (calibration scores above it are left out).
        reference: the bundle's ``image_stats`` record (``None``: the first ``reference_frames``
            frames become the reference).
        window: PASS scores kept for the test. min_scores: fewest scores tested (default
            ``min(window, 50)``).
        warn_p, drift_p: p-value levels of the score test.
        brightness_tolerance, sharpness_tolerance: relative limits of the image statistics.
        stats_window: frames in the image-statistics median.
        persist: updates (frames) a level must hold before the state moves.
        score_every: the score test runs on every n-th PASS score.
    """

    def __init__(self, calibration_scores=None, threshold: float | None = None, reference: dict | None = None,
                 window: int = 500, warn_p: float = 1e-4, drift_p: float = 1e-7,
                 brightness_tolerance: float = 0.15, sharpness_tolerance: float = 0.5, stats_window: int = 25,
                 reference_frames: int = 100, persist: int = 3, min_scores: int | None = None,
                 score_every: int = 10):
        if not 0 < drift_p <= warn_p < 1:
            raise ValueError(f"need 0 < drift_p <= warn_p < 1, found drift_p={drift_p}, warn_p={warn_p}")
        cal = None if calibration_scores is None else np.asarray(calibration_scores, np.float64)
        if cal is not None and threshold is not None:
            cal = cal[cal <= threshold]
        self.calibration = np.sort(cal[np.isfinite(cal)]) if cal is not None and cal.size else None
        self.window, self.warn_p, self.drift_p = int(window), float(warn_p), float(drift_p)
        self.min_scores = int(min_scores if min_scores is not None else min(window, 50))
        self.tol_b, self.tol_s = float(brightness_tolerance), float(sharpness_tolerance)
        self.persist = max(1, int(persist))
        self.score_every = max(1, int(score_every))
        self._n_scores = 0
        self._scores: collections.deque = collections.deque()
        self._sorted: list[float] = []
        self._bright: collections.deque = collections.deque(maxlen=int(stats_window))
        self._sharp: collections.deque = collections.deque(maxlen=int(stats_window))
        self.reference_frames = int(reference_frames)
        self._ref_collect: list[tuple[float, float]] = []
        self.reference_source = "bundle image_stats"
        self.ref = None
        if reference and "brightness" in reference and "sharpness" in reference:
            self.ref = (float(reference["brightness"]["median"]), float(reference["sharpness"]["median"]))
        else:
            self.reference_source = (f"first {self.reference_frames} frames of this run "
                                     f"(the bundle records no image_stats)")
        self.signals = {"scores": _Signal(), "image": _Signal()}
        self.state = DriftState("ok", "no data yet")
        self._pending: tuple[str, int] = ("ok", 0)
        self.frames = 0

    @classmethod
    def from_bundle(cls, bundle, threshold: float, cfg=None) -> "DriftMonitor":
        """A monitor for a loaded bundle with the ``[drift]`` settings of ``cfg``
        (:class:`device.config.DriftConfig`, or ``None`` for the defaults)."""
        keys = ("window", "warn_p", "drift_p", "brightness_tolerance", "sharpness_tolerance")
        kw = {k: getattr(cfg, k) for k in keys} if cfg is not None else {}
        m = bundle.manifest
        stats = m.get("image_stats") if isinstance(m, dict) else m.image_stats
        return cls(bundle.calibration_scores, threshold, stats, **kw)

    def describe(self) -> str:
        cal = f"{len(self.calibration)} calibration scores" if self.calibration is not None else \
            "no calibration scores (score test off)"
        return (f"drift watch: PASS-score window {self.window} vs {cal}; image statistics vs "
                f"{self.reference_source}")

    # ------------------------------------------------------------ feeding
    def update(self, result, image: np.ndarray | None = None) -> DriftState | None:
        """Feed one decision (an object with ``.score`` and ``.decision``, e.g. the detector's
        ``FrameResult``) and optionally its frame (after the camera ROI). Returns the new state
        when the level changed, else ``None``."""
        stats = frame_stats(image) if image is not None else None
        return self.update_values(getattr(result, "score", None), getattr(result, "decision", None), stats)

    def update_values(self, score: float | None, decision, stats: tuple[float, float] | None = None
                      ) -> DriftState | None:
        """:meth:`update` with the figures given directly (``stats`` from :func:`frame_stats`)."""
        self.frames += 1
        if decision == "PASS" and score is not None and math.isfinite(score):
            self._add_score(float(score))
            self._n_scores += 1
            if self._n_scores % self.score_every == 0:
                self.signals["scores"] = self._score_signal()
        if stats is not None:
            self.signals["image"] = self._image_signal(*stats)
        return self._settle()

    def _add_score(self, s: float) -> None:
        self._scores.append(s)
        bisect.insort(self._sorted, s)
        if len(self._scores) > self.window:
            old = self._scores.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    # ------------------------------------------------------------ the signals
    def _score_signal(self) -> _Signal:
        if self.calibration is None or len(self.calibration) < 5 or len(self._scores) < self.min_scores:
            return self.signals["scores"]
        d, p = ks_2samp(np.asarray(self._sorted), self.calibration)
        med, ref = self._sorted[len(self._sorted) // 2], float(np.median(self.calibration))
        fig = {"ks_d": round(d, 4), "p": p, "n": len(self._sorted), "median": med, "calibration_median": ref}
        prev = LEVELS.index(self.signals["scores"].level)
        # hysteresis: a level is left only once p is EXIT_FACTOR times above its limit
        lim = [1.0, self.warn_p * (EXIT_FACTOR if prev >= 1 else 1), self.drift_p * (EXIT_FACTOR if prev >= 2 else 1)]
        level = "drift" if p < lim[2] else "warning" if p < lim[1] else "ok"
        why = (f"PASS scores differ from calibration (KS p={p:.1e} over the last {len(self._sorted)}, "
               f"median {med:.4g} vs {ref:.4g})")
        return _Signal(level, why if level != "ok" else "", fig)

    def _image_signal(self, brightness: float, sharpness: float) -> _Signal:
        if self.ref is None:
            self._ref_collect.append((brightness, sharpness))
            if len(self._ref_collect) < self.reference_frames:
                return _Signal("ok", "", {"learning_reference": len(self._ref_collect)})
            ref = np.median(np.array(self._ref_collect), axis=0)
            self.ref = (float(ref[0]), float(ref[1]))
            log.info("drift reference from the first %d frames: brightness %.1f, sharpness %.1f",
                     self.reference_frames, *self.ref)
        self._bright.append(brightness)
        self._sharp.append(sharpness)
        b, s = float(np.median(self._bright)), float(np.median(self._sharp))
        rb, rs = self.ref
        signed_b = (b - rb) / max(rb, BRIGHTNESS_FLOOR)
        rel_b = abs(signed_b)
        ratio_s = (s + 1e-6) / (rs + 1e-6)
        dev_s = max(ratio_s, 1.0 / ratio_s) - 1.0
        fig = {"brightness": round(b, 2), "brightness_ref": round(rb, 2), "sharpness": round(s, 2),
               "sharpness_ref": round(rs, 2), "reference": self.reference_source}
        parts, level = [], "ok"
        prev = LEVELS.index(self.signals["image"].level)
        tb, ts = self.tol_b, self.tol_s
        for dev, tol, txt in ((rel_b, tb, f"brightness {b:.0f} vs {rb:.0f} ({100 * signed_b:+.0f} %, limit "
                                          f"{100 * tb:.0f} %)"),
                              (dev_s, ts, f"sharpness {s:.0f} vs {rs:.0f} (x{ratio_s:.2f}, limit x{1 / (1 + ts):.2f}"
                                          f" to x{1 + ts:.2f})")):
            k = EXIT_RATIO if prev else 1.0      # hysteresis: leave a level below EXIT_RATIO of its limit
            lv = "drift" if dev > tol * (k if prev >= 2 else 1.0) else "warning" if dev > tol / 2 * k else "ok"
            if lv != "ok":
                parts.append(txt)
                level = max(level, lv, key=LEVELS.index)
        why = "; ".join(parts) + (f" [reference: {self.reference_source}]" if parts else "")
        return _Signal(level, why, fig)

    # ------------------------------------------------------------ state
    def _settle(self) -> DriftState | None:
        level = max((s.level for s in self.signals.values()), key=LEVELS.index)
        if level == self.state.level:
            self._pending = (level, 0)
            return None
        n = self._pending[1] + 1 if self._pending[0] == level else 1
        self._pending = (level, n)
        if n < self.persist:
            return None
        reason = "; ".join(s.reason for s in self.signals.values() if s.level == level) or \
            "PASS scores and image statistics back within limits"
        self.state = DriftState(level, reason, {k: dict(v.figures) for k, v in self.signals.items()})
        self._pending = (level, 0)
        return self.state

    def summary(self) -> dict[str, Any]:
        """The current state and figures (for ``status`` and the panel)."""
        return {"level": self.state.level, "reason": self.state.reason, "frames": self.frames,
                "reference": self.reference_source,
                "signals": {k: {"level": v.level, **v.figures} for k, v in self.signals.items()}}


# ---------------------------------------------------------------- off the frame path
class DriftWorker:
    """Feeds a :class:`DriftMonitor` from its own thread, so the frame loop only queues a reference
    to the frame: the image statistics (OpenCV, which releases the GIL) and the score test run
    beside the next part's capture and inference instead of before them. State changes wait in
    :attr:`changes` for the caller to journal (the journal is written from one thread).

    Args:
        monitor: the monitor to feed.
        queue_size: frames waiting; beyond it a frame is left out of the watch (counted in
            :attr:`dropped`), never waited for.

    Example:
        >>> w = DriftWorker(DriftMonitor(np.linspace(0, 1, 100), 1.0, window=50))
        >>> w.submit(0.3, "PASS", np.full((48, 64, 3), 100, np.uint8))
        True
        >>> w.flush(), w.monitor.frames
        (True, 1)
        >>> w.close()
    """

    def __init__(self, monitor: DriftMonitor, queue_size: int = 64):
        import queue
        import threading

        self.monitor = monitor
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self.changes: collections.deque = collections.deque()
        self.cost_ms: collections.deque = collections.deque(maxlen=1000)    # per frame, in the worker
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="drift", daemon=True)
        self._thread.start()

    def submit(self, score: float | None, decision, image: np.ndarray | None) -> bool:
        """Queue one decision and its frame (after the camera ROI); False when the queue is full."""
        import queue

        try:
            self._q.put_nowait((score, None if decision is None else str(decision), image))
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def submit_many(self, parts: list, image: np.ndarray | None) -> bool:
        """Queue several decisions ``[(score, decision), ...]`` and the last one's frame at once (one
        hand-over for a batch of parts: the frame path wakes the watch once per batch)."""
        import queue

        try:
            self._q.put_nowait(([(s, None if d is None else str(d)) for s, d in parts], image))
            return True
        except queue.Full:
            self.dropped += len(parts)
            return False

    def _evaluate(self, item) -> None:
        first, second, *rest = item
        parts = first if isinstance(first, list) else [(first, second)]
        image = rest[0] if rest else second
        for i, (score, decision) in enumerate(parts):
            last = i == len(parts) - 1
            change = self.monitor.update_values(score, decision,
                                                frame_stats(image) if last and image is not None else None)
            if change is not None:
                self.changes.append(change)

    def _run(self) -> None:
        import time

        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                t0 = time.perf_counter()
                self._evaluate(item)
                self.cost_ms.append((time.perf_counter() - t0) * 1e3)
            except Exception:  # noqa: BLE001 - the watch must never take the service down
                log.exception("drift watch: a frame could not be evaluated")
            finally:
                self._q.task_done()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued frame was evaluated; False on timeout."""
        from device.lifecycle import wait_drained

        return wait_drained(self._q, self._thread, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Evaluate what is queued, then stop the thread. Idempotent."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join(timeout)


# ---------------------------------------------------------------- in the journal
EVENT = "drift"            #: the journal event kind of a drift state change ("<level>: <reason>")


def parse_event(message: str | None) -> tuple[str, str]:
    """``(level, reason)`` of a ``drift`` event's message (``"warning: brightness 140 vs 100 ..."``);
    levels are ``ok``, ``warning``, ``drift`` and ``off`` (the watch is disabled).

    Example:
        >>> parse_event("drift: sharpness 12 vs 80 (x0.15, limit x0.67 to x1.50)")
        ('drift', 'sharpness 12 vs 80 (x0.15, limit x0.67 to x1.50)')
    """
    level, _, reason = (message or "").partition(": ")
    if level not in (*LEVELS, "off"):
        return "unknown", message or ""
    return level, reason


def journal_state(journal) -> dict[str, Any] | None:
    """The drift state as the service last journaled it (``status``, the panel): ``{"level",
    "reason", "since"}`` (``since``: wall time of the change), or ``None`` before any drift event.

    Example:
        >>> from device.journal import Journal
        >>> with Journal(":memory:") as j:
        ...     j.event("drift", "warning: brightness 120 vs 100 (+20 %, limit 15 %)")
        ...     journal_state(j)["level"]
        'warning'
    """
    ev = journal.last_event(EVENT)
    if ev is None:
        return None
    level, reason = parse_event(ev["message"])
    return {"level": level, "reason": reason, "since": ev["ts"]}
