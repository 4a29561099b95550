"""Tile grid: geometry, errors at spec/bundle load, tiled fit -> per-tile device scores."""
import json
import subprocess
import sys

import numpy as np
import pytest

from device.preprocess import InputSpec, preprocess
from tests.conftest import REPO, needs_tf, stripes, with_blob, write_pngs


@pytest.mark.parametrize("kw", [dict(grid=(3, 9), overlap=0.25), dict(grid=(1, 1)), dict(grid=(4, 4)),
                                dict(tile=(100, 100), stride=(70, 90))])
def test_tiles_cover_the_working_frame(kw):
    spec = InputSpec(size=(32, 32), working_size=(300, 500), **kw)
    cover = np.zeros(spec.working_size, int)
    for x, y, w, h in spec.tile_boxes():
        assert x >= 0 and y >= 0 and x + w <= 500 and y + h <= 300
        cover[y:y + h, x:x + w] += 1
    assert cover.min() >= 1
    rows, cols = spec.grid_shape
    assert rows * cols == len(spec.tile_boxes())
    assert preprocess(np.zeros((123, 456), np.uint8), spec).shape == (rows * cols, 32, 32, 3)


def test_tiles_hold_the_right_pixels():
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[32:, 32:] = 255   # bottom-right quadrant white
    t = preprocess(frame, InputSpec(size=(32, 32), working_size=(64, 64), grid=(2, 2)))
    assert [int(x.mean()) for x in t] == [0, 0, 0, 255]


@pytest.mark.parametrize("kw, msg", [
    (dict(working_size=(50, 50), tile=(60, 60), stride=(10, 10)), "tile 60x60 is larger than the working size 50x50"),
    (dict(working_size=(50, 50), tile=(20, 20), stride=(0, 5)), r"stride must be .* found \(0, 5\)"),
    (dict(working_size=(50, 50), grid=(2, 2), overlap=1.0), r"overlap\n  Input should be less than 1"),
    (dict(grid=(2, 2)), "needs working_size"),
    (dict(working_size=(40, 40), grid=(10, 10)), "cuts tiles under 8 px from working size 40x40"),
])
def test_bad_grids_are_refused_with_sizes(kw, msg):
    with pytest.raises(ValueError, match=msg):
        InputSpec(size=(32, 32), **kw)


def test_bad_grid_on_command_line(tmp_path):
    write_pngs(tmp_path / "n", stripes(4))
    r = subprocess.run([sys.executable, "-m", "trainer.cli", "fit", "--train", str(tmp_path / "n"), "--out",
                        str(tmp_path / "b"), "--working-size", "40", "--grid", "2x2", "--overlap", "1.5"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--overlap: expected < 1, found float 1.5" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    from trainer.cli import main

    root = tmp_path_factory.mktemp("tiled")
    write_pngs(root / "train" / "good", stripes(24, 64, seed=11))
    write_pngs(root / "val" / "good", stripes(8, 64, seed=12))
    write_pngs(root / "test" / "good", stripes(4, 64, seed=13))
    write_pngs(root / "test" / "blob", [with_blob(im, i) for i, im in enumerate(stripes(4, 64, seed=14))])
    out = root / "bundle"
    assert main(["fit", "--data", str(root), "--out", str(out), "--size", "32", "--weights", "random",
                 "--no-doc", "--taps", "out", "--pooling", "max", "--k", "1", "--scoring", "knn", "--working-size", "64",
                 "--grid", "2x2", "--bank-mode", "auto"]) == 0
    return root, out


@needs_tf
@pytest.mark.slow
def test_tiled_bundle_scores_every_tile(tiled):
    from device.bundle import load_bundle
    from device.detector import Detector

    root, out = tiled
    b = load_bundle(out)
    m = b.manifest
    assert m.input.grid == (2, 2) and m.scoring.image_score == "max over tiles"
    meas = m.scoring.bank_mode_measurement
    assert m.scoring.bank_mode in ("shared", "per_position") and "shared_worst_family_auroc" in meas
    assert b.bank.shape[0] == 24 * 4
    if m.scoring.bank_mode == "per_position":
        assert sorted(set(b.tile_index.tolist())) == [0, 1, 2, 3]
    det = Detector.from_bundle(out)
    img = with_blob(stripes(1, 64, seed=20)[0], 3)
    r = det.inspect(img)
    assert np.array(r.tile_grid).shape == (2, 2)
    assert r.score == pytest.approx(max(max(row) for row in r.tile_grid), rel=1e-5)
    assert r.worst_tile in [tuple(bx) for bx in det.spec.tile_boxes()]
    # a training image is in the bank: it scores ~0 (dynamic-range int8, the random-weights fallback,
    # quantises activations per batch, so the bank's batch and this single frame differ slightly)
    assert np.allclose(det.inspect(sorted((root / "train" / "good").glob("*.png"))[0]).score, 0, atol=5e-3)


@needs_tf
@pytest.mark.slow
def test_tiled_evaluate_report_has_grids_and_overlays(tiled, tmp_path):
    root, out = tiled
    r = subprocess.run([sys.executable, "-m", "trainer.cli", "evaluate", "--bundle", str(out), "--data", str(root),
                        "--out", str(tmp_path / "ev")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    scores = json.loads((tmp_path / "ev" / "scores.json").read_text())
    assert all(np.array(s["tile_grid"]).shape == (2, 2) for s in scores)
    overlays = list((tmp_path / "ev" / "overlays").glob("*.png"))
    assert len(overlays) >= 4
    assert "overlays/" in (tmp_path / "ev" / "report.html").read_text()


def test_bundle_with_bad_tile_index_is_refused(tmp_path):
    from device.bundle import load_bundle, npy_bytes, write_bundle
    from device.errors import BundleError

    spec = InputSpec(size=(32, 32), working_size=(64, 64), grid=(2, 2), pixel_scale=1.0, pixel_offset=0.0)
    man = {"input": spec.to_dict(), "extractor": {"input_shape": [32, 32, 3], "output_dim": 4, "quantization": "int8",
                                                 "feature_normalize": "l2"},
           "backbone": {}, "scoring": {"method": "knn", "k": 1, "bank_mode": "per_position"},
           "threshold": {"value": 1.0}}
    bank = np.ones((6, 4), np.float32)
    write_bundle(tmp_path / "b", man, {"extractor.tflite": b"x", "bank.npy": npy_bytes(bank),
                                       "bank_tile_index.npy": npy_bytes(np.array([0, 1, 2, 0, 1, 2], np.int32))})
    with pytest.raises(BundleError, match=r"no bank features for tile positions \[3\]"):
        load_bundle(tmp_path / "b")


def _manual_tiled_bundle(path, tile_index=None):
    from device.bundle import npy_bytes, write_bundle

    spec = InputSpec(size=(32, 32), working_size=(64, 64), grid=(2, 2), pixel_scale=1.0, pixel_offset=0.0)
    man = {"input": spec.to_dict(), "extractor": {"input_shape": [32, 32, 3], "output_dim": 8, "quantization": "int8",
                                                 "feature_normalize": "l2"},
           "backbone": {}, "scoring": {"method": "knn", "k": 1}, "threshold": {"value": 1.0, "target_frr": 0.01}}
    bank = np.random.default_rng(0).normal(size=(80, 8)).astype(np.float32)
    files = {"extractor.tflite": b"x", "bank.npy": npy_bytes(bank)}
    if tile_index is not None:
        files["bank_tile_index.npy"] = npy_bytes(tile_index)
        man["scoring"]["bank_mode"] = "per_position"
    write_bundle(path, man, files)
    return bank


def test_project_bundle_refuses_per_position_banks(tmp_path):
    from device.errors import BundleError
    from device.projection import project_bundle

    _manual_tiled_bundle(tmp_path / "b", np.tile(np.arange(4, dtype=np.int32), 20))
    with pytest.raises(BundleError, match="per-position banks"):
        project_bundle(tmp_path / "b", tmp_path / "p", dims=4)


def test_projected_tiled_threshold_accounts_for_the_tile_max(tmp_path):
    """--no-rerank recalibrates on leave-one-out scores; a tiled frame scores its worst of 4 tiles,
    so the threshold must sit above the per-tile quantile."""
    from device.bundle import load_bundle
    from device.projection import project_bundle
    from device.scoring import ProjectedKNNScorer, fit_pca

    bank = _manual_tiled_bundle(tmp_path / "b")
    project_bundle(tmp_path / "b", tmp_path / "p", dims=4, rerank=False)
    thr = load_bundle(tmp_path / "p").manifest.threshold
    assert "maxima of random groups of 4 tile scores" in thr.method
    per_tile = np.quantile(ProjectedKNNScorer(bank, 1, *fit_pca(bank, 4)[:2]).leave_one_out(), 0.99)
    frame = np.quantile(load_bundle(tmp_path / "p").calibration_scores, 0.5)
    assert thr.value >= per_tile * 0.999 and frame > np.median(
        ProjectedKNNScorer(bank, 1, *fit_pca(bank, 4)[:2]).leave_one_out())
