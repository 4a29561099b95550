"""Add a PCA projection to a bundle so k-NN runs in ~128 dimensions instead of 1280.

Two entry points:

* :func:`projection_entries` for the trainer: given the bank, returns the manifest
  fragment (``scoring.projection``) and the extra files to pass to
  :func:`device.bundle.write_bundle`. Calibrate the threshold with
  :class:`device.scoring.ProjectedKNNScorer` so it is in the projected score space.
* :func:`project_bundle` for an existing bundle: writes a copy with the projection and a
  threshold re-calibrated on leave-one-out scores of the projected bank (each bank
  feature scored without itself), at the source bundle's target false-reject rate.

Example:
    $ anomaly-device project-bundle bundle/ bundle-pca128/ --dims 128
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from device.bundle import load_bundle, npy_bytes, write_bundle
from device.errors import BundleError
from device.scoring import ProjectedKNNScorer, fit_pca
from device.threshold import describe_calibration

log = logging.getLogger(__name__)

MEAN_FILE = "pca_mean.npy"
COMPONENTS_FILE = "pca_components.npy"


def projection_entries(bank: np.ndarray, dims: int) -> tuple[dict, dict[str, bytes]]:
    """``(scoring.projection manifest value, {file name: bytes})`` for a PCA of ``bank``."""
    mean, comps, explained = fit_pca(bank, dims)
    frag = {"method": "pca", "dims": int(dims), "mean": MEAN_FILE, "components": COMPONENTS_FILE,
            "explained_variance": round(explained, 6)}
    return frag, {MEAN_FILE: npy_bytes(mean), COMPONENTS_FILE: npy_bytes(comps)}


def project_bundle(src: str | Path, dest: str | Path, dims: int, target_frr: float | None = None) -> dict:
    """Write ``dest``: ``src`` plus a ``dims``-component PCA projection and a matching threshold.

    Returns:
        summary dict (dims, explained variance, old and new threshold).
    """
    b = load_bundle(src)
    if b.scoring_method != "knn":
        raise BundleError(f"{src}: only k-NN bundles can be projected (scoring.method is {b.scoring_method!r})")
    if b.bank.shape[0] <= b.k:
        raise BundleError(f"{src}: bank of {b.bank.shape[0]} features is too small to calibrate leave-one-out")
    frag, files = projection_entries(b.bank, dims)
    scorer = ProjectedKNNScorer(b.bank, b.k, np.load(_io(files[MEAN_FILE])), np.load(_io(files[COMPONENTS_FILE])))
    loo = scorer.leave_one_out()
    frr = target_frr if target_frr is not None else float(b.manifest["threshold"].get("target_frr", 0.01))
    thr = describe_calibration(loo, frr, f"leave-one-out on the PCA-{dims} bank")
    manifest = {k: v for k, v in b.manifest.items() if k not in ("schema", "schema_version", "created", "files")}
    manifest["scoring"] = {**manifest["scoring"], "projection": frag}
    manifest["threshold"] = {**thr, "previous": b.manifest["threshold"]}
    entries = {name: b.path / name for name in b.manifest["files"] if name not in files}
    entries.update(files)
    entries["calibration_scores.npy"] = npy_bytes(loo.astype(np.float32))
    write_bundle(dest, manifest, entries)
    out = {"dest": str(dest), "dims": dims, "explained_variance": frag["explained_variance"],
           "threshold": thr["value"], "previous_threshold": b.threshold, "target_frr": frr}
    log.info("projected bundle written: %s", out)
    return out


def _io(data: bytes):
    import io

    return io.BytesIO(data)
