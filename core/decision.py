"""The one decision rule of the appliance, and the validated threshold it compares against.

A part is **rejected** when its score is strictly greater than the threshold; it **passes**
otherwise; and anything that makes the comparison meaningless — no score (the frame could not
be scored), a non-finite score — is an **ERROR**, which rejects the part too and raises the
alarm (``[outputs] alarm_on_model_error``). The threshold itself can never be NaN, infinite or
negative: :class:`Threshold` refuses such values where they enter (bundle, config, command
line), so ``score > nan`` — false for every score, i.e. every part passing — cannot happen.

Every user of a decision (the daemon, ``anomaly-device score``, ``anomaly-train evaluate``,
the audits, the life-cycle preview) calls :func:`decide`; no other module compares a score
with a threshold.

Example:
    >>> t = Threshold(0.5, "bundle")
    >>> decide(0.7, t).decision, decide(0.2, t).decision, decide(float("nan"), t).decision
    (<Decision.REJECT: 'REJECT'>, <Decision.PASS: 'PASS'>, <Decision.ERROR: 'ERROR'>)
    >>> decide(None, t, reason="cannot decode frame").reason
    'cannot decode frame'
    >>> Threshold(float("nan"), "config")
    Traceback (most recent call last):
    ...
    ValueError: threshold from config must be a finite number >= 0, found nan
"""
from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any


class Decision(str, enum.Enum):
    """Outcome for one part. Anything but PASS rejects the part."""

    PASS = "PASS"
    REJECT = "REJECT"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value

    @property
    def rejects(self) -> bool:
        return self is not Decision.PASS


def check_threshold(value: Any, where: str) -> float:
    """``value`` as a float if it is a finite number >= 0 (not a boolean); else ``ValueError``
    naming ``where`` (the file and key, or the option), expected vs found."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"threshold from {where} must be a number, found {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"threshold from {where} must be a finite number >= 0, found {value!r}")
    return v


@dataclasses.dataclass(frozen=True)
class Threshold:
    """A deployment threshold and where it came from (``bundle``, ``config:threshold``,
    ``config:target_frr=0.005``, ``cli:threshold``…). Validated on creation."""

    value: float
    source: str

    def __post_init__(self):
        object.__setattr__(self, "value", check_threshold(self.value, self.source))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A decision with the score and threshold it was made from, and why."""

    decision: Decision
    score: float | None
    threshold: Threshold
    reason: str = ""

    @property
    def rejects(self) -> bool:
        return self.decision.rejects


def decide(score: float | None, threshold: Threshold, reason: str = "") -> Verdict:
    """THE decision rule: ERROR without a finite score, REJECT above the threshold, else PASS.

    Args:
        score: the part's anomaly score, or ``None`` when it could not be scored.
        threshold: a validated :class:`Threshold`.
        reason: why there is no score (kept on the ERROR verdict).
    """
    if not isinstance(threshold, Threshold):
        raise TypeError(f"decide() needs a Threshold, found {type(threshold).__name__}")
    if score is None:
        return Verdict(Decision.ERROR, None, threshold, reason or "no score")
    try:
        s = float(score)
    except (TypeError, ValueError):
        return Verdict(Decision.ERROR, None, threshold, f"score is not a number: {score!r}")
    if not math.isfinite(s):
        return Verdict(Decision.ERROR, None, threshold, f"non-finite score {s}")
    if s > threshold.value:
        return Verdict(Decision.REJECT, s, threshold, reason)
    return Verdict(Decision.PASS, s, threshold, reason)


def error(threshold: Threshold, reason: str) -> Verdict:
    """An ERROR verdict for a part that could not be scored (``reason`` says why)."""
    return decide(None, threshold, reason)
