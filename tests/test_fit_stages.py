"""``fit``'s stages alone, on tiny inputs and without TensorFlow (the end-to-end tests run them together)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import stripes
from trainer.options import FitConfig
from trainer.pipeline import Bank, Export, Rows, calibrate, choose_bank, prepare, row_positions, select


def test_prepare_splits_draws_defects_and_cuts_tiles():
    cfg = FitConfig(size=(32, 32), working_size=(64, 64), grid=(2, 2), calib_fraction=0.25, seed=3)
    data = prepare(stripes(16, 64, seed=1), cfg)
    assert (len(data.x_train), len(data.x_cal), len(data.x_syn)) == (12, 4, 4)
    assert data.x_train.shape[1:] == (64, 64, 3)                      # working size
    assert data.tiles["train"].shape == (12 * 4, 32, 32, 3) and data.n_tiles == 4
    assert 0 < data.syn_scale < 1                                      # defects drawn at tile scale
    again = prepare(stripes(16, 64, seed=1), cfg)                      # seeded: the same split again
    assert np.array_equal(again.x_cal, data.x_cal) and np.array_equal(again.x_syn, data.x_syn)
    with pytest.raises(Exception, match="too few"):
        prepare(stripes(2, 64), cfg)


def test_select_prefers_the_untouched_backbone_on_a_tie():
    c = {"untouched": (None, {"synthetic_auroc": 0.9}, None), "doc": (None, {"synthetic_auroc": 0.9}, {})}
    assert select(c, "synthetic_auroc")[0] == "untouched"
    c["doc"] = (None, {"synthetic_auroc": 0.95}, {})
    chosen, why = select(c, "synthetic_auroc")
    assert chosen == "doc" and "untouched=0.9000" in why and "doc=0.9500" in why


class _Ext:
    runtime = "test"

    def describe(self):
        return {"input_shape": [32, 32, 3], "output_dim": 4}


def _export(rng, n_train=40, n_cal=10, n_syn=10, n_tiles=1, shift=3.0):
    d = 4
    feats = {"train": rng.normal(size=(n_train * n_tiles, d)).astype(np.float32),
             "cal": rng.normal(size=(n_cal * n_tiles, d)).astype(np.float32),
             "syn": (rng.normal(size=(n_syn * n_tiles, d)) + shift).astype(np.float32)}
    return Export(b"", _Ext(), "int8", {}, feats, 0.1)


class _Data:
    def __init__(self, n_train, n_cal, n_syn, n_tiles):
        self.x_train, self.x_cal, self.x_syn = np.zeros(n_train), np.zeros(n_cal), np.zeros(n_syn)
        self.n_tiles, self.cal_how = n_tiles, "test split"


def test_choose_bank_measures_both_modes_when_tiled_and_caps_the_bank():
    rng = np.random.default_rng(0)
    exp = _export(rng, n_tiles=4)
    cfg = FitConfig(size=(32, 32), working_size=(64, 64), grid=(2, 2), bank_max=20, bank_subsample="random")
    bank = choose_bank(exp, _Data(40, 10, 10, 4), Rows(1, "l2", None), cfg)
    assert {"shared_synthetic_auroc", "per_position_synthetic_auroc", "reason"} <= set(bank.report)
    assert bank.subsampled and bank.rows.shape == (20, 4)
    if bank.mode == "per_position":
        assert sorted(set(bank.tile_index.tolist())) == [0, 1, 2, 3]


def test_calibrate_scores_as_the_device_does():
    from device.scoring import TileScorer

    rng = np.random.default_rng(1)
    exp = _export(rng)
    bank = Bank(exp.feats["train"], None, "shared", {}, False)
    cfg = FitConfig(size=(32, 32), target_frr=0.1)
    thr, cal, syn = calibrate(bank, exp, _Data(40, 10, 10, 1), Rows(1, "l2", None), cfg)
    np.testing.assert_allclose(cal, TileScorer(bank.rows, 1).frame_scores(exp.feats["cal"]), rtol=1e-6)
    assert thr["value"] == pytest.approx(np.sort(cal)[-2]) and thr["n_calibration"] == 10   # one of ten may pass
    assert syn.min() > np.median(cal)


def test_row_positions_are_frame_major_patch_minor():
    assert row_positions(2, 3, 2).tolist() == [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]
