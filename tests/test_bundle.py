"""Bundle round trip, every tamper case, and every value that could fail open (no TensorFlow needed).

A "re-hashed" tamper edits a file *and* the manifest's hash of it, as a careless tool or a
hostile tester would: the hashes then match, and only the typed checks stand between the
bad value and a decision.
"""
import hashlib
import json
import os
import shutil
import stat

import numpy as np
import pytest

from device.bundle import MANIFEST, SCHEMA_VERSION, bundle_digest, load_bundle, npy_bytes, write_bundle
from device.errors import BundleError
from device.manifest import InputSpec, Manifest


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
    assert b.threshold.value == 0.5 and b.threshold.source == "bundle" and b.k == 1
    assert b.input_spec == InputSpec(size=(32, 32), pixel_scale=1.0, pixel_offset=0.0)
    m = json.loads((bundle / MANIFEST).read_text())
    assert m["schema_version"] == SCHEMA_VERSION
    assert set(m["files"]) == {"extractor.tflite", "bank.npy", "calibration_scores.npy"}
    assert all(len(v["sha256"]) == 64 for v in m["files"].values())
    assert b.digest == hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest() == bundle_digest(bundle)
    assert not b.bank.flags.writeable          # a view over the verified bytes


def test_written_world_readable_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        b = write_bundle(tmp_path / "b", _manifest(), {"extractor.tflite": b"x" * 20,
                                                      "bank.npy": npy_bytes(np.ones((3, 8), np.float32))})
    finally:
        os.umask(old)
    assert stat.S_IMODE(b.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in b.iterdir()} == {0o644}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_unreadable_bundle_names_the_file(bundle):
    import tempfile

    shared = tempfile.mkdtemp(prefix="bundle-perm-")       # traversable by 'nobody' (pytest's tmp is 0700)
    os.chmod(shared, 0o755)
    bundle = shutil.move(str(bundle), os.path.join(shared, "b"))
    os.chmod(os.path.join(bundle, "bank.npy"), 0o600)
    pid = os.fork()
    if pid == 0:      # child: become 'nobody' and try to load
        try:
            os.setgid(65534)
            os.setuid(65534)
            load_bundle(bundle)
            os._exit(3)
        except BundleError as exc:
            os._exit(0 if "bank.npy: permission denied" in str(exc) else 4)
        except BaseException as exc:
            os.write(2, repr(exc).encode())
            os._exit(5)
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(shared)
    assert os.waitstatus_to_exitcode(status) == 0


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
    with pytest.raises(BundleError, match="threshold.value: expected a finite number"):
        write_bundle(bundle, {**_manifest(), "threshold": {"value": float("nan")}},
                     {"extractor.tflite": b"x", "bank.npy": npy_bytes(np.ones((2, 8), np.float32))})
    assert load_bundle(bundle).bank.shape == (10, 8)
    assert [p.name for p in bundle.parent.iterdir()] == [bundle.name]


def _edit_manifest(bundle, fn):
    m = json.loads((bundle / MANIFEST).read_text())
    fn(m)
    (bundle / MANIFEST).write_text(json.dumps(m))


def _rehash(bundle, name, data: bytes):
    """Replace ``name`` and its manifest hash and size (a consistent but bad bundle)."""
    (bundle / name).write_bytes(data)
    _edit_manifest(bundle, lambda m: m["files"].__setitem__(
        name, {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}))


def _bank_with(value):
    bank = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    bank[3, 2] = value
    return npy_bytes(bank)


def _npy_header_shape(shape) -> bytes:
    """A valid .npy header declaring ``shape`` float32, followed by 64 bytes of data."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (118 - len(header)) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 64


@pytest.mark.parametrize("tamper, message", [
    (lambda b: (b / "bank.npy").write_bytes((b / "bank.npy").read_bytes()[:-8]), r"bank\.npy: size 440 bytes, manifest says 448 \(truncated"),
    (lambda b: (b / "extractor.tflite").write_bytes(b"X" + (b / "extractor.tflite").read_bytes()[1:]),
     r"extractor\.tflite: sha256 .* does not match"),
    (lambda b: (b / "calibration_scores.npy").unlink(), r"calibration_scores\.npy: missing"),
    (lambda b: (b / MANIFEST).unlink(), r"manifest missing"),
    (lambda b: (b / MANIFEST).write_text("{not json"), r"not valid JSON"),
    (lambda b: _edit_manifest(b, lambda m: m.update(schema="other")), r"schema is 'other'"),
    (lambda b: _edit_manifest(b, lambda m: m.update(schema_version=SCHEMA_VERSION + 1)), r"newer than this runtime"),
    (lambda b: _edit_manifest(b, lambda m: m.update(schema_version=True)), r"schema_version must be a positive integer"),
    (lambda b: _edit_manifest(b, lambda m: m.pop("threshold")), r"threshold: required key missing"),
    (lambda b: _edit_manifest(b, lambda m: m["files"].pop("bank.npy")), r"required entries \['bank\.npy'\]"),
    (lambda b: _edit_manifest(b, lambda m: m["extractor"].update(output_dim=9)), r"feature dimension 8 does not match"),
    (lambda b: _edit_manifest(b, lambda m: m["input"].update(size=[64, 64])), r"input_shape .* does not match"),
    (lambda b: _edit_manifest(b, lambda m: m["input"].update(colour="rgb")), r"input\.colour: unknown key"),
    (lambda b: _edit_manifest(b, lambda m: m.update(input={})), r"input.size .* is required"),
    (lambda b: _edit_manifest(b, lambda m: m["scoring"].update(k=11)), r"scoring\.k=11 needs at least 11 bank rows"),
    (lambda b: _edit_manifest(b, lambda m: m["scoring"].update(k=True)), r"scoring\.k: expected a valid integer"),
    (lambda b: _edit_manifest(b, lambda m: m["scoring"].update(method="cosine")), r"scoring\.method: expected 'knn'"),
    (lambda b: _edit_manifest(b, lambda m: m["extractor"].update(feature_normalize="l1")),
     r"extractor\.feature_normalize"),
    (lambda b: _edit_manifest(b, lambda m: m["threshold"].update(value="high")), r"threshold\.value: expected a valid number"),
    (lambda b: _edit_manifest(b, lambda m: m["threshold"].update(value=-0.1)), r"threshold\.value: expected >= 0"),
    (lambda b: (b / MANIFEST).write_text((b / MANIFEST).read_text().replace('"value": 0.5', '"value": 1e400')),
     r"threshold\.value: expected a finite number"),
    (lambda b: (b / MANIFEST).write_text((b / MANIFEST).read_text().replace('"value": 0.5', '"value": NaN')),
     r"NaN is not a valid JSON number"),
    (lambda b: _edit_manifest(b, lambda m: m.update(threshold=[0.5])), r"threshold: expected a valid dictionary"),
    (lambda b: _edit_manifest(b, lambda m: m.update(extractor=[1])), r"extractor: expected a valid dictionary"),
    (lambda b: _edit_manifest(b, lambda m: m.update(scoring="knn")), r"scoring: expected a valid dictionary"),
    (lambda b: _edit_manifest(b, lambda m: m["files"].update({"bank.npy": None})), r"files\.bank\.npy: expected"),
    (lambda b: _edit_manifest(b, lambda m: m["files"].update({"bank.npy": "abc"})), r"files\.bank\.npy: expected"),
    (lambda b: _edit_manifest(b, lambda m: m["files"].update({"/etc/passwd": m["files"]["bank.npy"]})),
     r"bad bundle entry name '/etc/passwd'"),
    (lambda b: _edit_manifest(b, lambda m: m["files"].update({"../x": m["files"]["bank.npy"]})), r"bad bundle entry name"),
    (lambda b: _rehash(b, "bank.npy", _bank_with(np.nan)), r"bank\.npy: 1 value\(s\) are NaN or infinite"),
    (lambda b: _rehash(b, "bank.npy", _bank_with(np.inf)), r"bank\.npy: 1 value\(s\) are NaN or infinite"),
    (lambda b: _rehash(b, "bank.npy", npy_bytes(np.ones((10, 8), np.float64))), r"bank\.npy: expected a non-empty 2-D float32"),
    (lambda b: _rehash(b, "bank.npy", _npy_header_shape((10 ** 12, 8))), r"bank\.npy: header declares shape"),
    (lambda b: _rehash(b, "calibration_scores.npy", npy_bytes(np.array([1.0, np.nan], np.float32))),
     r"calibration_scores\.npy: 1 value\(s\) are NaN"),
    (lambda b: _rehash(b, "calibration_scores.npy", npy_bytes(np.ones((2, 3), np.float32))),
     r"calibration_scores\.npy: expected a non-empty 1-D float array"),
    (lambda b: (b / "notes.txt").write_text("hi"), r"not listed in the manifest: notes\.txt"),
    (lambda b: shutil.rmtree(b), r"bundle directory not found"),
])
def test_tampered_bundle_is_refused(bundle, tamper, message):
    tamper(bundle)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_symlinked_entry_is_refused_even_when_the_hash_matches(bundle, tmp_path):
    outside = tmp_path / "outside.npy"
    shutil.move(bundle / "bank.npy", outside)
    os.symlink(outside, bundle / "bank.npy")
    with pytest.raises(BundleError, match=r"bank\.npy: is a symbolic link"):
        load_bundle(bundle)


def test_oversized_entry_is_refused_before_it_is_read(bundle, monkeypatch):
    with open(bundle / "extractor.tflite", "ab") as f:
        f.truncate(1 << 30)                      # 1 GiB, sparse: cheap to create, costly to read
    reads = []
    real_open = open

    def spy(path, mode="r", *a, **k):
        if str(path).endswith("extractor.tflite"):
            reads.append(path)
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(BundleError, match=r"extractor\.tflite: size 1073741824 bytes, manifest says 160"):
        load_bundle(bundle)
    assert reads == []


def test_bank_replaced_by_valid_npy_of_other_content_is_refused(bundle):
    (bundle / "bank.npy").write_bytes(npy_bytes(np.zeros((10, 8), np.float32)))
    with pytest.raises(BundleError, match="bank.npy"):
        load_bundle(bundle)


def test_threshold_override(bundle):
    b = load_bundle(bundle)
    assert (b.threshold_for().value, b.threshold_for().source) == (0.5, "bundle")
    t = b.threshold_for(threshold=0.7)
    assert (t.value, t.source) == (0.7, "config:threshold")
    # calibration scores 0..4, rate 0.2: the conformal order statistic is the j-th largest score with
    # j = floor(0.2 * (5 + 1)) = 1, the largest (expected rate of a new good part 1/6 <= 0.2)
    t = b.threshold_for(target_frr=0.2)
    assert t.value == 4.0 and t.source.startswith("config:target_frr")
    t = b.threshold_for(target_frr=0.4)      # j = floor(0.4 * 6) = 2: the second largest
    assert t.value == 3.0
    for bad in ({"threshold": 1.0, "target_frr": 0.1}, {"threshold": float("nan")}, {"threshold": float("inf")},
                {"threshold": -1.0}, {"target_frr": 1.5}, {"target_frr": float("nan")}, {"target_frr": -0.1}):
        with pytest.raises(BundleError):
            b.threshold_for(**bad)


def test_version_1_manifest_is_migrated(bundle):
    _edit_manifest(bundle, lambda m: m.update(schema_version=1))
    b = load_bundle(bundle)
    assert b.manifest.migrated_from == 1 and b.manifest.schema_version == SCHEMA_VERSION
    assert Manifest.from_dict(json.loads((bundle / MANIFEST).read_text())).threshold.value == 0.5


def test_manifest_of_current_fit_round_trips():
    """Every key the current trainer writes is part of the schema (no 'unknown key' on our own bundles)."""
    body = _manifest()
    body["scoring"].update(metric="euclidean", features="l2-normalised", image_score="single tile", bank_mode="shared",
                           bank_mode_measurement=None, bank_size=10, bank_source_images=10, bank_subsample="none")
    body["threshold"].update(method="held-out", n_calibration=5, achieved_frr=0.0, normal_score_median=0.1,
                             normal_score_max=0.5)
    body["extractor"].update(runtime_checked="ai_edge_litert", input_dtype="uint8",
                             input_quant={"scale": 1.0, "zero_point": 0}, output_quant={"scale": 0.0, "zero_point": 0})
    m = Manifest.model_validate({**body, "files": {}})
    assert Manifest.model_validate(m.to_dict()) == m
