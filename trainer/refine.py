"""DOC fine-tuning as a refinement of the search's winner, kept only when it wins by more than noise.

DOC (Perera & Patel 2018) fine-tunes the winner's trunk on the normal images (compactness) and
a reference set (descriptiveness). Whether that helps is measured, not assumed:

1. one fold of the validation images is held out; DOC trains on the others only (a DOC trained
   on every image has pulled the validation normals together and would win its own test);
2. the held-out normals and the validation defects drawn on them are scored against a bank of
   the training part, once with the DOC trunk and once with the untouched one;
3. DOC ships only when its worst-family validation AUROC is higher by more than noise
   (:func:`trainer.selection.paired_gap`, bootstrap over held-out images); a tie keeps the simpler,
   untouched trunk and the record says so.

DOC refines pooled whole-frame features (a patch or tile candidate keeps its untouched trunk:
fine-tuning 256 tiles per frame is out of a CPU budget, and earlier research measured DOC moving
real AUROC by at most 0.003). The step is skipped, with the reason recorded, when the fit's time
budget cannot afford it or fewer than :data:`MIN_HELD_OUT` images would be held out.

Example:
    >>> out = doc_refinement(cand, images, syn, fold, cfg, cache, clock)   # doctest: +SKIP
    >>> out["record"]["decision"], out["record"]["reason"]                 # doctest: +SKIP
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

MIN_HELD_OUT = 10            # held-out normal images below which DOC is not measured
HOLD_FOLD = 0


def _skip(reason: str) -> dict:
    log.info("DOC refinement: %s", reason)
    return {"backbone": None, "record": {"decision": "untouched", "measured": False, "reason": reason}}


def doc_seconds(ms_per_input: float, steps: int, batch: int, n_eval: int) -> float:
    """Estimated seconds of DOC: ``steps`` of forward + backward (x3) on two batches, then the
    validation forward passes of both trunks.

    Example:
        >>> round(doc_seconds(2.0, 200, 32, 500))
        79
    """
    return ms_per_input * (3 * steps * 2 * batch + 2 * n_eval) / 1e3


def doc_refinement(cand, images: list, syn, fold: np.ndarray, cfg, cache, clock, progress: bool = True) -> dict:
    """``{"backbone": fine-tuned Keras trunk or None, "record": manifest record}`` (module docstring).

    Args:
        cand: the search's winner (``trainer.candidates.Candidate``).
        images, syn, fold: the search's validation images, their defects and folds.
        cfg: the resolved :class:`trainer.options.FitConfig`; cache: the search's feature cache;
        clock: the fit's :class:`trainer.candidates.SearchClock`.
    """
    from trainer.features import Network
    from trainer.search import _pass_seconds

    if cfg.doc is False:
        return _skip("disabled (--no-doc)")
    if cand.pooling == "patch" or cand.grid:
        return _skip("not applicable: DOC refines pooled whole-frame features (the winner uses "
                     + ("patch features" if cand.pooling == "patch" else "a tile grid") + ")")
    hold = fold == HOLD_FOLD
    if hold.sum() < MIN_HELD_OUT and cfg.doc is None:
        return _skip(f"too few images to measure it ({int(hold.sum())} held out, {MIN_HELD_OUT} needed)")
    net = Network(cand.alpha, cand.size, cfg.weights)
    n_eval = len(images) + int(np.isin(syn.source, np.flatnonzero(hold)).sum())
    ms = cache.ms_per_input(net) or _pass_seconds(cand, 1, None) * 1e3
    est = doc_seconds(ms, cfg.doc_cfg.steps, cfg.doc_cfg.batch, n_eval)
    if cfg.doc is None and not clock.can_afford(est):
        clock.skip("DOC refinement", est)
        return _skip(f"the time budget cannot afford it (estimated {est:.0f} s, {max(0, clock.left()):.0f} s left)")
    backbone, info = _train(cand, images, ~hold, cfg, progress)
    doc_net = Network(cand.alpha, cand.size, cfg.weights, tag=f"doc-{cfg.seed}-{id(backbone)}")
    cache.register(doc_net, backbone)
    gap = _measure(cand, images, syn, hold, cfg, cache, net, doc_net)
    from trainer.selection import significant_win

    win = significant_win(gap) or cfg.doc is True
    word = "wins" if significant_win(gap) else "does not win (a tie or worse)"
    reason = (f"DOC {word}: worst-family validation AUROC {gap['a']:.4f} vs untouched {gap['b']:.4f} "
              f"(difference {gap['diff']:+.4f} ± {gap['se']:.4f}, {int(hold.sum())} held-out images)"
              + ("; shipped because --doc was given" if cfg.doc is True and not significant_win(gap) else ""))
    log.info("DOC refinement: %s", reason)
    rec = {"decision": "doc" if win else "untouched", "measured": True, "reason": reason, "gap": gap, **info}
    return {"backbone": backbone if win else None, "record": rec}


def _train(cand, images, train_mask: np.ndarray, cfg, progress: bool):
    """DOC on the training part: ``(fine-tuned trunk, record)``."""
    from models.backbone import build_backbone
    from trainer.data import load_reference
    from trainer.doc import train_doc
    from trainer.options import default_train_from
    from trainer.search import network_inputs

    x = network_inputs([images[i] for i in np.flatnonzero(train_mask)], cand, cfg.color or "grey").images
    dc = cfg.doc_cfg.model_copy(update={"taps": cand.taps, "pooling": cand.pooling, "seed": cfg.seed,
                                        "train_from": cfg.doc_cfg.train_from or default_train_from(cand.taps)})
    ref_x, ref_y, ref_desc = load_reference(cfg.reference, (cand.size, cand.size), cfg.n_reference, cfg.seed)
    if cand.normalize == "standardize":   # the reference set meets the trunk as the normal images do
        from device.preprocess import standardize

        ref_x = np.stack([standardize(im) for im in ref_x])
    backbone, _ = build_backbone(cand.alpha, (cand.size, cand.size), cfg.weights)
    backbone, hist = train_doc(backbone, x, ref_x, ref_y, dc, progress=progress)
    return backbone, {**dc.model_dump(), "reference": ref_desc, "seconds": round(hist["seconds"], 1),
                      "n_train": int(len(x)), "final_l_d": float(np.mean(hist["l_d"][-10:])),
                      "final_l_c": float(np.mean(hist["l_c"][-10:]))}


def _measure(cand, images, syn, hold: np.ndarray, cfg, cache, net, doc_net) -> dict:
    """Worst-family gap, DOC minus untouched, on the held-out fold (bank: the training part)."""
    from trainer.features import Head, compose
    from trainer.search import make_scorer, network_inputs
    from trainer.selection import paired_gap
    from trainer.synth import family_of

    held = np.flatnonzero(hold)
    dsel = np.flatnonzero(np.isin(syn.source, held))
    remap = {int(j): i for i, j in enumerate(held)}
    color = cfg.color or "grey"
    srcs = {"bank": network_inputs([images[i] for i in np.flatnonzero(~hold)], cand, color),
            "normal": network_inputs([images[i] for i in held], cand, color),
            "defect": network_inputs([syn.images[i] for i in dsel], cand, color)}
    heads = [Head(cand.pooling, (layer,)) for layer in cand.layers]
    normal, defect = [], []
    for n in (doc_net, net):
        f = {k: compose(cache.get(s, n, heads), cand.layers, cand.pooling) for k, s in srcs.items()}
        sc = make_scorer(cand, f["bank"])
        normal.append(sc.score(f["normal"]))
        defect.append(sc.score(f["defect"]))
    fam = np.array([family_of(syn.kinds[i]) for i in dsel])
    src = np.array([remap[int(syn.source[i])] for i in dsel])
    return paired_gap(np.stack(normal), np.stack(defect), fam, src, seed=cfg.seed)
