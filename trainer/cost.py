"""What the shipped candidate costs: measured after conversion, on this machine, through the device path.

* :func:`measure_latency` - :meth:`device.detector.Detector.inspect` on real training frames, one
  interpreter thread and one BLAS thread (the Pi's frame path), median per stage; with the Pi 4
  estimate of :class:`trainer.candidates.LatencyModel` (inference x 9, numpy stages x 8: the
  documented basis travels with the figure).
* bank compression: :func:`device.projection.compression_for` (the device's ``learn`` makes the
  same choice again when it grows the bank).

Example:
    >>> rec = measure_latency("bundle/", frames)          # doctest: +SKIP
    >>> rec["x86_ms"], rec["pi4_ms_estimate"]             # doctest: +SKIP
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from device.projection import one_thread

log = logging.getLogger(__name__)


def measure_latency(bundle: str | Path, frames: list, n: int = 40, warmup: int = 5) -> dict:
    """Per-frame cost of ``bundle`` on this machine: ``Detector.inspect`` on ``frames`` (decoded
    source images), 1 interpreter thread, 1 BLAS thread; medians in ms, and the Pi 4 estimate."""
    from device.detector import Detector
    from trainer.candidates import LatencyModel

    m = LatencyModel()
    stages: dict[str, list] = {}
    totals = []
    with one_thread(), Detector.from_bundle(bundle, num_threads=1) as det:
        for i in range(warmup):
            det.inspect(frames[i % len(frames)])
        for i in range(n):
            r = det.inspect(frames[i % len(frames)])
            totals.append(sum(r.timing.values()))
            for k, v in r.timing.items():
                stages.setdefault(k, []).append(v)
    med = {k: float(np.median(v)) for k, v in stages.items()}
    inf = med.get("inference_ms", 0.0)
    other = med.get("preprocess_ms", 0.0) + med.get("knn_ms", 0.0)
    return {"x86_ms": float(np.median(totals)), "x86_ms_p90": float(np.percentile(totals, 90)), **med,
            "pi4_ms_estimate": inf * m.pi4_inference_factor + other * m.pi4_numpy_factor, "frames": n,
            "threads": 1, "machine": "this workstation (x86), device path: Detector.inspect, 1 interpreter thread, "
                                     "1 BLAS thread", "pi4_basis": m.basis}
