"""Patch-level features (pooling "patch"): Gaussian scorer, bundle checks, fit -> device scores."""
import numpy as np
import pytest

from device.preprocess import InputSpec
from tests.conftest import WEIGHTS_035, needs_tf, stripes, write_pngs


def test_gaussian_scorer_is_the_mahalanobis_distance():
    from scipy.spatial.distance import mahalanobis

    from device.scoring import GaussianScorer, make_scorer

    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    bank = (rng.normal(size=(5000, 6)) @ a + 3.0).astype(np.float32)
    s = GaussianScorer(bank, eps=0.0)
    q = (rng.normal(size=(7, 6)) * 3).astype(np.float32)
    vi = np.linalg.inv(np.cov(bank.astype(np.float64), rowvar=False))
    ref = [mahalanobis(x, bank.mean(0), vi) for x in q]
    assert np.allclose(s.score(q), ref, rtol=1e-3)
    assert isinstance(make_scorer("gauss", bank, 1), GaussianScorer)
    # a constant channel (dead ReLU) must not break the inverse
    bank[:, 2] = 0.0
    assert np.isfinite(GaussianScorer(bank).score(q)).all()
    with pytest.raises(ValueError, match="expected one of knn, lof, gauss"):
        make_scorer("mahal", bank, 1)


def _patch_manifest(output_dim: int, patches) -> dict:
    spec = InputSpec(size=(32, 32), pixel_scale=1.0, pixel_offset=0.0)
    return {"input": spec.to_dict(),
            "extractor": {"input_shape": [32, 32, 3], "output_dim": output_dim, "patches": patches,
                          "quantization": "int8", "feature_normalize": "none"},
            "backbone": {}, "scoring": {"method": "gauss", "k": 1}, "threshold": {"value": 1.0}}


@pytest.mark.parametrize("output_dim, patches, bank_dim, msg", [
    (16, {"grid": [2, 2], "dim": 4}, 3, r"feature dimension 3 does not match patch dimension 4"),
    (20, {"grid": [2, 2], "dim": 4}, 4, r"patches 2x2x4 does not match output_dim 20"),
    (16, {"grid": [2], "dim": 4}, 4, r"extractor.patches.grid: expected 2 integers, found \[2\]"),
])
def test_patch_bundle_inconsistencies_are_refused(tmp_path, output_dim, patches, bank_dim, msg):
    from device.bundle import load_bundle, npy_bytes, write_bundle
    from device.errors import BundleError

    with pytest.raises(BundleError, match=msg):     # refused when written, or when loaded
        write_bundle(tmp_path / "b", _patch_manifest(output_dim, patches),
                     {"extractor.tflite": b"x", "bank.npy": npy_bytes(np.ones((6, bank_dim), np.float32))})
        load_bundle(tmp_path / "b")


def _dark_spot(img: np.ndarray, seed: int) -> np.ndarray:
    """A small defect: a 9-px dark spot (about 5 % of a 37-px tile)."""
    import cv2

    rng = np.random.default_rng(seed)
    out = img.copy()
    cv2.circle(out, (int(rng.integers(8, 56)), int(rng.integers(8, 56))), 4, (0, 0, 0), -1)
    return out


@pytest.fixture(scope="module")
def patch_bundle(tmp_path_factory):
    from trainer.cli import main

    root = tmp_path_factory.mktemp("patches")
    write_pngs(root / "train" / "good", stripes(24, 64, seed=21))
    val = write_pngs(root / "val" / "good", stripes(8, 64, seed=22))
    write_pngs(root / "test" / "good", stripes(2, 64, seed=23))
    write_pngs(root / "test" / "spot", [_dark_spot(im, i) for i, im in enumerate(stripes(2, 64, seed=24))])
    out = root / "bundle"
    weights = str(WEIGHTS_035) if WEIGHTS_035.is_file() else "random"   # the structure tests run either way
    assert main(["fit", "--data", str(root), "--out", str(out), "--size", "32", "--weights", weights,
                 "--no-doc", "--taps", "b6", "--pooling", "patch", "--scoring", "gauss",
                 "--working-size", "64", "--grid", "2x2", "--overlap", "0.25", "--bank-mode", "shared"]) == 0
    return root, out, val


@needs_tf
@pytest.mark.slow
def test_patch_bundle_scores_worst_patch_of_worst_tile(patch_bundle):
    from device.bundle import load_bundle
    from device.detector import Detector

    root, out, val = patch_bundle
    b = load_bundle(out)
    ext, sc = b.manifest.extractor, b.manifest.scoring
    ph, pw = ext.patches.grid
    assert (ph, pw) == (4, 4) and b.bank.shape[1] == ext.patches.dim == ext.output_dim // 16
    assert ext.feature_normalize == "none" and sc.method == "gauss" and sc.metric == "mahalanobis"
    assert sc.image_score == "max over patches and tiles" and b.patches_per_tile == 16
    det = Detector.from_bundle(out)
    r = det.inspect(stripes(1, 64, seed=30)[0])
    assert r.patch_scores.shape == (4, 4, 4)
    assert np.allclose(r.tile_scores, r.patch_scores.reshape(4, 16).max(axis=1))
    assert r.score == pytest.approx(float(r.patch_scores.max()))
    # the device reproduces the trainer's calibration scores (same .tflite, bank, Gaussian)
    dev = np.array([det.inspect(p).score for p in val])
    assert np.allclose(np.sort(dev), np.sort(b.calibration_scores), rtol=1e-4, atol=1e-4)


@needs_tf
@pytest.mark.skipif(not WEIGHTS_035.is_file(), reason=f"needs ImageNet backbone weights at {WEIGHTS_035}")
@pytest.mark.slow
def test_patch_bundle_finds_a_small_spot(patch_bundle):
    from device.detector import Detector

    _, out, _ = patch_bundle
    det = Detector.from_bundle(out)
    good = stripes(6, 64, seed=40)
    bad = [_dark_spot(im, i) for i, im in enumerate(stripes(6, 64, seed=41))]
    sg = np.array([det.inspect(im).score for im in good])
    sb = np.array([det.inspect(im).score for im in bad])
    assert sb.min() > sg.max(), (sg, sb)


def test_patch_heatmap_puts_each_patch_in_its_tile():
    from device.heatmap import patch_heatmap

    spec = InputSpec(size=(32, 32), working_size=(64, 64), grid=(2, 2))
    scores = np.zeros((4, 2, 2), np.float32)
    scores[3, 1, 1] = 5.0                       # bottom-right patch of the bottom-right tile
    hm = patch_heatmap(scores, spec)
    assert hm.shape == (64, 64)
    assert hm[63, 63] == pytest.approx(5.0) and hm[:32, :].max() == 0 and hm[32:, :32].max() == 0
    with pytest.raises(ValueError, match=r"patch scores must be \(4, h, w\)"):
        patch_heatmap(scores[:3], spec)


@needs_tf
@pytest.mark.slow
def test_patch_evaluate_writes_patch_overlays(patch_bundle, tmp_path):
    from trainer.evaluate import evaluate

    root, out, _ = patch_bundle
    m = evaluate(out, root, tmp_path / "ev", progress=False)
    assert m["n_tiles"] == 4 and m["n_good"] == 2 and m["n_defective"] == 2
    assert len(list((tmp_path / "ev" / "overlays").glob("*.png"))) == 4


@needs_tf
@pytest.mark.slow
def test_int8_input_covers_all_pixel_values():
    """Calibration images darker than 255 must not narrow the uint8 input range (bright pixels
    would clip): the converted input is the pixel itself (scale 1, zero point 0)."""
    import keras

    from device.extractor import TFLiteExtractor
    from trainer.convert import convert

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    model = keras.Model(inp, keras.layers.GlobalMaxPooling2D()(x))
    rep = np.random.default_rng(0).integers(40, 180, (20, 16, 16, 3)).astype(np.uint8)
    ext = TFLiteExtractor(convert(model, rep, "int8"))
    scale, zp = ext.input_quant
    assert scale == pytest.approx(1.0, rel=1e-3) and zp == 0
    bright = np.full((1, 16, 16, 3), 250, np.uint8)
    brighter = np.full((1, 16, 16, 3), 255, np.uint8)
    ref = model.predict(np.concatenate([bright, brighter]).astype(np.float32), verbose=0)
    assert not np.allclose(ref[0], ref[1])          # the float model tells 250 from 255 ...
    assert not np.allclose(ext(bright), ext(brighter))   # ... and so must the int8 one
