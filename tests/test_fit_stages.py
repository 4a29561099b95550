"""``fit``'s stages alone, on tiny inputs and without TensorFlow (the end-to-end tests run them together)."""
from __future__ import annotations

import argparse
import io
import logging

import numpy as np
import pytest

from conftest import stripes
from device.manifest import InputSpec
from trainer.frames import DeviceRows, FrameSet, Rows, bank_sample, crossfit_tile_scores
from trainer.options import FitConfig


class _Ext:
    """A stand-in extractor: per-channel means of 4x4 cells of each tile (deterministic, 48 dims)."""

    runtime = "test"

    def __call__(self, tiles):
        t = np.asarray(tiles, np.float32)
        n, h, w, c = t.shape
        return t.reshape(n, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4)).reshape(n, -1)

    def describe(self):
        return {"input_shape": [32, 32, 3], "output_dim": 48}


def _rows(images, spec, p=1):
    return DeviceRows(_Ext(), FrameSet(images, spec), Rows(p, "l2", None))


def test_frame_set_prepares_lazily_and_device_rows_keep_or_recompute():
    spec = InputSpec(size=(32, 32), working_size=(64, 64), grid=(2, 2))
    fs = FrameSet([s[:, :, 0] for s in stripes(5, 64, seed=1)], spec)
    batches = list(fs.batches(2))
    assert [(a, b) for a, b, _ in batches] == [(0, 2), (2, 4), (4, 5)] and batches[0][2].shape == (8, 32, 32, 3)
    kept = DeviceRows(_Ext(), fs, Rows(1, "l2", None))
    assert kept.all().shape == (5 * 4, 48)
    streamed = DeviceRows(_Ext(), fs, Rows(1, "l2", None), keep_bytes=1)   # too large to keep: recomputed
    first = np.concatenate([r for _, _, r in streamed.batches()])
    assert streamed._kept is None and np.allclose(first, kept.all())


def test_crossfit_scores_no_image_against_its_own_fold():
    from trainer.selection import fold_of

    spec = InputSpec(size=(32, 32))
    imgs = stripes(20, 32, seed=2)
    train = _rows(imgs, spec)
    sample = bank_sample(train, None, "coreset", "knn")
    assert len(sample.feats) == 20 and sample.frame.tolist() == list(range(20))
    fold = fold_of(20, 4, seed=0)
    defects = _rows([im.copy() for im in imgs[:6]], spec)          # "defects" identical to their source images
    got = crossfit_tile_scores(train, sample, fold, defects, np.arange(6), 1, "knn", False, extra=[defects])
    assert got["train"].shape == (20, 1) and (got["train"] > 2e-3).all()      # never its own neighbour
    assert (got["defects"] > 2e-3).all()                                       # its source is not in its bank
    assert np.allclose(got["extra"][0], 0, atol=2e-3)                          # the full bank holds the source


def test_bank_sample_of_patch_rows_keeps_frame_and_position():
    spec = InputSpec(size=(32, 32), working_size=(64, 64), grid=(2, 2))
    train = _rows([s[:, :, 0] for s in stripes(6, 64, seed=3)], spec, p=2)   # 2 "patch" rows per tile
    s = bank_sample(train, 10, "random", "gauss", seed=0)
    assert len(s.feats) == 10 and set(s.frame.tolist()) <= set(range(6)) and set(s.pos.tolist()) <= set(range(4))


def test_choose_bank_ships_per_position_only_on_a_significant_win():
    from trainer.pipeline import Export, FitData, choose_bank

    spec = InputSpec(size=(32, 32), working_size=(64, 64), grid=(2, 2))
    imgs = [s[:, :, 0] for s in stripes(24, 64, seed=4)]
    rows = {"train": _rows(imgs, spec), "syn": _rows([255 - im for im in imgs[:12]], spec)}
    exp = Export(b"", _Ext(), "int8", {}, rows)
    from trainer.selection import fold_of

    data = FitData(spec, rows["train"].frames, None, rows["syn"].frames, None, fold_of(24, 4), np.arange(12),
                   ["spot", "warp", "elastic"] * 4, np.arange(12), "test")
    bank = choose_bank(exp, data, Rows(1, "l2", None), FitConfig(bank_mode="auto", k=1, scoring="knn"))
    assert {"difference", "se", "reason"} <= set(bank.report)
    if bank.mode == "per_position":
        assert bank.report["difference"] > 1.645 * bank.report["se"]
    else:
        assert "shared" in bank.report["reason"]


def test_calibration_uses_cross_fitted_scores_and_says_how_honest_it_is():
    from trainer.pipeline import FitData, Validation, calibrate

    rng = np.random.default_rng(5)
    val = Validation(rng.gamma(3, 1, (30, 1)), rng.gamma(3, 1, (10, 1)) + 5, None, None, [], None)
    data = FitData(InputSpec(size=(32, 32)), FrameSet([0] * 30, InputSpec(size=(32, 32))), None, None, None,
                   np.zeros(30, int), np.zeros(10, int), ["spot"] * 10, np.arange(10), "cross-fitted: test")
    thr, scores = calibrate(val, data, FitConfig(target_frr=0.01))
    assert np.array_equal(scores, val.train[:, 0].astype(np.float32))
    assert thr["n_calibration"] == 30 and thr["estimator"]["method"] == "tail"
    assert thr["supported_frr"] == pytest.approx(1 / 31) and "99" in thr["estimator"]["warning"]
    assert thr["value"] >= scores.max() and thr["estimator"]["scores"].startswith("cross-fitted")


def test_quant_and_doc_decisions_never_call_a_tie_a_win():
    from trainer.pipeline import quant_decision
    from trainer.selection import paired_gap, significant_win

    assert quant_decision({"diff": 0.05, "se": 0.04}, "int8") == (False, quant_decision({"diff": 0.05, "se": 0.04},
                                                                                        "int8")[1])
    assert "a tie" in quant_decision({"diff": 0.05, "se": 0.04}, "int8")[1]
    assert quant_decision({"diff": 0.005, "se": 0.0001}, "int8")[0] is False          # significant, within 0.01
    assert quant_decision({"diff": 0.03, "se": 0.005}, "int8")[0] is True
    rng = np.random.default_rng(6)
    n = rng.normal(size=60)
    d = rng.normal(size=120) + 1.0
    fam, src = np.array(["surface", "shape"] * 60), np.repeat(np.arange(60), 2)
    same = paired_gap(np.stack([n, n + 1e-6]), np.stack([d, d]), fam, src)
    assert not significant_win(same) and abs(same["diff"]) < 1e-3
    better = paired_gap(np.stack([n, n]), np.stack([d + 2.0, d]), fam, src)
    assert significant_win(better) and better["diff"] > 0.1


# ---------------------------------------------------------------------------- options and inputs


def test_unset_options_are_searched_and_set_ones_pin_their_dimension():
    cfg = FitConfig(size=(160, 160), grid=(4, 4), working_size=(1024, 1024), doc=False)
    assert cfg.pins() == {"size": 160, "grid": (4, 4), "doc": False}
    r = cfg.resolve({"alpha": 1.0, "size": (96, 96), "taps": "b10", "pooling": "grid3", "k": 5, "scoring": "knn",
                     "grid": (16, 16), "working_size": (512, 512), "overlap": 0.25})
    assert (r.size, r.grid, r.working_size, r.taps, r.k, r.doc) == ((160, 160), (4, 4), (1024, 1024), "b10", 5, False)
    whole = FitConfig(grid=(1, 1))
    assert whole.whole_frame and whole.pins() == {"grid": None}
    assert whole.resolve({"grid": (4, 4), "working_size": (1024, 1024)}).input_spec().grid is None
    assert FitConfig().resolve({}).input_spec().size == (96, 96)                       # --no-search default
    with pytest.raises(Exception, match="--working-size"):
        FitConfig(grid=(4, 4))
    with pytest.raises(Exception, match="give --grid too"):
        FitConfig(working_size=(1024, 1024))


def test_unavailable_imagenet_weights_are_tried_once_and_announced_once(monkeypatch, caplog):
    """Offline, the first network build falls back to random weights with the loud banner; later
    builds of the same network neither fetch again nor repeat the banner."""
    import keras

    from models import backbone

    real, tries = keras.applications.MobileNetV2, []

    def mobilenet(weights=None, **kw):
        if weights == "imagenet":
            tries.append(kw["input_shape"])
            raise OSError("URL fetch failure (offline)")
        return real(weights=weights, **kw)

    monkeypatch.setattr(backbone, "_IMAGENET_FAILED", set())
    monkeypatch.setattr(keras.applications, "MobileNetV2", mobilenet)
    with caplog.at_level(logging.WARNING, logger="models.backbone"):
        for _ in range(3):
            assert backbone._mobilenet(0.35, (32, 32), "imagenet")[1] == "random"
    assert len(tries) == 1
    assert sum("COULD NOT GET IMAGENET WEIGHTS" in r.getMessage() for r in caplog.records) == 1
    assert sum("no ImageNet weights for MobileNetV2 alpha 0.35 at 32 px" in r.getMessage() for r in caplog.records) == 2


def test_imagenet_default_searches_alpha_1_only_when_its_weights_can_be_fetched(monkeypatch, tmp_path):
    """With ImageNet weights (the default) alpha 1.0 joins the search when Keras can fetch its
    published file; offline it is left out (never searched on random weights); a pinned width,
    --no-search or a local alpha 0.35 file ask for nothing."""
    import keras

    from models import backbone

    monkeypatch.delenv("ANOMALY_BACKBONE_WEIGHTS", raising=False)
    monkeypatch.delenv("ANOMALY_BACKBONE_WEIGHTS_1_0", raising=False)
    asked = []

    def offline(name, origin, cache_subdir):
        asked.append(name)
        raise OSError(f"URL fetch failure on {origin}")

    monkeypatch.setattr(backbone, "_IMAGENET_FILES", {})
    monkeypatch.setattr(keras.utils, "get_file", offline)
    assert FitConfig().weights_by_alpha() == {0.35: "imagenet"}
    assert asked == ["mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"]
    FitConfig().weights_by_alpha()
    assert len(asked) == 1                                   # asked once per process

    cached = tmp_path / "w.h5"
    cached.write_bytes(b"h5")
    monkeypatch.setattr(backbone, "_IMAGENET_FILES", {})
    monkeypatch.setattr(keras.utils, "get_file", lambda name, origin, cache_subdir: (asked.append(name), str(cached))[1])
    assert FitConfig().weights_by_alpha() == {0.35: "imagenet", 1.0: str(cached)}
    n = len(asked)
    monkeypatch.setattr(backbone, "_IMAGENET_FILES", {})
    local = tmp_path / "a035.weights.h5"
    local.write_bytes(b"h5")
    for cfg in (FitConfig(alpha=0.35), FitConfig(search=False), FitConfig(weights=str(local))):
        assert 1.0 not in cfg.weights_by_alpha()
    assert len(asked) == n

def test_fit_help_shows_the_few_options_first_and_every_default():
    from trainer.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = sub.choices["fit"].format_help()
    first = text[text.index("\nthe options most fits need"):text.index("\nsearch space (")]
    for flag in ("--data", "--out", "--weights", "--weights-1.0", "--min-defect-px", "--budget-ms", "--time-budget",
                 "--target-frr", "--force"):
        assert flag in first, flag
    assert "--pooling" not in first and "(default: searched)" in text and "900 s = 15 min" in text
    assert "3.7 ms = a Raspberry Pi 4" in text and "--doc, --no-doc" in text and "--no-search" in text


def test_too_few_images_are_refused_with_the_minimum_unless_no_search():
    from device.errors import ConfigError
    from trainer.plan import check_count

    with pytest.raises(ConfigError, match=r"12 normal images found; the configuration search needs at least 20.*"
                                          r"--no-search"):
        check_count(12, FitConfig(), "data/train/good")
    check_count(12, FitConfig(search=False))
    with pytest.raises(ConfigError, match="at least 2"):
        check_count(1, FitConfig(search=False))


def test_inputs_report_mixed_sizes_colour_modes_and_a_stretching_working_size(caplog):
    from trainer.plan import load_inputs

    rng = np.random.default_rng(7)
    imgs = [rng.integers(0, 255, (60, 80), dtype=np.uint8), rng.integers(0, 255, (66, 88), dtype=np.uint8),
            rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)]
    with caplog.at_level(logging.WARNING):
        inp = load_inputs(imgs, FitConfig(grid=(2, 2), working_size=(256, 256)))
    assert inp.color == "rgb" and inp.record["frame_sizes"] == 2 and inp.record["grey_images"] == 2
    text = " ".join(inp.notes)
    assert "2 different frame sizes" in text and "mixed colour modes" in text and "stretches" in text
    assert "--working-size" in caplog.text
    grey = load_inputs(imgs[:1] * 3, FitConfig())
    assert grey.color == "grey" and grey.notes == []


def test_progress_writes_no_control_codes_when_not_a_tty(caplog):
    from trainer.progress import Progress

    out = io.StringIO()
    with caplog.at_level(logging.INFO), Progress("search", 8, stream=out) as bar:
        for _ in range(8):
            bar.step(note="x")
        bar.close()
    assert out.getvalue() == "" and "search: done, 8/8" in caplog.text and "\r" not in caplog.text

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    with Progress("search", 2, stream=tty) as bar:
        bar.step()
    assert "\r" in tty.getvalue() and "#" in tty.getvalue()


def test_compression_ships_only_when_faster_and_exact():
    from device.projection import compression_for

    rng = np.random.default_rng(8)
    bank = rng.normal(size=(4000, 256)).astype(np.float32)
    q = rng.normal(size=(40, 256)).astype(np.float32)
    rec = compression_for(bank, 1, 1, bank[:3000], bank[3000:3040] + 0.01, q).record
    assert rec["brute_force_knn_ms"] > 0 and rec["options"]
    for r in rec["options"]:
        assert {"dims", "shortlist", "knn_ms", "normal_scores_unchanged"} <= set(r)
    if rec["dims"] is not None:
        chosen = next(r for r in rec["options"] if r["dims"] == rec["dims"] and r["shortlist"] == rec["shortlist"])
        assert chosen["normal_scores_unchanged"] and chosen["knn_ms"] <= 0.9 * rec["brute_force_knn_ms"]
    assert compression_for(bank, 1, 1, bank, q, q, pinned=0).record["dims"] is None


def test_float_comparison_is_skipped_when_the_time_budget_cannot_hold_it(caplog, monkeypatch):
    """``--quant auto`` compares float with int8 by exporting and validating again: about what the
    int8 stage cost. When that and the stages after it do not fit the time left, int8 ships
    unmeasured against float and the record says why (the fit stays within --time-budget)."""
    import types

    from trainer.pipeline import choose_quant

    exp = types.SimpleNamespace(quant="int8", report={})
    bank, val = object(), object()
    with caplog.at_level(logging.WARNING, logger="trainer.pipeline"):
        got = choose_quant(None, exp, bank, val, None, None, FitConfig(quant="auto"), time_left=100.0, cost_s=80.0)
    assert got == (exp, bank, val)
    assert "does not fit the 100 s left of --time-budget" in exp.report["auto_choice"]
    assert "float comparison" in caplog.text
    import trainer.pipeline as pipeline

    calls = []

    def float_export(model, data, rows, cfg, quant="int8"):
        calls.append(quant)
        raise RuntimeError("float export reached")

    monkeypatch.setattr(pipeline, "export", float_export)
    with pytest.raises(RuntimeError, match="float export reached"):   # with the time, the comparison runs
        choose_quant(None, exp, bank, val, None, None, FitConfig(quant="auto"), time_left=1000.0, cost_s=80.0)
    assert calls == ["float"]
