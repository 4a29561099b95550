"""Learn from confirmed good parts on the device: ``anomaly-device learn`` (no TensorFlow).

A false reject is fixed where it happened, in minutes, without a workstation:

1. **Features** of the confirmed-good images are computed with the active bundle's own
   ``.tflite`` (:meth:`device.detector.Detector.features` on :func:`device.preprocess.preprocess`
   output), so they live in exactly the space of its bank.
2. **Bank.** They are added to the bank, which is compressed back to the bundle's cap with
   the trainer's rule (:func:`device.scoring.bank_rows`: k-center coreset or random, per tile
   position for per-position banks, with the bundle's seed). The cap is the one ``fit`` applied,
   ``scoring.bank_max`` (per position: ``max(k + 1, bank_max // tiles)``, as ``fit`` does); a bundle
   that does not record it keeps its bank size when its bank was subsampled
   (``scoring.bank_subsample`` not ``"none"``) and else grows (patch banks: at most
   :data:`device.scoring.PATCH_BANK_DEFAULT` rows).
3. **Threshold**, re-derived at the bundle's own target false-reject rate. The parent's
   calibration scores are scores of held-out normal images *against the old bank*; after the
   bank changed they no longer describe the new model. So:

   * a bundle carrying ``calibration_features.npy`` (the held-out normals' feature rows) has
     them **re-scored against the new bank** with the device's scorer: held-out scores of the
     new model, as unbiased as the parent's, and the threshold is their quantile
     (:func:`core.threshold.describe_calibration`);
   * an older bundle without them gets an **estimate** (:func:`mapped_calibration`): each
     parent calibration score is scaled by how the leave-one-out scores of the parent's bank
     rows *at the same score level* changed between the old and the new bank. It is declared
     as an estimate in the manifest (``threshold.method``, ``threshold.estimator``).

   The new scores ship as the child's ``calibration_scores.npy`` (so ``[bundle] target_frr``
   keeps working) and the calibration features travel on unchanged.
4. **Provenance**: the child's ``lineage`` record names the parent digest, every image added
   (sha256, file or journal row), when, and the method.
5. **Preview** before it goes live: the archived images of the last ``days`` days (the
   journal's ``image`` column) are replayed through the new version: how many archived rejects
   would now pass, how many archived passes would now reject, and the new threshold.

The new version is written into the versions store (:mod:`device.versions`) or ``--out``;
``--deploy`` activates it through :func:`device.versions.deploy`.

Images: ``--good`` takes images as ``capture`` writes them (after the camera ROI);
``--from-journal ROW`` takes the archived image of a decision row: the clean frame after the
camera ROI (:mod:`device.archive`; a tiled bundle's score overlay is a separate
``*_overlay.png``). Archives written before that kept the full frame, which is cropped with
``[camera] roi`` here (:func:`archived_frame`).

Example:
    >>> out = learn(load_config("device.toml"), good=["confirmed/"], days=7)     # doctest: +SKIP
    >>> out["threshold"]["new"], out["preview"]["rejects_now_pass"]               # doctest: +SKIP
    (0.412, 17)
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from device.errors import BundleError, ConfigError

log = logging.getLogger(__name__)

CAL_FEATURES = "calibration_features.npy"
DROP_KEYS = ("schema", "schema_version", "created", "files", "migrated_from")


@dataclasses.dataclass
class LearnImage:
    """One confirmed-good image: where it came from, its sha256 and pixels (after the camera ROI)."""

    source: str
    sha256: str
    image: np.ndarray
    row: int | None = None


def _manifest_dict(bundle) -> dict[str, Any]:
    m = bundle.manifest
    return m.to_dict() if hasattr(m, "to_dict") else dict(m)


# ---------------------------------------------------------------- images
def collect_images(cfg, good: Sequence[str | Path] = (), rows: Sequence[int] = ()) -> list[LearnImage]:
    """Decode the ``--good`` images and the archived images of journal ``rows``.

    Raises:
        ConfigError: a path or row does not exist, or a row has no archived image.
    """
    from device.errors import ImageError
    from device.preprocess import decode_image, list_images

    out = []
    try:
        paths = list_images(good) if good else []
    except ImageError as exc:
        raise ConfigError(f"--good: {exc}") from None
    for p in paths:
        data = p.read_bytes()
        try:
            out.append(LearnImage(str(p), hashlib.sha256(data).hexdigest(), decode_image(data)))
        except ImageError as exc:
            raise ConfigError(f"{p}: {exc}") from None
    for row, path in _journal_images(cfg, rows):
        data = Path(path).read_bytes()
        try:
            img = archived_frame(decode_image(data), cfg.camera.roi)
        except Exception as exc:
            raise ConfigError(f"journal row {row}: archived image {path}: {exc}") from None
        out.append(LearnImage(f"journal row {row} ({path})", hashlib.sha256(data).hexdigest(), img, row))
    if not out:
        raise ConfigError("nothing to learn: give --good images or --from-journal rows")
    return out


def archived_frame(image: np.ndarray, roi) -> np.ndarray:
    """An archived image as the model saw it before its preprocessing. The archive keeps the frame
    after the camera ROI; an image from an older archive (the full frame: it holds the whole ROI
    rectangle and is not ROI-sized) is cropped here.

    Example:
        >>> archived_frame(np.zeros((48, 64, 3), np.uint8), (4, 2, 40, 30)).shape     # an old full frame
        (30, 40, 3)
        >>> archived_frame(np.zeros((30, 40, 3), np.uint8), (4, 2, 40, 30)).shape     # already cropped
        (30, 40, 3)
    """
    from device.camera import crop

    if roi is None:
        return image
    x, y, w, h = roi
    full = image.shape[:2] != (h, w) and image.shape[0] >= y + h and image.shape[1] >= x + w
    return crop(image, roi) if full else image


def _journal_images(cfg, rows: Sequence[int]) -> list[tuple[int, str]]:
    if not rows:
        return []
    from device.journal import open_readonly

    with open_readonly(cfg.journal.path) as j:
        found = {i: (r["image"], r["tile_grid"] is not None) for i, r in j.decisions_by_id(rows).items()}
    out = []
    for r in rows:
        if r not in found:
            raise ConfigError(f"--from-journal {r}: no such decision row in {cfg.journal.path}")
        image, tiled = found[r]
        if not image:
            raise ConfigError(f"--from-journal {r}: the decision has no archived image (only rejects and 1 in "
                              f"[journal] archive_pass_every passes are archived)")
        if not Path(image).is_file():
            raise ConfigError(f"--from-journal {r}: archived image {image} is gone (archive retention?)")
        if overlaid(image, tiled):
            raise ConfigError(f"--from-journal {r}: archived image {image} carries the score overlay (archived before "
                              f"clean frames were kept); pass the clean frame with --good")
        out.append((int(r), image))
    return out


def overlaid(image: str, tiled: bool) -> bool:
    """Whether an archived image of a tiled bundle's decision is an overlay picture (archives written
    before the clean frame was kept): the current archive writes the overlay beside it."""
    from device.archive import overlay_path

    return tiled and not overlay_path(image).is_file()


# ---------------------------------------------------------------- bank
def bank_cap(manifest: dict, bank_rows: int) -> int | None:
    """The bank's cap: ``scoring.bank_max`` (the cap fit applied); for bundles that do not record
    it, the bank size when fit subsampled it, else none (the bank may grow).

    Example:
        >>> bank_cap({"scoring": {"bank_max": 10000, "bank_subsample": "none"}}, 200)
        10000
        >>> bank_cap({"scoring": {"bank_subsample": "coreset"}}, 200), bank_cap({"scoring": {}}, 200)
        (200, None)
    """
    sc = manifest.get("scoring", {})
    if sc.get("bank_max"):
        return int(sc["bank_max"])
    if sc.get("bank_subsample") not in (None, "none"):
        return int(bank_rows)
    return None


def grow_bank(bundle, new_rows: np.ndarray, n_images: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, dict]:
    """The parent bank plus ``new_rows`` (``n_images`` whole frames of feature rows), compressed to
    the cap with :func:`device.scoring.bank_rows`.

    Returns:
        ``(bank, tile_index or None, keep_parent, info)``; ``keep_parent[i]`` is the new index of
        parent row ``i`` (-1: dropped).
    """
    from device.scoring import bank_rows

    m = _manifest_dict(bundle)
    p = bundle.patches_per_tile
    n_tiles = len(bundle.input_spec.tile_boxes())
    method = m["scoring"].get("bank_subsample")
    method = method if method in ("coreset", "random") else "coreset"
    seed = int((m.get("training") or {}).get("seed", 0))
    scoring, k = bundle.scoring_method, bundle.k
    cap = bank_cap(m, len(bundle.bank))
    both = np.concatenate([bundle.bank, new_rows.astype(np.float32)])
    idx = bundle.tile_index
    if idx is None:
        keep = bank_rows(both, cap, method, scoring, p, seed)
        bank, new_idx = both[keep], None
    else:
        pos = np.concatenate([idx, np.tile(np.repeat(np.arange(n_tiles), p), n_images)])
        keep = []
        for i in range(n_tiles):
            rows_i = np.flatnonzero(pos == i)
            cap_i = _position_cap(m, cap, int((idx == i).sum()), n_tiles, k)
            keep.append(rows_i[bank_rows(both[rows_i], cap_i, method, scoring, p, seed)])
        keep = np.concatenate(keep)
        bank, new_idx = both[keep], pos[keep].astype(idx.dtype)
    kept_new = int((keep >= len(bundle.bank)).sum())
    keep_parent = np.full(len(bundle.bank), -1, np.int64)
    from_parent = keep < len(bundle.bank)
    keep_parent[keep[from_parent]] = np.flatnonzero(from_parent)
    info = {"before": int(len(bundle.bank)), "added_rows": int(len(new_rows)), "after": int(len(bank)),
            "cap": cap, "subsample": method if cap is not None or p > 1 else "none", "seed": seed,
            "new_rows_kept": kept_new, "parent_rows_dropped": int(len(bundle.bank) - (len(keep) - kept_new))}
    return np.ascontiguousarray(bank, np.float32), new_idx, keep_parent, info


def _position_cap(manifest: dict, cap: int | None, rows_now: int, n_tiles: int, k: int) -> int | None:
    """One position's cap in a per-position bank: ``max(k + 1, bank_max // tiles)`` as fit applies it,
    else (no ``bank_max``) its current rows when the bank is capped."""
    bank_max = manifest["scoring"].get("bank_max")
    if bank_max:
        return max(k + 1, int(bank_max) // n_tiles)
    return rows_now if cap is not None else None


def tile_scorer(bundle, bank: np.ndarray, tile_index: np.ndarray | None, projection: tuple | None):
    """The device's scorer (:class:`device.scoring.TileScorer`) for ``bundle`` with another bank and
    ``projection`` (a TileScorer projection tuple, or None: the brute-force scan)."""
    from device.scoring import TileScorer

    return TileScorer(bank, bundle.k, bundle.scoring_method, n_tiles=len(bundle.input_spec.tile_boxes()),
                      patches=bundle.patches_per_tile, tile_index=tile_index, projection=projection)


# ---------------------------------------------------------------- threshold
def _rows_left_out(method: str, k: int, bank: np.ndarray, queries: np.ndarray, self_idx: np.ndarray) -> np.ndarray:
    """Scores of ``queries`` against ``bank``, each without its own bank row (``self_idx``, -1: none)."""
    from device.scoring import KNNScorer, make_scorer

    if method != "knn":      # a Gaussian (or LOF) fitted on thousands of rows: one row's influence is negligible
        return make_scorer(method, bank, k).score(queries)
    sc = KNNScorer(bank, k)
    out = np.empty(len(queries), np.float32)
    inside = self_idx >= 0
    if inside.any():
        out[inside] = sc.score(queries[inside], exclude=self_idx[inside])
    if (~inside).any():
        out[~inside] = sc.score(queries[~inside])
    return out


def _position_of(idx: np.ndarray | None, n: int) -> np.ndarray:
    return np.zeros(n, np.int64) if idx is None else np.asarray(idx)


def mapped_calibration(bundle, new_bank: np.ndarray, new_index: np.ndarray | None, keep_parent: np.ndarray,
                       k_near: int = 7) -> np.ndarray:
    """Estimate of the parent calibration scores against the new bank, for bundles without
    calibration features: the *conditional leave-one-out ratio*.

    Every parent bank row is scored leave-one-out against the old bank (``l_old``) and against
    the new bank without itself (``l_new``); a calibration score ``c`` is multiplied by the mean
    ``l_new / l_old`` of the ``k_near`` rows whose ``l_old`` is closest to ``c``. Conditioning on
    the score level matters: rows close to a dropped neighbour change a lot, far ones little
    (an unconditional ratio over-estimated the threshold by 20-30 % in our tests; this one came
    within about 4 % of the held-out re-score). ``keep_parent[i]``: row ``i`` of the parent bank in
    the new bank (-1: dropped).
    """
    cal = bundle.calibration_scores
    if cal is None:
        raise BundleError(f"{bundle.path}: no calibration_scores.npy and no {CAL_FEATURES}: the threshold cannot "
                          f"be re-derived")
    old_pos = _position_of(bundle.tile_index, len(bundle.bank))
    new_pos = _position_of(new_index, len(new_bank))
    l_old, l_new = [], []
    for i in np.unique(old_pos):
        rows = np.flatnonzero(old_pos == i)
        l_old.append(_rows_left_out(bundle.scoring_method, bundle.k, bundle.bank[rows], bundle.bank[rows],
                                    np.arange(len(rows))))
        new_rows = np.flatnonzero(new_pos == i)
        where = np.full(len(new_bank), -1)
        where[new_rows] = np.arange(len(new_rows))
        self_new = np.where(keep_parent[rows] >= 0, where[np.maximum(keep_parent[rows], 0)], -1)
        l_new.append(_rows_left_out(bundle.scoring_method, bundle.k, new_bank[new_rows], bundle.bank[rows], self_new))
    lo, ln = np.concatenate(l_old).astype(np.float64), np.concatenate(l_new).astype(np.float64)
    ok = lo > 1e-9                     # duplicate rows have no ratio
    if ok.sum() == 0:
        return np.asarray(cal, np.float32)
    lo, ratio = lo[ok], ln[ok] / lo[ok]
    k = min(k_near, len(lo))
    c = np.asarray(cal, np.float64)
    near = np.argsort(np.abs(lo[None, :] - c[:, None]), axis=1)[:, :k]
    return (c * ratio[near].mean(axis=1)).astype(np.float32)


def rederive_threshold(bundle, scorer, new_bank, new_index, keep_parent) -> tuple[dict, np.ndarray]:
    """``(threshold record, new calibration scores)`` at the parent's target false-reject rate."""
    from core.threshold import describe_calibration

    m = _manifest_dict(bundle)
    old = m["threshold"]
    frr = float(old.get("target_frr", 0.01))
    feats = bundle.arrays.get(CAL_FEATURES)
    if feats is not None:
        scores = scorer.frame_scores(feats).astype(np.float32)
        how = (f"{len(scores)} held-out calibration images' features (carried in {CAL_FEATURES}) re-scored against "
               f"the new bank; quantile at the target false-reject rate")
        est = {"kind": "held-out re-score", "unbiased": True, "n": int(len(scores))}
    else:
        scores = mapped_calibration(bundle, new_bank, new_index, keep_parent)
        how = ("ESTIMATE: the parent carries no calibration features; each of its calibration scores was scaled "
               "by the change of the leave-one-out scores of the bank rows at the same score level")
        est = {"kind": "conditional leave-one-out ratio", "unbiased": False, "n": int(len(scores)),
               "note": "an estimate (within a few per cent of a held-out re-score in our tests); bundles written "
                       "with calibration features get an exact held-out re-score"}
    rec = describe_calibration(scores, frr, how)
    rec["estimator"] = {**rec["estimator"], **est}     # the estimate (core.threshold) + where the scores came from
    rec["previous"] = {"value": old.get("value"), "target_frr": old.get("target_frr"),
                       "method": str(old.get("method", ""))[:200], "digest": bundle_digest_of(bundle)}
    return rec, scores


def choose_bank_compression(bundle, bank: np.ndarray, tile_index: np.ndarray | None):
    """``fit``'s compression choice made again for the grown bank: a
    :class:`device.projection.Compression` (:func:`device.projection.compression_for`).

    A bank that grows from hundreds of rows to thousands crosses from "the brute-force scan is
    fastest" to "a PCA shortlist is several times faster at unchanged scores" (10k rows: ~2.6 ->
    ~0.2 ms per query here), and a parent's projection fitted on another bank may no longer pay.
    Held-out normals: the bundle's calibration features (not bank rows) when it carries them,
    else 200 bank rows left out of the bank they are checked against. ``--projection 0`` at fit
    (off) stays off, and a projection without re-rank (scores and threshold in its PCA space) is
    kept as it is.
    """
    from device.projection import Compression, compression_for
    from device.scoring import bundle_projection

    m = _manifest_dict(bundle)
    old = m["scoring"].get("projection")
    if old and not old.get("rerank", True):        # scores (and the threshold) live in that PCA space: keep it
        p = bundle.manifest.scoring.projection
        return Compression(old, {n: bytes(bundle.files[n]) for n in (p.mean, p.components)},
                           {"dims": p.dims, "reason": f"kept: PCA-{p.dims} without re-rank (the threshold is "
                                                      f"calibrated in that space)"}, bundle_projection(bundle))
    fit_rec = (m.get("backbone", {}).get("selection") or {}).get("bank_compression") or {}
    if str(fit_rec.get("reason", "")).startswith("off"):
        return Compression(None, {}, {"dims": None, "reason": "off (turned off at fit: --projection 0)"})
    if bundle.scoring_method != "knn" or bundle.patches_per_tile > 1 or tile_index is not None:
        return Compression(None, {}, {"dims": None, "reason": "not applicable (k-NN over a shared bank of pooled "
                                                              "rows only)"})
    n_tiles = len(bundle.input_spec.tile_boxes())
    cal = bundle.arrays.get(CAL_FEATURES)
    if cal is not None and len(cal) >= n_tiles and cal.shape[1] == bank.shape[1]:
        normal_q, fold_bank = cal[:200 * n_tiles], bank
        normal_q = normal_q[:len(normal_q) // n_tiles * n_tiles]
    else:
        n_hold = min(200, len(bank) // 5) // n_tiles * n_tiles
        if n_hold == 0:
            return Compression(None, {}, {"dims": None, "reason": f"bank of {len(bank)} rows is too small to compress"})
        hold = np.sort(np.random.default_rng(0).choice(len(bank), n_hold, replace=False))
        normal_q, fold_bank = bank[hold], np.delete(bank, hold, axis=0)
    return compression_for(bank, bundle.k, n_tiles, fold_bank, normal_q)


def bundle_digest_of(bundle) -> str:
    d = getattr(bundle, "digest", None)
    if d:
        return d
    from device.bundle import bundle_digest

    return bundle_digest(bundle.path)


# ---------------------------------------------------------------- preview
def preview(cfg, det, days: float = 7.0, limit: int = 2000, learned_rows: Sequence[int] = (),
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Replay the archived images of the last ``days`` days through ``det`` (the new version).

    Returns:
        ``{"available", "days", "archived_rejects", "archived_passes", "rejects_now_pass",
        "passes_now_reject", "missing_images", "overlay_images", "learned_rows": {"n", "now_pass"},
        "note"}`` (``overlay_images``: old tiled-bundle archive pictures with the score drawn in, skipped).
    """
    from device.errors import AnomalyError
    from device.journal import open_readonly
    from device.preprocess import decode_image

    out: dict[str, Any] = {"available": False, "days": days}
    try:
        with open_readonly(cfg.journal.path) as j:
            rows = j.archived_since(time.time() - days * 86400, limit)
    except AnomalyError as exc:
        out["reason"] = str(exc)
        return out
    learned = set(int(r) for r in learned_rows)
    c = {"archived_rejects": 0, "archived_passes": 0, "rejects_now_pass": 0, "passes_now_reject": 0,
         "missing_images": 0, "overlay_images": 0}
    lr = {"n": 0, "now_pass": 0}
    for i, r in enumerate(rows):
        if progress:
            progress(i + 1, len(rows))
        try:
            if overlaid(r["image"], r["tiled"]):
                c["overlay_images"] += 1
                continue
            new = str(det.inspect(archived_frame(decode_image(r["image"]), cfg.camera.roi)).decision)
        except Exception:   # gone (retention) or unreadable
            c["missing_images"] += 1
            continue
        if r["id"] in learned:
            lr["n"] += 1
            lr["now_pass"] += new == "PASS"
            continue
        old = r["decision"]
        c["archived_rejects" if old == "REJECT" else "archived_passes"] += 1
        c["rejects_now_pass"] += old == "REJECT" and new == "PASS"
        c["passes_now_reject"] += old == "PASS" and new != "PASS"
    return {**out, "available": True, **c, "learned_rows": lr, "replayed": len(rows),
            "note": f"archived passes are a sample (1 in [journal] archive_pass_every = "
                    f"{cfg.journal.archive_pass_every}); at most {limit} most recent images replayed"}


# ---------------------------------------------------------------- the command
def _lineage(parent, pdig: str, images: list[LearnImage], bank_info: dict, thr: dict) -> dict[str, Any]:
    from device.versions import lineage_record

    method = (f"bank += features of {len(images)} confirmed-good image(s) from the parent's extractor; "
              f"compressed to cap {bank_info['cap']} ({bank_info['subsample']}, device.scoring.bank_rows, "
              f"seed {bank_info['seed']}); threshold: {thr['estimator']['kind']} at target FRR {thr['target_frr']}; "
              f"k-NN: {bank_info.get('compression', {}).get('reason', 'brute-force scan')}")
    return lineage_record(_manifest_dict(parent), pdig, "anomaly-device learn", method,
                          images=[{"sha256": im.sha256, "source": im.source, **({"row": im.row} if im.row else {})}
                                  for im in images],
                          n_images=len(images), bank=bank_info)


def build_child(parent, images: list[LearnImage], progress: Callable[[int, int], None] | None = None
                ) -> tuple[dict, dict[str, bytes], dict]:
    """The new version's manifest body and files, and figures (scores of the learned images
    before and after, bank, threshold). Nothing is written."""
    from device.bundle import npy_bytes
    from device.detector import Detector
    from device.preprocess import preprocess

    pdig = bundle_digest_of(parent)
    feats, before = [], []
    t0 = time.perf_counter()
    with Detector(parent) as det:
        for i, im in enumerate(images):
            rows = det.features(preprocess(im.image, parent.input_spec))
            feats.append(rows)
            before.append(float(det.scorer.frame_scores(rows)[0]))
            if progress:
                progress(i + 1, len(images))
    new_rows = np.concatenate(feats)
    t1 = time.perf_counter()
    bank, idx, keep_parent, bank_info = grow_bank(parent, new_rows, len(images))
    t2 = time.perf_counter()
    comp = choose_bank_compression(parent, bank, idx)
    bank_info["compression"] = {k: comp.record[k] for k in ("dims", "shortlist", "knn_ms", "brute_force_knn_ms",
                                                            "reason") if k in comp.record}
    t3 = time.perf_counter()
    scorer = tile_scorer(parent, bank, idx, projection=comp.projection)      # the new version's own scoring
    thr, cal_scores = rederive_threshold(parent, scorer, bank, idx, keep_parent)
    after = scorer.frame_scores(new_rows)
    t4 = time.perf_counter()
    body = {k: v for k, v in _manifest_dict(parent).items() if k not in DROP_KEYS}
    sc = dict(body["scoring"])
    sc["bank_size"] = int(len(bank))
    if sc.get("bank_source_images") is not None:
        sc["bank_source_images"] = int(sc["bank_source_images"]) + len(images)
    old_proj = sc.pop("projection", None)
    if comp.fragment is not None:
        sc["projection"] = comp.fragment
    body.update(scoring=sc, threshold=thr, lineage=_lineage(parent, pdig, images, bank_info, thr))
    dropped = {"bank.npy", "calibration_scores.npy", "bank_tile_index.npy"}
    if old_proj:
        dropped |= {old_proj.get("mean"), old_proj.get("components")}
    files = {n: bytes(b) for n, b in parent.files.items() if n not in dropped}
    files.update(comp.files)
    files["bank.npy"] = npy_bytes(bank)
    files["calibration_scores.npy"] = npy_bytes(cal_scores)
    if idx is not None:
        files["bank_tile_index.npy"] = npy_bytes(idx)
    figures = {"scores_before": before, "scores_after": [float(s) for s in after], "bank": bank_info,
               "threshold": thr, "timing": {"features_s": round(t1 - t0, 3), "bank_s": round(t2 - t1, 3),
                                            "compression_s": round(t3 - t2, 3), "threshold_s": round(t4 - t3, 3)}}
    return body, files, figures


def learn(cfg, good: Sequence[str | Path] = (), rows: Sequence[int] = (), days: float = 7.0,
          out: str | Path | None = None, deploy: bool = False, preview_max: int = 2000,
          progress: Callable[[str, int, int], None] | None = None, **deploy_kw) -> dict[str, Any]:
    """Learn confirmed-good images into a new version of the active bundle (module docstring).

    Args:
        cfg: device config (active bundle, journal, camera ROI).
        good: image files or folders; rows: journal decision rows whose archived images are good.
        days: preview window; preview_max: most archived images replayed.
        out: write the new version here instead of into the versions store.
        deploy: activate it with :func:`device.versions.deploy` (``deploy_kw``: ``unit``, ``wait_s``).
        progress: ``callback(stage, done, total)``; stages ``features`` and ``preview``.

    Returns:
        ``{"parent", "version", "digest", "path", "images", "scores_before", "scores_after", "bank",
        "threshold": {"old", "new", "running", ...}, "preview", "deploy"}``.
    """
    from device.bundle import load_bundle
    from device.detector import Detector

    t0 = time.perf_counter()
    parent = load_bundle(cfg.bundle.path)
    images = collect_images(cfg, good, rows)
    stage = (lambda name: (lambda i, n: progress(name, i, n))) if progress else (lambda name: None)
    body, files, fig = build_child(parent, images, stage("features"))
    t1 = time.perf_counter()
    from device.versions import store_version

    source = f"learn from {bundle_digest_of(parent)[:16]} ({len(images)} images)"
    path, name = store_version(cfg, body, files, source, out)
    child = load_bundle(path)
    t2 = time.perf_counter()
    running = child.threshold_for(cfg.bundle.threshold, cfg.bundle.target_frr, where="config")
    with Detector(child, threshold=running) as det:
        pre = preview(cfg, det, days, preview_max, [im.row for im in images if im.row], stage("preview"))
    t3 = time.perf_counter()
    fig["timing"].update(write_verify_s=round(t2 - t1, 3), preview_s=round(t3 - t2, 3), total_s=round(t3 - t0, 3))
    thr = fig["threshold"]
    res = {"parent": bundle_digest_of(parent), "version": name, "digest": bundle_digest_of(child), "path": str(path),
           "images": len(images), "scores_before": fig["scores_before"], "scores_after": fig["scores_after"],
           "bank": fig["bank"], "threshold": {"old": thr["previous"]["value"], "new": thr["value"],
                                              "running": running.value, "running_source": running.source,
                                              "target_frr": thr["target_frr"], "estimator": thr["estimator"]},
           "preview": pre, "timing": fig["timing"], "deploy": None}
    if deploy:
        from device.versions import deploy as do_deploy

        res["deploy"] = do_deploy(cfg, path, source=source, **deploy_kw)
    return res
