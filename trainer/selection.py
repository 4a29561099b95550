"""Validation scoring of candidates and a selection rule that knows its own noise.

Three pieces, numpy only (``scipy`` for two distribution functions):

* **cross-fitted scores** (:func:`fold_of`, :func:`cross_fit`): every training image is a
  validation normal *and* part of the bank: the images are split into folds by source image,
  each fold is scored against a bank of the other folds, and every synthetic defect is scored
  against the bank that does not contain the image it was drawn on. No image is spent on
  validation alone, which matters with a few dozen images.
* **uncertainty** of AUROCs and of their differences on the same validation set: DeLong's
  variance for correlated AUROCs (:func:`delong`, :func:`compare`) and a bootstrap over source
  images (:func:`grouped_bootstrap`), which also accounts for a defect and its source normal
  being correlated.
* **the rule** (:func:`select`): the highest validation AUROC is reported as a win only when
  the others are significantly worse (otherwise: a tie); a cheaper (then simpler) candidate
  ships instead only when an equivalence test shows it loses at most ``margin``. With few
  validation images (``one_se``) the cheapest candidate within one standard error of the
  best ships instead (Breiman's one-standard-error rule). :func:`clearly_worse` prunes
  candidates far below the leader early.

Example:
    >>> import numpy as np
    >>> y = np.r_[np.zeros(50), np.ones(50)]
    >>> rng = np.random.default_rng(0)
    >>> a = 3 * y + rng.normal(0, 1, 100)
    >>> sel = select(["a", "b"], y, np.stack([a, a + rng.normal(0, 0.01, 100)]), cost=[2.0, 1.0])
    >>> sel.chosen, sel.tie
    ('b', True)
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

Z_TIE = 1.645          # one-sided 95 %: a candidate not significantly below the best is tied with it
Z_PRUNE = 3.0          # clearly worse: more than 3 standard errors below the leader
MIN_EFFECT = 0.002     # AUROC differences below this are never a win, however small the SE
EQUIVALENCE_MARGIN = 0.005   # a cheaper candidate ships only if it loses at most this much AUROC (upper bound)
Z_ONE_SE = 1.0         # one_se: a candidate at most this many SE below the best may ship if cheaper


# ---------------------------------------------------------------------------- AUROC statistics


def _midrank(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties averaged."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    out = np.empty(len(x), np.float64)
    out[order] = np.repeat((starts + ends - 1) / 2.0 + 1.0, ends - starts)
    return out


def delong(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of several score vectors on the same samples and their DeLong covariance.

    Fast algorithm of Sun & Xu (2014). Ties count one half.

    Args:
        labels: (n,) 0 = normal, 1 = defective.
        scores: (m, n) one row per candidate (higher = more anomalous).

    Returns:
        ``(aurocs (m,), covariance (m, m))``.

    Example:
        >>> a, c = delong(np.array([0, 0, 1, 1]), np.array([[0.1, 0.4, 0.35, 0.8]]))
        >>> float(a[0])
        0.75
    """
    y = np.asarray(labels).astype(bool)
    s = np.atleast_2d(np.asarray(scores, np.float64))
    pos, neg = s[:, y], s[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs >= 2 normal and >= 2 defective samples, found {n} and {m}")
    tx = np.stack([_midrank(r) for r in pos])
    ty = np.stack([_midrank(r) for r in neg])
    tz = np.stack([_midrank(r) for r in np.concatenate([pos, neg], axis=1)])
    auc = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    v01 = (tz[:, :m] - tx) / n
    v10 = 1.0 - (tz[:, m:] - ty) / m
    sx = np.atleast_2d(np.cov(v01))
    sy = np.atleast_2d(np.cov(v10))
    return auc, sx / m + sy / n


def compare(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    """Paired DeLong comparison of two score vectors: ``{"diff", "se", "z", "p"}`` (a - b, two-sided p).

    Example:
        >>> y = np.r_[np.zeros(30), np.ones(30)]
        >>> r = compare(y, y + 0.0, 1 - y)
        >>> r["diff"], r["p"] < 1e-6
        (1.0, True)
    """
    from scipy.stats import norm

    auc, cov = delong(labels, np.stack([a, b]))
    var = max(float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), 0.0)
    diff = float(auc[0] - auc[1])
    se = var ** 0.5
    z = diff / se if se > 0 else (np.inf if diff > 0 else -np.inf if diff < 0 else 0.0)
    return {"diff": diff, "se": se, "z": float(z), "p": float(2 * norm.sf(abs(z))) if np.isfinite(z) else 0.0}


def grouped_bootstrap(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, n_boot: int = 500,
                      seed: int = 0) -> np.ndarray:
    """AUROCs of every candidate over ``n_boot`` resamples of the source groups: (n_boot, m).

    A normal image and the defects drawn on it share a group, so they are resampled together
    (cluster bootstrap). Resamples missing a class are redrawn.

    Example:
        >>> y = np.r_[np.zeros(20), np.ones(20)]
        >>> g = np.r_[np.arange(20), np.arange(20)]
        >>> grouped_bootstrap(y, np.stack([y]), g, n_boot=5).shape
        (5, 1)
    """
    from core.metrics import auroc

    y = np.asarray(labels).astype(int)
    s = np.atleast_2d(np.asarray(scores, np.float64))
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inv == i) for i in range(len(uniq))]
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, s.shape[0]))
    b = 0
    while b < n_boot:
        idx = np.concatenate([members[i] for i in rng.integers(0, len(uniq), len(uniq))])
        if y[idx].min() == y[idx].max():
            continue
        out[b] = [auroc(y[idx], r[idx]) for r in s]
        b += 1
    return out


# ---------------------------------------------------------------------------- selection rule


@dataclasses.dataclass
class Selection:
    """Outcome of :func:`select`.

    Attributes:
        chosen: the candidate name that ships.
        best: the name with the highest validation AUROC.
        tie: True when ``best`` is not significantly better than some other candidate: the
            report must say "no significant difference", never "won".
        tied: names not significantly below ``best`` (including it).
        equivalent: names shown to be within ``margin`` of ``best`` (an equivalence test); the
            cheapest of these ships (with ``one_se``: the cheapest of these and of the names at
            most ``Z_ONE_SE`` standard errors below ``best``).
        aurocs: {name: validation AUROC}; se: {name: DeLong standard error}.
        vs_best: {name: {"diff", "se", "z"}} for every candidate against ``best``.
        reason: one sentence for the report and manifest.
    """

    chosen: str
    best: str
    tie: bool
    tied: list
    equivalent: list
    aurocs: dict
    se: dict
    vs_best: dict
    reason: str
    rule: str = "equivalence"   # how a cheaper candidate may ship: "equivalence" or "one-SE"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def select(names: Sequence[str], labels: np.ndarray, scores: np.ndarray, cost: Sequence[float] | None = None,
           complexity: Sequence | None = None, margin: float = EQUIVALENCE_MARGIN, z: float = Z_TIE,
           min_effect: float = MIN_EFFECT) -> Selection:
    """Pick a candidate from validation scores; a cheaper one only when it is shown to be as good.

    Two questions, two tests (paired DeLong standard errors of the difference to the best):

    * **is the best really better?** A candidate whose AUROC is below the best by at most
      ``max(min_effect, z * SE)`` is *tied* with it: the best did not win against it, and the
      reason says so.
    * **may a cheaper candidate ship instead?** Only when it is *equivalent*: the upper
      confidence bound of its loss, ``diff + z * SE``, is at most ``margin`` (an equivalence
      test; absence of evidence of a difference is not enough, or a noisy validation would
      hand the choice to the cheapest candidate). Among the equivalent the lowest ``cost``
      (e.g. estimated ms per frame), then the lowest ``complexity``, then the higher AUROC ships.

    Args:
        names: candidate names, (m,).
        labels: (n,) validation labels (0 normal, 1 synthetic defect).
        scores: (m, n) validation scores, one row per candidate.
        cost: (m,) lower is better; default all equal.
        complexity: (m,) sortable keys, lower is simpler; default all equal.
        margin: AUROC a cheaper candidate may lose (upper confidence bound).
    """
    names = list(names)
    auc, cov = delong(labels, np.atleast_2d(np.asarray(scores, np.float64)))
    ib = int(np.argmax(auc))
    diag = np.diag(cov)
    diff_se = np.sqrt(np.maximum(diag[ib] + diag - 2 * cov[ib], 0.0))
    return _decide(names, auc, diff_se, np.sqrt(np.maximum(diag, 0.0)), cost, complexity, margin, z, min_effect)


def _reason(names, auc, ib, pick, tied_others, vs, cost, margin, one_se=False) -> str:
    if pick != ib:
        d = vs[names[pick]]
        within = (f"within one standard error of the best {names[ib]}" if one_se
                  else f"shown within {margin} of the best {names[ib]}")
        head = (f"{names[pick]}: validation AUROC {auc[pick]:.4f}, {within} "
                f"({auc[ib]:.4f}; difference {d['diff']:.4f} ± {d['se']:.4f}) and cheaper "
                f"({cost[pick]:.2f} vs {cost[ib]:.2f})" + (" (one-standard-error rule: few images)" if one_se else ""))
        others = [n for n in tied_others if n != names[pick]]
        return head + (f"; {names[ib]} is not significantly better than {_some(others)} either (a tie, not a win)"
                       if others else "")
    head = f"{names[pick]}: highest validation AUROC {auc[pick]:.4f}"
    if not tied_others:
        return head + ", significantly above every other candidate"
    return head + f"; not significantly better than {_some(tied_others)} (a tie, not a win)"


def _some(names: list) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def family_aurocs(normal: np.ndarray, defect: np.ndarray, family: np.ndarray) -> dict:
    """{family: AUROC of the normals against that family's defects} for one candidate.

    Example:
        >>> family_aurocs(np.zeros(3), np.array([1.0, -1.0]), np.array(["a", "b"]))
        {'a': 1.0, 'b': 0.0}
    """
    from core.metrics import auroc

    fam = np.asarray(family)
    y = lambda m: np.r_[np.zeros(len(normal)), np.ones(int(m.sum()))]   # noqa: E731
    return {f: auroc(y(fam == f), np.r_[normal, defect[fam == f]]) for f in sorted(set(fam.tolist()))}


def _worst_family(normal: np.ndarray, defect: np.ndarray, fam: np.ndarray, fams: list) -> float:
    from core.metrics import auroc

    n = len(normal)
    return min(auroc(np.r_[np.zeros(n), np.ones(int((fam == f).sum()))], np.r_[normal, defect[fam == f]])
               for f in fams)


def select_robust(names: Sequence[str], normal: np.ndarray, defect: np.ndarray, family: np.ndarray,
                  source: np.ndarray, cost: Sequence[float] | None = None, complexity: Sequence | None = None,
                  margin: float = EQUIVALENCE_MARGIN, z: float = Z_TIE, min_effect: float = MIN_EFFECT,
                  n_boot: int = 200, seed: int = 0, one_se: bool = False) -> Selection:
    """:func:`select` on the *worst defect family* instead of all defects pooled.

    The product's real defects are unknown, so a candidate is rated by the family of synthetic
    defects it handles worst (surface marks, shape changes, layout changes: see
    ``trainer.synth``): a configuration that excels at large shape changes but misses small
    marks (or the reverse) is not preferred over one that is good at both. Standard errors of
    the differences come from a bootstrap over source images (a normal image and the defects
    drawn on it are resampled together).

    Args:
        names: (m,) candidate names.
        normal: (m, n) cross-fitted scores of the n normal images, one row per candidate.
        defect: (m, d) scores of the d synthetic defects.
        family: (d,) family of each defect; source: (d,) index of the normal image it was drawn on.
        one_se: the one-standard-error rule instead of the equivalence test for a cheaper
            candidate: the cheapest candidate at most ``Z_ONE_SE`` standard errors (or
            ``min_effect``) below the best ships. For few images, where the best of many noisy
            validation AUROCs is mostly the luckiest draw (``trainer.search.SMALL_DATA_IMAGES``).
    """
    normal, defect = np.atleast_2d(normal), np.atleast_2d(defect)
    fam, src = np.asarray(family), np.asarray(source)
    fams = sorted(set(fam.tolist()))
    stat = np.array([_worst_family(normal[i], defect[i], fam, fams) for i in range(len(names))])
    rng = np.random.default_rng(seed)
    n = normal.shape[1]
    boots = np.empty((n_boot, len(names)))
    by_src = [np.flatnonzero(src == j) for j in range(n)]
    for b in range(n_boot):
        pick = rng.integers(0, n, n)
        d_idx = np.concatenate([by_src[j] for j in pick])
        boots[b] = [_worst_family(normal[i, pick], defect[i, d_idx], fam[d_idx], fams) for i in range(len(names))]
    return _select_from_stat(list(names), stat, boots, cost, complexity, margin, z, min_effect, one_se)


def _select_from_stat(names, stat, boots, cost, complexity, margin, z, min_effect, one_se=False) -> Selection:
    ib = int(np.argmax(stat))
    diff_se = np.std(boots[:, ib:ib + 1] - boots, axis=0, ddof=1)
    sel = _decide(names, stat, diff_se, np.std(boots, axis=0, ddof=1), cost, complexity, margin, z, min_effect,
                  one_se)
    sel.reason = sel.reason.replace("validation AUROC", "worst-family validation AUROC")
    return sel


def _decide(names, stat, diff_se, se, cost, complexity, margin, z, min_effect, one_se=False) -> Selection:
    """The tie and equivalence tests of :func:`select` on a statistic (one per candidate), the
    standard error of each candidate's difference to the best (``diff_se``) and its own (``se``);
    ``one_se``: the one-standard-error rule decides which cheaper candidate may ship."""
    ib = int(np.argmax(stat))
    cost = list(cost) if cost is not None else [0.0] * len(names)
    complexity = list(complexity) if complexity is not None else [()] * len(names)
    vs, tied, equiv, near = {}, [], [], []
    for i, n in enumerate(names):
        d, e = float(stat[ib] - stat[i]), float(diff_se[i])
        vs[n] = {"diff": d, "se": e, "z": d / e if e > 0 else 0.0}
        if d <= max(min_effect, z * e):
            tied.append(i)
        if d + z * e <= margin:
            equiv.append(i)
        if d <= max(min_effect, Z_ONE_SE * e):
            near.append(i)
    pick = min(sorted(set(equiv) | set(near if one_se else [])), key=lambda i: (cost[i], complexity[i], -stat[i]))
    reason = _reason(names, stat, ib, pick, [names[i] for i in tied if i != ib], vs, cost, margin,
                     one_se and pick not in equiv)
    return Selection(chosen=names[pick], best=names[ib], tie=len(tied) > 1, tied=[names[i] for i in tied],
                     equivalent=[names[i] for i in equiv], aurocs={n: float(a) for n, a in zip(names, stat)},
                     se={n: float(se[i]) for i, n in enumerate(names)}, vs_best=vs, reason=reason,
                     rule="one-SE" if one_se else "equivalence")


def clearly_worse(labels: np.ndarray, scores: np.ndarray, z: float = Z_PRUNE, min_gap: float = 0.02) -> np.ndarray:
    """Boolean mask of candidates to prune: below the leader by > ``z`` SE and > ``min_gap`` AUROC.

    Example:
        >>> y = np.r_[np.zeros(40), np.ones(40)]
        >>> clearly_worse(y, np.stack([y, 1 - y])).tolist()
        [False, True]
    """
    auc, cov = delong(labels, scores)
    ib = int(np.argmax(auc))
    out = np.zeros(len(auc), bool)
    for i in range(len(auc)):
        se = max(float(cov[ib, ib] + cov[i, i] - 2 * cov[ib, i]), 0.0) ** 0.5
        d = auc[ib] - auc[i]
        out[i] = d > min_gap and d > z * se
    return out


# ---------------------------------------------------------------------------- cross-fitting


def fold_of(n_groups: int, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Seeded fold index (0..folds-1) of each of ``n_groups`` source images, as balanced as possible.

    Example:
        >>> np.bincount(fold_of(10, 5)).tolist()
        [2, 2, 2, 2, 2]
    """
    folds = max(2, min(folds, n_groups))
    return np.random.default_rng(seed).permutation(np.arange(n_groups) % folds)


def cross_fit(bank_rows: np.ndarray, bank_item: np.ndarray, queries: Sequence[tuple[np.ndarray, np.ndarray]],
              make: Callable[[np.ndarray], object], fold: np.ndarray, rows_per_item: int = 1) -> list[np.ndarray]:
    """Cross-fitted item scores: each query item scored against the bank without its source's fold.

    Args:
        bank_rows: (R, D) bank feature rows of the normal images.
        bank_item: (R,) source normal image of each bank row.
        queries: ``[(rows (Q * rows_per_item, D), source (Q,)), ...]``: e.g. the normal images
            themselves (source = own index) and the synthetic defects (source = the normal image
            each was drawn on).
        make: bank -> scorer with ``.score(rows) -> (n,)`` (e.g. ``lambda b: KNNScorer(b, 1)``).
        fold: (n_normal,) fold index of each normal image (:func:`fold_of`).
        rows_per_item: feature rows per query item (tiles x patches); the item score is their max.

    Returns:
        One (Q,) score array per query set.

    Example:
        >>> from device.scoring import KNNScorer
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(20, 4)).astype(np.float32)
        >>> n, = cross_fit(x, np.arange(20), [(x, np.arange(20))], lambda b: KNNScorer(b, 1), fold_of(20, 4))
        >>> bool((n > 0).all())       # no image is its own neighbour
        True
    """
    outs = [np.full(len(src), np.nan, np.float32) for _, src in queries]
    for f in np.unique(fold):
        scorer = make(np.ascontiguousarray(bank_rows[fold[bank_item] != f]))
        for (rows, src), out in zip(queries, outs):
            sel = np.flatnonzero(fold[src] == f)
            if len(sel) == 0:
                continue
            r = rows.reshape(len(src), rows_per_item, -1)[sel].reshape(len(sel) * rows_per_item, -1)
            out[sel] = scorer.score(np.asarray(r, np.float32)).reshape(len(sel), rows_per_item).max(axis=1)
    return outs


def validation_auroc_table(names: Sequence[str], labels: np.ndarray, scores: np.ndarray,
                           kinds: Sequence[str] | None = None) -> dict:
    """Per-candidate validation AUROC overall and per synthetic-defect kind (normals shared).

    Example:
        >>> y = np.array([0, 0, 1, 1]); k = ["good", "good", "spot", "warp"]
        >>> validation_auroc_table(["a"], y, np.array([[0, 1, 2, 3]]), k)["a"]["spot"]
        1.0
    """
    from core.metrics import auroc

    s = np.atleast_2d(scores)
    y = np.asarray(labels).astype(int)
    out = {}
    for n, row in zip(names, s):
        d = {"all": auroc(y, row)}
        if kinds is not None:
            kinds_a = np.asarray(kinds)
            for k in sorted(set(kinds_a[y == 1])):
                m = (y == 0) | (kinds_a == k)
                d[k] = auroc(y[m], row[m])
        out[n] = d
    return out


def paired_gap(normal: np.ndarray, defect: np.ndarray, family: np.ndarray, source: np.ndarray,
               n_boot: int = 300, seed: int = 0) -> dict:
    """Worst-family validation AUROC of two candidates (rows 0 and 1 of ``normal`` / ``defect``)
    and the bootstrap standard error of their difference (source images resampled with their
    defects): ``{"a", "b", "diff" (a - b), "se", "z"}``. For two-way decisions (DOC or not, int8
    or float) that must not call a tie a win.

    Example:
        >>> y = np.random.default_rng(0).normal(size=40)
        >>> g = paired_gap(np.stack([y, y]), np.stack([y + 9, y + 0.5]), np.array(["s"] * 40), np.arange(40))
        >>> g["a"], g["diff"] > 3 * g["se"]
        (1.0, True)
    """
    normal, defect = np.atleast_2d(normal), np.atleast_2d(defect)
    return paired_mean_gap(normal[:1], defect[:1], normal[1:2], defect[1:2], family, source, n_boot, seed)


def paired_mean_gap(normal_a: np.ndarray, defect_a: np.ndarray, normal_b: np.ndarray, defect_b: np.ndarray,
                    family: np.ndarray, source: np.ndarray, n_boot: int = 300, seed: int = 0) -> dict:
    """Mean over m paired candidates (row i of set ``a`` against row i of set ``b``: the same
    candidate under two settings, e.g. two input normalisations) of their worst-family validation
    AUROCs, and the bootstrap SE of the mean difference (source images resampled with their
    defects, the same resample for every row): ``{"a", "b", "diff" (a - b), "se", "z", "wins"
    (rows where a > b)}``.

    Example:
        >>> y = np.random.default_rng(0).normal(size=(3, 40))
        >>> g = paired_mean_gap(y, y + 9, y, y + 0.5, np.array(["s"] * 40), np.arange(40))
        >>> g["a"], g["wins"], g["diff"] > 3 * g["se"]
        (1.0, 3, True)
    """
    na, da = np.atleast_2d(normal_a), np.atleast_2d(defect_a)
    nb, db = np.atleast_2d(normal_b), np.atleast_2d(defect_b)
    fam, src = np.asarray(family), np.asarray(source)
    fams = sorted(set(fam.tolist()))

    def stat(pick, d_idx, f):
        return np.array([[_worst_family(n[i, pick], d[i, d_idx], f, fams) for i in range(len(n))]
                         for n, d in ((na, da), (nb, db))])

    n = na.shape[1]
    full = stat(np.arange(n), np.arange(da.shape[1]), fam)
    by_src = [np.flatnonzero(src == j) for j in range(n)]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        pick = rng.integers(0, n, n)
        d_idx = np.concatenate([by_src[j] for j in pick])
        if len(d_idx) == 0 or len(set(fam[d_idx].tolist())) < len(fams):
            continue
        s = stat(pick, d_idx, fam[d_idx])
        diffs.append(float(np.mean(s[0] - s[1])))
    se = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else float("inf")
    a, b = float(np.mean(full[0])), float(np.mean(full[1]))
    d = a - b
    return {"a": a, "b": b, "diff": d, "se": se, "z": d / se if se > 0 else (0.0 if d == 0 else np.inf),
            "wins": int(np.sum(full[0] > full[1]))}


def significant_win(gap: dict, z: float = Z_TIE, min_effect: float = MIN_EFFECT) -> bool:
    """``a`` beats ``b`` by more than noise: ``diff > max(min_effect, z * se)``."""
    return gap["diff"] > max(min_effect, z * gap["se"])
