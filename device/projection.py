"""Add a PCA projection to a bundle so k-NN runs in ~128 dimensions instead of 1280.

Two entry points:

* :func:`projection_entries` for the trainer: given the bank, returns the manifest
  fragment (``scoring.projection``) and the extra files to pass to
  :func:`device.bundle.write_bundle`. Calibrate the threshold with
  :class:`device.scoring.ProjectedKNNScorer` so it is in the projected score space.
* :func:`project_bundle` for an existing bundle: writes a copy with the projection. By
  default the device re-ranks a PCA shortlist exactly, so scores and threshold are
  unchanged; with ``rerank=False`` the threshold is re-calibrated on leave-one-out scores
  of the projected bank (each bank feature scored without itself).

Example:
    $ anomaly-device project-bundle bundle/ bundle-pca128/ --dims 128
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import time
from pathlib import Path

import numpy as np

from device.bundle import load_bundle, npy_bytes, write_bundle
from device.errors import BundleError
from device.scoring import ProjectedKNNScorer, fit_pca
from core.threshold import describe_calibration

log = logging.getLogger(__name__)

MEAN_FILE = "pca_mean.npy"
COMPONENTS_FILE = "pca_components.npy"
SHORTLISTS = ((32, 16), (32, 32), (64, 32), (64, 64), (128, 64))
UNCHANGED_RTOL = 1e-4
FASTER = 0.9          # a compression ships when it takes at most this share of the brute-force k-NN time
PCA_WORK_MAX = 2e12   # multiply-adds of the PCA fit (min(N, D)^2 * max(N, D)) above which compression is not tried


def projection_entries(bank: np.ndarray, dims: int, rerank: bool = True, shortlist: int = 64,
                       pca: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[dict, dict[str, bytes]]:
    """``(scoring.projection manifest value, {file name: bytes})`` for a PCA of ``bank``.

    With ``rerank`` (default) the device scores with :class:`device.scoring.ShortlistKNNScorer`:
    the same scores as the full bank, so the threshold and calibration scores need no change.
    ``pca``: ``(mean, components)`` already fitted on ``bank`` (``dims`` rows of components).
    """
    if pca is None:
        mean, comps, explained = fit_pca(bank, dims)
    else:
        mean, comps = pca
        explained = _explained(np.asarray(bank, np.float64) - mean, comps)
    frag = {"method": "pca", "dims": int(dims), "mean": MEAN_FILE, "components": COMPONENTS_FILE,
            "explained_variance": round(explained, 6), "rerank": bool(rerank), "shortlist": int(shortlist)}
    return frag, {MEAN_FILE: npy_bytes(mean), COMPONENTS_FILE: npy_bytes(comps)}


def project_bundle(src: str | Path, dest: str | Path, dims: int, target_frr: float | None = None,
                   rerank: bool = True, shortlist: int = 64) -> dict:
    """Write ``dest``: ``src`` plus a ``dims``-component PCA projection.

    With ``rerank`` the threshold is kept (scores are the full bank's). Without it, scores
    live in the projected space and the threshold is re-calibrated on leave-one-out scores
    of the projected bank at ``target_frr`` (default: the source bundle's).

    Returns:
        summary dict (dims, explained variance, old and new threshold).
    """
    b = load_bundle(src)
    m = b.manifest
    if b.scoring_method != "knn":
        raise BundleError(f"{src}: only k-NN bundles can be projected (scoring.method is {b.scoring_method!r})")
    if m.scoring.projection is not None:
        raise BundleError(f"{src}: bundle already has a scoring.projection")
    if b.tile_index is not None:
        raise BundleError(f"{src}: bundle has per-position banks (bank_tile_index.npy); only a shared bank can be "
                          f"projected (refit with --bank-mode shared)")
    if b.patches_per_tile > 1:
        raise BundleError(f"{src}: patch bundles (extractor.patches) cannot be projected; use --scoring gauss")
    try:
        frag, files = projection_entries(b.bank, dims, rerank, shortlist)
    except ValueError as exc:
        raise BundleError(f"{src}: {exc}") from exc
    manifest = m.body()
    manifest["scoring"] = {**manifest["scoring"], "projection": frag}
    entries = {name: data for name, data in b.files.items() if name not in files}
    entries.update(files)
    thr_value = b.threshold.value
    if not rerank:
        if b.bank.shape[0] <= b.k:
            raise BundleError(f"{src}: bank of {b.bank.shape[0]} features is too small to calibrate leave-one-out")
        mean, comps = np.load(io.BytesIO(files[MEAN_FILE])), np.load(io.BytesIO(files[COMPONENTS_FILE]))
        loo = ProjectedKNNScorer(b.bank, b.k, mean, comps).leave_one_out()
        frr = target_frr if target_frr is not None else m.threshold.target_frr
        how = f"leave-one-out on the PCA-{dims} bank"
        n_tiles = len(b.input_spec.tile_boxes())
        if n_tiles > 1:   # a frame scores its worst tile: calibrate on maxima of n_tiles leave-one-out scores
            rng = np.random.default_rng(0)
            loo = loo[rng.integers(0, len(loo), (max(500, len(loo) // n_tiles), n_tiles))].max(axis=1)
            how += f", maxima of random groups of {n_tiles} tile scores (the bank keeps no frame grouping)"
        try:
            thr = describe_calibration(loo, frr, how)
        except ValueError as exc:
            raise BundleError(f"{src}: {exc}") from None
        manifest["threshold"] = {**thr, "previous": manifest["threshold"]}
        entries["calibration_scores.npy"] = npy_bytes(loo.astype(np.float32))
        thr_value = thr["value"]
    write_bundle(dest, manifest, entries)
    out = {"dest": str(dest), "dims": dims, "explained_variance": frag["explained_variance"], "rerank": rerank,
           "threshold": thr_value, "previous_threshold": b.threshold.value}
    log.info("projected bundle written: %s", out)
    return out


# ---------------------------------------------------------------- choosing the compression
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


def _explained(centred: np.ndarray, comps: np.ndarray) -> float:
    """Share of the variance of ``centred`` rows (float64) that ``comps`` keep."""
    return float(((centred @ comps.T.astype(np.float64)) ** 2).sum()) / (float((centred ** 2).sum()) or 1.0)


@dataclasses.dataclass
class Compression:
    """What ships for a bank: ``fragment`` (``scoring.projection``; None: the brute-force scan), its
    ``files``, the ``record`` of the choice, and ``projection``: the
    :class:`device.scoring.TileScorer` projection tuple (None without one)."""

    fragment: dict | None
    files: dict
    record: dict
    projection: tuple | None = None


def compression_for(bank: np.ndarray, k: int, n_tiles: int, fold_bank: np.ndarray, normal_q: np.ndarray,
                    defect_q: np.ndarray | None = None, pinned: int | None = None, n_time: int = 40) -> Compression:
    """Bank compression as part of the choice, made by ``fit`` and again by the device's ``learn``
    when it grows the bank: a PCA shortlist with exact re-rank
    (:class:`device.scoring.ShortlistKNNScorer`) ships when it is measured faster than the
    brute-force scan (one BLAS thread, :data:`FASTER`) *and* leaves every held-out normal score
    unchanged (relative :data:`UNCHANGED_RTOL`). The returned :class:`Compression` carries the
    record (``dims`` None: no compression ships) and, when a shortlist wins, its projection from
    the PCA the choice already fitted on ``bank``. (A float16 or int8 bank is not an option: the
    device reads float32 banks only; ``--bank-max`` with ``--bank-subsample`` sizes the bank, at
    changed scores.)

    Args:
        bank: the shipped bank (N, D); k: neighbours; n_tiles: rows per frame.
        fold_bank: a bank without the held-out normals; normal_q: rows of held-out normal frames
            (frame-major): the shortlist's scores against ``fold_bank`` must equal the brute-force
            scores for every one of them.
        defect_q: rows of defect frames (optional): timed, and the share of their scores that stay
            identical is reported; without them the normal frames are timed.
        pinned: ``--projection N`` (None: try :data:`SHORTLISTS`; 0: off).
    """
    rec, pca = _choose(bank, k, n_tiles, fold_bank, normal_q, defect_q, pinned, n_time)
    if rec["dims"] is None:
        return Compression(None, {}, rec)
    mean, comps = pca[0], np.ascontiguousarray(pca[1][:rec["dims"]])
    frag, files = projection_entries(bank, rec["dims"], rerank=True, shortlist=rec["shortlist"], pca=(mean, comps))
    return Compression(frag, files, rec, (mean, comps, True, rec["shortlist"], False))


def _choose(bank, k, n_tiles, fold_bank, normal_q, defect_q=None, pinned=None, n_time: int = 40) -> tuple:
    """``(record, (mean, components) of the bank's PCA or None)`` for :func:`compression_for`."""
    from device.scoring import TileScorer

    if pinned == 0:
        return {"dims": None, "reason": "off (--projection 0)"}, None
    d = bank.shape[1]
    opts = [(pinned, 64)] if pinned else [(a, b) for a, b in SHORTLISTS if a < d and b < len(bank) // 4]
    if not opts:
        return {"dims": None, "reason": f"bank of {len(bank)} rows x {d} dims is too small to compress"}, None
    work = min(bank.shape) ** 2 * max(bank.shape)
    if work > PCA_WORK_MAX:
        return {"dims": None, "reason": f"bank of {len(bank)} rows x {d} dims: fitting its PCA (~{work:.1e} "
                                        f"multiply-adds) costs more than it is worth here; brute-force scan"}, None
    timed = defect_q if defect_q is not None and len(defect_q) else normal_q
    frames = [q for q in np.split(timed, len(timed) // n_tiles)][:n_time] or [bank[:n_tiles]]
    with one_thread():
        brute = _knn_ms(TileScorer(bank, k, n_tiles=n_tiles), frames)
        ref_n = TileScorer(fold_bank, k, n_tiles=n_tiles).tile_scores(normal_q)
        ref_d = TileScorer(fold_bank, k, n_tiles=n_tiles).tile_scores(defect_q) if defect_q is not None else None
        rows = []
        top = max(dims for dims, _ in opts)      # PCA components are nested: fit once, keep the first dims
        fold_mean, fold_comps, _ = fit_pca(fold_bank, min(top, min(fold_bank.shape)))
        m2, c2_all, _ = fit_pca(bank, min(top, min(bank.shape)))
        fold_c = fold_bank.astype(np.float64) - fold_mean
        for dims, sl in opts:
            comps, c2 = fold_comps[:dims], c2_all[:dims]
            ev = _explained(fold_c, comps)
            fs = TileScorer(fold_bank, k, n_tiles=n_tiles, projection=(fold_mean, comps, True, sl, False))
            ok_n = np.allclose(fs.tile_scores(normal_q), ref_n, rtol=UNCHANGED_RTOL, atol=1e-6)
            same_d = None if ref_d is None else float(np.mean(np.isclose(
                fs.tile_scores(defect_q), ref_d, rtol=UNCHANGED_RTOL, atol=1e-6)))
            ms = _knn_ms(TileScorer(bank, k, n_tiles=n_tiles, projection=(m2, c2, True, sl, False)), frames)
            rows.append({"dims": dims, "shortlist": sl, "knn_ms": ms, "normal_scores_unchanged": bool(ok_n),
                         **({} if same_d is None else {"defect_scores_identical": same_d}),
                         "explained_variance": round(ev, 4)})
    good = rows if pinned else [r for r in rows if r["normal_scores_unchanged"] and r["knn_ms"] <= FASTER * brute]
    best = min(good, key=lambda r: r["knn_ms"]) if good else None
    rec = {"brute_force_knn_ms": brute, "options": rows, "bank_rows": int(len(bank)), "dims_in": int(d),
           "held_out_normal_rows": int(len(normal_q))}
    if best is None:
        return {"dims": None, **rec, "reason": f"no shortlist is both faster than {FASTER:.0%} of the brute-force "
                                               f"scan ({brute:.3f} ms) and exact on every held-out normal"}, None
    return {**best, **rec, "reason": f"PCA-{best['dims']} shortlist of {best['shortlist']} with exact re-rank: "
                                      f"k-NN {best['knn_ms']:.3f} ms vs {brute:.3f} ms brute force, held-out normal "
                                      f"scores unchanged"}, (m2, c2_all)
