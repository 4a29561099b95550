"""Audit models as optional bundle entries.

A bundle may carry audit models next to its extractor: weight files listed in
``files`` (hashed and verified like every other entry) and a manifest key::

    "audit": {"projection": {"params": {...}, "files": ["audit_projection_encoder.weights.h5", ...],
                             "threshold": {...}, "trained": {...}}, "anogan": {...}}

Example:
    >>> det, entry = load_audit_model("bundle/", "projection")    # doctest: +SKIP
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from device.audit.errors import AuditModelError
from device.audit.methods import TRAINABLE, detector_class, prefix
from device.bundle import MANIFEST, load_bundle, sha256_bytes, write_bundle

log = logging.getLogger(__name__)


def load_audit_model(bundle: str | Path, method: str):
    """Load and verify the ``method`` audit model of a bundle.

    Returns:
        ``(detector, entry)``; ``entry`` is the manifest's ``audit[method]`` plus ``model_sha256``.

    Raises:
        BundleError: the bundle is missing, tampered with or of another schema.
        AuditModelError: the bundle has no such audit model or its weights do not fit.
    """
    bundle = Path(bundle)
    b = load_bundle(bundle)
    contents = b.files
    audit = b.manifest.audit or {}
    if method not in TRAINABLE:
        raise AuditModelError(f"{method} has no trained model to load from a bundle")
    if method not in audit:
        raise AuditModelError(f"{bundle / MANIFEST}: no audit model {method!r} (bundle has "
                              f"{sorted(audit) or 'none'}); train one with `anomaly-train audit-models`")
    entry = dict(audit[method])
    names = entry.get("files") or []
    missing = [n for n in names if n not in contents]
    if missing or not names:
        raise AuditModelError(f"{bundle / MANIFEST}: audit model {method!r} lists files {names} "
                              f"but {missing or 'none'} are not bundle entries")
    files = {n: contents[n] for n in names}
    try:
        det = detector_class(method).from_files(entry["params"], files, prefix(method))
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditModelError(f"{bundle}: audit model {method!r} cannot be loaded: {exc}") from exc
    entry["model_sha256"] = sha256_bytes(b"".join(sha256_bytes(files[n]).encode() for n in sorted(files)))
    log.info("loaded audit model %s from %s", method, bundle)
    return det, entry


def add_audit_models(bundle: str | Path, models: Mapping[str, Mapping[str, Any]], dest: str | Path | None = None) -> Path:
    """Add (or replace) audit models in a bundle, rewriting it atomically.

    Args:
        bundle: an existing, valid bundle.
        models: method -> ``{"params": dict, "files": {name: bytes}, "threshold": dict, "trained": dict}``.
        dest: output bundle (default: replace ``bundle``).
    """
    bundle = Path(bundle)
    b = load_bundle(bundle)
    contents = b.files
    audit = dict(b.manifest.audit or {})
    files: dict[str, bytes] = dict(contents)
    for method, m in models.items():
        for old in (audit.get(method) or {}).get("files", []):
            files.pop(old, None)
        files.update(m["files"])
        audit[method] = {"params": m["params"], "files": sorted(m["files"]),
                         **{k: v for k, v in m.items() if k not in ("params", "files")}}
    new = b.manifest.body()
    new["audit"] = audit
    return write_bundle(dest or bundle, new, files)
