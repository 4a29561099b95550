"""DOC fine-tuning probe for the benchmark research (float Keras; no TFLite).

Invocation: ``.venv/bin/python scripts/bench/explore_doc.py DATASET SIZE REFERENCE LR STEPS TRAIN_FROM TAPS POOLING [LAMBDA]``

Trains DOC on the cached training normals of ``explore_features.py`` (run that first for
the same data set and size) and saves the backbone to ``/tmp/explore/doc_<tag>.keras``;
then evaluate it with ``explore_features.py DATASET SIZE grey --doc-model <file>``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))


def main():
    from bench_e2e import make_reference
    from explore_features import WEIGHTS, prepare
    from models.backbone import build_backbone
    from trainer.doc import DocConfig, train_doc
    from trainer.data import load_reference

    name, s, ref, lr, steps, train_from, taps, pooling = sys.argv[1:9]
    lam = float(sys.argv[9]) if len(sys.argv) > 9 else 0.1
    size = (int(s), int(s))
    d = prepare(name, size, "grey")
    tmp = Path("/tmp/explore/ref"); tmp.mkdir(parents=True, exist_ok=True)
    spec = make_reference(ref, size, 2000, 0, tmp)
    rx, ry, desc = load_reference(spec, size, 2000, 0)
    bb, _ = build_backbone(0.35, size, WEIGHTS)
    cfg = DocConfig(steps=int(steps), lr=float(lr), train_from=train_from, taps=taps, pooling=pooling, lam=lam)
    t0 = time.time()
    bb, hist = train_doc(bb, d["x_bank"], rx, ry, cfg, progress=False)
    tag = f"doc_{name}_{s}_{ref}_{lr}_{steps}_{train_from}_{taps}_{pooling}_{lam}"
    bb.save(f"/tmp/explore/{tag}.keras")
    print(f"{tag}: {time.time() - t0:.0f}s, l_d {np.mean(hist['l_d'][:10]):.3f}->{np.mean(hist['l_d'][-10:]):.3f} "
          f"l_c {np.mean(hist['l_c'][:10]):.4f}->{np.mean(hist['l_c'][-10:]):.4f}", flush=True)
    print(f"/tmp/explore/{tag}.keras")


if __name__ == "__main__":
    main()
