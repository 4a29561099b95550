"""anomaly-train fit -> anomaly-device score, end to end on tiny generated images."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import HAVE_TF, REPO, WEIGHTS_035, needs_tf, stripes, with_blob, write_pngs

pytestmark = [needs_tf, pytest.mark.slow]


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300, **kw)


def test_bundle_records_selection_and_calibration(tiny_bundle):
    from device.bundle import load_bundle

    b = load_bundle(tiny_bundle)
    m = b.manifest
    assert m.backbone["weights"] == "random"
    sel = m.backbone["selection"]
    assert sel["mode"] == "pinned" and sel["chosen"] == "a0.35-32-out-max-knn1-doc"
    assert sel["doc"]["measured"] and sel["doc"]["decision"] == "doc" and "--doc was given" in sel["doc"]["reason"] \
        or "DOC wins" in sel["doc"]["reason"]
    assert m.threshold.target_frr == 0.01 and m.threshold.n_calibration == 12
    assert "separate held-out" in m.threshold.method and m.threshold.supported_frr == pytest.approx(1 / 13)
    assert m.threshold.estimator["method"] == "tail" and "99" in m.threshold.estimator["warning"]
    shift = m.threshold.estimator["shift"]   # val/good like train/good: measured, no shift reported
    assert shift["n_held"] == 12 and shift["n_reference"] == 40 and not shift["shifted"] and "warning" not in shift
    lat = m.training["latency"]
    assert lat["x86_ms"] > 0 and lat["pi4_ms_estimate"] > lat["inference_ms"] and "Pi 4" in lat["pi4_basis"]
    assert (tiny_bundle.parent / (tiny_bundle.name + "-report") / "report.html").is_file()
    assert b.bank.shape[0] == 40 and m.quantization["requested"] == "auto"
    assert "auto_choice" in m.quantization and "float_val_auroc" in m.quantization
    if m.extractor.quantization == "float":   # auto measured a loss and says so
        assert m.quantization["auto_choice"].startswith("float: ")
    elif m.extractor.quantization == "int8":
        assert m.extractor.input_dtype == "uint8"
    else:   # random weights can give all-zero int8 features: the trainer must say so and fall back
        assert m.extractor.quantization == "dynamic" and "int8_fallback" in m.quantization
    assert np.ptp(b.bank) > 0
    assert b.calibration_scores.shape == (12,)
    assert b.array("calibration_features.npy").shape == (12, b.bank.shape[1])


def test_score_cli_one_line_per_image_and_matches_in_process(tiny_bundle, tiny_layout):
    from device.detector import Detector

    r = _run(["device.cli", "score", "--bundle", str(tiny_bundle), "--json", str(tiny_layout / "test")])
    assert r.returncode == 0, r.stderr
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(lines) == 16
    det = Detector.from_bundle(tiny_bundle)
    for rec in lines:
        s = det.inspect(rec["image"]).score
        assert rec["score"] == pytest.approx(s, rel=1e-6)
        assert rec["decision"] == ("REJECT" if s > rec["threshold"] else "PASS")
        assert rec["bundle_digest"] == det.bundle.digest
    good = [r["score"] for r in lines if "/good/" in r["image"]]
    blob = [r["score"] for r in lines if "/blob/" in r["image"]]
    from core.metrics import auroc   # gross defects stand out even with random backbone weights
    assert auroc([0] * len(good) + [1] * len(blob), good + blob) >= 0.9


def test_trainer_and_device_compute_identical_scores(tiny_bundle, tiny_layout):
    """The bank is built by the trainer with the same .tflite: bank images score ~0 on the device."""
    from device.bundle import load_bundle
    from device.detector import Detector

    det = Detector.from_bundle(tiny_bundle)
    train = sorted((tiny_layout / "train" / "good").glob("*.png"))
    np.testing.assert_allclose([det.inspect(p).score for p in train[:5]], 0.0, atol=1e-3)  # float32 cancellation
    cal = load_bundle(tiny_bundle).calibration_scores
    val = sorted((tiny_layout / "val" / "good").glob("*.png"))
    np.testing.assert_allclose([det.inspect(p).score for p in val], cal, rtol=1e-5, atol=1e-5)


def test_threshold_override_on_command_line(tiny_bundle, tiny_layout):
    r = _run(["device.cli", "score", "--bundle", str(tiny_bundle), "--threshold", "0", str(tiny_layout / "test")])
    assert r.returncode == 0 and r.stdout.count("REJECT") == 16
    for bad, says in (("-1", "threshold from cli:threshold must be a finite number >= 0"),
                      ("nan", "expected a finite number"), ("inf", "expected a finite number")):
        r = _run(["device.cli", "score", "--bundle", str(tiny_bundle), "--threshold", bad, str(tiny_layout / "test")])
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)
    r = _run(["device.cli", "score", "--bundle", str(tiny_bundle), "--target-frr", "1.5", str(tiny_layout / "test")])
    assert r.returncode == 2 and "target_frr must be in [0, 1), found 1.5" in r.stderr and "Traceback" not in r.stderr


def test_device_path_without_tensorflow(tiny_bundle, tiny_layout):
    from no_tensorflow import device_cli_without_tensorflow

    r = device_cli_without_tensorflow(["score", "--bundle", str(tiny_bundle), str(tiny_layout / "test")], timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 16


def test_evaluate_writes_report(tiny_bundle, tiny_layout, tmp_path):
    r = _run(["trainer.cli", "evaluate", "--bundle", str(tiny_bundle), "--data", str(tiny_layout),
              "--out", str(tmp_path / "ev")])
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["auroc"] >= 0.9 and m["n_good"] == 8 and m["n_defective"] == 8
    assert m["false_rejects"] + m["misses"] == sum((s["decision"] != "PASS") != (s["label"] == 1)
                                                   for s in json.loads((tmp_path / "ev" / "scores.json").read_text()))
    scores = json.loads((tmp_path / "ev" / "scores.json").read_text())
    assert len(scores) == 16 and {s["group"] for s in scores} == {"good", "blob"}
    for f in ("roc.png", "histogram.png", "report.html"):
        assert (tmp_path / "ev" / f).stat().st_size > 1000
    assert 'src="roc.png"' in (tmp_path / "ev" / "report.html").read_text()


def test_bad_inputs_give_clear_errors(tmp_path, tiny_bundle):
    (tmp_path / "empty").mkdir()
    r = _run(["trainer.cli", "fit", "--train", str(tmp_path / "empty"), "--out", str(tmp_path / "b")])
    assert r.returncode == 2 and "empty: folder holds no images" in r.stderr
    write_pngs(tmp_path / "ok", stripes(6))
    r = _run(["trainer.cli", "fit", "--train", str(tmp_path / "ok"), "--out", str(tmp_path / "b"),
              "--weights", str(tmp_path / "missing.weights.h5")])
    assert r.returncode == 2 and "missing.weights.h5: backbone weights file not found" in r.stderr
    assert not (tmp_path / "b").exists()
    (tmp_path / "junk.png").write_bytes(b"junk")
    r = _run(["device.cli", "score", "--bundle", str(tiny_bundle), str(tmp_path / "junk.png")])
    assert r.returncode == 1 and "junk.png\tERROR" in r.stdout and "cannot decode" in r.stdout
    r = _run(["device.cli", "score", "--bundle", str(tmp_path / "nobundle"), str(tmp_path / "junk.png")])
    assert r.returncode == 2 and "nobundle: bundle directory not found" in r.stderr


@pytest.mark.skipif(not WEIGHTS_035.is_file(), reason=f"ImageNet weights not found at {WEIGHTS_035}")
def test_int8_features_close_to_float_with_real_weights():
    """Stated tolerance: mean cosine >= 0.95 between int8 and float features (real weights, real-ish images)."""
    from device.extractor import TFLiteExtractor, normalize_features
    from models.backbone import build_extractor
    from trainer.convert import convert
    from trainer.data import _texture, random_crops

    model, _ = build_extractor(0.35, (96, 96), str(WEIGHTS_035), "out", "max")
    x, _ = random_crops([_texture("brick"), _texture("grass"), _texture("gravel")], (96, 96), 80, seed=0)
    f8 = normalize_features(TFLiteExtractor(convert(model, x[:60], "int8"))(x[60:]), "l2")
    ff = normalize_features(TFLiteExtractor(convert(model, None, "float"))(x[60:]), "l2")
    kf = normalize_features(model.predict(x[60:].astype(np.float32), verbose=0), "l2")
    cos = (f8 * ff).sum(1)
    assert cos.mean() >= 0.95 and cos.min() >= 0.85
    assert (ff * kf).sum(1).min() > 0.9999   # float TFLite == Keras


def test_default_fit_searches_explains_and_reports(tiny_layout, tmp_path):
    """``fit --data`` with nothing else searches (a tiny search: 32-px inputs pinned to keep it cheap),
    records the candidate table and why the shipped one won, and writes the report next to the bundle."""
    out = tmp_path / "b"
    args = ["trainer.cli", "fit", "--data", str(tiny_layout), "--out", str(out), "--weights", "random", "--size", "32",
            "--time-budget", "300", "--json"]
    r = _run(args)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert s["mode"] == "search" and s["reason"] and s["latency_ms"] > 0 and s["pi4_ms_estimate"] > 0
    from device.bundle import load_bundle

    m = load_bundle(out).manifest
    sel = m.backbone["selection"]
    assert sel["mode"] == "search" and len(sel["candidates"]) >= 4 and sel["chosen"].startswith("a0.35-32-")
    assert {"name", "val_auroc", "x86_ms", "pi4_ms"} <= set(sel["candidates"][0])
    assert len(sel["defect_kinds"]) == 12 and sel["doc"]["measured"] is False   # patch winner, or 8 held out < 10
    assert "quantisation" not in sel and m.quantization["auto_choice"]
    rep = tmp_path / "b-report"
    html = (rep / "report.html").read_text()
    for part in ("Candidates", "Decisions", "input normalisation", "validation_roc.png", "synthetic_defects.png",
                 "worst/"):
        assert part in html, part
    assert (rep / "synthetic_defects.png").stat().st_size > 1000
    again = _run(args)                                            # the bundle exists: --force is needed
    assert again.returncode == 2 and "pass --force" in again.stderr


def test_too_few_images_for_the_search_name_the_minimum(tmp_path):
    write_pngs(tmp_path / "few", stripes(6))
    r = _run(["trainer.cli", "fit", "--train", str(tmp_path / "few"), "--out", str(tmp_path / "b"),
              "--weights", "random"])
    assert r.returncode == 2 and "6 normal images found" in r.stderr and "at least 20" in r.stderr
    assert "--no-search" in r.stderr and "Traceback" not in r.stderr


def test_tile_grid_without_working_size_names_the_flag(tmp_path):
    r = _run(["trainer.cli", "fit", "--train", str(tmp_path), "--out", str(tmp_path / "b"), "--grid", "4x4"])
    assert r.returncode == 2 and "--working-size" in r.stderr and "Traceback" not in r.stderr


@needs_tf
def test_fit_data_takes_a_folder_of_good_images_only(tmp_path):
    """What ``anomaly-device capture`` writes (``train/good`` and nothing else) is enough for ``fit --data``;
    ``--select-on-real`` there, or a plain image folder, is refused with the folder named and the fix."""
    from trainer.cli import main

    root = tmp_path / "captured"
    write_pngs(root / "train" / "good", stripes(30, seed=11))
    out = tmp_path / "b"
    assert main(["fit", "--data", str(root), "--out", str(out), "--size", "32", "--weights", "random", "--no-doc",
                 "--taps", "out", "--pooling", "max", "--k", "1", "--scoring", "knn", "--grid", "none"]) == 0
    assert (out / "manifest.json").is_file()
    real = _run(["trainer.cli", "fit", "--data", str(root), "--out", str(tmp_path / "c"), "--weights", "random",
                 "--size", "32", "--select-on-real"])
    assert real.returncode != 0 and f"{root / 'test'}" in real.stderr and "--select-on-real" in real.stderr
    assert "Traceback" not in real.stderr
    plain = _run(["trainer.cli", "fit", "--data", str(root / "train" / "good"), "--out", str(tmp_path / "d"),
                  "--weights", "random", "--size", "32"])
    assert plain.returncode != 0 and "--train" in plain.stderr and "Traceback" not in plain.stderr
