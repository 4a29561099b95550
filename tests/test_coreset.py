"""k-center greedy coreset on a random projection above a work limit (PatchCore's practice): the
limit switches, nothing changes below it, and the projected coreset still covers the data."""
from __future__ import annotations

import numpy as np
import pytest

import device.scoring as scoring
from device.scoring import kcenter_greedy


def covering_radius(feats: np.ndarray, idx: np.ndarray) -> float:
    """Largest distance from a row to its nearest kept row (the k-center objective)."""
    c = feats[idx].astype(np.float64)
    f = feats.astype(np.float64)
    d2 = (f * f).sum(1)[:, None] + (c * c).sum(1)[None] - 2 * f @ c.T
    return float(np.sqrt(max(d2.min(1).max(), 0.0)))


def clusters(seed: int, dim: int = 384) -> np.ndarray:
    """25 clusters of very unequal size (1000 rows down to 1): a random subset misses the small ones."""
    rng = np.random.default_rng(seed)
    sizes = np.maximum(1, (1000 * 0.7 ** np.arange(25)).astype(int))
    centres = rng.normal(size=(25, dim)) * 2
    return np.concatenate([c + rng.normal(0, 0.3, (s, dim)) for c, s in zip(centres, sizes)]).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_projected_coreset_covers_the_data(seed):
    f = clusters(seed)
    for m in (40, 120):
        exact = covering_radius(f, kcenter_greedy(f, m, 0, project=False))
        proj = covering_radius(f, kcenter_greedy(f, m, 0, project=True))
        rand = covering_radius(f, np.random.default_rng(seed).choice(len(f), m, replace=False))
        assert proj <= 1.2 * exact, (m, proj, exact)
        assert rand >= 3 * exact                     # the measure tells a good coreset from a poor one


def test_the_work_limit_switches_to_the_projection(monkeypatch):
    f = clusters(0, dim=256)
    n, m, d = len(f), 50, f.shape[1]
    exact, proj = kcenter_greedy(f, m, 3, project=False), kcenter_greedy(f, m, 3, project=True)
    assert not np.array_equal(np.sort(exact), np.sort(proj))
    assert n * m * d < scoring.CORESET_PROJECT_WORK
    np.testing.assert_array_equal(kcenter_greedy(f, m, 3), exact)          # below the limit: unchanged
    monkeypatch.setattr(scoring, "CORESET_PROJECT_WORK", n * m * d - 1)
    np.testing.assert_array_equal(kcenter_greedy(f, m, 3), proj)           # above it: projected, seeded
    np.testing.assert_array_equal(kcenter_greedy(f, m, 3), proj)
    narrow = f[:, :scoring.CORESET_PROJECT_DIMS]                            # d <= 128: never projected
    np.testing.assert_array_equal(kcenter_greedy(narrow, m, 3), kcenter_greedy(narrow, m, 3, project=False))
    assert len(set(proj.tolist())) == m and kcenter_greedy(f, n + 5, 3).tolist() == list(range(n))
