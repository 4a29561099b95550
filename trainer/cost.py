"""What the shipped candidate costs: measured after conversion, on this machine, through the device path.

* :func:`measure_latency` - :meth:`device.detector.Detector.inspect` on real training frames, one
  interpreter thread and one BLAS thread (the Pi's frame path), median per stage; with the Pi 4
  estimate of :class:`trainer.candidates.LatencyModel` (inference x 9, numpy stages x 8: the
  documented basis travels with the figure).
* :func:`choose_compression` - bank compression as part of the choice: a PCA shortlist with exact
  re-rank (:class:`device.scoring.ShortlistKNNScorer`) ships when it is measured faster than the
  brute-force scan *and* leaves every held-out normal score unchanged (relative 1e-4). Options
  tried: (dimensions, shortlist) in :data:`SHORTLISTS`; ``--projection N`` pins the dimensions,
  ``--projection 0`` turns it off. (A float16 or int8 bank is not an option: the device reads
  float32 banks only; ``--bank-max`` with ``--bank-subsample`` sizes the bank, at changed scores.)

Example:
    >>> rec = measure_latency("bundle/", frames)          # doctest: +SKIP
    >>> rec["x86_ms"], rec["pi4_ms_estimate"]             # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SHORTLISTS = ((32, 16), (32, 32), (64, 32), (64, 64), (128, 64))
UNCHANGED_RTOL = 1e-4
FASTER = 0.9          # a compression ships when it takes at most this share of the brute-force k-NN time
PCA_WORK_MAX = 2e12   # multiply-adds of the PCA fit (min(N, D)^2 * max(N, D)) above which compression is not tried


@contextlib.contextmanager
def one_thread():
    """BLAS limited to one thread (the device's k-NN runs single-threaded numpy)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:       # pragma: no cover - scikit-learn brings it
        yield
        return
    with threadpool_limits(1):
        yield


def measure_latency(bundle: str | Path, frames: list, n: int = 40, warmup: int = 5) -> dict:
    """Per-frame cost of ``bundle`` on this machine: ``Detector.inspect`` on ``frames`` (decoded
    source images), 1 interpreter thread, 1 BLAS thread; medians in ms, and the Pi 4 estimate."""
    from device.detector import Detector
    from trainer.candidates import LatencyModel

    m = LatencyModel()
    stages: dict[str, list] = {}
    totals = []
    with one_thread(), Detector.from_bundle(bundle, num_threads=1) as det:
        for i in range(warmup):
            det.inspect(frames[i % len(frames)])
        for i in range(n):
            r = det.inspect(frames[i % len(frames)])
            totals.append(sum(r.timing.values()))
            for k, v in r.timing.items():
                stages.setdefault(k, []).append(v)
    med = {k: float(np.median(v)) for k, v in stages.items()}
    inf = med.get("inference_ms", 0.0)
    other = med.get("preprocess_ms", 0.0) + med.get("knn_ms", 0.0)
    return {"x86_ms": float(np.median(totals)), "x86_ms_p90": float(np.percentile(totals, 90)), **med,
            "pi4_ms_estimate": inf * m.pi4_inference_factor + other * m.pi4_numpy_factor, "frames": n,
            "threads": 1, "machine": "this workstation (x86), device path: Detector.inspect, 1 interpreter thread, "
                                     "1 BLAS thread", "pi4_basis": m.basis}


def _knn_ms(scorer, queries: list[np.ndarray], repeat: int = 3) -> float:
    """Median ms of ``scorer.tile_scores`` per frame (rows of one frame at a time)."""
    for q in queries[:3]:
        scorer.tile_scores(q)
    times = []
    for _ in range(repeat):
        for q in queries:
            t0 = time.perf_counter()
            scorer.tile_scores(q)
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def choose_compression(bank: np.ndarray, k: int, n_tiles: int, fold_bank: np.ndarray, normal_q: np.ndarray,
                       defect_q: np.ndarray, pinned: int | None = None, n_time: int = 40) -> dict:
    """Measure the brute-force scan against PCA shortlists; ``{"dims", "shortlist", ... record}``
    (``dims`` None: no compression ships).

    Args:
        bank: the shipped bank (N, D); k: neighbours; n_tiles: rows per frame.
        fold_bank: a bank without the held-out fold, normal_q / defect_q: rows of held-out normal
            frames and of defects (frame-major): the shortlist's scores against ``fold_bank`` must
            equal the brute-force scores for every normal frame.
        pinned: ``--projection N`` (None: try :data:`SHORTLISTS`; 0: off).
    """
    from device.scoring import TileScorer, fit_pca

    if pinned == 0:
        return {"dims": None, "reason": "off (--projection 0)"}
    d = bank.shape[1]
    opts = [(pinned, 64)] if pinned else [(a, b) for a, b in SHORTLISTS if a < d and b < len(bank) // 4]
    if not opts:
        return {"dims": None, "reason": f"bank of {len(bank)} rows x {d} dims is too small to compress"}
    work = min(bank.shape) ** 2 * max(bank.shape)
    if work > PCA_WORK_MAX:
        return {"dims": None, "reason": f"bank of {len(bank)} rows x {d} dims: fitting its PCA (~{work:.1e} "
                                        f"multiply-adds) costs more than it is worth here; brute-force scan"}
    frames = [q for q in np.split(defect_q, len(defect_q) // n_tiles)][:n_time] or [bank[:n_tiles]]
    with one_thread():
        brute = _knn_ms(TileScorer(bank, k, n_tiles=n_tiles), frames)
        ref_n = TileScorer(fold_bank, k, n_tiles=n_tiles).tile_scores(normal_q)
        ref_d = TileScorer(fold_bank, k, n_tiles=n_tiles).tile_scores(defect_q)
        rows = []
        top = max(dims for dims, _ in opts)      # PCA components are nested: fit once, keep the first dims
        fold_mean, fold_comps, _ = fit_pca(fold_bank, min(top, min(fold_bank.shape)))
        m2, c2_all, _ = fit_pca(bank, min(top, min(bank.shape)))
        fold_c = fold_bank.astype(np.float64) - fold_mean
        fold_var = float((fold_c ** 2).sum()) or 1.0
        for dims, sl in opts:
            comps, c2 = fold_comps[:dims], c2_all[:dims]
            ev = float(((fold_c @ comps.T.astype(np.float64)) ** 2).sum()) / fold_var
            fs = TileScorer(fold_bank, k, n_tiles=n_tiles, projection=(fold_mean, comps, True, sl, False))
            ok_n = np.allclose(fs.tile_scores(normal_q), ref_n, rtol=UNCHANGED_RTOL, atol=1e-6)
            same_d = float(np.mean(np.isclose(fs.tile_scores(defect_q), ref_d, rtol=UNCHANGED_RTOL, atol=1e-6)))
            ms = _knn_ms(TileScorer(bank, k, n_tiles=n_tiles, projection=(m2, c2, True, sl, False)), frames)
            rows.append({"dims": dims, "shortlist": sl, "knn_ms": ms, "normal_scores_unchanged": bool(ok_n),
                         "defect_scores_identical": same_d, "explained_variance": round(ev, 4)})
    good = rows if pinned else [r for r in rows if r["normal_scores_unchanged"] and r["knn_ms"] <= FASTER * brute]
    best = min(good, key=lambda r: r["knn_ms"]) if good else None
    rec = {"brute_force_knn_ms": brute, "options": rows, "bank_rows": int(len(bank)), "dims_in": int(d)}
    if best is None:
        return {"dims": None, **rec, "reason": f"no shortlist is both faster than {FASTER:.0%} of the brute-force "
                                               f"scan ({brute:.3f} ms) and exact on every held-out normal"}
    return {**best, **rec, "reason": f"PCA-{best['dims']} shortlist of {best['shortlist']} with exact re-rank: "
                                      f"k-NN {best['knn_ms']:.3f} ms vs {brute:.3f} ms brute force, held-out normal "
                                      f"scores unchanged"}
