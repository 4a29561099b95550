"""Resumable per-image result store of an audit run.

Each finished image is one ``.npz`` in ``OUT/results/`` written atomically (temporary
file, then rename), so an interrupted audit resumes with the first unfinished image.
``OUT/audit_state.json`` records the method and a fingerprint of the model and settings;
results of a different run are never mixed in silently.

Example:
    >>> st = ResultStore("out", "nkn", {"mask": 8})           # doctest: +SKIP
    >>> st.has("a.png") or st.save("a.png", {"score": 0.3})   # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from device.errors import ConfigError

log = logging.getLogger(__name__)

STATE = "audit_state.json"


def fingerprint(obj) -> str:
    """Stable sha256 of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class ResultStore:
    """Per-image results under ``out/results``.

    Args:
        out: output folder (created).
        method: audit method name.
        settings: everything that changes the results (model hash, parameters, size).
        fresh: discard earlier results instead of refusing a different fingerprint.

    Raises:
        ConfigError: ``out`` holds results of another method or other settings (and not ``fresh``).
    """

    def __init__(self, out: str | Path, method: str, settings: dict, fresh: bool = False):
        self.out = Path(out)
        self.dir = self.out / "results"
        self.method = method
        self.fp = fingerprint({"method": method, **settings})
        state_path = self.out / STATE
        if state_path.is_file() and not fresh:
            try:
                old = json.loads(state_path.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{state_path}: unreadable audit state ({exc}); use --fresh") from exc
            if old.get("method") != method or old.get("fingerprint") != self.fp:
                raise ConfigError(f"{state_path}: {self.out} holds results of another audit run "
                                  f"(method {old.get('method')!r}, other model or settings); use --fresh "
                                  f"to discard them or choose another --out")
        elif fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps({"method": method, "fingerprint": self.fp, "settings": settings,
                                          "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                         indent=2, default=str) + "\n")

    @staticmethod
    def key(rel: str) -> str:
        """File-system-safe key of a relative image name."""
        return re.sub(r"[^A-Za-z0-9._-]+", "__", rel)

    def path(self, rel: str) -> Path:
        return self.dir / f"{self.key(rel)}.npz"

    def has(self, rel: str) -> bool:
        return self.path(rel).is_file()

    def save(self, rel: str, record: dict) -> None:
        """Atomically write ``record`` (name -> number or array)."""
        p = self.path(rel)
        tmp = p.with_name(p.name + f".tmp{os.getpid()}.npz")
        np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in record.items()})
        os.replace(tmp, p)

    def load(self, rel: str) -> dict:
        with np.load(self.path(rel), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
