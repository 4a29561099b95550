"""The model bundle: one verified directory joining trainer and device.

Layout (schema version 1)::

    bundle/
      manifest.json          schema, input spec, extractor, backbone, scoring, threshold,
                             training summary, sha256 + size of every file below
      extractor.tflite       the feature extractor the device runs
      bank.npy               (N, D) float32 normal features computed with that .tflite
      calibration_scores.npy held-out normal scores the threshold was chosen from
      ...                    optional entries (audit models, tile grid) listed in ``files``

:func:`write_bundle` writes into a temporary sibling directory and renames it into
place, so a crash never leaves a half-written bundle. :func:`load_bundle` verifies
the schema, every hash and size, and the consistency of bank, model and input spec,
and names the file and the problem when anything is off.

Example:
    >>> b = load_bundle("bundle/")          # doctest: +SKIP
    >>> b.threshold, b.bank.shape           # doctest: +SKIP
    (0.41, (1000, 1280))
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from device.errors import BundleError
from device.preprocess import InputSpec

log = logging.getLogger(__name__)

SCHEMA = "anomaly-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("schema", "schema_version", "input", "extractor", "backbone", "scoring", "threshold", "files")
REQUIRED_FILES = ("extractor.tflite", "bank.npy")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bundle_digest(path: str | Path) -> str:
    """A bundle's digest: sha256 of its ``manifest.json`` bytes, which list the sha256 of every
    file, so the digest pins the whole bundle (shown by ``verify``, ``status``, the journal)."""
    mpath = Path(path) / MANIFEST
    try:
        return sha256_bytes(mpath.read_bytes())
    except OSError as exc:
        raise BundleError(f"{mpath}: cannot read ({exc.strerror or exc})") from exc


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@dataclasses.dataclass
class Bundle:
    """A loaded, verified bundle."""

    path: Path
    manifest: dict[str, Any]
    input_spec: InputSpec
    extractor_bytes: bytes
    bank: np.ndarray
    calibration_scores: np.ndarray | None
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"]["value"])

    @property
    def k(self) -> int:
        return int(self.manifest["scoring"]["k"])

    @property
    def scoring_method(self) -> str:
        return self.manifest["scoring"].get("method", "knn")

    @property
    def tile_index(self) -> np.ndarray | None:
        """Per-position banks: tile position of each bank row (None: one shared bank)."""
        return self.arrays.get("bank_tile_index.npy")

    @property
    def patches_per_tile(self) -> int:
        """Patch descriptors per tile: h*w for a patch extractor, 1 for pooled features."""
        p = self.manifest["extractor"].get("patches")
        return int(p["grid"][0]) * int(p["grid"][1]) if p else 1

    @property
    def feature_normalize(self) -> str:
        return self.manifest["extractor"].get("feature_normalize", "none")

    def file_path(self, name: str) -> Path:
        """Path of an entry listed in the manifest (optional entries included)."""
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.path / MANIFEST}: no entry {name!r} in 'files' "
                              f"(has {sorted(self.manifest['files'])})")
        return self.path / name

    def threshold_for(self, threshold: float | None = None, target_frr: float | None = None) -> tuple[float, str]:
        """Deployment threshold: an explicit value, a false-reject target read against the
        bundle's calibration scores, or the bundle's own. Returns ``(value, source)``."""
        if threshold is not None and target_frr is not None:
            raise ValueError("give either a threshold or a target false-reject rate, not both")
        if threshold is not None:
            return float(threshold), "config:threshold"
        if target_frr is not None:
            if self.calibration_scores is None:
                raise BundleError(f"{self.path}: no calibration_scores.npy, cannot apply target_frr={target_frr}")
            from device.threshold import calibrate_threshold

            return calibrate_threshold(self.calibration_scores, target_frr), f"config:target_frr={target_frr}"
        return self.threshold, "bundle"


def write_bundle(dest: str | Path, manifest: Mapping[str, Any], files: Mapping[str, bytes | Path]) -> Path:
    """Write a bundle atomically (temporary directory, then rename).

    Args:
        dest: bundle directory; an existing one is replaced only once the new one is complete.
        manifest: everything but ``schema``, ``schema_version``, ``created`` and ``files``
            (filled in here).
        files: entry name -> bytes or a path to copy.
    """
    dest = Path(dest)
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise BundleError(f"cannot write bundle {dest}: missing required entries {missing}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        entries = {}
        for name, content in files.items():
            if "/" in name or name.startswith(".") or name == MANIFEST:
                raise BundleError(f"bad bundle entry name {name!r}")
            data = content if isinstance(content, (bytes, bytearray)) else Path(content).read_bytes()
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            entries[name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        full = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **dict(manifest),
                "files": entries}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(full, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.rename(dest, old)
        os.rename(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s (%s)", dest, ", ".join(sorted(entries)))
    return dest


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Parse and schema-check ``manifest.json`` (no file hashes)."""
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"{path}: bundle directory not found")
    if not mpath.is_file():
        raise BundleError(f"{mpath}: manifest missing; is {path} a model bundle?")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath}: expected a JSON object, found {type(manifest).__name__}")
    if manifest.get("schema") != SCHEMA:
        raise BundleError(f"{mpath}: schema is {manifest.get('schema')!r}, expected {SCHEMA!r}")
    ver = manifest.get("schema_version")
    if not isinstance(ver, int) or ver < 1:
        raise BundleError(f"{mpath}: schema_version {ver!r} is not a positive integer")
    if ver > SCHEMA_VERSION:
        raise BundleError(f"{mpath}: schema_version {ver} is newer than this runtime supports "
                          f"({SCHEMA_VERSION}); update the device software")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{mpath}: missing keys {missing}")
    return manifest


def verify_files(path: Path, manifest: Mapping[str, Any]) -> dict[str, bytes]:
    """Check size and sha256 of every listed file; returns their contents."""
    files = manifest["files"]
    if not isinstance(files, dict):
        raise BundleError(f"{path / MANIFEST}: 'files' must be an object of name -> {{sha256, bytes}}")
    for req in REQUIRED_FILES:
        if req not in files:
            raise BundleError(f"{path / MANIFEST}: required entry {req!r} not listed in 'files'")
    contents = {}
    for name, meta in files.items():
        fpath = path / name
        if "/" in name or not fpath.is_file():
            raise BundleError(f"{fpath}: listed in the manifest but missing")
        data = fpath.read_bytes()
        if len(data) != meta.get("bytes"):
            raise BundleError(f"{fpath}: size {len(data)} bytes, manifest says {meta.get('bytes')} "
                              f"(truncated or replaced)")
        digest = sha256_bytes(data)
        if digest != meta.get("sha256"):
            raise BundleError(f"{fpath}: sha256 {digest[:16]}… does not match the manifest's "
                              f"{str(meta.get('sha256'))[:16]}… (file was modified)")
        contents[name] = data
    return contents


def _load_npy(data: bytes, name: Path) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{name}: not a valid .npy array ({exc})") from exc


def load_bundle(path: str | Path) -> Bundle:
    """Load and verify a bundle; raises :class:`BundleError` naming the file and the problem."""
    path = Path(path)
    manifest = read_manifest(path)
    contents = verify_files(path, manifest)
    mpath = path / MANIFEST
    try:
        spec = InputSpec.from_dict(manifest["input"])
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{mpath}: bad 'input' spec: {exc}") from exc
    bank = _load_npy(contents["bank.npy"], path / "bank.npy")
    ext = manifest["extractor"]
    if bank.ndim != 2 or bank.dtype != np.float32:
        raise BundleError(f"{path / 'bank.npy'}: expected a 2-D float32 array, found {bank.dtype} {bank.shape}")
    patches = ext.get("patches")
    if patches is not None:   # patch extractor: output (h, w, C) per tile, bank rows are C-dim patches
        try:
            ph, pw, pdim = int(patches["grid"][0]), int(patches["grid"][1]), int(patches["dim"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BundleError(f"{mpath}: extractor.patches must be {{'grid': [h, w], 'dim': C}}, "
                              f"found {patches!r}") from exc
        if ph * pw * pdim != ext.get("output_dim"):
            raise BundleError(f"{mpath}: extractor.patches {ph}x{pw}x{pdim} does not match the "
                              f"extractor's output_dim {ext.get('output_dim')}")
        if bank.shape[1] != pdim:
            raise BundleError(f"{path / 'bank.npy'}: patch dimension {bank.shape[1]} does not match "
                              f"extractor.patches dim {pdim}")
    elif bank.shape[1] != ext.get("output_dim"):
        raise BundleError(f"{path / 'bank.npy'}: feature dimension {bank.shape[1]} does not match the "
                          f"extractor's output_dim {ext.get('output_dim')}")
    if list(ext.get("input_shape", [])) != [*spec.size, 3]:
        raise BundleError(f"{mpath}: extractor input_shape {ext.get('input_shape')} does not match "
                          f"input size {list(spec.size)} x 3")
    k = manifest["scoring"].get("k")
    if not isinstance(k, int) or not 1 <= k <= bank.shape[0]:
        raise BundleError(f"{mpath}: scoring.k={k!r} must be an integer in 1..{bank.shape[0]} (bank size)")
    thr = manifest["threshold"].get("value")
    if not isinstance(thr, (int, float)):
        raise BundleError(f"{mpath}: threshold.value {thr!r} is not a number")
    cal = None
    if "calibration_scores.npy" in contents:
        cal = _load_npy(contents["calibration_scores.npy"], path / "calibration_scores.npy")
    arrays = {}
    if "bank_tile_index.npy" in contents:
        idx = _load_npy(contents["bank_tile_index.npy"], path / "bank_tile_index.npy")
        n_tiles = len(spec.tile_boxes())
        if idx.shape != (bank.shape[0],) or idx.min() < 0 or idx.max() >= n_tiles:
            raise BundleError(f"{path / 'bank_tile_index.npy'}: expected {bank.shape[0]} tile positions in "
                              f"0..{n_tiles - 1}, found shape {idx.shape}")
        missing = sorted(set(range(n_tiles)) - set(idx.tolist()))
        if missing:
            raise BundleError(f"{path / 'bank_tile_index.npy'}: no bank features for tile positions {missing}")
        arrays["bank_tile_index.npy"] = idx
    return Bundle(path=path, manifest=manifest, input_spec=spec, extractor_bytes=contents["extractor.tflite"],
                  bank=bank, calibration_scores=cal, arrays=arrays)
