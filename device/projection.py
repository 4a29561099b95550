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

import io
import logging
from pathlib import Path

import numpy as np

from device.bundle import load_bundle, npy_bytes, write_bundle
from device.errors import BundleError
from device.scoring import ProjectedKNNScorer, fit_pca
from core.threshold import describe_calibration

log = logging.getLogger(__name__)

MEAN_FILE = "pca_mean.npy"
COMPONENTS_FILE = "pca_components.npy"


def projection_entries(bank: np.ndarray, dims: int, rerank: bool = True, shortlist: int = 64) -> tuple[dict, dict[str, bytes]]:
    """``(scoring.projection manifest value, {file name: bytes})`` for a PCA of ``bank``.

    With ``rerank`` (default) the device scores with :class:`device.scoring.ShortlistKNNScorer`:
    the same scores as the full bank, so the threshold and calibration scores need no change.
    """
    mean, comps, explained = fit_pca(bank, dims)
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
