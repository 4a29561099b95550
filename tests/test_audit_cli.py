"""``anomaly-device audit``: report, resumability and bad input (tiny images, few steps)."""
import json
import sys
import subprocess

import numpy as np
import pytest

from _audit_data import paste_defect, stripes, write_pngs

pytest.importorskip("tensorflow")

from device.cli import main  # noqa: E402

NKN_FAST = ["--mask", "4", "--context", "4", "--fit-steps", "3", "--fit-windows", "8"]


@pytest.fixture()
def dataset(tmp_path):
    """4 clean + 2 defective 16x16 textures, masks, labels, and 30 normal images."""
    normal = write_pngs(tmp_path / "normal", stripes(30, seed=1))
    clean = stripes(4, seed=2)
    bad, masks = zip(*[paste_defect(im, 4, 4, 5) for im in stripes(2, seed=3)])
    names = [f"ok{i}.png" for i in range(4)] + [f"ng{i}.png" for i in range(2)]
    write_pngs(tmp_path / "test", list(clean) + list(bad), names)
    write_pngs(tmp_path / "masks", [np.zeros((16, 16), np.uint8)] * 4 + [m * 255 for m in masks], names)
    (tmp_path / "labels.csv").write_text("image,label\n" + "".join(f"{n},{int(n.startswith('ng'))}\n" for n in names))
    return tmp_path


def _run(args, capsys):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_nkn_report_and_resume(dataset, capsys):
    out = dataset / "out"
    args = ["audit", "nkn", "--images", str(dataset / "test"), "--out", str(out), "--labels",
            str(dataset / "labels.csv"), "--masks", str(dataset / "masks"), *NKN_FAST]
    rc, stdout, stderr = _run(args, capsys)
    assert rc == 0, stderr
    assert "[6/6]" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["computed_now"] == 6 and summary["labelled"] == 6 and summary["masked_images"] == 6
    assert 0.0 <= summary["pixel_auroc[raw_map]"] <= 1.0
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0].startswith("image,score") and len(rows) == 7
    html = (out / "report.html").read_text()
    assert "panels/" in html and "http" not in html          # offline, relative links
    assert len(list((out / "panels").glob("*.png"))) == 6
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()}
    rc, stdout, _ = _run(args, capsys)
    assert rc == 0 and "computed_now\t0" in stdout and "reused\t6" in stdout
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()}


def test_interrupted_run_resumes_without_recomputing(dataset):
    from device.audit.runner import AuditJob, run_audit

    out = dataset / "out"
    opts = {"mask": 4, "context": 4, "fit_steps": 2}
    seen = []

    def stop_after_two(done, total, name, score, dt):
        seen.append(name)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_audit(AuditJob("nkn", [dataset / "test"], out, options=opts), progress=stop_after_two)
    first = list(seen)
    seen.clear()
    res = run_audit(AuditJob("nkn", [dataset / "test"], out, options=opts), progress=lambda *a: seen.append(a[2]))
    assert res.reused == 2 and res.computed == 4
    assert not set(first) & set(seen) and len(seen) == 4
    # other settings in the same folder are refused instead of mixed in
    from device.errors import ConfigError

    with pytest.raises(ConfigError, match="another audit run"):
        run_audit(AuditJob("nkn", [dataset / "test"], out, options={**opts, "mask": 2}))


@pytest.mark.slow
def test_projection_fits_on_normal_and_separates(dataset, capsys):
    out = dataset / "proj"
    rc, stdout, stderr = _run(["audit", "projection", "--images", str(dataset / "test"), "--normal",
                               str(dataset / "normal"), "--out", str(out), "--labels", str(dataset / "labels.csv"),
                               "--epochs", "25", "--latent", "16", "--steps", "20"], capsys)
    assert rc == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["image_auroc[score]"] == 1.0
    assert "threshold" in summary and (out / "model" / "projection.json").is_file()


@pytest.mark.slow
def test_bundle_round_trip_and_missing_model(dataset, capsys):
    from device.audit.bundled import add_audit_models, load_audit_model
    from device.audit.methods import fit_and_calibrate, prefix
    from device.bundle import npy_bytes, write_bundle
    from device.errors import BundleError
    from device.preprocess import InputSpec

    b = write_bundle(dataset / "bundle", {"input": InputSpec(size=(16, 16)).to_dict(),
                                          "extractor": {"output_dim": 2, "input_shape": [16, 16, 3],
                                                        "quantization": "int8", "feature_normalize": "l2"},
                                          "backbone": {}, "scoring": {"k": 1}, "threshold": {"value": 1.0}},
                     {"extractor.tflite": b"x", "bank.npy": npy_bytes(np.zeros((1, 2), np.float32))})
    rc, _, err = _run(["audit", "anogan", "--bundle", str(b), "--images", str(dataset / "test"),
                       "--out", str(dataset / "o1")], capsys)
    assert rc == 2 and "no audit model 'anogan'" in err and "manifest.json" in err
    x = np.stack([__import__("cv2").imread(str(p), 0) for p in sorted((dataset / "normal").iterdir())])
    det, thr = fit_and_calibrate("anogan", x, {"epochs": 2, "latent": 4, "filters": 4, "steps": 5})
    add_audit_models(b, {"anogan": {"params": det.params(), "files": det.to_files(prefix("anogan")),
                                    "threshold": thr}})
    loaded, entry = load_audit_model(b, "anogan")
    assert entry["threshold"]["value"] == thr["value"]
    np.testing.assert_allclose(loaded.anomaly_score(x[:3]).scores, det.anomaly_score(x[:3]).scores, rtol=1e-4)
    # a size that does not fit the bundled model
    rc, _, err = _run(["audit", "anogan", "--bundle", str(b), "--images", str(dataset / "test"),
                       "--out", str(dataset / "o2"), "--size", "32"], capsys)
    assert rc == 2 and "expects 16x16" in err
    # tampered weights are refused by the bundle's hashes, naming the file
    w = b / "audit_anogan_generator.weights.h5"
    w.write_bytes(w.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BundleError, match="audit_anogan_generator.weights.h5"):
        load_audit_model(b, "anogan")


def test_bad_inputs_name_the_file(dataset, capsys):
    empty = dataset / "empty"
    empty.mkdir()
    rc, _, err = _run(["audit", "nkn", "--images", str(empty), "--out", str(dataset / "o")], capsys)
    assert rc == 2 and str(empty) in err and "no images" in err

    odd = dataset / "odd"
    write_pngs(odd, [stripes(1, size=16)[0], stripes(1, size=24)[0]], ["a.png", "b.png"])
    rc, _, err = _run(["audit", "projection", "--images", str(odd), "--normal", str(dataset / "normal"),
                       "--out", str(dataset / "o3"), "--epochs", "1", "--steps", "1"], capsys)
    assert rc == 2 and "b.png" in err and "--size" in err

    wrong_mask = dataset / "wm"
    write_pngs(wrong_mask, [np.zeros((20, 20), np.uint8)], ["ng0.png"])
    rc, _, err = _run(["audit", "nkn", "--images", str(dataset / "test"), "--out", str(dataset / "o4"),
                       "--masks", str(wrong_mask), *NKN_FAST], capsys)
    assert rc == 2 and "ng0.png" in err and "mask is 20x20" in err

    rc, _, err = _run(["audit", "projection", "--images", str(dataset / "test"), "--out", str(dataset / "o5")],
                      capsys)
    assert rc == 2 and "--normal" in err

    rc, _, err = _run(["audit", "nkn", "--images", str(dataset / "test" / "ok0.png"), "--out", str(dataset / "o7"),
                       "--mask", "32"], capsys)
    assert rc == 2 and "ok0.png" in err and "smaller than" in err

    (dataset / "bad.csv").write_text("image,label\nok0.png,maybe\n")
    rc, _, err = _run(["audit", "nkn", "--images", str(dataset / "test"), "--out", str(dataset / "o6"),
                       "--labels", str(dataset / "bad.csv"), *NKN_FAST], capsys)
    assert rc == 2 and "bad.csv:2" in err


def test_audit_cli_does_not_import_tensorflow():
    code = ("import sys, device.cli; device.cli.build_parser(); import device.audit.cli, device.audit.runner; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_auroc_matches_pairwise_definition():
    from core.metrics import auroc, pixel_auroc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 1)           # ties included
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert auroc(y, s) == pytest.approx(pairwise)
    assert np.isnan(auroc([1, 1], [0.2, 0.3]))
    m = np.zeros((4, 4), np.uint8)
    m[1, 1] = 1
    assert pixel_auroc([m], [m.astype(float)]) == 1.0


@pytest.mark.slow
def test_train_audit_models_then_audit_from_bundle(dataset, capsys):
    from device.bundle import npy_bytes, write_bundle
    from device.preprocess import InputSpec
    from trainer.cli import main as train_main

    b = write_bundle(dataset / "bundle", {"input": InputSpec(size=(16, 16)).to_dict(),
                                          "extractor": {"output_dim": 2, "input_shape": [16, 16, 3],
                                                        "quantization": "int8", "feature_normalize": "l2"},
                                          "backbone": {}, "scoring": {"k": 1}, "threshold": {"value": 1.0}},
                     {"extractor.tflite": b"x", "bank.npy": npy_bytes(np.zeros((1, 2), np.float32))})
    rc = train_main(["audit-models", "--bundle", str(b), "--normal", str(dataset / "normal"),
                     "--methods", "projection", "--epochs", "2", "--latent", "4"])
    assert rc == 0
    manifest = json.loads((b / "manifest.json").read_text())
    assert set(manifest["audit"]) == {"projection"}
    assert "audit_projection_encoder.weights.h5" in manifest["files"]
    assert manifest["audit"]["projection"]["threshold"]["n_calibration"] == 6
    capsys.readouterr()
    rc, stdout, err = _run(["audit", "projection", "--bundle", str(b), "--images", str(dataset / "test"),
                            "--out", str(dataset / "ob")], capsys)
    assert rc == 0, err
    assert "threshold_source\tprojection: held-out normal images (6)" in stdout
