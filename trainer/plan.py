"""``fit``'s first stages: the images as given, and the plan (search, or one default configuration).

* :func:`load_inputs` decodes every training image once, applies the ROI, picks the colour mode
  (grey when every image is grey) and records what had to be normalised (mixed frame sizes,
  mixed colour modes, a working size whose aspect stretches the frames);
* :func:`check_count` refuses a search on too few images with the minimum and what was found;
* :func:`plan_fit` runs the configuration search (:func:`trainer.search.search`) with the options
  the user set as pins, or - with ``--no-search`` - takes :data:`trainer.options.NO_SEARCH`, and
  returns the resolved :class:`~trainer.options.FitConfig` with the validation set every later
  stage shares.

Example:
    >>> inputs = load_inputs(paths, FitConfig())                  # doctest: +SKIP
    >>> plan = plan_fit(inputs, FitConfig(), clock)                # doctest: +SKIP
    >>> plan.cfg.size, plan.record["chosen"]                       # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from device.errors import ConfigError
from trainer.options import MIN_SEARCH_IMAGES, NO_SEARCH, FitConfig

log = logging.getLogger(__name__)

ASPECT_TOLERANCE = 0.1      # a working size stretching the frames' aspect by more than this is reported
SEARCH_SHARE = 0.6          # of the fit's time budget left, the search's share (DOC, export, bank, report: the rest)


@dataclasses.dataclass
class Inputs:
    """The training images as decoded arrays, and what ``fit`` had to normalise about them."""

    images: list
    names: list
    color: str
    frame_hw: tuple
    record: dict
    notes: list

    def cropped(self, roi) -> list:
        """The images after the ROI (views, no copies)."""
        if roi is None:
            return self.images
        x, y, w, h = roi
        return [im[y:y + h, x:x + w] for im in self.images]


def _is_grey(im: np.ndarray) -> bool:
    if im.ndim == 2:
        return True
    s = im[::7, ::7]
    return bool((s[..., 0] == s[..., 1]).all() and (s[..., 1] == s[..., 2]).all())


def load_inputs(train: Sequence, cfg: FitConfig) -> Inputs:
    """Decode the images (paths or arrays), apply the ROI check, record the normalisation."""
    from device.manifest import InputSpec
    from device.preprocess import crop_roi, decode_image

    spec = InputSpec(size=(96, 96), roi=cfg.roi)
    if isinstance(train, np.ndarray) and train.ndim == 4:
        train = list(train)
    images, names = [], []
    for i, src in enumerate(train):
        name = str(src) if isinstance(src, (str, Path)) else f"image {i}"
        im = decode_image(src)
        crop_roi(im, spec, name)                          # ROI outside the image, too small: named here
        images.append(im)
        names.append(name)
    shapes = [im.shape[:2] for im in images]
    grey = [_is_grey(im) for im in images]
    color = cfg.color or ("grey" if all(grey) else "rgb")
    crops = [crop_roi(im, spec).shape[:2] for im in images]
    hw = tuple(int(v) for v in np.median(np.array(crops), axis=0)) if crops else (0, 0)
    record, notes = _normalisation(shapes, grey, color, cfg, hw)
    return Inputs(images, names, color, hw, record, notes)


def _normalisation(shapes, grey, color, cfg: FitConfig, hw) -> tuple[dict, list]:
    """What differs between the images and how ``fit`` brought them to one form."""
    sizes = sorted(set(shapes))
    n_grey = int(sum(grey))
    rec = {"n_images": len(shapes), "frame_sizes": len(sizes), "color": color,
           "grey_images": n_grey, "colour_images": len(shapes) - n_grey}
    notes = []
    if len(sizes) > 1:
        lo, hi = min(sizes, key=lambda s: s[0] * s[1]), max(sizes, key=lambda s: s[0] * s[1])
        rec.update(smallest=list(lo), largest=list(hi))
        notes.append(f"{len(sizes)} different frame sizes ({lo[1]}x{lo[0]} .. {hi[1]}x{hi[0]}): each frame is "
                     f"resized ({cfg.resize}) to the network input or the tile grid's working size")
    if 0 < n_grey < len(shapes):
        notes.append(f"mixed colour modes: {n_grey} grey and {len(shapes) - n_grey} colour images; all are "
                     + ("converted to grey" if color == "grey" else "used as RGB (grey ones replicated to 3 channels)"))
    if cfg.working_size is not None and hw[0] > 0:
        frame_aspect, work_aspect = hw[1] / hw[0], cfg.working_size[1] / cfg.working_size[0]
        stretch = abs(math.log(work_aspect / frame_aspect))
        if stretch > ASPECT_TOLERANCE:
            notes.append(f"--working-size {cfg.working_size[1]}x{cfg.working_size[0]} (width/height "
                         f"{work_aspect:.2f}) stretches the {hw[1]}x{hw[0]} frames (width/height {frame_aspect:.2f}) "
                         f"by {math.exp(stretch) - 1:.0%}: give a working size with the frames' aspect, e.g. "
                         f"{round(cfg.working_size[0] * frame_aspect)}x{cfg.working_size[0]} (width x height)")
    for n in notes:
        log.warning("input: %s", n)
    rec["normalised"] = notes
    return rec, notes


def check_count(n: int, cfg: FitConfig, where: str = "the training folder") -> None:
    """Refuse a search on fewer than :data:`MIN_SEARCH_IMAGES` images (and any fit on fewer than 2)."""
    if n < 2:
        raise ConfigError(f"{where}: {n} normal image(s) found; fit needs at least 2 (and "
                          f"{MIN_SEARCH_IMAGES} for its configuration search)")
    if cfg.search and n < MIN_SEARCH_IMAGES:
        raise ConfigError(f"{where}: {n} normal images found; the configuration search needs at least "
                          f"{MIN_SEARCH_IMAGES} (it validates every candidate on cross-fitted folds of them). Add "
                          f"images, or pass --no-search to fit the default configuration on these {n}")


@dataclasses.dataclass
class Plan:
    """The resolved configuration and the validation set the later stages share."""

    cfg: FitConfig
    candidate: object
    search: object | None
    val_images: list
    index: np.ndarray
    syn: object
    fold: np.ndarray
    cache: object
    record: dict


def _weights(cfg: FitConfig) -> dict:
    w = cfg.weights_by_alpha()
    if cfg.alpha is not None and cfg.alpha not in w:
        raise ConfigError(f"--alpha {cfg.alpha:g}: no weights for this width (alpha 1.0 needs --weights-1.0, "
                          f"$ANOMALY_BACKBONE_WEIGHTS_1_0, or --weights imagenet with network access to fetch "
                          f"Keras's alpha 1.0 file)")
    return {a: p for a, p in w.items() if cfg.alpha is None or a == cfg.alpha}


def _real(real_defects, roi) -> list | None:
    """Images for the search (real defects, held-out normals): decoded, ROI applied; or None."""
    if real_defects is None or not len(real_defects):
        return None
    from device.preprocess import decode_image

    out = [decode_image(p) for p in real_defects]
    return out if roi is None else [im[roi[1]:roi[1] + roi[3], roi[0]:roi[0] + roi[2]] for im in out]


def plan_fit(inputs: Inputs, cfg: FitConfig, clock, cache, progress=None, real_defects=None, calib=None) -> Plan:
    """Search (``cfg.search``) or the default configuration; see the module docstring."""
    from trainer.search import SearchConfig, prepare_search, search

    weights = _weights(cfg)
    pins = cfg.pins()
    if cfg.grid is not None and not cfg.whole_frame:
        pins.update(working_size=tuple(cfg.working_size), **({"overlap": cfg.overlap} if cfg.overlap is not None else {}))
    scfg = SearchConfig(weights=weights, min_defect_px=cfg.min_defect_px, pins=pins, budget_ms=cfg.budget_ms,
                        time_budget_s=max(30.0, SEARCH_SHARE * clock.left()), color=inputs.color, seed=cfg.seed,
                        bank_images=len(inputs.images), real=_real(real_defects, cfg.roi), held=_real(calib, cfg.roi))
    images = inputs.cropped(cfg.roi)
    sc = prepare_search(images, scfg)
    if cfg.search and (len(sc.space) > 1 or "k" not in pins):
        res = search(images, scfg, cache=cache, progress=progress, ctx=sc)
        cand, record = res.chosen, {"mode": "search", **res.to_manifest()}
    else:
        res = None
        cand, record = _default(sc, cfg, pins)
    ctx = (sc.imgs, sc.index, sc.syn, sc.fold)
    chosen = {**cand.fit_overrides(), "color": inputs.color}
    if cfg.doc is None:
        chosen.pop("doc")
    rcfg = cfg.resolve(chosen)
    rcfg.weights = weights[rcfg.alpha]
    log.info("plan: %s (%s)", cand.name, record["reason"])
    return Plan(rcfg, cand, res, *ctx, cache=cache, record=record)


def _default(sc, cfg: FitConfig, pins: dict):
    """``(candidate, record)`` without a search: the single pinned candidate, or :data:`NO_SEARCH`
    (grid3 pooling for aligned parts)."""
    from trainer.candidates import ALIGNED_MIN, Candidate

    if cfg.search and len(sc.space) == 1:
        c = sc.space[0]
        return c, {"mode": "pinned", "chosen": c.name, "reason": "every searched dimension is pinned by the options "
                   "given: no search", "alignment": round(sc.align, 3), "min_defect_px": sc.min_px,
                   "budget_ms": sc.budget}
    pooling = "grid3" if sc.align >= ALIGNED_MIN else NO_SEARCH["pooling"]
    base = {**NO_SEARCH, "pooling": pooling, **{k: v for k, v in pins.items() if k not in ("working_size", "overlap")}}
    tiles = {"grid": tuple(cfg.grid), "working_size": tuple(cfg.working_size), "overlap": cfg.overlap or 0.0} \
        if cfg.grid is not None and not cfg.whole_frame else {}
    cand = Candidate(size=base["size"][0] if isinstance(base["size"], tuple) else base["size"], alpha=base["alpha"],
                     taps=base["taps"], pooling=base["pooling"], scoring=base["scoring"], k=base["k"],
                     normalize=base["normalize"], **tiles)
    pinned = sorted(k for k in pins if k in NO_SEARCH or k in ("grid", "working_size"))
    how = (f"the options given ({', '.join(pinned)}), the default for the rest" if pinned else
           "the default configuration")
    if "pooling" not in pins:
        how += f" ({'grid3 pooling: aligned parts' if pooling == 'grid3' else 'max pooling'}, alignment {sc.align:.2f})"
    return cand, {"mode": "--no-search", "chosen": cand.name, "reason": f"--no-search: {how}",
                  "alignment": round(sc.align, 3), "min_defect_px": sc.min_px, "budget_ms": sc.budget}
