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
from typing import Protocol

import numpy as np

from core.registry import Registry

log = logging.getLogger(__name__)


TRANSPOSED_COPY_MAX_BYTES = 16 << 20   # KNNScorer keeps a transposed bank copy up to this size


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
        # A contiguous (D, N) copy makes the few-query product ~1.7x faster (measured: 16 x 1000 x 1568,
        # 2.2 -> 1.2 ms); kept only for small banks, where the copy is cheap in memory.
        self._bank_t = np.ascontiguousarray(self.bank.T) if self.bank.nbytes <= TRANSPOSED_COPY_MAX_BYTES else None

    def _sq_dists(self, q: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(q, dtype=np.float32)
        d2 = q @ (self._bank_t if self._bank_t is not None else self.bank.T)
        d2 *= -2.0
        d2 += self._bank_sq[None, :]
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


class GaussianScorer:
    """Mahalanobis distance to one Gaussian fitted on the bank (PaDiM's score, shared over all
    positions: for textures and unaligned parts).

    The cost per query is one (D x D) product instead of a scan of the bank, so it suits patch
    descriptors, where a frame brings hundreds of queries. ``k`` is ignored (kept for the
    common signature). The covariance is regularised with ``eps`` times the mean variance on
    the diagonal (relative, so features of any scale behave alike), so a bank with constant
    channels still inverts.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> bank = rng.normal(size=(2000, 4)).astype(np.float32)
        >>> s = GaussianScorer(bank)
        >>> bool(s.score(np.zeros((1, 4), np.float32))[0] < s.score(np.full((1, 4), 3, np.float32))[0])
        True
    """

    method = "gauss"

    def __init__(self, bank: np.ndarray, k: int = 1, eps: float = 0.01):
        x = np.asarray(bank, np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"gauss scoring needs a (N >= 2, D) bank, found shape {x.shape}")
        self.k = int(k)
        self.mean = x.mean(axis=0)
        cov = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])
        mean_var = float(np.mean(np.diag(cov)))
        cov[np.diag_indices_from(cov)] += eps * mean_var + 1e-9 * mean_var + (0.0 if mean_var > 0 else 1.0)
        # d^2 = |(x - mu) @ W|^2 with W W^T = cov^-1 (Cholesky of the precision matrix)
        self._w = np.ascontiguousarray(np.linalg.cholesky(np.linalg.inv(cov)), np.float32)
        self._offset = (self.mean.astype(np.float32) @ self._w).astype(np.float32)
        self.bank = np.asarray(bank, np.float32)

    def score(self, feats: np.ndarray, chunk: int = 65536) -> np.ndarray:
        feats = np.asarray(feats, np.float32)
        out = np.empty(feats.shape[0], np.float32)
        for i in range(0, feats.shape[0], chunk):
            z = feats[i:i + chunk] @ self._w
            z -= self._offset
            out[i:i + chunk] = np.sqrt(np.einsum("ij,ij->i", z, z))
        return out

    def leave_one_out(self) -> np.ndarray:
        """Bank rows scored against the Gaussian (not refitted without them: N >> D)."""
        return self.score(self.bank)


SCORERS = Registry("scoring method")
"""The scorer plug-ins by manifest name (``scoring.method``): each class takes ``(bank, k)`` and
offers ``score(feats) -> (M,)`` and ``leave_one_out() -> (N,)`` (:class:`Scorer`)."""
SCORERS.register("knn", KNNScorer)
SCORERS.register("lof", LOFScorer)
SCORERS.register("gauss", GaussianScorer)
SCORING_METHODS = SCORERS.names()


class Scorer(Protocol):
    """What a scorer plug-in offers."""

    k: int

    def score(self, feats: np.ndarray) -> np.ndarray: ...

    def leave_one_out(self) -> np.ndarray: ...


def make_scorer(method: str, bank: np.ndarray, k: int) -> Scorer:
    """Scorer named by the manifest's ``scoring.method``."""
    return SCORERS.get(method)(bank, k)


CORESET_PROJECT_WORK = 2e10   # k-center greedy on more work (n * m * d) than this runs on a random projection
CORESET_PROJECT_DIMS = 128    # ... to this many dimensions (PatchCore's practice)


def kcenter_greedy(feats: np.ndarray, m: int, seed: int = 0, project: bool | None = None) -> np.ndarray:
    """Indices of an ``m``-point k-center greedy coreset (PatchCore's bank subsampling).

    The greedy costs ``n * m * d`` multiply-adds. Above :data:`CORESET_PROJECT_WORK` (with
    ``d > CORESET_PROJECT_DIMS``) distances are taken on a seeded Gaussian random projection to
    :data:`CORESET_PROJECT_DIMS` dimensions (Johnson-Lindenstrauss: distances kept within a small
    factor), as PatchCore does: 50 new rows into a 10k x 1280 bank take seconds instead of minutes.
    Below it nothing changes. ``project`` forces the choice (``None``: by that limit).

    Example:
        >>> f = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
        >>> sorted(kcenter_greedy(f, 3).tolist()) == sorted(kcenter_greedy(f, 3, project=False).tolist())
        True
    """
    n = feats.shape[0]
    if m >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    f = np.asarray(feats, np.float32)
    d = f.shape[1]
    if project is None:
        project = d > CORESET_PROJECT_DIMS and float(n) * m * d > CORESET_PROJECT_WORK
    if project:
        proj = np.random.default_rng((seed, CORESET_PROJECT_DIMS)).normal(size=(d, CORESET_PROJECT_DIMS))
        f = f @ (proj / np.sqrt(CORESET_PROJECT_DIMS)).astype(np.float32)
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


PATCH_BANK_DEFAULT = 20000    # patch rows kept when no cap is given (frames bring millions)
PATCH_CORESET_POOL = 50000    # k-center greedy runs on a random pool of at most this many patch rows


def bank_rows(feats: np.ndarray, max_size: int | None, method: str, scoring: str, patches: int,
              seed: int = 0) -> np.ndarray:
    """Indices of the bank rows kept (the trainer's and the device's ``learn`` rule).

    Pooled features (``patches == 1``): :func:`subsample_bank`. Patch rows: random for ``gauss``
    scoring (the Gaussian must see the real distribution; a coreset over-weights the rare rows),
    else k-center greedy on a random pool (a coreset of millions of rows is out of reach); at most
    ``max_size`` or :data:`PATCH_BANK_DEFAULT` rows.
    """
    if patches == 1:
        return subsample_bank(feats, max_size, method, seed)
    m = max_size or PATCH_BANK_DEFAULT
    if len(feats) <= m:
        return np.arange(len(feats))
    rng = np.random.default_rng(seed)
    if scoring == "gauss" or method == "random":
        return np.sort(rng.choice(len(feats), m, replace=False))
    pool = np.sort(rng.choice(len(feats), min(len(feats), max(m, PATCH_CORESET_POOL)), replace=False))
    return pool[subsample_bank(feats[pool], m, method, seed)]


# --------------------------------------------------------------------------- projected bank
# A smaller bank for the device's per-frame budget: features are projected on the top
# principal components of the bank (fit once, on the workstation) and k-NN runs in that
# space. The projection travels in the bundle (``scoring.projection``) and is applied to
# bank and query alike; thresholds must then be calibrated on projected scores.


def fit_pca(bank: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Principal components of ``bank`` for :class:`ProjectedKNNScorer`.

    Args:
        bank: (N, D) normal features (as stored in ``bank.npy``).
        dims: components kept (e.g. 128); at most ``min(N, D)``.

    Returns:
        ``(mean (D,), components (dims, D), explained variance fraction)``, float32.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> mean, comps, ev = fit_pca(rng.normal(size=(50, 8)).astype(np.float32), 3)
        >>> comps.shape
        (3, 8)
    """
    x = np.asarray(bank, np.float64)
    if x.ndim != 2 or not 1 <= dims <= min(x.shape):
        raise ValueError(f"PCA dims must be in 1..{min(x.shape) if x.ndim == 2 else '?'} for a bank of shape "
                         f"{x.shape}, found {dims}")
    mean = x.mean(axis=0)
    xc = x - mean
    n, d = xc.shape
    if n >= d:     # covariance eigen-decomposition: D x D, O(N D^2 + D^3)
        evals, evecs = np.linalg.eigh(xc.T @ xc)
        order = np.argsort(evals)[::-1][:dims]
        comps = evecs[:, order].T
    else:          # wide bank (few rows, many dims): the N x N Gram matrix, O(N^2 D + N^3)
        evals, u = np.linalg.eigh(xc @ xc.T)
        order = np.argsort(evals)[::-1][:dims]
        comps = (u[:, order].T @ xc) / np.sqrt(np.maximum(evals[order], 1e-30))[:, None]
    total = float(evals.clip(min=0).sum()) or 1.0
    kept = float(evals[order].clip(min=0).sum())
    return mean.astype(np.float32), np.ascontiguousarray(comps, np.float32), kept / total


class ProjectedKNNScorer:
    """k-NN distance in a PCA subspace: ``KNNScorer`` on ``(x - mean) @ components.T``.

    Args:
        bank: (N, D) features; projected once here.
        k: neighbours averaged.
        mean: (D,) and components: (d, D) from :func:`fit_pca`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> bank = rng.normal(size=(100, 16)).astype(np.float32)
        >>> s = ProjectedKNNScorer(bank, 1, *fit_pca(bank, 16)[:2])
        >>> bool(np.allclose(s.score(bank[:3]), 0, atol=1e-3))
        True
    """

    method = "knn"

    def __init__(self, bank: np.ndarray, k: int, mean: np.ndarray, components: np.ndarray):
        mean = np.asarray(mean, np.float32)
        components = np.asarray(components, np.float32)
        if components.ndim != 2 or components.shape[1] != bank.shape[1] or mean.shape != (bank.shape[1],):
            raise ValueError(f"projection does not fit the bank: bank {bank.shape}, mean {mean.shape}, "
                             f"components {components.shape} (expected (D,) and (d, D))")
        self.mean = mean
        self.proj = np.ascontiguousarray(components.T)     # (D, d)
        self._offset = self.mean @ self.proj               # (d,)
        self.dims = components.shape[0]
        self.knn = KNNScorer(self.project(bank), k)
        self.k = self.knn.k

    def project(self, feats: np.ndarray) -> np.ndarray:
        """(M, D) -> (M, d)."""
        return np.asarray(feats, np.float32) @ self.proj - self._offset

    def score(self, feats: np.ndarray, exclude: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:
        return self.knn.score(self.project(feats), exclude=exclude, chunk=chunk)

    def leave_one_out(self) -> np.ndarray:
        return self.knn.leave_one_out()


class ShortlistKNNScorer:
    """Exact k-NN scores (the same as :class:`KNNScorer`) at the cost of a PCA-space search.

    Each query is compared with the projected bank first; a lower bound of the true squared
    distance, ``projected d² + (|r_q| - |r_i|)²`` (``r``: the residual off the PCA subspace),
    picks ``shortlist`` candidates, whose exact distances give the score. The result is
    certified exact when the next-best lower bound exceeds the k-th exact distance. With
    ``certify=True`` uncertified queries fall back to the brute-force scan (always exact, slower
    for parts far from everything); by default they keep the shortlist score, an upper bound
    that equals the exact score whenever a true neighbour is among the candidates (measured:
    see BENCHMARKS.md). Scores and thresholds are those of the full float32 bank.

    Args:
        bank: (N, D) features; k: neighbours averaged.
        mean, components: from :func:`fit_pca`. shortlist: candidates re-ranked exactly.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> bank = rng.normal(size=(300, 32)).astype(np.float32)
        >>> s = ShortlistKNNScorer(bank, 1, *fit_pca(bank, 8)[:2], shortlist=16, certify=True)
        >>> q = rng.normal(size=(5, 32)).astype(np.float32)
        >>> bool(np.allclose(s.score(q), KNNScorer(bank, 1).score(q), atol=1e-4))
        True
    """

    method = "knn"

    def __init__(self, bank: np.ndarray, k: int, mean: np.ndarray, components: np.ndarray, shortlist: int = 64,
                 certify: bool = False):
        self.full = KNNScorer(bank, k)
        self.proj = ProjectedKNNScorer(self.full.bank, k, mean, components)
        self.k = self.full.k
        self.m = int(min(max(shortlist, self.k), self.full.bank.shape[0]))
        pb = self.proj.knn.bank
        mean = self.proj.mean
        xc_sq = self.full._bank_sq - 2.0 * (self.full.bank @ mean) + float(mean @ mean)
        self._res = np.sqrt(np.maximum(xc_sq - np.einsum("ij,ij->i", pb, pb), 0.0)).astype(np.float32)
        self.certify = certify
        self.fallbacks = 0        # queries not certified exact (re-scored by brute force when certify)
        self.queries = 0

    def score(self, feats: np.ndarray, exclude: np.ndarray | None = None, chunk: int = 256) -> np.ndarray:
        feats = np.ascontiguousarray(feats, np.float32)
        if exclude is not None or self.m >= self.full.bank.shape[0]:
            return self.full.score(feats, exclude=exclude)
        out = np.empty(feats.shape[0], np.float32)
        for i in range(0, feats.shape[0], chunk):
            out[i:i + chunk] = self._score_chunk(feats[i:i + chunk])
        return out

    def _score_chunk(self, q: np.ndarray) -> np.ndarray:
        m, k = self.m, self.k
        pq = self.proj.project(q)                                  # (M, d)
        pd2 = self.proj.knn._sq_dists(pq)                          # (M, N)
        qc = q - self.proj.mean
        rq = np.sqrt(np.maximum(np.einsum("ij,ij->i", qc, qc) - np.einsum("ij,ij->i", pq, pq), 0.0))
        lb = pd2 + (rq[:, None] - self._res[None, :]) ** 2
        cand, next_lb = smallest(lb, m)                            # (M, m), (M,)
        cb = self.full.bank[cand]                                  # (M, m, D)
        d2 = (self.full._bank_sq[cand] - 2.0 * np.einsum("md,mcd->mc", q, cb)
              + np.einsum("ij,ij->i", q, q)[:, None])
        d2 = np.maximum(d2, 0.0)
        best = np.partition(d2, k - 1, axis=1)[:, :k] if k > 1 else d2.min(axis=1, keepdims=True)
        kth = best.max(axis=1)
        scores = np.sqrt(best).mean(axis=1)
        unsure = next_lb * (1.0 - 1e-4) - 1e-6 < kth             # a non-candidate might be closer
        self.queries += q.shape[0]
        if unsure.any():
            self.fallbacks += int(unsure.sum())
            if self.certify:
                scores[unsure] = self.full.score(q[unsure])
        return scores

    def leave_one_out(self) -> np.ndarray:
        return self.full.leave_one_out()


def smallest(values: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``(idx (M, m), next (M,))``: per row the indices of the ``m`` smallest values (any order) and
    the ``m+1``-th smallest value; ``values`` (M, N) with N > m.

    ``np.partition`` on the values and a mask cost ~0.02 ms for one 10k-row query where
    ``np.argpartition`` costs ~0.1 ms (measured here: half the time of a whole shortlist query).
    Rows with ties at the m-th value (duplicate bank rows) take the ``argpartition`` path.

    Example:
        >>> idx, nxt = smallest(np.array([[5., 1., 4., 2., 3.]]), 2)
        >>> sorted(idx[0].tolist()), float(nxt[0])
        ([1, 3], 3.0)
    """
    part = np.partition(values, (m - 1, m), axis=1)
    mask = values <= part[:, m - 1:m]
    if int(mask.sum()) == m * values.shape[0]:                # no ties: exactly m per row, row-major
        return np.nonzero(mask)[1].reshape(values.shape[0], m), part[:, m]
    return np.argpartition(values, m - 1, axis=1)[:, :m], part[:, m]


def bundle_projection(bundle) -> tuple | None:
    """The :class:`TileScorer` projection tuple a verified bundle's ``scoring.projection`` declares
    (None: the brute-force scan)."""
    p = bundle.manifest.scoring.projection
    return (bundle.arrays[p.mean], bundle.arrays[p.components], p.rerank, p.shortlist, p.certify) if p else None


def projected_scorer(bank: np.ndarray, k: int, mean: np.ndarray, components: np.ndarray, rerank: bool = True,
                     shortlist: int = 64, certify: bool = False):
    """The k-NN scorer of a ``scoring.projection``: exact scores through a PCA shortlist
    (:class:`ShortlistKNNScorer`, ``rerank``), or k-NN in the projected space
    (:class:`ProjectedKNNScorer`: faster, approximate; thresholds calibrated there)."""
    if rerank:
        return ShortlistKNNScorer(bank, k, mean, components, shortlist=shortlist, certify=certify)
    return ProjectedKNNScorer(bank, k, mean, components)


class TileScorer:
    """Feature rows of whole frames -> tile scores and patch scores: the one implementation of a
    bundle's scoring, used by ``fit`` (validation, bank-mode measurement, calibration) and by the
    device (:class:`device.detector.Detector`), so both give the same scores by construction.

    Rows come frame-major, tile-major within a frame, patch-minor: ``n_tiles * patches`` rows
    per frame. A tile scores as its worst patch, a frame as its worst tile.

    Args:
        bank: (N, D) normal feature rows.
        k, method: neighbours and scorer plug-in (:data:`SCORERS`).
        n_tiles, patches: tiles per frame and feature rows per tile.
        tile_index: per-position banks: the tile position of each bank row (None: one shared bank).
        projection: optional ``(mean, components, rerank, shortlist, certify)`` for k-NN.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> ts = TileScorer(rng.normal(size=(50, 4)).astype(np.float32), 1, n_tiles=2)
        >>> ts.tile_scores(np.zeros((6, 4), np.float32)).shape
        (3, 2)
    """

    def __init__(self, bank: np.ndarray, k: int, method: str = "knn", *, n_tiles: int = 1, patches: int = 1,
                 tile_index: np.ndarray | None = None, projection: tuple | None = None):
        self.n_tiles, self.patches, self.method, self.k = int(n_tiles), int(patches), method, int(k)
        self.tile_index = tile_index
        if tile_index is not None:
            self.scorer = None
            self.position = [make_scorer(method, bank[tile_index == i], k) for i in range(self.n_tiles)]
        elif projection is not None:
            self.scorer = projected_scorer(bank, k, *projection)
        else:
            self.scorer = make_scorer(method, bank, k)

    @classmethod
    def for_bundle(cls, bundle) -> "TileScorer":
        """The scorer a verified :class:`device.bundle.Bundle` declares (its arrays, not the disk)."""
        m = bundle.manifest
        return cls(bundle.bank, m.scoring.k, m.scoring.method, n_tiles=len(m.input.tile_boxes()),
                   patches=m.extractor.patches_per_tile, tile_index=bundle.tile_index,
                   projection=bundle_projection(bundle))

    @property
    def rows_per_frame(self) -> int:
        return self.n_tiles * self.patches

    def row_scores(self, feats: np.ndarray) -> np.ndarray:
        """(M,) scores of feature rows of whole frames (M a multiple of :attr:`rows_per_frame`)."""
        if len(feats) % self.rows_per_frame:
            raise ValueError(f"{len(feats)} feature rows are not whole frames of {self.n_tiles} tile(s) x "
                             f"{self.patches} patch row(s)")
        if self.tile_index is None:
            return np.asarray(self.scorer.score(feats), np.float32)
        p = self.patches
        pos = np.tile(np.repeat(np.arange(self.n_tiles), p), len(feats) // self.rows_per_frame)
        rows = np.empty(len(feats), np.float32)
        for i, sc in enumerate(self.position):
            rows[pos == i] = sc.score(feats[pos == i])
        return rows

    def patch_scores(self, feats: np.ndarray) -> np.ndarray:
        """(N, T, patches) scores of every patch row."""
        return self.row_scores(feats).reshape(-1, self.n_tiles, self.patches)

    def tile_scores(self, feats: np.ndarray) -> np.ndarray:
        """(N, T): each tile's worst patch."""
        return self.patch_scores(feats).max(axis=2)

    def frame_scores(self, feats: np.ndarray) -> np.ndarray:
        """(N,): each frame's worst tile."""
        return self.tile_scores(feats).max(axis=1)
