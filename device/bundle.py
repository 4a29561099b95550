"""The model bundle: one verified directory joining trainer and device.

Layout::

    bundle/
      manifest.json          typed manifest (:mod:`device.manifest`): schema, input spec, extractor,
                             scoring, threshold, records, and the sha256 + size of every file below
      extractor.tflite       the feature extractor the device runs
      bank.npy               (N, D) float32 normal features computed with that .tflite
      calibration_scores.npy normal scores the threshold was chosen from
      ...                    optional entries (tile index, PCA projection, calibration features,
                             audit models), each listed in ``files``

:func:`write_bundle` validates the manifest, writes into a temporary sibling directory and
renames it into place (0755 directory, 0644 files), so a crash never leaves a half-written
bundle and the service user can read it. :func:`load_bundle` refuses anything it cannot vouch
for, naming the file and the problem: a manifest that fails its schema, an unlisted or missing
file, a symlink, a size or hash mismatch (sizes are compared before anything is read), a ``.npy``
whose header does not match its size (no allocation from a forged header), a bank with NaN or
of the wrong width, ``k`` beyond the bank. The bytes it verified are the bytes used: arrays are
views over them and nothing is re-read from disk.

The bundle's **digest** is the sha256 of its ``manifest.json`` bytes, which hash every file:
it names a deployed version, and every decision records it.

Example:
    >>> b = load_bundle("bundle/")          # doctest: +SKIP
    >>> b.threshold.value, b.bank.shape, b.digest[:12]    # doctest: +SKIP
    (0.41, (1000, 1280), '3f2a9c0d1e7b')
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from core.decision import Threshold
from core.threshold import calibrate_threshold, check_rate
from device.errors import BundleError
from device.manifest import MANIFEST, REQUIRED_FILES, SCHEMA, SCHEMA_VERSION, InputSpec, Manifest, check_entry_name

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 16 << 20
#: .npy entries read as arrays at load (checked; other entries stay bytes)
ARRAY_ENTRIES = ("bank.npy", "calibration_scores.npy", "bank_tile_index.npy", "calibration_features.npy")

__all__ = ["Bundle", "load_bundle", "write_bundle", "bundle_digest", "npy_bytes", "sha256_bytes", "MANIFEST",
           "SCHEMA", "SCHEMA_VERSION"]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundle_digest(path: str | Path) -> str:
    """A bundle's digest: sha256 of its ``manifest.json`` bytes, which list the sha256 of every
    file, so the digest pins the whole bundle (shown by ``verify``, ``status``, the journal)."""
    mpath = Path(path) / MANIFEST
    return sha256_bytes(_read_regular(mpath, MAX_MANIFEST_BYTES))


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle (immutable).

    Attributes:
        path: the directory it was loaded from.
        manifest: the typed :class:`~device.manifest.Manifest`.
        digest: sha256 of ``manifest.json``.
        files: every listed entry's verified bytes.
        arrays: the ``.npy`` entries read as (read-only) arrays, views over ``files``.
    """

    path: Path
    manifest: Manifest
    digest: str
    files: Mapping[str, bytes]
    arrays: Mapping[str, np.ndarray]

    @property
    def short_digest(self) -> str:
        return self.digest[:12]

    @property
    def input_spec(self) -> InputSpec:
        return self.manifest.input

    @property
    def extractor_bytes(self) -> bytes:
        return self.files["extractor.tflite"]

    @property
    def bank(self) -> np.ndarray:
        return self.arrays["bank.npy"]

    @property
    def calibration_scores(self) -> np.ndarray | None:
        return self.arrays.get("calibration_scores.npy")

    @property
    def tile_index(self) -> np.ndarray | None:
        """Per-position banks: tile position of each bank row (None: one shared bank)."""
        return self.arrays.get("bank_tile_index.npy")

    @property
    def k(self) -> int:
        return self.manifest.scoring.k

    @property
    def scoring_method(self) -> str:
        return self.manifest.scoring.method

    @property
    def patches_per_tile(self) -> int:
        return self.manifest.extractor.patches_per_tile

    @property
    def threshold(self) -> Threshold:
        """The bundle's own threshold."""
        return Threshold(self.manifest.threshold.value, "bundle")

    def array(self, name: str) -> np.ndarray:
        """A listed ``.npy`` entry as a verified array (loaded on first use)."""
        if name in self.arrays:
            return self.arrays[name]
        if name not in self.files:
            raise BundleError(f"{self.path / MANIFEST}: no entry {name!r} in 'files' (has {sorted(self.files)})")
        return _npy(self.files[name], self.path / name)

    def threshold_for(self, threshold: float | None = None, target_frr: float | None = None,
                      where: str = "config") -> Threshold:
        """Deployment threshold: an explicit value, a false-reject target read against the
        bundle's calibration scores, or the bundle's own. Every value is validated.

        Args:
            where: names the source in the threshold's ``source`` and in errors (``config``, ``cli``).
        """
        if threshold is not None and target_frr is not None:
            raise BundleError(f"{where}: give either a threshold or a target false-reject rate, not both")
        try:
            if threshold is not None:
                return Threshold(threshold, f"{where}:threshold")
            if target_frr is None:
                return self.threshold
            rate = check_rate(target_frr, f"{where}: target_frr")
        except ValueError as exc:
            raise BundleError(str(exc)) from None
        if self.calibration_scores is None:
            raise BundleError(f"{self.path}: no calibration_scores.npy, cannot apply target_frr={target_frr}")
        return Threshold(calibrate_threshold(self.calibration_scores, rate), f"{where}:target_frr={rate:g}")


# ---------------------------------------------------------------------------------------- writing
def write_bundle(dest: str | Path, manifest: Mapping[str, Any] | Manifest, files: Mapping[str, bytes | Path]) -> Path:
    """Validate and write a bundle atomically (temporary directory, then rename).

    Args:
        dest: bundle directory; an existing one is replaced only once the new one is complete.
        manifest: everything but ``schema``, ``schema_version``, ``created`` and ``files`` (filled
            in here), as a dict or a :class:`Manifest` (its :meth:`~Manifest.body` is used).
        files: entry name -> bytes or a path to copy.

    Raises:
        BundleError: a missing required entry, a bad entry name or a manifest that fails the schema.
    """
    dest = Path(dest)
    body = manifest.body() if isinstance(manifest, Manifest) else dict(manifest)
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise BundleError(f"cannot write bundle {dest}: missing required entries {missing}")
    blobs: dict[str, bytes] = {}
    for name, content in files.items():
        bad = check_entry_name(name)
        if bad:
            raise BundleError(f"cannot write bundle {dest}: {bad}")
        blobs[name] = bytes(content) if isinstance(content, (bytes, bytearray, memoryview)) else Path(content).read_bytes()
    full = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **body,
            "files": {n: {"sha256": sha256_bytes(d), "bytes": len(d)} for n, d in blobs.items()}}
    where = f"{dest / MANIFEST} (to be written)"
    Manifest.from_dict(json.loads(json.dumps(full, default=_json_default)), where)   # never write what the device refuses
    bad = _non_finite(full)
    if bad:
        raise BundleError(f"{where}: {bad}: expected a finite number (NaN and infinities cannot be written)")
    text = json.dumps(full, indent=2, default=_json_default, allow_nan=False) + "\n"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        for name, data in {**blobs, MANIFEST: text.encode()}.items():
            _write_file(tmp / name, data)
        os.chmod(tmp, 0o755)
        _fsync_dir(tmp)
        _swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.debug("wrote bundle %s (%s)", dest, ", ".join(sorted(blobs)))
    return dest


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o644)      # whatever the umask: the service user must read it


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, dest: Path) -> None:
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(dest, old)
    os.rename(tmp, dest)
    _fsync_dir(dest.parent)
    if old is not None:
        if old.is_symlink() or old.is_file():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)


def _non_finite(obj: Any, path: str = "") -> str | None:
    """Key path of the first NaN or infinity in a JSON-like object (None: there is none)."""
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return path or "(value)"
    if isinstance(obj, np.ndarray):
        return path if obj.dtype.kind == "f" and not np.isfinite(obj).all() else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = _non_finite(v, f"{path}.{k}" if path else str(k))
        if found:
            return found
    return None


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, tuple)):
        return str(o) if isinstance(o, Path) else list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------------------------- reading
def _read_regular(path: Path, limit: int, expect: int | None = None) -> bytes:
    """Bytes of a regular file (not a symlink, FIFO or device), refusing more than ``limit`` bytes or
    a size other than ``expect`` before reading anything."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: missing") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISLNK(st.st_mode):
        raise BundleError(f"{path}: is a symbolic link; bundle files must be regular files inside the bundle")
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{path}: not a regular file")
    if expect is not None and st.st_size != expect:
        raise BundleError(f"{path}: size {st.st_size} bytes, manifest says {expect} (truncated or replaced)")
    if st.st_size > limit:
        raise BundleError(f"{path}: {st.st_size} bytes, more than the {limit} allowed")
    try:
        with open(path, "rb") as f:
            data = f.read(st.st_size + 1)
    except PermissionError:
        raise BundleError(f"{path}: permission denied; the service user must be able to read the bundle "
                          f"(directories 0755, files 0644)") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) != st.st_size:
        raise BundleError(f"{path}: changed while being read")
    return data


def _npy(data: bytes, name: Path) -> np.ndarray:
    """A read-only array viewing ``data`` (a .npy file), after checking that its header declares
    exactly the bytes present (a forged header cannot make us allocate)."""
    from numpy.lib import format as npf

    buf = io.BytesIO(data)
    try:
        version = npf.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = npf.read_array_header_1_0(buf)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npf.read_array_header_2_0(buf)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise BundleError(f"{name}: not a valid .npy array ({exc})") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise BundleError(f"{name}: array of {dtype} is not allowed (numbers only)")
    count = int(np.prod(shape, dtype=np.float64)) if shape else 1
    offset = buf.tell()
    if offset + count * dtype.itemsize != len(data):
        raise BundleError(f"{name}: header declares shape {shape} of {dtype} ({count * dtype.itemsize} bytes) but "
                          f"the file holds {len(data) - offset} bytes of data")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return arr.reshape(shape, order="F" if fortran else "C")


def _listed_contents(path: Path, manifest: Manifest) -> dict[str, bytes]:
    """Every listed entry's bytes after size and hash checks; refuses unlisted files."""
    listed = manifest.files
    missing = [f for f in REQUIRED_FILES if f not in listed]
    if missing:
        raise BundleError(f"{path / MANIFEST}: required entries {missing} are not listed in 'files'")
    try:
        present = {p.name for p in path.iterdir()}
    except OSError as exc:
        raise BundleError(f"{path}: cannot list the bundle ({exc.strerror or exc})") from None
    unlisted = sorted(present - set(listed) - {MANIFEST})
    if unlisted:
        raise BundleError(f"{path}: file(s) not listed in the manifest: {', '.join(unlisted)} "
                          f"(a bundle holds exactly what its manifest hashes)")
    contents = {}
    for name, meta in listed.items():
        data = _read_regular(path / name, 1 << 40, expect=meta.bytes)
        digest = sha256_bytes(data)
        if digest != meta.sha256:
            raise BundleError(f"{path / name}: sha256 {digest[:16]}… does not match the manifest's "
                              f"{meta.sha256[:16]}… (file was modified)")
        contents[name] = data
    return contents


def load_bundle(path: str | Path) -> Bundle:
    """Load and verify a bundle; raises :class:`BundleError` naming the file and the problem."""
    path = Path(path)
    try:
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise BundleError(f"{path}: not a directory; a bundle is a directory")
    except FileNotFoundError:
        raise BundleError(f"{path}: bundle directory not found") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot open the bundle directory ({exc.strerror or exc})") from None
    mpath = path / MANIFEST
    try:
        text = _read_regular(mpath, MAX_MANIFEST_BYTES)
    except BundleError as exc:
        if str(exc).endswith(": missing"):
            raise BundleError(f"{mpath}: manifest missing; is {path} a model bundle?") from None
        raise
    manifest = Manifest.from_json(text, str(mpath))
    contents = _listed_contents(path, manifest)
    arrays = {name: _npy(contents[name], path / name) for name in ARRAY_ENTRIES if name in contents}
    proj = manifest.scoring.projection
    for name in ((proj.mean, proj.components) if proj else ()):
        arrays[name] = _npy(contents[name], path / name)
    _check_arrays(path, manifest, arrays)
    return Bundle(path=path, manifest=manifest, digest=sha256_bytes(text), files=contents, arrays=arrays)


def _check_arrays(path: Path, m: Manifest, arrays: dict[str, np.ndarray]) -> None:
    """Shapes, types and finiteness of the arrays, and their consistency with the manifest."""
    bank = arrays["bank.npy"]
    where = path / "bank.npy"
    if bank.ndim != 2 or bank.dtype != np.float32 or bank.shape[0] == 0:
        raise BundleError(f"{where}: expected a non-empty 2-D float32 array, found {bank.dtype} {bank.shape}")
    if bank.shape[1] != m.extractor.row_dim:
        what = "patch dimension" if m.extractor.patches else "the extractor's output_dim"
        raise BundleError(f"{where}: feature dimension {bank.shape[1]} does not match {what} {m.extractor.row_dim}")
    _finite(bank, where)
    need = 2 if m.scoring.method == "gauss" else m.scoring.k
    if bank.shape[0] < need:
        raise BundleError(f"{path / MANIFEST}: scoring.k={m.scoring.k} needs at least {need} bank rows, "
                          f"bank.npy has {bank.shape[0]}")
    cal = arrays.get("calibration_scores.npy")
    if cal is not None:
        if cal.ndim != 1 or cal.size == 0 or cal.dtype.kind != "f":
            raise BundleError(f"{path / 'calibration_scores.npy'}: expected a non-empty 1-D float array, found "
                              f"{cal.dtype} {cal.shape}")
        _finite(cal, path / "calibration_scores.npy")
    feats = arrays.get("calibration_features.npy")
    if feats is not None and (feats.ndim != 2 or feats.shape[1] != bank.shape[1] or feats.dtype != np.float32):
        raise BundleError(f"{path / 'calibration_features.npy'}: expected float32 (n, {bank.shape[1]}), found "
                          f"{feats.dtype} {feats.shape}")
    if feats is not None:
        _finite(feats, path / "calibration_features.npy")
    _check_tile_index(path, m, bank, arrays.get("bank_tile_index.npy"))
    if m.scoring.projection is not None:
        _check_projection(path, m, bank, arrays)


def _finite(a: np.ndarray, where: Path) -> None:
    bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    if bad:
        raise BundleError(f"{where}: {bad} value(s) are NaN or infinite; expected finite numbers")


def _check_tile_index(path: Path, m: Manifest, bank: np.ndarray, idx: np.ndarray | None) -> None:
    per_position = m.scoring.bank_mode == "per_position"
    if per_position != (idx is not None):
        raise BundleError(f"{path / MANIFEST}: scoring.bank_mode is {m.scoring.bank_mode!r} but bank_tile_index.npy "
                          f"is {'present' if idx is not None else 'missing'}")
    if idx is None:
        return
    n_tiles = len(m.input.tile_boxes())
    where = path / "bank_tile_index.npy"
    if idx.shape != (bank.shape[0],) or idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= n_tiles:
        raise BundleError(f"{where}: expected {bank.shape[0]} integer tile positions in 0..{n_tiles - 1}, found "
                          f"{idx.dtype} {idx.shape}")
    missing = sorted(set(range(n_tiles)) - set(np.unique(idx).tolist()))
    if missing:
        raise BundleError(f"{where}: no bank features for tile positions {missing}")
    counts = np.bincount(idx, minlength=n_tiles)
    need = 2 if m.scoring.method == "gauss" else m.scoring.k
    if counts.min() < need:
        raise BundleError(f"{where}: tile position {int(counts.argmin())} has {int(counts.min())} bank rows, "
                          f"scoring needs at least {need}")


def _check_projection(path: Path, m: Manifest, bank: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
    p = m.scoring.projection
    mean, comps = arrays[p.mean], arrays[p.components]
    d = bank.shape[1]
    if mean.shape != (d,) or comps.shape != (p.dims, d) or mean.dtype.kind != "f" or comps.dtype.kind != "f":
        raise BundleError(f"{path / MANIFEST}: scoring.projection expects {p.mean} ({d},) and {p.components} "
                          f"({p.dims}, {d}) float arrays, found {mean.dtype} {mean.shape} and {comps.dtype} {comps.shape}")
    _finite(mean, path / p.mean)
    _finite(comps, path / p.components)
