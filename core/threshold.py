"""One threshold calibration for every detector (numpy only).

A part is rejected when its score is strictly greater than the threshold
(:func:`core.decision.decide`). The threshold is chosen from scores of normal images not used
to build the model (held out, or cross-fitted: each image scored against a bank without it)
so that about ``target_frr`` of good parts score above it, with an estimator that says how
honest that rate is when the images are few:

* ``order`` (conformal order statistic): the ``j``-th largest of the n scores with
  ``j = floor(rate * (n + 1))``. For exchangeable normal scores the false-reject rate of a new
  good part is Beta(j, n + 1 - j) over calibration draws: expected ``j / (n + 1)`` <= rate, and
  an upper bound from its quantile. The lowest rate it can promise is ``1 / (n + 1)`` (``j = 1``,
  the largest score).
* ``tail`` (peaks over threshold): above the ``TAIL_QUANTILE`` quantile ``u`` the ``m``
  excesses are modelled as exponential (the generalised-Pareto tail with shape 0: one parameter,
  stable with ~10 points). The threshold is the **predictive** quantile: with the scale unknown
  (reference prior 1 / beta) a new excess exceeds ``x`` with probability ``(1 + x / S) ** -m``,
  ``S`` the sum of the excesses, so ``t = u + S * ((p_u / rate) ** (1 / m) - 1)``, ``p_u`` the
  share above ``u`` (a beta-expectation tolerance limit: the expected false-reject rate is the
  target, where the plug-in ``u + beta * ln(p_u / rate)`` ignores that beta came from ~10
  points and rejects more; 30 images: ~20 % higher above ``u``, 100 images: ~6 %); never below
  the largest score. Its uncertainty comes from a bootstrap of the scores.
* ``auto`` (what ``fit``, the device's ``learn``, ``deploy --target-frr`` and
  :meth:`device.bundle.Bundle.threshold_for` use): ``order`` when ``n + 1 >= 1 / rate`` (the data
  support the target), else ``tail`` with a warning naming the rate n supports and the n needed.

``calibrate_threshold`` gives the value, :func:`describe_calibration` the manifest record
(value, n, estimator, uncertainty, supported rate). Every input is validated: the scores must be
a non-empty 1-D array of finite numbers, the rate a number in [0, 1); anything else raises
``ValueError`` saying expected vs found. A rate of 0 means "reject no calibration image": the
largest score.

Example:
    >>> calibrate_threshold([0.1, 0.2, 0.3, 0.4], target_frr=0.25)
    0.4
    >>> s = np.random.default_rng(0).gamma(4.0, 1.0, 30)
    >>> est = estimate_threshold(s, 0.01)
    >>> est["method"], est["n"], round(est["supported_frr"], 4)
    ('tail', 30, 0.0323)
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

TAIL_QUANTILE = 0.7      # excesses above this quantile are fitted (tail estimator)
TAIL_MIN_N = 5           # fewer scores: the order statistic (the largest score), with a warning
BOOTSTRAP = 400          # resamples for the tail estimator's interval
CONFIDENCE = 0.9         # interval / upper bound level recorded


def check_rate(target_frr, where: str = "target false-reject rate") -> float:
    """``target_frr`` as a float in [0, 1), else ``ValueError`` naming ``where``."""
    if isinstance(target_frr, bool) or not isinstance(target_frr, (int, float, np.floating)):
        raise ValueError(f"{where} must be a number in [0, 1), found {type(target_frr).__name__} {target_frr!r}")
    v = float(target_frr)
    if not (math.isfinite(v) and 0.0 <= v < 1.0):
        raise ValueError(f"{where} must be in [0, 1), found {target_frr!r}")
    return v


def check_scores(normal_scores: Sequence[float], where: str = "calibration scores") -> np.ndarray:
    """Normal scores as a float64 1-D array: non-empty, every value finite."""
    s = np.asarray(normal_scores)
    if s.dtype == object or s.dtype.kind not in "fiu":
        raise ValueError(f"{where} must be numbers, found dtype {s.dtype}")
    s = s.astype(np.float64)
    if s.ndim != 1:
        raise ValueError(f"{where} must be a 1-D array of scores, found shape {s.shape}")
    if s.size == 0:
        raise ValueError(f"{where}: threshold calibration needs at least one normal score")
    bad = int((~np.isfinite(s)).sum())
    if bad:
        raise ValueError(f"{where}: {bad} of {s.size} scores are not finite (NaN or infinite)")
    return s


# ---------------------------------------------------------------------------- the order statistic


def _beta_cdf_int(x: float, a: int, b: int) -> float:
    """CDF of Beta(a, b) for integer a, b >= 1: P(Binomial(a + b - 1, x) >= a)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    n = a + b - 1
    i = np.arange(a, dtype=np.float64)
    logc = np.array([math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in range(a)])
    below = float(np.exp(logc + i * math.log(x) + (n - i) * math.log1p(-x)).sum())
    return min(1.0, max(0.0, 1.0 - below))


def beta_quantile(q: float, a: int, b: int) -> float:
    """``q`` quantile of Beta(a, b) for integer parameters (bisection; numpy only).

    Example:
        >>> round(beta_quantile(0.5, 1, 1), 6), round(beta_quantile(0.9, 1, 30), 4)
        (0.5, 0.0739)
    """
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _beta_cdf_int(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def order_statistic(scores: Sequence[float], target_frr: float, confidence: float = CONFIDENCE) -> dict:
    """Conformal order-statistic threshold and its exact false-reject distribution.

    Returns:
        ``value``, ``rank_from_top`` (j: the j-th largest score), ``expected_frr`` = j / (n + 1),
        ``frr_upper`` (the ``confidence`` quantile of Beta(j, n + 1 - j)), ``supported_frr`` =
        1 / (n + 1), ``target_supported`` (expected_frr <= target).

    Example:
        >>> r = order_statistic(np.arange(1.0, 100.0), 0.05)
        >>> r["value"], r["rank_from_top"], round(r["expected_frr"], 3)
        (95.0, 5, 0.05)
    """
    s = np.sort(check_scores(scores))
    rate = check_rate(target_frr)
    n = s.size
    j = max(1, min(n, int(math.floor(rate * (n + 1) + 1e-9))))   # j-th largest: E[FRR] = j/(n+1) <= rate
    return {"method": "order", "value": float(s[n - j]), "n": n, "rank_from_top": j,
            "expected_frr": j / (n + 1), "frr_upper": beta_quantile(confidence, j, n + 1 - j),
            "confidence": confidence, "supported_frr": 1.0 / (n + 1), "target_frr": rate,
            "target_supported": rate > 0 and j / (n + 1) <= rate + 1e-12 and rate * (n + 1) >= 1 - 1e-9}


# ---------------------------------------------------------------------------- the tail fit


def _tail_fit(s: np.ndarray, tail_q: float) -> tuple[float, np.ndarray, float]:
    """``(u, excesses above u, share above u)`` of the sorted scores ``s``."""
    u = float(np.quantile(s, tail_q))
    exc = s[s > u] - u
    return u, exc, exc.size / s.size


def _tail_value(s: np.ndarray, target_frr: float, tail_q: float) -> float:
    u, exc, p_u = _tail_fit(s, tail_q)
    if exc.size == 0 or p_u <= target_frr:
        return float(np.quantile(s, 1 - target_frr)) if p_u > 0 else u
    return u + float(exc.sum()) * ((p_u / target_frr) ** (1.0 / exc.size) - 1.0)   # predictive quantile


def tail_extrapolation(scores: Sequence[float], target_frr: float, tail_q: float = TAIL_QUANTILE,
                       confidence: float = CONFIDENCE, seed: int = 0, boot: int = BOOTSTRAP) -> dict:
    """Exponential peaks-over-threshold estimate of the ``1 - target_frr`` quantile (predictive:
    the scale's own uncertainty included, see the module docstring).

    Returns:
        ``value``, ``ci`` (bootstrap ``confidence`` interval of the threshold), ``frr_at_ci``
        (the fitted tail's rate at the interval ends: how wrong the rate may be), ``n``.

    Example:
        >>> s = np.random.default_rng(1).exponential(1.0, 2000)
        >>> bool(abs(tail_extrapolation(s, 0.01)["value"] - np.log(100)) < 0.3)
        True
    """
    s = np.sort(check_scores(scores))
    rate = check_rate(target_frr)
    if s.size < TAIL_MIN_N or rate <= 0:
        raise ValueError(f"tail extrapolation needs >= {TAIL_MIN_N} finite normal scores and a rate > 0, found "
                         f"{s.size} scores and rate {rate}")
    value = _tail_value(s, rate, tail_q)
    rng = np.random.default_rng(seed)
    boots = np.array([_tail_value(np.sort(rng.choice(s, s.size)), rate, tail_q) for _ in range(boot)])
    lo, hi = np.quantile(boots, [(1 - confidence) / 2, (1 + confidence) / 2]) if boot else (value, value)
    u, exc, p_u = _tail_fit(s, tail_q)
    beta_ = float(exc.mean()) if exc.size else 1e-12

    def fitted_rate(t):   # the predictive exceedance the threshold was solved with
        if t <= u or not exc.size:
            return float((s > t).mean())
        return float(min(1.0, p_u * (1.0 + (t - u) / max(float(exc.sum()), 1e-12)) ** -exc.size))

    return {"method": "tail", "value": float(value), "n": int(s.size), "target_frr": rate,
            "tail_quantile": tail_q, "tail_scale": beta_, "tail_excesses": int(exc.size),
            "tail_model": "exponential excesses, predictive quantile", "ci": [float(lo), float(hi)],
            "confidence": confidence,
            "frr_at_ci": [fitted_rate(float(hi)), fitted_rate(float(lo))]}


# ---------------------------------------------------------------------------- the estimator


def estimate_threshold(scores: Sequence[float], target_frr: float = 0.01, method: str = "auto",
                       confidence: float = CONFIDENCE, uncertainty: bool = True) -> dict:
    """The threshold and everything a manifest should say about it.

    Args:
        scores: cross-fitted (or held-out) scores of normal images.
        target_frr: wanted false-reject rate of good parts (0: the largest score).
        method: ``order``, ``tail`` or ``auto`` (see the module docstring).
        uncertainty: compute the tail fit's bootstrap interval (the value does not depend on it).

    Returns:
        ``value``, ``method`` (order / tail), ``n``, ``target_frr``, ``supported_frr`` (1 / (n + 1):
        what the order statistic can promise), ``expected_frr`` / ``frr_upper`` (order) or ``ci`` /
        ``frr_at_ci`` (tail), and ``warning`` (None when the data support the target).
    """
    if method not in ("auto", "order", "tail"):
        raise ValueError(f"unknown threshold method {method!r}; expected auto, order or tail")
    order = order_statistic(scores, target_frr, confidence)
    n, rate = order["n"], order["target_frr"]
    if rate == 0.0:
        return {**order, "warning": None}
    use_tail = method == "tail" or (method == "auto" and not order["target_supported"] and n >= TAIL_MIN_N)
    warning = None if order["target_supported"] else _warning(n, rate, use_tail)
    if not use_tail:
        return {**order, "warning": warning}
    tail = tail_extrapolation(scores, rate, confidence=confidence, boot=BOOTSTRAP if uncertainty else 0)
    value = max(tail["value"], order["value"]) if not order["target_supported"] else tail["value"]
    return {**tail, "value": float(value), "supported_frr": order["supported_frr"],
            "order_statistic": {k: order[k] for k in ("value", "rank_from_top", "expected_frr", "frr_upper")},
            "warning": warning}


def _warning(n: int, rate: float, tail: bool) -> str:
    need = int(math.ceil(1 / rate)) - 1
    how = "extrapolated from the score tail" if tail else "not supported: the threshold is the largest score"
    msg = (f"{n} normal images support a false-reject rate of {1 / (n + 1):.1%} at best (order statistic); "
           f"the {rate:.1%} target is {how}. Give at least {need} good images for an empirical "
           f"{rate:.1%} threshold.")
    log.warning("threshold: %s", msg)
    return msg


def calibrate_threshold(normal_scores: Sequence[float], target_frr: float = 0.01) -> float:
    """The threshold value of :func:`estimate_threshold` (``auto``) at ``target_frr``."""
    return float(estimate_threshold(normal_scores, check_rate(target_frr), uncertainty=False)["value"])


def false_reject_rate(normal_scores: Sequence[float], threshold: float) -> float:
    s = np.asarray(normal_scores, np.float64)
    return float(np.mean(s > threshold)) if s.size else 0.0


def frr_and_miss(threshold: float, normal: Sequence[float], defective: Sequence[float] | None = None) -> dict:
    """Measured false-reject rate on good parts (and miss rate on defective ones) at ``threshold``.

    Example:
        >>> frr_and_miss(1.0, [0.5, 1.5], [2.0, 0.2])
        {'frr': 0.5, 'miss': 0.5}
    """
    out = {"frr": false_reject_rate(normal, threshold)}
    if defective is not None and len(defective):
        out["miss"] = float(np.mean(np.asarray(defective) <= threshold))
    return out


def describe_calibration(normal_scores: Sequence[float], target_frr: float, method: str) -> dict:
    """Manifest entry (``threshold``): the value, how the scores were obtained (``method``), the
    estimator with its uncertainty (``estimator``), n and the rate n supports (``supported_frr``).

    Example:
        >>> r = describe_calibration(np.linspace(0, 1, 30), 0.01, "cross-fitted")
        >>> r["n_calibration"], r["estimator"]["method"], r["supported_frr"] > 0.01
        (30, 'tail', True)
    """
    s = check_scores(normal_scores)
    est = estimate_threshold(s, check_rate(target_frr))
    t = est["value"]
    keep = ("method", "rank_from_top", "expected_frr", "frr_upper", "confidence", "ci", "frr_at_ci",
            "tail_quantile", "tail_scale", "tail_excesses", "tail_model", "order_statistic", "warning")
    return {"value": t, "target_frr": float(target_frr), "method": method, "n_calibration": int(s.size),
            "achieved_frr": false_reject_rate(s, t), "normal_score_median": float(np.median(s)),
            "normal_score_max": float(s.max()), "supported_frr": float(est["supported_frr"]),
            "estimator": {"n": int(s.size), **{k: est[k] for k in keep if k in est}}}


SHIFT_MIN_AUROC = 0.65   # held-out normals scoring above the training parts by at least this much ...
SHIFT_MIN_Z = 3.0        # ... and this far beyond chance are reported as a shift of conditions


def calibration_shift(reference: Sequence[float], held: Sequence[float]) -> dict:
    """Do separate held-out normal images score above the training images? ``reference``: the
    training images' cross-fitted scores; ``held``: the held-out images' scores against the full
    bank (which favours them: a larger bank). Returns ``{"auroc"`` (probability that a held-out
    image scores above a training one), ``"z"`` (its distance from 0.5 in null standard errors,
    Mann-Whitney), ``"n_reference"``, ``"n_held"``, ``"shifted"``, and ``"warning"`` when
    shifted}: held-out good parts taken under other conditions (lighting, batch, position on the
    belt) than the training images, so the threshold calibrated on them sits higher and the bank
    does not cover them.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> calibration_shift(rng.normal(0, 1, 200), rng.normal(0, 1, 50))["shifted"]
        False
        >>> r = calibration_shift(rng.normal(0, 1, 200), rng.normal(1.5, 1, 50))
        >>> r["shifted"], r["auroc"] > 0.8
        (True, True)
    """
    from core.metrics import auroc

    a, b = check_scores(reference), check_scores(held)
    area = float(auroc(np.r_[np.zeros(a.size), np.ones(b.size)], np.r_[a, b]))
    z = (area - 0.5) / math.sqrt((a.size + b.size + 1) / (12.0 * a.size * b.size))
    out = {"auroc": round(area, 4), "z": round(float(z), 2), "n_reference": int(a.size), "n_held": int(b.size),
           "shifted": bool(area >= SHIFT_MIN_AUROC and z >= SHIFT_MIN_Z)}
    if out["shifted"]:
        out["warning"] = (f"the {b.size} held-out normal images score above the {a.size} training images (AUROC "
                          f"{area:.2f}, {z:.1f} standard errors): they show other conditions than the training "
                          "images (lighting, batch, position). The threshold calibrated on them allows for it, but "
                          "the bank does not cover it: if production looks like them, add such images to training")
    return out
