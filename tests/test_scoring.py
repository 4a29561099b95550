"""k-NN scoring vs brute force, LOF, bank subsampling and threshold calibration."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

from device.scoring import KNNScorer, LOFScorer, kcenter_greedy, smallest, subsample_bank
from core.threshold import calibrate_threshold, false_reject_rate


@pytest.mark.parametrize("k", [1, 3, 7])
def test_knn_matches_brute_force(k):
    rng = np.random.default_rng(k)
    bank, q = rng.normal(size=(500, 64)).astype(np.float32), rng.normal(size=(50, 64)).astype(np.float32)
    ref = np.sort(cdist(q, bank), axis=1)[:, :k].mean(axis=1)
    np.testing.assert_allclose(KNNScorer(bank, k).score(q, chunk=7), ref, rtol=1e-4, atol=1e-4)


def test_leave_one_out_excludes_self():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(100, 16)).astype(np.float32)
    d = cdist(bank, bank)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(KNNScorer(bank, 1).leave_one_out(), d.min(axis=1), rtol=1e-4, atol=1e-4)


def test_knn_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be in 1..3"):
        KNNScorer(np.zeros((3, 2), np.float32), k=4)


def test_lof_scores_outlier_highest():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(200, 8)).astype(np.float32)
    q = np.vstack([rng.normal(size=(20, 8)), np.full((1, 8), 6.0)]).astype(np.float32)
    s = LOFScorer(bank, k=5).score(q)
    assert s.argmax() == 20 and s[20] > 2 * np.median(s[:20])


def test_coreset_covers_better_than_random():
    rng = np.random.default_rng(0)
    feats = np.vstack([rng.normal(size=(900, 8)), rng.normal(size=(100, 8)) + 8]).astype(np.float32)
    cover = lambda idx: cdist(feats, feats[idx]).min(axis=1).max()
    core = kcenter_greedy(feats, 50)
    rand = subsample_bank(feats, 50, "random")
    assert len(set(core.tolist())) == 50 and cover(core) < cover(rand)
    assert len(subsample_bank(feats, None)) == 1000


def test_threshold_hits_target_frr_on_synthetic_scores():
    rng = np.random.default_rng(0)
    cal = rng.gamma(2.0, 1.0, 2000)
    for target in (0.01, 0.05, 0.1):
        t = calibrate_threshold(cal, target)
        assert false_reject_rate(cal, t) <= target
        assert false_reject_rate(cal, t) >= target - 1.0 / len(cal)
        fresh = rng.gamma(2.0, 1.0, 100_000)   # the rate holds on unseen normals from the same process
        assert abs(false_reject_rate(fresh, t) - target) < 0.5 * target + 0.003


def test_threshold_small_and_bad_inputs():
    assert calibrate_threshold([1.0, 2.0, 3.0], 0.01) == 3.0     # fewer than 100 normals: none may be rejected
    with pytest.raises(ValueError):
        calibrate_threshold([], 0.01)
    with pytest.raises(ValueError):
        calibrate_threshold([1.0], 1.5)


@pytest.mark.parametrize("shape", [(400, 24), (24, 400)])
def test_pca_matches_the_svd_for_tall_and_wide_banks(shape):
    """fit_pca takes the D x D covariance for tall banks and the N x N Gram matrix for wide ones
    (a 300-row bank of 13k-dim grid features must not cost a 13k x 13k eigen-decomposition): both
    give the SVD's leading directions (up to sign), unit length, and its explained variance."""
    from device.scoring import fit_pca

    rng = np.random.default_rng(3)
    x = (rng.normal(size=shape) * np.linspace(4.0, 0.1, shape[1])).astype(np.float32)
    mean, comps, ev = fit_pca(x, 8)
    xc = x.astype(np.float64) - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    assert np.allclose(mean, x.mean(axis=0), atol=1e-5)
    assert np.allclose(np.abs(comps @ vt[:8].T), np.eye(8), atol=1e-3)
    assert ev == pytest.approx(float((s[:8] ** 2).sum() / (s ** 2).sum()), rel=1e-4)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(1, 30), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_smallest_picks_the_m_smallest_per_row_with_and_without_ties(rows, extra, m, seed):
    """The shortlist's selection (partition + mask, argpartition on ties) against a full sort."""
    rng = np.random.default_rng(seed)
    n = m + extra
    vals = rng.integers(0, 4 if seed % 2 else 10**6, size=(rows, n)).astype(np.float32)   # odd seeds: many ties
    idx, nxt = smallest(vals, m)
    assert idx.shape == (rows, m) and nxt.shape == (rows,)
    srt = np.sort(vals, axis=1)
    for r in range(rows):
        assert len(set(idx[r].tolist())) == m
        np.testing.assert_array_equal(np.sort(vals[r, idx[r]]), srt[r, :m])
        assert nxt[r] == srt[r, m]
