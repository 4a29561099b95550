"""Nearest-neighbour scoring over the bank of normal features, in numpy.

Score = mean Euclidean distance to the ``k`` nearest bank features (higher means
more anomalous). ``LOFScorer`` offers the seed's local-outlier-factor variant
(needs scikit-learn: the ``lof`` extra).

Example:
    >>> import numpy as np
    >>> bank = np.eye(3, dtype=np.float32)
    >>> KNNScorer(bank, k=1).score(np.array([[1, 0, 0]], np.float32)).round(3).tolist()
    [0.0]
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


class KNNScorer:
    """Brute-force k-NN distance scorer (BLAS matrix product, float32).

    Args:
        bank: (N, D) normal features.
        k: neighbours averaged.
    """

    method = "knn"

    def __init__(self, bank: np.ndarray, k: int = 1):
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"bank must be a non-empty (N, D) array, found shape {bank.shape}")
        if not 1 <= k <= bank.shape[0]:
            raise ValueError(f"k must be in 1..{bank.shape[0]} (bank size), found {k}")
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.k = int(k)
        self._bank_sq = np.einsum("ij,ij->i", self.bank, self.bank)

    def _sq_dists(self, q: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(q, dtype=np.float32)
        d2 = self._bank_sq[None, :] - 2.0 * (q @ self.bank.T)
        d2 += np.einsum("ij,ij->i", q, q)[:, None]
        return np.maximum(d2, 0.0, out=d2)

    def score(self, feats: np.ndarray, exclude: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:
        """Scores (M,) for features (M, D).

        Args:
            exclude: optional (M,) bank index to leave out per query (leave-one-out).
        """
        out = np.empty(feats.shape[0], np.float32)
        for i in range(0, feats.shape[0], chunk):
            d2 = self._sq_dists(feats[i:i + chunk])
            if exclude is not None:
                d2[np.arange(d2.shape[0]), exclude[i:i + chunk]] = np.inf
            k = self.k
            if k == 1:
                best = d2.min(axis=1, keepdims=True)
            else:
                best = np.partition(d2, k - 1, axis=1)[:, :k]
            out[i:i + chunk] = np.sqrt(best).mean(axis=1)
        return out

    def leave_one_out(self) -> np.ndarray:
        """Each bank feature scored against the rest of the bank."""
        if self.bank.shape[0] <= self.k:
            raise ValueError(f"leave-one-out needs more than k={self.k} bank features")
        return self.score(self.bank, exclude=np.arange(self.bank.shape[0]))


class LOFScorer:
    """Local outlier factor over the bank (scikit-learn), as the seed article used it."""

    method = "lof"

    def __init__(self, bank: np.ndarray, k: int = 5):
        try:
            from sklearn.neighbors import LocalOutlierFactor
        except ImportError as exc:
            raise ImportError("LOF scoring needs scikit-learn: pip install '.[lof]'") from exc
        self.bank = np.asarray(bank, np.float32)
        self.k = int(k)
        self._lof = LocalOutlierFactor(n_neighbors=self.k, novelty=True).fit(self.bank)

    def score(self, feats: np.ndarray) -> np.ndarray:
        return (-self._lof.score_samples(np.asarray(feats, np.float32))).astype(np.float32)

    def leave_one_out(self) -> np.ndarray:
        return (-self._lof.negative_outlier_factor_).astype(np.float32)


def make_scorer(method: str, bank: np.ndarray, k: int):
    """Scorer named by the manifest's ``scoring.method``."""
    if method == "knn":
        return KNNScorer(bank, k)
    if method == "lof":
        return LOFScorer(bank, k)
    raise ValueError(f"unknown scoring method {method!r}; expected 'knn' or 'lof'")


def kcenter_greedy(feats: np.ndarray, m: int, seed: int = 0) -> np.ndarray:
    """Indices of an ``m``-point k-center greedy coreset (PatchCore's bank subsampling)."""
    n = feats.shape[0]
    if m >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    f = np.asarray(feats, np.float32)
    sq = np.einsum("ij,ij->i", f, f)
    chosen = [int(rng.integers(n))]
    mind = np.maximum(sq + sq[chosen[0]] - 2 * f @ f[chosen[0]], 0)
    for _ in range(m - 1):
        i = int(np.argmax(mind))
        chosen.append(i)
        mind = np.minimum(mind, np.maximum(sq + sq[i] - 2 * f @ f[i], 0))
    return np.array(chosen)


def subsample_bank(feats: np.ndarray, max_size: int | None, method: str = "coreset", seed: int = 0) -> np.ndarray:
    """Bank indices kept: all, a k-center coreset, or a random subset."""
    n = feats.shape[0]
    if not max_size or max_size >= n:
        return np.arange(n)
    if method == "coreset":
        return np.sort(kcenter_greedy(feats, max_size, seed))
    if method == "random":
        return np.sort(np.random.default_rng(seed).choice(n, max_size, replace=False))
    raise ValueError(f"unknown bank subsampling {method!r}; expected 'coreset' or 'random'")
