"""Building blocks of fit's configuration search (issue 11): candidate space, feature cache,
selection statistics, validation defects, small-data threshold estimators."""
import dataclasses

import numpy as np
import pytest

from tests.conftest import needs_tf, stripes


# ---------------------------------------------------------------------------- candidates


def test_space_follows_the_frame_size():
    from trainer.candidates import derive_space, group_by_network

    small = derive_space((28, 28), {0.35: "a", 1.0: "b"})
    assert {c.size for c in small} == {96} and not any(c.grid for c in small)
    assert {c.alpha for c in small} == {0.35, 1.0}
    mid = derive_space((290, 400), {0.35: "a"})
    assert {c.size for c in mid} == {96, 160, 224} and not any(c.grid for c in mid)
    large = derive_space((1024, 1024), {0.35: "a"}, min_defect_px=8)
    grids = {c.grid for c in large if c.grid}
    assert grids == {(4, 4), (8, 8), (16, 16)}
    # every tiled candidate shows an 8-px defect at >= 2 network px, and tiles are not upscaled > 1.5x
    for c in large:
        if c.grid:
            t = 1024 / (c.grid[0] - (c.grid[0] - 1) * c.overlap)
            assert 8 * c.size / t >= 2 and t >= c.size / 1.5
    # one forward pass per (width, size, grid): the grouping the cache relies on
    assert len(group_by_network(large)) == 3 + 3


def test_pins_fix_a_dimension_and_refinements_vary_k_and_doc():
    from trainer.candidates import Candidate, derive_space, refinements

    pinned = derive_space((290, 400), {0.35: "a", 1.0: "b"}, pins={"size": 224, "alpha": 0.35, "k": 5})
    assert {(c.size, c.alpha, c.k) for c in pinned} == {(224, 0.35, 5)}
    assert derive_space((290, 400), {0.35: "a"}, pins={"pooling": ["grid3"], "taps": "b10"}) == \
        [Candidate(96, 0.35, "b10", "grid3"), Candidate(160, 0.35, "b10", "grid3"), Candidate(224, 0.35, "b10", "grid3")]
    ref = refinements(Candidate(96, taps="b10", pooling="grid3"))
    assert [c.k for c in ref if not c.doc] == [3, 5, 10] and sum(c.doc for c in ref) == 1
    assert refinements(Candidate(96, taps="b6", pooling="patch", scoring="gauss")) == []


def test_candidate_maps_onto_fit_options():
    from trainer.candidates import Candidate

    c = Candidate(96, 0.35, "b6", "patch", "gauss", grid=(16, 16), working_size=(1024, 1024), overlap=0.0)
    o = c.fit_overrides()
    assert o["grid"] == (16, 16) and o["working_size"] == (1024, 1024) and o["scoring"] == "gauss"
    assert c.n_tiles == 256 and c.name == "a0.35-96-g16x16-b6-patch-gauss"


def test_latency_model_and_default_budget():
    from trainer.candidates import PI4_FRAME_BUDGET_MS, LatencyModel, default_budget_ms

    m = LatencyModel()
    assert default_budget_ms(m) == pytest.approx(PI4_FRAME_BUDGET_MS / m.pi4_inference_factor)
    assert 3.0 < default_budget_ms(m) < 5.0


@needs_tf
def test_latency_estimate_grows_with_tiles_bank_and_width():
    from trainer.candidates import Candidate, LatencyModel, feature_dim

    m = LatencyModel()
    base = Candidate(96, 0.35, "out", "max")
    d, p = feature_dim(base)
    assert (d, p) == (1280, 1)
    e = m.estimate(base, (96, 96), 1000, d)
    assert e["x86_ms"] < m.estimate(base, (96, 96), 10000, d)["x86_ms"]
    assert e["x86_ms"] < m.estimate(dataclasses.replace(base, alpha=1.0, size=224), (96, 96), 1000, d)["x86_ms"]
    g = dataclasses.replace(base, grid=(4, 4), working_size=(1024, 1024), overlap=0.25)
    assert m.estimate(g, (1024, 1024), 1000, d)["inference_ms"] > 10 * e["inference_ms"] / 2
    assert e["pi4_ms"] > e["x86_ms"] and "basis" in e


# ---------------------------------------------------------------------------- selection statistics


def test_delong_matches_rank_auroc_and_detects_a_real_difference():
    from core.metrics import auroc
    from trainer.selection import compare, delong

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200), np.ones(200)]
    good = y * 2.0 + rng.normal(0, 1, 400)
    weak = y * 0.5 + rng.normal(0, 1, 400)
    a, cov = delong(y, np.stack([good, weak]))
    assert a[0] == pytest.approx(auroc(y, good)) and a[1] == pytest.approx(auroc(y, weak))
    assert cov[0, 0] > 0 and cov[1, 1] > 0
    r = compare(y, good, weak)
    assert r["diff"] > 0.1 and r["p"] < 1e-6
    same = compare(y, good, good + rng.normal(0, 1e-3, 400))
    assert abs(same["diff"]) < 0.01 and same["p"] > 0.05


def test_selection_never_calls_a_tie_a_win_and_ships_cheaper_only_when_equivalent():
    from trainer.selection import select

    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(300), np.ones(300)]
    a = y * 3.0 + rng.normal(0, 1, 600)
    b = a + rng.normal(0, 0.02, 600)           # the same signal: shown equivalent to a
    c = y * 0.2 + rng.normal(0, 1, 600)         # clearly worse
    sel = select(["a", "b", "c"], y, np.stack([a, b, c]), cost=[5.0, 1.0, 0.1])
    assert sel.tie and sel.chosen == "b" and "c" not in sel.tied and "c" not in sel.equivalent
    assert "not a win" in sel.reason and (sel.best == "b" or "cheaper" in sel.reason)
    # noisy validation: d is not significantly worse than a (a tie) but not shown equivalent either,
    # so the cheaper d does not ship
    small = np.r_[np.zeros(20), np.ones(20)]
    a2 = small * 1.0 + rng.normal(0, 1, 40)
    d2 = small * 0.8 + rng.normal(0, 1, 40)
    noisy = select(["a", "d"], small, np.stack([a2, d2]), cost=[5.0, 1.0])
    if noisy.best == "a":
        assert noisy.tie and noisy.chosen == "a" and noisy.equivalent == ["a"]
    strong = select(["a", "c"], y, np.stack([a, c]), cost=[5.0, 0.1])
    assert strong.chosen == "a" and not strong.tie and "significantly above" in strong.reason


def test_clearly_worse_prunes_only_far_candidates():
    from trainer.selection import clearly_worse

    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(100), np.ones(100)]
    s = np.stack([y * 2 + rng.normal(0, 1, 200), y * 1.9 + rng.normal(0, 1, 200), rng.normal(0, 1, 200)])
    assert clearly_worse(y, s).tolist() == [False, False, True]


def test_cross_fit_never_scores_an_image_against_itself():
    from device.scoring import KNNScorer
    from trainer.selection import cross_fit, fold_of

    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    fold = fold_of(30, 5, seed=0)
    syn = x + 0.01                                   # a "defect" drawn on each image: nearly the image itself
    normal, defect = cross_fit(x, np.arange(30), [(x, np.arange(30)), (syn, np.arange(30))],
                               lambda b: KNNScorer(b, 1), fold)
    full = KNNScorer(x, 1)
    assert (normal > 0.5).all() and np.allclose(full.score(x), 0, atol=1e-2)
    assert (defect > 0.5).all()                      # its source image is not in the bank it meets
    # tiles: an item's score is its worst row
    rows = np.repeat(x, 2, axis=0)
    rows[1::2] += 5.0
    n2, = cross_fit(rows, np.repeat(np.arange(30), 2), [(rows, np.arange(30))], lambda b: KNNScorer(b, 1), fold,
                    rows_per_item=2)
    assert (n2 >= normal - 1e-5).all()


def test_grouped_bootstrap_resamples_sources_together():
    from trainer.selection import grouped_bootstrap

    y = np.r_[np.zeros(20), np.ones(20)]
    g = np.r_[np.arange(20), np.arange(20)]
    b = grouped_bootstrap(y, np.stack([y, 1 - y]), g, n_boot=50, seed=0)
    assert b.shape == (50, 2) and (b[:, 0] == 1.0).all() and (b[:, 1] == 0.0).all()


# ---------------------------------------------------------------------------- validation defects


def test_every_validation_defect_changes_the_image_where_its_mask_says():
    from trainer.synth import MIN_CHANGE, VALIDATION_KINDS, validation_defects

    imgs = [s[:, :, 0] for s in stripes(3, size=64, seed=4)]
    v = validation_defects(imgs, seed=0, min_px=3)
    assert len(v.images) == 3 * len(VALIDATION_KINDS) and sorted(set(v.kinds)) == sorted(VALIDATION_KINDS)
    for d, m, src, k in zip(v.images, v.masks, v.source, v.kinds):
        ref = np.repeat(imgs[src][:, :, None], 3, 2).astype(np.float32)
        assert d.shape == (64, 64, 3) and d.dtype == np.uint8 and m.any(), k
        assert np.abs(d.astype(np.float32) - ref)[m > 0].mean() >= MIN_CHANGE, k
    assert (v.sizes >= 3 - 1e-9).all() and (v.sizes <= 64 + 1e-9).all()   # layout-scale kinds span the frame
    again = validation_defects(imgs, seed=0, min_px=3)
    assert all((a == b).all() for a, b in zip(v.images, again.images))


def test_validation_defects_cycle_kinds_when_not_each():
    from trainer.synth import validation_defects

    imgs = [s for s in stripes(5, size=48, seed=5)]
    v = validation_defects(imgs, kinds=("spot", "warp"), each=False, per_image=2, seed=1)
    assert v.kinds == ["spot", "warp"] * 5 and v.source.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(ValueError, match="unknown validation defect kind"):
        validation_defects(imgs[:1], kinds=("dent",))


# ---------------------------------------------------------------------------- thresholds


def test_order_statistic_rate_is_honest_over_many_draws():
    from core.threshold import order_statistic

    rng = np.random.default_rng(6)
    rates = []
    for _ in range(400):
        s = rng.gamma(3.0, 1.0, 30)
        t = order_statistic(s, 0.01)
        rates.append(np.mean(rng.gamma(3.0, 1.0, 2000) > t["value"]))
    assert t["rank_from_top"] == 1 and t["expected_frr"] == pytest.approx(1 / 31) and not t["target_supported"]
    assert np.mean(rates) == pytest.approx(1 / 31, abs=0.01)


def test_calibration_shift_flags_held_out_normals_from_other_conditions():
    """Held-out normals (val/good) that score above the training parts' cross-fitted scores are
    reported (a shift of conditions the bank does not cover) only when the gap is large and
    beyond chance; held-out parts like the training ones, or a handful, are not."""
    from core.threshold import calibration_shift

    rng = np.random.default_rng(3)
    ref = rng.gamma(4.0, 1.0, 300)
    same = [calibration_shift(ref, rng.gamma(4.0, 1.0, 60))["shifted"] for _ in range(50)]
    assert sum(same) == 0
    shifted = calibration_shift(ref, rng.gamma(4.0, 1.0, 60) + 2.0)
    assert shifted["shifted"] and shifted["auroc"] > 0.7 and shifted["z"] > 3 and shifted["n_held"] == 60
    assert "60 held-out normal images" in shifted["warning"] and "add such images to training" in shifted["warning"]
    few = calibration_shift(ref, rng.gamma(4.0, 1.0, 4) + 2.0)   # a large gap on 4 images is not evidence
    assert few["auroc"] > 0.65 and not few["shifted"] and "warning" not in few
    lower = calibration_shift(ref, rng.gamma(4.0, 1.0, 60) - 1.0)   # scoring lower is no shift to warn of
    assert not lower["shifted"] and lower["z"] < 0
    with pytest.raises(ValueError):
        calibration_shift(ref, [1.0, float("nan")])


def test_auto_threshold_extrapolates_the_tail_for_small_n_and_warns():
    from core.threshold import estimate_threshold

    rng = np.random.default_rng(7)
    rates = []
    for _ in range(300):
        s = rng.gamma(3.0, 1.0, 30)
        est = estimate_threshold(s, 0.01)
        rates.append(np.mean(rng.gamma(3.0, 1.0, 4000) > est["value"]))
    assert est["method"] == "tail" and est["n"] == 30 and "99" in est["warning"]
    assert est["value"] >= s.max() and est["ci"][0] <= est["ci"][1]
    assert np.mean(rates) < 0.02                      # within 2x the 1 % target on a gamma-shaped score
    exp_rates = []                                    # exponential scores (the tail model's own family): the
    for _ in range(300):                              # predictive threshold keeps the promise on average (the
        t = estimate_threshold(rng.exponential(1.0, 30), 0.01, uncertainty=False)["value"]   # plug-in: ~1.7 %)
        exp_rates.append(np.exp(-t))
    assert 0.007 < np.mean(exp_rates) < 0.014
    big = estimate_threshold(rng.gamma(3.0, 1.0, 500), 0.01)
    assert big["method"] == "order" and big["warning"] is None and big["rank_from_top"] == 5
    with pytest.raises(ValueError, match="finite"):
        estimate_threshold([1.0, float("nan")], 0.01)


# ---------------------------------------------------------------------------- feature cache


@needs_tf
def test_feature_cache_matches_the_shipped_extractor_and_runs_once(tmp_path):
    from models.backbone import build_backbone, build_extractor
    from trainer.features import ArraySource, FeatureCache, Head, Network, compose

    bb, _ = build_backbone(0.35, (32, 32), "random")
    net = Network(0.35, 32, "random", tag="test-random")
    cache = FeatureCache(tmp_path / "cache", batch_size=8)
    cache.register(net, bb)
    x = np.stack(stripes(10, size=32, seed=8))
    layers = ("block_6_expand_relu", "block_13_expand_relu")
    heads = [Head(r, (n,)) for r in ("max", "grid2") for n in layers]
    f = cache.get(ArraySource(x), net, heads)
    for taps, pooling in (("b6+b13+out", "max"), ("b13", "grid2")):
        ext, info = build_extractor(0.35, (32, 32), taps=taps, pooling=pooling, backbone=bb)
        want = ext.predict(x.astype(np.float32), verbose=0)
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        if taps == "b13":
            got = compose(f, ["block_13_expand_relu"], "grid2")
        else:
            extra = cache.get(ArraySource(x), net, [Head("max", ("out_relu",))])
            got = compose({**f, **extra}, info["layers"], "max")
        assert np.allclose(got, want, atol=1e-4), (taps, pooling)
    n_before = cache.images[net.key()]
    cache.get(ArraySource(x), net, heads)
    assert cache.images[net.key()] == n_before                     # memory hit: no forward pass
    fresh = FeatureCache(tmp_path / "cache")
    g = fresh.get(ArraySource(x), net, heads)                        # disk hit: no backbone needed
    assert fresh.images == {} and np.array_equal(g[heads[0].key()], f[heads[0].key()])
    patch = cache.get(ArraySource(x), net, [Head("patch", ("block_6_expand_relu",), rows=5)], seed=1)
    assert next(iter(patch.values())).shape == (10 * 5, 96)   # b6 expand: 96 channels at alpha 0.35


# ---------------------------------------------------------------------------- search


@needs_tf
def test_search_scores_pinned_candidates_and_explains_the_choice():
    from trainer.search import SearchConfig, search

    imgs = [s[:, :, 0] for s in stripes(24, size=48, seed=9)]
    cfg = SearchConfig(weights={0.35: "random"}, pins={"size": 96, "taps": ["out", "b13"], "pooling": ["max"]},
                       kinds=("spot", "elastic"), budget_ms=100.0, time_budget_s=300, folds=4)
    res = search(imgs, cfg)
    names = {r.candidate.name for r in res.results}
    assert {"a0.35-96-out-max-knn1", "a0.35-96-b13-max-knn1"} <= names
    assert res.chosen.taps in ("out", "b13") and res.chosen.pooling == "max"
    rows = res.table()
    assert all(0.0 <= r["val_auroc"] <= 1.0 and r["x86_ms"] > 0 for r in rows)
    assert {"val_auroc_spot", "val_auroc_elastic"} <= set(rows[0])
    m = res.to_manifest()
    assert m["chosen"] == res.chosen.name and m["reason"] and m["defect_kinds"] == ["elastic", "spot"]
    assert not res.over_budget and res.min_defect_px == 2.0
    # a budget nothing meets: the fastest candidate is named and shipped
    tight = search(imgs, SearchConfig(**{**cfg.__dict__, "budget_ms": 1e-6}))
    fastest = min(tight.results, key=lambda r: r.latency["x86_ms"]).candidate
    assert tight.over_budget and dataclasses.replace(tight.chosen, k=fastest.k) == fastest   # (k may be refined)


@needs_tf
def test_search_scores_held_out_normals_and_consults_them_when_they_are_shifted():
    """Separate held-out good parts go through every candidate's forward pass (full-bank scores);
    parts unlike the training ones (noise instead of stripes) are flagged on the first choice and
    join the normals every candidate is rated on; the manifest records the check either way."""
    from trainer.search import SearchConfig, search

    imgs = [s[:, :, 0] for s in stripes(24, size=48, seed=9)]
    rng = np.random.default_rng(2)
    other = [rng.integers(0, 255, (48, 48), dtype=np.uint8) for _ in range(12)]
    cfg = SearchConfig(weights={0.35: "random"}, pins={"size": 96, "taps": ["out", "b13"], "pooling": ["max"]},
                       kinds=("spot", "elastic"), budget_ms=100.0, time_budget_s=300, folds=4, held=other)
    res = search(imgs, cfg)
    rec = res.to_manifest()["held_out_normals"]
    assert rec["n_held"] == 12 and rec["n_reference"] == 24 and rec["shifted"] and rec["joined"], rec
    assert rec["first_choice"] in {r.candidate.name for r in res.results}
    assert all(r.held.shape == (12,) and len(r.normal) == 24 + 12 for r in res.results)
    assert "12 held-out normal images joined" in res.selection.reason
    like = search(imgs, SearchConfig(**{**cfg.__dict__, "held": imgs[:12]}))   # the training parts themselves
    rec = like.to_manifest()["held_out_normals"]
    assert not rec["shifted"] and rec["joined"] is False and all(len(r.normal) == 24 for r in like.results)


def test_alignment_score_tells_aligned_parts_from_textures_and_shapes_the_space():
    from trainer.candidates import ALIGNED_MIN, alignment_score, derive_space

    rng = np.random.default_rng(10)
    yy, xx = np.mgrid[0:48, 0:48]
    part = [(np.hypot(yy - 24 + rng.normal(0, 1), xx - 24 + rng.normal(0, 1)) < 14) * 200.0
            + rng.normal(0, 10, (48, 48)) for _ in range(20)]
    texture = [s[:, :, 0] for s in stripes(20, size=48, seed=11)]       # random phase: not aligned
    assert alignment_score([np.clip(p, 0, 255).astype(np.uint8) for p in part]) > ALIGNED_MIN
    assert alignment_score(texture) < ALIGNED_MIN
    aligned = derive_space((290, 400), {0.35: "a"}, aligned=True)
    assert {c.pooling for c in aligned} == {"grid3", "patch"}
    assert {c.pooling for c in derive_space((290, 400), {0.35: "a"})} == {"max", "avg", "grid3", "patch"}


def test_search_skips_the_candidates_the_time_budget_cannot_score():
    """The budget covers scoring, not only the forward pass: a 16x16-tile grid of 3x3-grid-pooled
    features (11k dims, ~100k query rows against ~25k bank rows) cannot be scored in a minute and
    is skipped (and recorded); the cheap whole-frame candidate of the same pass is kept."""
    pytest.importorskip("tensorflow")
    import types

    from trainer.candidates import Candidate, SearchClock
    from trainer.search import _affordable, _score_seconds

    ctx = types.SimpleNamespace(imgs=[None] * 100, syn=types.SimpleNamespace(images=[None] * 300), inputs=lambda c: 400)
    cheap = Candidate(96, taps="out", pooling="max")
    heavy = Candidate(96, taps="out", pooling="grid3", grid=(16, 16), working_size=(1024, 1024))
    assert _score_seconds(cheap, 400, 100) < 1.0 < 600 < _score_seconds(heavy, 400, 100)
    clock = SearchClock(60.0)
    assert _affordable([heavy, cheap], ctx, clock, forward_s=5.0) == [cheap]
    assert len(clock.skipped) == 1 and "1 of 2 candidates" in clock.skipped[0]
    clock = SearchClock(60.0)
    assert _affordable([heavy], ctx, clock, forward_s=5.0) == [] and "1 candidates" in clock.skipped[0]


@needs_tf
def test_search_standardizes_the_input_only_where_lighting_varies():
    """The input-normalisation probe: normal parts photographed under exposures that differ by up to
    3x (gain and offset per image) make the untouched network score lighting, not defects; the
    search measures both settings on its cheapest pass and standardizes only when validation gains
    by more than noise. Under steady lighting it keeps the frames as they are, or standardizes
    only on evidence (never on a tie)."""
    from trainer.search import SearchConfig, search

    rng = np.random.default_rng(12)
    steady = [s[:, :, 0] for s in stripes(30, size=48, seed=13)]
    varied = [np.clip(s.astype(float) * g + o, 0, 255).astype(np.uint8)
              for s, g, o in zip(steady, rng.uniform(0.3, 1.0, 30), rng.uniform(0, 60, 30))]
    cfg = SearchConfig(weights={0.35: "random"}, pins={"size": 96, "taps": ["out", "b13"], "pooling": ["max"]},
                       kinds=("spot", "scratch", "elastic"), budget_ms=100.0, time_budget_s=300, folds=4)
    res = search(varied, cfg)
    rec = res.to_manifest()["normalize"]
    assert rec["mode"] == "standardize" and rec["diff"] > 0 and rec["candidates"] == 2, rec
    assert res.chosen.normalize == "standardize" and res.chosen.name.endswith("-std")
    assert {r.candidate.normalize for r in res.results} == {"none", "standardize"}   # both probe passes rated
    calm = search(steady, cfg).to_manifest()["normalize"]
    assert calm["mode"] == "none" or calm["diff"] > max(0.002, 1.645 * calm["se"]), calm
    assert "noise" in calm["reason"]
    pinned = search(varied, SearchConfig(**{**cfg.__dict__, "pins": {**cfg.pins, "normalize": "none"}}))
    assert {r.candidate.normalize for r in pinned.results} == {"none"}
    assert pinned.to_manifest()["normalize"]["mode"] == "none"


@needs_tf
def test_input_normalisation_is_probed_per_kind_of_pass():
    """Whole-frame and tiled passes each get their own probe (on the cheapest pass of the kind);
    every later pass of a kind uses its kind's decision, and the record names them all."""
    from trainer.search import SearchConfig, search

    rng = np.random.default_rng(3)
    frames = [np.clip(s[:, :, 0].astype(float) * g + o, 0, 255).astype(np.uint8)
              for s, g, o in zip(stripes(20, size=448, seed=5), rng.uniform(0.3, 1.0, 20), rng.uniform(0, 60, 20))]
    cfg = SearchConfig(weights={0.35: "random"}, pins={"size": 96, "taps": ["out"], "pooling": ["max"]},
                       kinds=("spot", "elastic"), budget_ms=1000.0, time_budget_s=600, folds=3, min_defect_px=8)
    res = search(frames, cfg)
    rec = res.to_manifest()["normalize"]
    probes = {p["pass"]: p for p in rec["probes"]}
    assert set(probes) == {"whole frame", "tiles"} and all("probe" in p and "reason" in p for p in probes.values())
    assert rec["pass"] == ("tiles" if res.chosen.grid else "whole frame")
    assert probes["tiles"]["probe"].startswith("a0.35-96-g")
    for r in res.results:   # outside each kind's probe pass, a candidate carries its kind's decision
        kind = "tiles" if r.candidate.grid else "whole frame"
        probe_pass = r.candidate.name.startswith(probes[kind]["probe"] + "-")
        assert probe_pass or r.candidate.normalize == probes[kind]["mode"], r.candidate.name


@needs_tf
def test_tiled_validation_runs_only_the_tiles_a_defect_changed():
    """A defect drawn on a large frame changes a few of its tiles: the search runs only those and
    takes the others' scores from the normal frame it was drawn on. Without standardisation the
    scores are exactly those of running every tile; with it, within 1 %."""
    import keras

    from trainer.candidates import Candidate
    from trainer.features import FeatureCache, Network
    from trainer.search import network_inputs, score_pass
    from trainer.selection import fold_of
    from trainer.synth import validation_defects

    imgs = [s[:, :, 0] for s in stripes(9, size=448, seed=5)]
    syn = validation_defects(imgs, kinds=("spot", "scratch", "cutpaste"), seed=3, min_px=8, each=False, per_image=2)
    fold = fold_of(len(imgs), 3, 0)
    for norm, rtol in (("none", 1e-6), ("standardize", 1e-2)):
        cands = [Candidate(96, taps="out", pooling="max", grid=(4, 4), working_size=(448, 448), overlap=0.25,
                           normalize=norm),
                 Candidate(96, taps="b6", pooling="patch", scoring="gauss", grid=(4, 4), working_size=(448, 448),
                           overlap=0.25, normalize=norm)]
        got, n_run = {}, {}
        for sparse in (False, True):
            keras.utils.set_random_seed(0)          # the same random trunk for both runs
            defects = network_inputs(syn.images, cands[0], "grey", *((imgs, syn.source) if sparse else ()))
            n_run[sparse] = len(defects)
            srcs = {"train": network_inputs(imgs, cands[0]), "syn": defects}
            got[sparse] = score_pass(cands, srcs, FeatureCache(), Network(0.35, 96, "random"), fold, syn.source)
        assert n_run[True] < 0.7 * n_run[False], n_run
        for c in cands:
            a, b = got[False][c.name], got[True][c.name]
            np.testing.assert_array_equal(a["normal"], b["normal"])
            np.testing.assert_allclose(b["defect"], a["defect"], rtol=rtol, atol=rtol * np.abs(a["defect"]).max())


def test_last_layer_features_ship_only_when_clearly_better_on_synthetic_validation():
    """The mid-level prior (``trainer.search._last_layer_yields``): `out` wins a close synthetic race
    but yields to the best mid-level candidate; a clear win ships it; real defects need no prior."""
    from trainer.candidates import Candidate
    from trainer.search import LAST_LAYER_YIELD_GAP, CandidateResult, _within_budget

    rng = np.random.default_rng(0)
    n, per = 200, 3
    source = np.repeat(np.arange(n), per)
    family = np.array(["surface", "shape", "layout"] * n)
    normal = rng.normal(0, 1, n)

    def result(taps, shift, real=None):
        c = Candidate(size=96, taps=taps, pooling="grid3")
        defect = rng.normal(shift, 1, n * per)
        return CandidateResult(c, normal + rng.normal(0, 0.05, n), defect, {"x86_ms": 1.0, "pi4_ms": 9.0}, True, real)

    def choose(rs):
        return _within_budget(rs, family, source, 3.7, strict=True)[0]

    close = choose([result("out", 1.30), result("b13", 1.25), result("b10", 0.6)])
    assert close.chosen == "a0.35-96-b13-grid3-knn1" and "mid-level features preferred" in close.reason
    clear = choose([result("out", 2.0), result("b13", 1.0)])
    gap = clear.aurocs["a0.35-96-out-grid3-knn1"] - clear.aurocs["a0.35-96-b13-grid3-knn1"]
    assert clear.chosen == "a0.35-96-out-grid3-knn1" and gap > LAST_LAYER_YIELD_GAP
    real = rng.normal(1.0, 1, 50)
    on_real = choose([result("out", 1.30, real + 0.3), result("b13", 1.25, real)])
    assert on_real.chosen == "a0.35-96-out-grid3-knn1"
    n = 40                                          # a few dozen images: validation alone decides
    source, family, normal = source[:n * per], family[:n * per], normal[:n]
    b13 = result("b13", 1.5)
    out = CandidateResult(Candidate(size=96, taps="out", pooling="grid3"), b13.normal, b13.defect + 0.03,
                          {"x86_ms": 0.9, "pi4_ms": 8.0}, True)   # better on every defect by a little, and cheaper
    few = choose([out, b13])
    assert few.aurocs[out.candidate.name] - few.aurocs[b13.candidate.name] <= LAST_LAYER_YIELD_GAP
    assert few.chosen == out.candidate.name and "mid-level" not in few.reason


def test_held_out_normals_join_the_validation_only_when_the_chosen_candidate_scores_them_higher():
    """Separate held-out good parts (val/good, --calib) join the validation normals when the
    candidate the training images choose scores them above the training parts (the shift check):
    a candidate sensitive to the line's other conditions then yields to one that is not. Held-out
    parts it does not score higher change nothing (recorded, not joined); with real defects
    (--select-on-real) they are not consulted."""
    from types import SimpleNamespace

    from trainer.candidates import Candidate, SearchClock
    from trainer.search import CandidateResult, _choose

    rng = np.random.default_rng(4)
    n, per, h = 200, 3, 60
    syn = SimpleNamespace(kinds=["scratch", "cutpaste", "elastic"] * n, source=np.repeat(np.arange(n), per))

    def result(taps, shift, held, real=None):
        normal = rng.normal(0, 1, n)
        return CandidateResult(Candidate(size=96, taps=taps, pooling="max"), normal, rng.normal(shift, 1, n * per),
                               {"x86_ms": 1.0, "pi4_ms": 9.0}, True, real, held)

    def choose(rs):
        return _choose(rs, {}, syn, 3.7, 2.0, SearchClock(60.0), 0.0)

    sensitive = dict(taps="b13", shift=1.6)     # better on the synthetic defects ...
    robust = dict(taps="b10", shift=1.3)
    alone = choose([result(**sensitive, held=None), result(**robust, held=None)])
    assert alone.chosen.taps == "b13" and alone.held_out is None and "held-out" not in alone.selection.reason
    shifted = choose([result(**sensitive, held=rng.normal(1.5, 1, h)),     # ... but it scores the line's other
                      result(**robust, held=rng.normal(-0.2, 1, h))])      # conditions as anomalies
    rec = shifted.held_out
    assert shifted.chosen.taps == "b10" and rec["joined"] and rec["first_choice"] == "a0.35-96-b13-max-knn1"
    assert rec["shifted"] and rec["auroc"] > 0.8 and rec["n_held"] == h and rec["n_reference"] == n
    assert "60 held-out normal images joined" in shifted.selection.reason
    assert all(len(r.normal) == n + h for r in shifted.results)        # the table rates what was chosen on
    assert shifted.to_manifest()["held_out_normals"]["joined"]
    like = choose([result(**sensitive, held=rng.normal(-0.2, 1, h)), result(**robust, held=rng.normal(-0.2, 1, h))])
    assert like.chosen.taps == "b13" and like.held_out["joined"] is False and not like.held_out["shifted"]
    assert all(len(r.normal) == n for r in like.results)
    real = rng.normal(2.0, 1, 40)
    on_real = choose([result(**sensitive, held=rng.normal(1.5, 1, h), real=real + 0.5),
                      result(**robust, held=rng.normal(-0.2, 1, h), real=real)])
    assert on_real.chosen.taps == "b13" and on_real.held_out is None


def test_few_images_ship_the_cheapest_candidate_within_one_standard_error():
    """Small data (``trainer.search.SMALL_DATA_IMAGES``): the one-standard-error rule. A slower
    candidate a little ahead on 30 noisy images yields to the cheaper one within one SE of it (the
    winner's curse); a clearly worse one never ships; with 300 images the equivalence test decides."""
    from trainer.candidates import Candidate
    from trainer.search import SMALL_DATA_IMAGES, CandidateResult, _within_budget
    from trainer.selection import EQUIVALENCE_MARGIN

    def choose(n, seed=5):
        rng = np.random.default_rng(seed)
        source, family = np.repeat(np.arange(n), 3), np.array(["surface", "shape", "layout"] * n)
        normal, defect = rng.normal(0, 1, n), rng.normal(1.3, 1, 3 * n)

        def result(size, taps, d, ms):
            return CandidateResult(Candidate(size=size, taps=taps, pooling="grid3"), normal + rng.normal(0, 0.3, n),
                                   d, {"x86_ms": ms, "pi4_ms": 9 * ms}, True)

        rs = [result(224, "b13", defect, 2.0),                                        # best, slowest
              result(96, "b13", defect - 0.1 + rng.normal(0, 0.3, 3 * n), 0.5),       # a little behind, cheaper
              result(96, "b10", rng.normal(0.1, 1, 3 * n), 0.3)]                      # cheapest, far behind
        return _within_budget(rs, family, source, 3.7, strict=True)[0], [r.candidate.name for r in rs]

    assert 30 < SMALL_DATA_IMAGES <= 300
    few, (slow, near, far) = choose(30)
    gap = few.vs_best[near]
    assert few.best == slow and few.rule == "one-SE"
    assert EQUIVALENCE_MARGIN < gap["diff"] <= gap["se"] < few.vs_best[far]["diff"]   # not shown equivalent
    assert few.chosen == near and "one-standard-error rule" in few.reason
    assert near not in few.reason.split(" and cheaper ")[1] and "significantly above" not in few.reason
    many, _ = choose(300)
    assert many.rule == "equivalence" and many.best == slow and many.chosen == slow
    assert near not in many.equivalent
