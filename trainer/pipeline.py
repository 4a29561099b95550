"""``fit``: normal images -> configuration search -> (DOC | untouched) -> TFLite -> bank -> threshold -> bundle.

``fit`` runs stages with small interfaces, each testable alone on tiny inputs:

0. :func:`trainer.plan.load_inputs` + :func:`trainer.plan.plan_fit` - the images decoded once
   (what had to be normalised is recorded), then the configuration search (the options the user
   set pin their dimension; ``--no-search``: one default configuration) and its validation set:
   synthetic defects drawn on the source frames, cross-fitting folds;
1. :func:`prepare` - the frame sets of the chosen input spec (training images, validation
   defects, an optional separate calibration set and real defects), folds over every image;
2. :func:`extractor_candidates` - the winner's extractor, untouched or DOC fine-tuned when DOC
   wins by more than noise (:mod:`trainer.refine`);
3. :func:`export` - TFLite conversion and the device feature rows of every frame, computed with
   that ``.tflite`` (:class:`trainer.frames.DeviceRows`);
4. :func:`choose_bank` + :func:`validate` - the bank (shared or per tile position, measured) and
   cross-fitted scores: every training image against a bank without its fold, every defect
   against the bank without its source image's fold; :func:`choose_quant` - ``--quant auto``
   keeps int8 unless float is better by more than the tolerance *and* more than noise;
5. :func:`calibrate` - the threshold (:func:`core.threshold.describe_calibration`) from the
   cross-fitted scores of every training image (the shipped bank keeps them all), or from a
   separate calibration set when one is given;
6. :func:`compress` - the bank's PCA shortlist when measured faster at unchanged scores;
7. :func:`manifest_body` + :func:`device.bundle.write_bundle`, the latency measured on the written
   bundle (device path, 1 thread) with its Pi 4 estimate, and the report next to the bundle.

Every score in stages 3-6 comes from :class:`device.scoring.TileScorer`, the class the device
scores with, so the threshold fits the device's scores by construction.

Example:
    >>> result = fit(train_paths, "bundle/", FitConfig())          # doctest: +SKIP
    >>> result.summary["chosen"], result.summary["val_auroc"]     # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.metrics import auroc
from core.threshold import calibration_shift, describe_calibration
from device.bundle import npy_bytes, write_bundle
from device.extractor import TFLiteExtractor, normalize_features
from device.manifest import InputSpec
from device.scoring import PATCH_BANK_DEFAULT
from trainer.frames import DeviceRows, FrameSet, Rows, Sample, bank_sample, crossfit_tile_scores
from trainer.options import FitConfig

log = logging.getLogger(__name__)

AUTO_QUANT_TOLERANCE = 0.01  # quant "auto": float ships only when better by more than this (and than noise)
CALIBRATION_FEATURES_MAX_BYTES = 16 << 20   # held-out calibration features ship when at most this large
MAX_DEFECT_INPUTS = 60000    # validation defects in the device-path stages: at most this many network inputs

__all__ = ["FitConfig", "FitResult", "fit", "prepare", "extractor_candidates", "export", "choose_bank", "validate",
           "choose_quant", "calibrate", "compress", "manifest_body", "auroc", "Rows"]


@dataclasses.dataclass
class FitResult:
    bundle: Path
    summary: dict
    val_scores: dict  # name -> (labels, scores) for the report
    report: Path | None = None


# ------------------------------------------------------------------------------------ 1. data
@dataclasses.dataclass
class FitData:
    """Stage 1's output: the frame sets of the chosen input spec and the validation layout."""

    spec: InputSpec
    train: FrameSet
    cal: FrameSet | None
    syn: FrameSet
    real: FrameSet | None
    fold: np.ndarray          # (n_train,) cross-fitting fold of every training image
    syn_source: np.ndarray    # (n_defects,) training image each validation defect was drawn on
    syn_kinds: list
    syn_pick: np.ndarray      # the plan's validation defects used here
    cal_how: str

    @property
    def n_tiles(self) -> int:
        return self.train.n_tiles

    @property
    def family(self) -> np.ndarray:
        from trainer.synth import family_of

        return np.array([family_of(k) for k in self.syn_kinds])


def prepare(inputs, plan, calib=None, real_defects=None) -> FitData:
    """Frame sets of every image under the resolved spec; validation defects capped to
    :data:`MAX_DEFECT_INPUTS` network inputs (stratified by kind)."""
    from trainer.selection import fold_of

    cfg = plan.cfg
    spec = cfg.input_spec()
    n_tiles = len(spec.tile_boxes())
    syn = plan.syn
    pick = np.arange(len(syn.images))
    cap = max(60, MAX_DEFECT_INPUTS // n_tiles)
    if len(pick) > cap:
        pick = np.sort(np.random.default_rng(cfg.seed).choice(len(pick), cap, replace=False))
    source = np.asarray(plan.index)[np.asarray(syn.source)[pick]]
    no_roi = spec.replace(roi=None)           # defects were drawn on ROI crops
    cal = FrameSet(calib, spec) if calib is not None and len(calib) else None
    cal_how = ("separate held-out normal images" if cal is not None else
               f"cross-fitted: each of the {len(inputs.images)} training images scored against a bank without its "
               f"fold ({cfg.folds} folds); the shipped bank keeps them all")
    real = FrameSet(real_defects, spec) if real_defects is not None and len(real_defects) else None
    log.info("fit: %d train, %d validation defects%s%s", len(inputs.images), len(pick),
             f", {len(cal)} calibration" if cal else "", f", {len(real)} real defects" if real else "")
    return FitData(spec, FrameSet(inputs.images, spec), cal, FrameSet([syn.images[i] for i in pick], no_roi), real,
                   fold_of(len(inputs.images), cfg.folds, cfg.seed), source, [syn.kinds[i] for i in pick], pick,
                   cal_how)


# ------------------------------------------------------------------------------------ 2. extractor
@dataclasses.dataclass
class Extractor:
    model: Any
    info: dict
    rows: Rows
    record: dict


def extractor_candidates(data: FitData, plan, clock, progress: bool = True) -> Extractor:
    """The winner's Keras extractor: DOC fine-tuned when DOC wins by more than noise, else untouched."""
    from models.backbone import build_backbone, build_extractor
    from trainer.refine import doc_refinement

    cfg = plan.cfg
    doc = doc_refinement(plan.candidate, plan.val_images, plan.syn, plan.fold, cfg, plan.cache, clock, progress)
    source = build_backbone(cfg.alpha, tuple(cfg.size), cfg.weights)[1]
    model, info = build_extractor(cfg.alpha, tuple(cfg.size), cfg.weights, cfg.taps, cfg.pooling,
                                  backbone=doc["backbone"])
    info["weights"] = source
    rows = Rows.of(info)
    if rows.patches:
        log.info("patch features: %dx%d patches of %d dims per tile, scored with %s", *rows.patches["grid"],
                 rows.patches["dim"], cfg.scoring)
    rec = {**plan.record, "doc": doc["record"], "chosen_extractor": doc["record"]["decision"]}
    return Extractor(model, info, rows, rec)


# ------------------------------------------------------------------------------------ 3. export
@dataclasses.dataclass
class Export:
    blob: bytes
    ext: TFLiteExtractor
    quant: str
    report: dict
    rows: dict          # "train", "syn" (and "cal", "real"): DeviceRows


def _degenerate(ext, data: FitData) -> bool:
    raw = ext(data.train.sample_tiles(64, seed=1))
    return not np.isfinite(raw).all() or float(np.ptp(raw)) == 0.0 or bool((np.abs(raw).sum(axis=1) == 0).any())


def _convert(model, data: FitData, quant: str, report: dict, seed: int):
    """``(blob, extractor, quant)``; a degenerate full-int8 model falls back to dynamic range, loudly."""
    from trainer.convert import convert

    rep = data.train.sample_tiles(200, seed) if quant == "int8" else None   # representative images for int8
    blob = convert(model, rep, quant)
    ext = TFLiteExtractor(blob, num_threads=1)
    if quant == "int8" and _degenerate(ext, data):
        log.warning("!" * 72)
        log.warning("FULL-INT8 EXTRACTOR IS DEGENERATE (constant or all-zero features, typical of random "
                    "weights); falling back to dynamic-range quantisation")
        log.warning("!" * 72)
        report["int8_fallback"] = "int8 features constant or zero on training images"
        quant = "dynamic"
        blob = convert(model, rep, quant)
        ext = TFLiteExtractor(blob, num_threads=1)
    return blob, ext, quant


def export(model, data: FitData, rows: Rows, cfg: FitConfig, quant: str | None = None) -> Export:
    """Convert (``quant``; default: int8 for ``auto``) and attach the device rows of every frame set."""
    report: dict[str, Any] = {}
    want = quant or ("int8" if cfg.quant == "auto" else cfg.quant)
    blob, ext, got = _convert(model, data, want, report, cfg.seed)
    sets = {"train": data.train, "syn": data.syn, "cal": data.cal, "real": data.real}
    return Export(blob, ext, got, report, {k: DeviceRows(ext, fs, rows) for k, fs in sets.items() if fs is not None})


# ------------------------------------------------------------------------------------ 4. bank, validation
@dataclasses.dataclass
class Bank:
    sample: Sample
    mode: str
    report: dict
    subsampled: bool

    @property
    def rows(self) -> np.ndarray:
        return np.ascontiguousarray(self.sample.feats, np.float32)

    @property
    def tile_index(self) -> np.ndarray | None:
        return self.sample.pos.astype(np.int32) if self.mode == "per_position" else None


@dataclasses.dataclass
class Validation:
    """Tile scores (frames, tiles): cross-fitted ``train`` and ``defects``; ``cal``/``real``: full bank."""

    train: np.ndarray
    defects: np.ndarray
    cal: np.ndarray | None
    real: np.ndarray | None
    scorers: list
    full: Any

    def frame(self, name: str) -> np.ndarray | None:
        v = getattr(self, name)
        return None if v is None else v.max(axis=1)


def _bank_cap(cfg: FitConfig, rows: Rows) -> int | None:
    return cfg.bank_max or (PATCH_BANK_DEFAULT if rows.p > 1 else None)


def validate(exp: Export, bank: Bank, data: FitData, rows: Rows, cfg: FitConfig) -> Validation:
    """Cross-fitted device-path scores of the training images and the validation defects."""
    extra = [exp.rows[k] for k in ("cal", "real") if k in exp.rows]
    got = crossfit_tile_scores(exp.rows["train"], bank.sample, data.fold, exp.rows["syn"], data.syn_source, cfg.k,
                               cfg.scoring, bank.mode == "per_position", extra)
    ext = iter(got["extra"])
    return Validation(got["train"], got["defects"], next(ext) if "cal" in exp.rows else None,
                      next(ext) if "real" in exp.rows else None, got["scorers"], got["full"])


def _gap(a: Validation, b: Validation, data: FitData, seed: int) -> dict:
    from trainer.selection import paired_gap

    return paired_gap(np.stack([a.frame("train"), b.frame("train")]), np.stack([a.frame("defects"),
                      b.frame("defects")]), data.family, data.syn_source, seed=seed)


def choose_bank(exp: Export, data: FitData, rows: Rows, cfg: FitConfig) -> Bank:
    """The bank sample; with a tile grid of pooled rows (``--bank-mode auto``) one bank per tile
    position ships only when its validation beats the shared bank by more than noise."""
    cap = _bank_cap(cfg, rows)
    sample = bank_sample(exp.rows["train"], cap, cfg.bank_subsample, cfg.scoring, cfg.seed)
    subsampled = len(sample.feats) < len(exp.rows["train"]) * exp.rows["train"].per_frame
    mode = cfg.bank_mode if cfg.bank_mode != "auto" else "shared"
    report: dict[str, Any] = {}
    if data.n_tiles > 1 and cfg.bank_mode == "auto" and rows.p == 1:
        vals = {m: validate(exp, Bank(sample, m, {}, subsampled), data, rows, cfg) for m in ("shared", "per_position")}
        from trainer.selection import significant_win

        g = _gap(vals["per_position"], vals["shared"], data, cfg.seed)
        mode = "per_position" if significant_win(g) else "shared"
        report = {"per_position_worst_family_auroc": g["a"], "shared_worst_family_auroc": g["b"],
                  "difference": g["diff"], "se": g["se"],
                  "reason": f"{mode}: per-position minus shared worst-family validation AUROC {g['diff']:+.4f} ± "
                            f"{g['se']:.4f}" + ("" if mode == "per_position" else " (not a significant win: the "
                                                                                    "simpler shared bank)")}
    elif data.n_tiles > 1:
        report = {"reason": "configured" if cfg.bank_mode != "auto" else "patch rows: shared bank"}
    return Bank(sample, mode, report, subsampled)


def choose_quant(model, exp: Export, bank: Bank, val: Validation, data: FitData, rows: Rows, cfg: FitConfig,
                 time_left: float | None = None, cost_s: float = 0.0):
    """``--quant auto``: float ships only when its worst-family validation AUROC beats int8 by more
    than :data:`AUTO_QUANT_TOLERANCE` *and* by more than noise; otherwise int8 (smaller, faster).
    The float comparison costs about what the int8 export, bank and validation cost (``cost_s``);
    when that and the stages after it do not fit the ``time_left`` of ``--time-budget``, it is
    skipped, int8 ships and the record says so.
    Returns ``(export, bank, validation)`` of what ships, with the measurement in ``export.report``."""
    if exp.quant == "float" or not (cfg.quant == "auto" or cfg.compare_float):
        return exp, bank, val
    need = cost_s * (1.0 + AFTER_QUANT_SHARE)
    if time_left is not None and need > time_left:
        why = (f"{exp.quant}: the float comparison (about {cost_s:.0f} s, and {AFTER_QUANT_SHARE * cost_s:.0f} s for "
               f"the stages after it) does not fit the {max(0.0, time_left):.0f} s left of --time-budget; "
               f"{exp.quant} ships without it")
        exp.report["auto_choice"] = why
        log.warning("quant: %s", why)
        return exp, bank, val
    fexp = export(model, data, rows, cfg, quant="float")
    fbank = Bank(bank_sample(fexp.rows["train"], _bank_cap(cfg, rows), cfg.bank_subsample, cfg.scoring, cfg.seed),
                 bank.mode, bank.report, bank.subsampled)
    fval = validate(fexp, fbank, data, rows, cfg)
    g = _gap(fval, val, data, cfg.seed)
    exp.report.update(_cosine(exp, fexp), float_val_auroc=g["a"], **{f"{exp.quant}_measured_val_auroc": g["b"]},
                      float_minus_quantised=g["diff"], difference_se=g["se"])
    if cfg.quant != "auto":
        return exp, bank, val
    ship_float, exp.report["auto_choice"] = quant_decision(g, exp.quant)
    log.info("quant auto: %s", exp.report["auto_choice"])
    if ship_float:
        fexp.report.update(exp.report)
        return fexp, fbank, fval
    return exp, bank, val


AFTER_QUANT_SHARE = 1.0   # threshold, bundle write + verify, report: measured 0.5-1.1 x the int8 stage (tiled patch fits)


def quant_decision(gap: dict, quant: str, tolerance: float = AUTO_QUANT_TOLERANCE) -> tuple[bool, str]:
    """``(ship float?, why)`` from the paired gap float minus ``quant`` (:func:`trainer.selection.paired_gap`):
    float only when better by more than ``tolerance`` and by more than noise; a tie is never a win.

    Example:
        >>> quant_decision({"diff": 0.02, "se": 0.02}, "int8")[0], quant_decision({"diff": 0.03, "se": 0.005}, "int8")[0]
        (False, True)
    """
    from trainer.selection import significant_win

    win = significant_win(gap)
    if gap["diff"] > tolerance and win:
        return True, (f"float: {quant} lost {gap['diff']:.4f} ± {gap['se']:.4f} worst-family validation AUROC "
                      f"(> {tolerance} and more than noise)")
    why = "within noise (a tie)" if not win else f"within the {tolerance} tolerance"
    return False, (f"{quant}: float minus {quant} {gap['diff']:+.4f} ± {gap['se']:.4f} worst-family validation "
                   f"AUROC, {why}")


def _cosine(a: Export, b: Export) -> dict:
    """Feature cosine between two extractors' rows of the first validation-defect batch."""
    ra = next(a.rows["syn"].batches())[2]
    rb = next(b.rows["syn"].batches())[2]
    cos = np.sum(normalize_features(ra, "l2") * normalize_features(rb, "l2"), axis=1)
    return {"feature_cosine_mean": float(cos.mean()), "feature_cosine_min": float(cos.min())}


# ------------------------------------------------------------------------------------ 5. calibration
def calibrate(val: Validation, data: FitData, cfg: FitConfig) -> tuple[dict, np.ndarray]:
    """``(threshold record, calibration scores)``: cross-fitted training scores, or the separate
    calibration set's scores against the full bank; the estimator is :mod:`core.threshold`'s."""
    scores = (val.frame("cal") if val.cal is not None else val.frame("train")).astype(np.float32)
    how = data.cal_how + (f", image score = max over {data.n_tiles} tiles" if data.n_tiles > 1 else "")
    rec = describe_calibration(scores, cfg.target_frr, how)
    rec["estimator"]["scores"] = "held-out" if val.cal is not None else f"cross-fitted ({cfg.folds} folds)"
    if val.cal is not None:   # other conditions than the training images? (docs/AUTOCONFIG.md, Held-out normals)
        rec["estimator"]["shift"] = calibration_shift(val.frame("train"), scores)
        if rec["estimator"]["shift"]["shifted"]:
            log.warning("calibration: %s", rec["estimator"]["shift"]["warning"])
    return rec, scores


# ------------------------------------------------------------------------------------ 6. compression
def compress(bank: Bank, exp: Export, data: FitData, rows: Rows, cfg: FitConfig) -> tuple[dict | None, dict, dict]:
    """``(scoring.projection fragment or None, files, record)``: :func:`device.projection.compression_for`
    on k-NN pooled shared banks (fold 0 held out for the unchanged-scores check)."""
    from device.projection import compression_for

    if cfg.scoring != "knn" or rows.p > 1 or bank.mode != "shared":
        return None, {}, {"reason": "not applicable (k-NN over a shared bank of pooled rows only)"}
    s = bank.sample
    fold_bank = s.feats[data.fold[s.frame] != 0]
    tr = exp.rows["train"]
    held = np.flatnonzero(data.fold == 0)[:200]
    normal_q = tr.all().reshape(len(tr), tr.per_frame, -1)[held].reshape(-1, s.feats.shape[1])
    dsel = np.flatnonzero(data.fold[data.syn_source] == 0)[:200]
    syn_rows = np.concatenate([r for _, _, r in exp.rows["syn"].batches()])
    defect_q = syn_rows.reshape(len(exp.rows["syn"]), tr.per_frame, -1)[dsel].reshape(-1, s.feats.shape[1])
    comp = compression_for(bank.rows, cfg.k, data.n_tiles, fold_bank, normal_q, defect_q, cfg.projection)
    log.info("bank compression: %s", comp.record["reason"])
    return comp.fragment, comp.files, comp.record


# ------------------------------------------------------------------------------------ 7. manifest
def manifest_body(cfg: FitConfig, data: FitData, xt: Extractor, exp: Export, bank: Bank, threshold: dict,
                  val_auroc: float, projection_frag: dict | None, training: dict) -> dict:
    """The manifest (without schema, files) that :func:`device.bundle.write_bundle` validates and writes."""
    rows, n_tiles = xt.rows, data.n_tiles
    scoring = {"method": cfg.scoring, "k": int(min(cfg.k, len(bank.sample.feats))),
               "metric": "mahalanobis" if cfg.scoring == "gauss" else "euclidean",
               "features": "raw patch descriptors" if rows.patches else "l2-normalised",
               "image_score": {(False, False): "single tile", (False, True): "max over tiles",
                               (True, False): "max over patches",
                               (True, True): "max over patches and tiles"}[(bool(rows.patches), n_tiles > 1)],
               "bank_mode": bank.mode, "bank_mode_measurement": bank.report or None,
               "bank_size": int(bank.rows.shape[0]), "bank_source_images": int(len(data.train)),
               "bank_max": _bank_cap(cfg, rows), "bank_subsample": cfg.bank_subsample if bank.subsampled else "none"}
    if projection_frag:
        scoring["projection"] = projection_frag
    return {
        "input": data.spec.to_dict(),
        "extractor": {"file": "extractor.tflite", "quantization": exp.quant, "feature_normalize": rows.norm,
                      "runtime_checked": exp.ext.runtime, **exp.ext.describe(),
                      **({"patches": rows.patches} if rows.patches else {})},
        "backbone": {**xt.info, "fine_tuned": xt.record["chosen_extractor"] == "doc", "selection": xt.record},
        "quantization": {"mode": exp.quant, "requested": cfg.quant,
                         "representative_images": int(min(len(data.train), 200)), "val_auroc": val_auroc,
                         **exp.report},
        "scoring": scoring,
        "threshold": threshold,
        "training": training,
    }


def _bundle_files(exp: Export, bank: Bank, cal_scores: np.ndarray, proj_files: dict) -> dict[str, bytes]:
    files = {"extractor.tflite": exp.blob, "bank.npy": npy_bytes(bank.rows),
             "calibration_scores.npy": npy_bytes(cal_scores), **proj_files}
    if bank.tile_index is not None:
        files["bank_tile_index.npy"] = npy_bytes(bank.tile_index)
    cal = exp.rows.get("cal")        # held-out features let the device's learn re-score them exactly; cross-fitted
    if cal is not None:              # training images are bank rows and must not ship as calibration features
        feats = cal.all()
        if feats.nbytes <= CALIBRATION_FEATURES_MAX_BYTES:
            files["calibration_features.npy"] = npy_bytes(np.ascontiguousarray(feats, np.float32))
    return files


def _records(inputs, capture: dict | None) -> dict:
    """Manifest records the device watches with: the training images' brightness and sharpness
    (drift), and the capture conditions when the images came from ``anomaly-device capture``."""
    from device.drift import image_stats

    out = {"image_stats": image_stats(inputs.images)}
    if capture:
        out["capture"] = capture
    return out


def _training(inputs, data: FitData, cfg: FitConfig, t_start: float) -> dict:
    return {"n_train": int(len(data.train)), "n_calibration": int(len(data.cal)) if data.cal else 0,
            "n_validation_defects": int(len(data.syn)), "validation_defect_kinds": sorted(set(data.syn_kinds)),
            "n_real_defects": int(len(data.real)) if data.real else 0, "seed": cfg.seed, "folds": cfg.folds,
            "input_normalisation": inputs.record, "fit_seconds": round(time.time() - t_start, 1),
            "time_budget_s": cfg.time_budget}


def _val_auroc(val: Validation) -> float:
    n, d = val.frame("train"), val.frame("defects")
    return auroc(np.r_[np.zeros(len(n)), np.ones(len(d))], np.r_[n, d])


def _write(out, body: dict, files: dict, frames: list, budget_ms: float | None) -> tuple[Path, dict]:
    """Write the bundle, measure its cost through the device path, rewrite with the latency record."""
    from trainer.cost import measure_latency

    path = write_bundle(out, body, files)
    lat = measure_latency(path, frames[:20])
    if budget_ms is not None:
        lat["budget_ms"] = budget_ms
        lat["within_budget"] = lat["x86_ms"] <= budget_ms
        if not lat["within_budget"]:
            log.warning("measured %.2f ms per frame on this machine: over the %.2f ms budget", lat["x86_ms"], budget_ms)
    body["training"]["latency"] = lat
    return write_bundle(out, body, files), lat


def fit(train, out: str | Path, cfg: FitConfig = FitConfig(), calib=None, real_defects=None,
        progress: bool = True, capture: dict | None = None, report: bool = True) -> FitResult:
    """Train and write a verified bundle (and ``<out>-report/report.html``).

    Args:
        train: normal images (paths or arrays).
        out: bundle directory (written atomically).
        calib: separate held-out normal images for the threshold; default: cross-fitted scores of ``train``.
        real_defects: optional defective images: the search selects on them (``--select-on-real``).
        capture: the ``capture`` record of the images (:func:`device.capture.capture_record`).
        report: write the fit report next to the bundle.
    """
    import keras

    from trainer.candidates import SearchClock
    from trainer.features import FeatureCache
    from trainer.plan import check_count, load_inputs, plan_fit
    from trainer.progress import Progress

    t_start = time.time()
    clock = SearchClock(cfg.time_budget)
    cfg.weights_by_alpha()                  # a missing weights file is named before any image is read
    inputs = load_inputs(train, cfg)
    check_count(len(inputs.images), cfg)
    keras.utils.set_random_seed(cfg.seed)   # random-init layers and heads are reproducible
    import tempfile

    stages = StageTimes()
    with tempfile.TemporaryDirectory(prefix="fit-cache-") as tmp:
        plan = plan_fit(inputs, cfg, clock, FeatureCache(tmp), (lambda n: Progress("search", n, enabled=progress)),
                        real_defects=real_defects, calib=calib)
        stages.mark("load and search")
        data = prepare(inputs, plan, calib, real_defects)
        xt = extractor_candidates(data, plan, clock, progress)
        stages.mark("features and DOC")
    return _build(inputs, plan, data, xt, out, t_start, progress, capture, report, clock, stages)


class StageTimes:
    """Wall-clock seconds of ``fit``'s stages, in order (the summary's ``stage_seconds``)."""

    def __init__(self):
        self.t, self.seconds = time.time(), {}

    def mark(self, name: str) -> float:
        now = time.time()
        self.seconds[name] = round(now - self.t, 1)
        self.t = now
        return self.seconds[name]


def _build(inputs, plan, data: FitData, xt: Extractor, out, t_start: float, progress: bool, capture,
           report: bool, clock=None, stages: StageTimes | None = None) -> FitResult:
    """Stages 3-7 (export to report) for the resolved configuration."""
    from trainer.progress import Progress

    cfg = plan.cfg
    stages = stages or StageTimes()
    with Progress("device features", 4, enabled=progress) as bar:
        exp = export(xt.model, data, xt.rows, cfg)
        bank = choose_bank(exp, data, xt.rows, cfg)
        bar.step(note="bank")
        val = validate(exp, bank, data, xt.rows, cfg)
        bar.step(note="validation")
        spent = stages.mark(f"export, bank, validation ({exp.quant})")
        exp, bank, val = choose_quant(xt.model, exp, bank, val, data, xt.rows, cfg,
                                      time_left=clock.left() if clock is not None else None, cost_s=spent)
        stages.mark("float comparison")
        bar.step(note=f"quantisation: {exp.quant}")
        threshold, cal_scores = calibrate(val, data, cfg)
        frag, proj_files, comp = compress(bank, exp, data, xt.rows, cfg)
        stages.mark("threshold and bank compression")
        bar.step(note="threshold")
    xt.record["bank_compression"] = comp
    val_auroc = _val_auroc(val)
    body = manifest_body(cfg, data, xt, exp, bank, threshold, val_auroc, frag, _training(inputs, data, cfg, t_start))
    body.update(_records(inputs, capture))
    path, lat = _write(out, body, _bundle_files(exp, bank, cal_scores, proj_files), inputs.images,
                       cfg.budget_ms if cfg.budget_ms is not None else plan.record.get("budget_ms"))
    stages.mark("bundle written and verified")
    summary = _summary(plan, data, xt, exp, bank, threshold, val_auroc, lat, comp, t_start)
    summary["input_normalised"] = "; ".join(inputs.notes) or "nothing (one frame size, one colour mode)"
    summary["stage_seconds"] = stages.seconds
    rep = None
    if report:
        from trainer.fit_report import fit_report

        rep = fit_report(Path(str(out).rstrip("/") + "-report"), summary, plan, data, val, threshold, xt, exp)
        stages.mark("report")
    log.info("fit stages (s): %s", ", ".join(f"{k} {v:.0f}" for k, v in stages.seconds.items()))
    labels = np.r_[np.zeros(len(val.train)), np.ones(len(val.defects))]
    return FitResult(path, summary, {"validation (cross-fitted normals vs synthetic defects)":
                                     (labels, np.r_[val.frame("train"), val.frame("defects")])}, rep)


def _summary(plan, data: FitData, xt: Extractor, exp: Export, bank: Bank, threshold: dict, val_auroc: float,
             lat: dict, comp: dict, t_start: float) -> dict:
    rec = xt.record
    return {"chosen": dataclasses.replace(plan.candidate, doc=rec["chosen_extractor"] == "doc").name,
            "mode": rec["mode"], "reason": rec["reason"], "doc": rec["doc"]["reason"], "weights": xt.info["weights"],
            "selected": rec["chosen_extractor"], "quant": exp.quant, "quant_choice": exp.report.get("auto_choice"),
            "val_auroc": val_auroc, f"{exp.quant}_val_auroc": val_auroc,
            **{k: v for k, v in exp.report.items() if k != "auto_choice"},
            "threshold": threshold["value"], "threshold_estimator": threshold["estimator"]["method"],
            "threshold_warning": threshold["estimator"].get("warning"), "supported_frr": threshold["supported_frr"],
            "bank_size": int(bank.rows.shape[0]), "bank_mode": bank.mode, "bank_compression": comp.get("reason"),
            "n_tiles": data.n_tiles, "patches_per_tile": xt.rows.p, "n_train": int(len(data.train)),
            "n_calibration": int(len(data.cal)) if data.cal else 0, "latency_ms": lat["x86_ms"],
            "pi4_ms_estimate": lat["pi4_ms_estimate"], "budget_ms": lat.get("budget_ms"),
            "within_budget": lat.get("within_budget"), "over_budget_choice": plan.record.get("over_budget", False),
            "fit_seconds": round(time.time() - t_start, 1)}
