"""Bundle round trip and every tamper case (no TensorFlow needed)."""
import json
import shutil

import numpy as np
import pytest

from device.bundle import MANIFEST, SCHEMA_VERSION, load_bundle, npy_bytes, write_bundle
from device.errors import BundleError
from device.preprocess import InputSpec


def _manifest(dim=8, size=(32, 32)):
    return {"input": InputSpec(size=size, pixel_scale=1.0, pixel_offset=0.0).to_dict(),
            "extractor": {"file": "extractor.tflite", "quantization": "int8", "feature_normalize": "l2",
                          "input_shape": [*size, 3], "output_dim": dim},
            "backbone": {"name": "MobileNetV2", "weights": "random"},
            "scoring": {"method": "knn", "k": 1},
            "threshold": {"value": 0.5, "target_frr": 0.01}}


@pytest.fixture
def bundle(tmp_path):
    bank = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    return write_bundle(tmp_path / "b", _manifest(), {"extractor.tflite": b"not-a-real-model" * 10,
                                                     "bank.npy": npy_bytes(bank),
                                                     "calibration_scores.npy": npy_bytes(np.arange(5, dtype=np.float32))})


def test_round_trip(bundle):
    b = load_bundle(bundle)
    assert b.bank.shape == (10, 8) and b.bank.dtype == np.float32
    assert b.threshold == 0.5 and b.k == 1
    assert b.input_spec == InputSpec(size=(32, 32), pixel_scale=1.0, pixel_offset=0.0)
    m = json.loads((bundle / MANIFEST).read_text())
    assert m["schema_version"] == SCHEMA_VERSION
    assert set(m["files"]) == {"extractor.tflite", "bank.npy", "calibration_scores.npy"}
    assert all(len(v["sha256"]) == 64 for v in m["files"].values())


def test_rewrite_replaces_atomically_and_leaves_no_temp(bundle):
    bank = np.ones((3, 8), np.float32)
    write_bundle(bundle, _manifest(), {"extractor.tflite": b"x" * 20, "bank.npy": npy_bytes(bank)})
    assert load_bundle(bundle).bank.shape == (3, 8)
    assert [p.name for p in bundle.parent.iterdir()] == [bundle.name]


def test_failed_write_leaves_old_bundle(bundle):
    with pytest.raises(BundleError, match="missing required entries"):
        write_bundle(bundle, _manifest(), {"extractor.tflite": b"x"})
    with pytest.raises(TypeError):
        write_bundle(bundle, {**_manifest(), "bad": object()}, {"extractor.tflite": b"x",
                                                               "bank.npy": npy_bytes(np.ones((2, 8), np.float32))})
    assert load_bundle(bundle).bank.shape == (10, 8)
    assert [p.name for p in bundle.parent.iterdir()] == [bundle.name]


def _edit_manifest(bundle, fn):
    m = json.loads((bundle / MANIFEST).read_text())
    fn(m)
    (bundle / MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("tamper, message", [
    (lambda b: (b / "bank.npy").write_bytes((b / "bank.npy").read_bytes()[:-8]), r"bank\.npy: size 440 bytes, manifest says 448 \(truncated"),
    (lambda b: (b / "extractor.tflite").write_bytes(b"X" + (b / "extractor.tflite").read_bytes()[1:]),
     r"extractor\.tflite: sha256 .* does not match"),
    (lambda b: (b / "calibration_scores.npy").unlink(), r"calibration_scores\.npy: listed in the manifest but missing"),
    (lambda b: (b / MANIFEST).unlink(), r"manifest missing"),
    (lambda b: (b / MANIFEST).write_text("{not json"), r"not valid JSON"),
    (lambda b: _edit_manifest(b, lambda m: m.update(schema="other")), r"schema is 'other'"),
    (lambda b: _edit_manifest(b, lambda m: m.update(schema_version=SCHEMA_VERSION + 1)), r"newer than this runtime"),
    (lambda b: _edit_manifest(b, lambda m: m.pop("threshold")), r"missing keys \['threshold'\]"),
    (lambda b: _edit_manifest(b, lambda m: m["files"].pop("bank.npy")), r"required entry 'bank\.npy' not listed"),
    (lambda b: _edit_manifest(b, lambda m: m["extractor"].update(output_dim=9)), r"feature dimension 8 does not match"),
    (lambda b: _edit_manifest(b, lambda m: m["input"].update(size=[64, 64])), r"input_shape .* does not match"),
    (lambda b: _edit_manifest(b, lambda m: m["input"].update(colour="rgb")), r"unknown keys \['colour'\]"),
    (lambda b: _edit_manifest(b, lambda m: m["scoring"].update(k=11)), r"scoring\.k=11"),
    (lambda b: _edit_manifest(b, lambda m: m["threshold"].update(value="high")), r"threshold\.value"),
    (lambda b: shutil.rmtree(b), r"bundle directory not found"),
])
def test_tampered_bundle_is_refused(bundle, tamper, message):
    tamper(bundle)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_bank_replaced_by_valid_npy_of_other_content_is_refused(bundle):
    (bundle / "bank.npy").write_bytes(npy_bytes(np.zeros((10, 8), np.float32)))
    with pytest.raises(BundleError, match="bank.npy"):
        load_bundle(bundle)


def test_threshold_override(bundle):
    b = load_bundle(bundle)
    assert b.threshold_for() == (0.5, "bundle")
    assert b.threshold_for(threshold=0.7) == (0.7, "config:threshold")
    value, source = b.threshold_for(target_frr=0.2)   # calibration scores 0..4: one of five may be rejected
    assert value == 3.0 and source.startswith("config:target_frr")
    with pytest.raises(ValueError):
        b.threshold_for(threshold=1.0, target_frr=0.1)
