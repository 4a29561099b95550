"""Bundles written before the typed manifest (schema version 1) still load and score identically.

``tests/data/manifest_v1_*.json`` are manifests exactly as the trainer wrote them before the
change (a whole-frame DOC bundle and a tiled patch/Gaussian bundle). The test rebuilds their
binary entries (those cannot be committed), re-hashes the ``files`` section and loads the
result with today's code: every key of the old schema must be accepted, and the scores must
equal an independent computation of the declared scoring rule from the same ``.tflite`` and bank.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_tf, stripes

pytestmark = pytest.mark.slow   # trains or converts networks

DATA = Path(__file__).parent / "data"


def _v1_bundle(dest: Path, manifest_name: str) -> tuple[Path, dict]:
    """Write a version-1 bundle: the old manifest with fresh entries (a real tiny extractor, a bank of
    its features, calibration scores) and their hashes."""
    from device.extractor import TFLiteExtractor, normalize_features
    from device.manifest import InputSpec
    from device.preprocess import preprocess
    from models.backbone import build_extractor
    from trainer.convert import convert

    m = json.loads((DATA / manifest_name).read_text())
    assert m["schema_version"] == 1
    spec = InputSpec.from_dict(m["input"])
    b = m["backbone"]
    model, _ = build_extractor(b["alpha"], tuple(spec.size), "random", b["taps"], b["pooling"])
    imgs = stripes(12, 64, seed=7)
    batch = np.concatenate([preprocess(im, spec) for im in imgs])
    blob = convert(model, None, "float")
    ext = TFLiteExtractor(blob)
    p = m["extractor"].get("patches")
    rows = ext(batch).reshape(len(batch) * (p["grid"][0] * p["grid"][1] if p else 1), -1)
    bank = normalize_features(rows, m["extractor"]["feature_normalize"]).astype(np.float32)
    files = {"extractor.tflite": blob, "bank.npy": _npy(bank),
             "calibration_scores.npy": _npy(np.linspace(0.1, 0.5, 12).astype(np.float32))}
    m["extractor"].update(quantization="float", **ext.describe())
    m["files"] = {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in files.items()}
    dest.mkdir()
    for n, d in files.items():
        (dest / n).write_bytes(d)
    (dest / "manifest.json").write_text(json.dumps(m, indent=2))
    return dest, {"bank": bank, "ext": ext, "spec": spec, "manifest": m}


def _npy(a) -> bytes:
    from device.bundle import npy_bytes

    return npy_bytes(a)


@needs_tf
@pytest.mark.parametrize("name", ["manifest_v1_fit.json", "manifest_v1_tiled_patch.json"])
def test_version_1_bundle_loads_and_scores_as_declared(tmp_path, name):
    from device.bundle import load_bundle
    from device.detector import Detector
    from device.extractor import normalize_features
    from device.preprocess import preprocess
    from device.scoring import make_scorer

    path, ref = _v1_bundle(tmp_path / "v1", name)
    b = load_bundle(path)
    m = ref["manifest"]
    assert b.manifest.migrated_from == 1 and b.threshold.value == m["threshold"]["value"]
    assert b.manifest.backbone == m["backbone"] and b.manifest.training == m["training"]
    det = Detector(b)
    frames = stripes(3, 64, seed=99)
    p = m["extractor"].get("patches")
    per_tile = p["grid"][0] * p["grid"][1] if p else 1
    scorer = make_scorer(m["scoring"]["method"], ref["bank"], m["scoring"]["k"])
    for f in frames:          # the declared rule, computed independently: worst patch of the worst tile
        rows = ref["ext"](preprocess(f, ref["spec"])).reshape(-1, ref["bank"].shape[1])
        want = scorer.score(normalize_features(rows, m["extractor"]["feature_normalize"]))
        want = want.reshape(-1, per_tile).max(axis=1).max()
        assert det.inspect(f).score == pytest.approx(float(want), rel=1e-6, abs=1e-6)
