"""Ways to break a bundle in place, as a careless tool or a hostile tester would (shared by tests).

``rehash`` replaces a file *and* its manifest hash and size, so the bundle is consistent and only
the typed checks can refuse it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from device.bundle import MANIFEST, npy_bytes


def edit_manifest(bundle: Path, fn) -> None:
    m = json.loads((bundle / MANIFEST).read_text())
    fn(m)
    (bundle / MANIFEST).write_text(json.dumps(m))


def rehash(bundle: Path, name: str, data: bytes) -> None:
    (bundle / name).write_bytes(data)
    edit_manifest(bundle, lambda m: m["files"].__setitem__(
        name, {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}))


def npy_header_only(shape, descr: str = "<f4") -> bytes:
    """A .npy header declaring ``shape`` followed by only 64 bytes of data."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    header += " " * (118 - len(header)) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 64


def nan_bank(bundle: Path) -> None:
    bank = np.load(bundle / "bank.npy")
    bank[0, 0] = np.nan
    rehash(bundle, "bank.npy", npy_bytes(bank))


def set_threshold_text(bundle: Path, literal: str) -> None:
    text = (bundle / MANIFEST).read_text()
    m = json.loads(text)
    m["threshold"]["value"] = "@@"
    (bundle / MANIFEST).write_text(json.dumps(m).replace('"@@"', literal))


#: name -> (how to break a bundle in place, what the refusal must mention)
BAD_BUNDLES = {
    "nan_threshold": (lambda b: set_threshold_text(b, "NaN"), "NaN is not a valid JSON number"),
    "negative_threshold": (lambda b: set_threshold_text(b, "-0.5"), "threshold.value: expected >= 0"),
    "threshold_list": (lambda b: edit_manifest(b, lambda m: m.update(threshold=[0.5])), "threshold: expected"),
    "extractor_list": (lambda b: edit_manifest(b, lambda m: m.update(extractor=[1])), "extractor: expected"),
    "files_entry_null": (lambda b: edit_manifest(b, lambda m: m["files"].update({"bank.npy": None})),
                         "files.bank.npy"),
    "nan_bank_rehashed": (nan_bank, "bank.npy: 1 value(s) are NaN"),
    "forged_npy_header": (lambda b: rehash(b, "bank.npy", npy_header_only((10 ** 12, 1280))), "header declares"),
    "calibration_2d": (lambda b: rehash(b, "calibration_scores.npy", npy_bytes(np.ones((3, 4), np.float32))),
                       "calibration_scores.npy: expected a non-empty 1-D"),
    "random_tflite": (lambda b: rehash(b, "extractor.tflite", np.random.default_rng(0).bytes(4096)),
                      "extractor.tflite: not a loadable TFLite model"),
    "empty_tflite": (lambda b: rehash(b, "extractor.tflite", b""), "extractor.tflite: not a loadable TFLite model"),
    "truncated_tflite": (lambda b: (b / "extractor.tflite").write_bytes((b / "extractor.tflite").read_bytes()[:999]),
                         "extractor.tflite: size 999 bytes"),
}
