"""Threshold estimators that stay honest with few normal images (numpy only).

``fit`` sets the reject threshold so that about ``target_frr`` of good parts score above it.
With a few dozen training images today's recipe (hold out 20 %, take the ``floor(rate * n)``-th
largest held-out score) ships the maximum of ~6 scores, whose expected false-reject rate is
1/7 = 14 %, and records ``achieved_frr 0.0``. The estimators here use **every** training image
(cross-fitted scores: each image scored against a bank without it, see
``trainer.selection.cross_fit``) and say what their rate really is:

* ``order`` (conformal order statistic): the ``ceil((n + 1)(1 - rate))``-th smallest of the n
  cross-fitted scores. For exchangeable normal scores the probability that a new good part
  scores above the ``j``-th largest of ``n`` is ``j / (n + 1)`` on average and its distribution
  over calibration draws is Beta(j, n + 1 - j), so the expected rate and an upper bound are
  exact. The lowest rate it can promise is ``1 / (n + 1)`` (``j = 1``, the maximum).
* ``tail`` (peaks over threshold): above the ``tail_q`` quantile ``u`` of the scores, the excesses
  are fitted with an exponential (the generalised-Pareto tail with shape 0: one parameter, stable
  with ~10 points), and the threshold is ``u + beta * ln(p_u / rate)``, ``p_u`` the share above
  ``u``. It extrapolates beyond the largest score when ``n < 1 / rate``; its uncertainty comes
  from a bootstrap of the scores.
* ``auto``: ``order`` when ``n + 1 >= 1 / rate`` (the target is supported by the data), else
  ``tail`` (and never below the sample maximum), with a warning and the rate ``order`` could
  support recorded.

Example:
    >>> import numpy as np
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

TAIL_QUANTILE = 0.7
BOOTSTRAP = 400


def order_statistic(scores: Sequence[float], target_frr: float, confidence: float = 0.9) -> dict:
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
    from scipy.stats import beta

    s = np.sort(np.asarray(scores, np.float64))
    n = s.size
    if n == 0 or not np.isfinite(s).all():
        raise ValueError(f"threshold estimation needs finite normal scores, found {n} values "
                         f"({int((~np.isfinite(s)).sum())} non-finite)")
    if not 0.0 < target_frr < 1.0:
        raise ValueError(f"target false-reject rate must be in (0, 1), found {target_frr}")
    j = max(1, min(n, int(math.floor(target_frr * (n + 1) + 1e-9))))   # j-th largest: E[FRR] = j/(n+1) <= rate
    return {"method": "order", "value": float(s[n - j]), "n": n, "rank_from_top": j,
            "expected_frr": j / (n + 1), "frr_upper": float(beta.ppf(confidence, j, n + 1 - j)),
            "confidence": confidence, "supported_frr": 1.0 / (n + 1), "target_frr": target_frr,
            "target_supported": j / (n + 1) <= target_frr + 1e-12}


def _tail_value(s: np.ndarray, target_frr: float, tail_q: float) -> float:
    u = float(np.quantile(s, tail_q))
    exc = s[s > u] - u
    p_u = exc.size / s.size
    if exc.size == 0 or p_u <= target_frr:
        return float(np.quantile(s, 1 - target_frr)) if p_u > 0 else u
    return u + float(exc.mean()) * math.log(p_u / target_frr)


def tail_extrapolation(scores: Sequence[float], target_frr: float, tail_q: float = TAIL_QUANTILE,
                       confidence: float = 0.9, seed: int = 0) -> dict:
    """Exponential peaks-over-threshold estimate of the ``1 - target_frr`` quantile.

    Returns:
        ``value``, ``ci`` (bootstrap ``confidence`` interval of the threshold), ``frr_at_ci``
        (the fitted tail's rate at the interval ends: how wrong the rate may be), ``n``.

    Example:
        >>> s = np.random.default_rng(1).exponential(1.0, 2000)
        >>> bool(abs(tail_extrapolation(s, 0.01)["value"] - np.log(100)) < 0.3)
        True
    """
    s = np.sort(np.asarray(scores, np.float64))
    if s.size < 5 or not np.isfinite(s).all():
        raise ValueError(f"tail extrapolation needs >= 5 finite normal scores, found {s.size}")
    value = _tail_value(s, target_frr, tail_q)
    rng = np.random.default_rng(seed)
    boots = np.array([_tail_value(np.sort(rng.choice(s, s.size)), target_frr, tail_q) for _ in range(BOOTSTRAP)])
    lo, hi = np.quantile(boots, [(1 - confidence) / 2, (1 + confidence) / 2])
    u = float(np.quantile(s, tail_q))
    beta_ = float((s[s > u] - u).mean()) if (s > u).any() else 1e-12
    p_u = float((s > u).mean())

    def rate(t):
        return float(min(1.0, p_u * math.exp(-(t - u) / max(beta_, 1e-12)))) if t > u else float((s > t).mean())

    return {"method": "tail", "value": float(value), "n": int(s.size), "target_frr": target_frr,
            "tail_quantile": tail_q, "tail_scale": beta_, "ci": [float(lo), float(hi)], "confidence": confidence,
            "frr_at_ci": [rate(float(hi)), rate(float(lo))]}


def estimate_threshold(scores: Sequence[float], target_frr: float = 0.01, method: str = "auto",
                       confidence: float = 0.9) -> dict:
    """The threshold and everything a manifest should say about it.

    Args:
        scores: cross-fitted (or held-out) scores of normal images.
        target_frr: wanted false-reject rate of good parts.
        method: ``order``, ``tail`` or ``auto`` (see the module docstring).

    Returns:
        A dict for ``manifest["threshold"]``: ``value``, ``method``, ``n``, ``target_frr``,
        ``supported_frr`` (1 / (n + 1): what the order statistic can promise), the order
        statistic's ``expected_frr`` / ``frr_upper`` at the chosen value, ``warning`` when the
        target is below what n supports, and for ``tail`` the bootstrap ``ci``.
    """
    order = order_statistic(scores, target_frr, confidence)
    n = order["n"]
    if method not in ("auto", "order", "tail"):
        raise ValueError(f"unknown threshold method {method!r}; expected auto, order or tail")
    use_tail = method == "tail" or (method == "auto" and not order["target_supported"] and n >= 5)
    if not use_tail:
        return {**order, "warning": None if order["target_supported"] else _warning(n, target_frr)}
    tail = tail_extrapolation(scores, target_frr, confidence=confidence)
    value = max(tail["value"], order["value"]) if not order["target_supported"] else tail["value"]
    return {**tail, "value": float(value), "supported_frr": order["supported_frr"],
            "order_statistic": {k: order[k] for k in ("value", "rank_from_top", "expected_frr", "frr_upper")},
            "warning": None if order["target_supported"] else _warning(n, target_frr)}


def _warning(n: int, rate: float) -> str:
    need = int(math.ceil(1 / rate)) - 1
    msg = (f"{n} normal images support a false-reject rate of {1 / (n + 1):.1%} at best (order statistic); "
           f"the {rate:.1%} target is extrapolated from the score tail. Give at least {need} good images "
           f"for an empirical {rate:.1%} threshold.")
    log.warning("threshold: %s", msg)
    return msg


def frr_and_miss(threshold: float, normal: Sequence[float], defective: Sequence[float] | None = None) -> dict:
    """Measured false-reject rate on good parts (and miss rate on defective ones) at ``threshold``.

    Example:
        >>> frr_and_miss(1.0, [0.5, 1.5], [2.0, 0.2])
        {'frr': 0.5, 'miss': 0.5}
    """
    out = {"frr": float(np.mean(np.asarray(normal) > threshold))}
    if defective is not None and len(defective):
        out["miss"] = float(np.mean(np.asarray(defective) <= threshold))
    return out
