"""Frames as the shipped extractor sees them, their device feature rows, and cross-fitted scores.

``fit``'s stages after the search work on the *device path*: every feature row comes from the
converted ``.tflite`` (one interpreter call per frame, its tiles together, as
:class:`device.detector.Detector` calls it) and every score from :class:`device.scoring.TileScorer`.

* :class:`FrameSet` - images (decoded arrays or paths) prepared lazily with the bundle's input
  spec and cut into tiles batch by batch (a 1024-px frame in 256 tiles is 7 MB of network input:
  sets of them are never held whole);
* :class:`DeviceRows` - the feature rows of a frame set under one extractor, kept in memory when
  small (pooled features), recomputed per pass otherwise (patch rows: 36 864 per 1024-px frame);
* :func:`bank_sample` - the rows a bank may hold, with each row's frame and tile position;
* :func:`crossfit_tile_scores` - every training frame scored against a bank without its fold, every
  validation defect against the bank without its source image's fold (``trainer.selection.cross_fit``
  on the device path), plus any sets scored against the full bank.

Example:
    >>> import numpy as np
    >>> from device.manifest import InputSpec
    >>> fs = FrameSet([np.zeros((64, 64), np.uint8)] * 3, InputSpec(size=(32, 32), working_size=(64, 64),
    ...               grid=(2, 2)))
    >>> len(fs), fs.n_tiles, next(fs.batches(2))[2].shape
    (3, 4, (8, 32, 32, 3))
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Iterator, Sequence

import numpy as np

from device.extractor import normalize_features
from device.manifest import InputSpec
from device.preprocess import cut_tiles, prepare_frame
from device.scoring import PATCH_BANK_DEFAULT, TileScorer, bank_rows

log = logging.getLogger(__name__)

KEEP_ROWS_BYTES = 768 << 20      # device rows of a frame set are kept in memory up to this size


@dataclasses.dataclass(frozen=True)
class Rows:
    """How a network's output becomes feature rows: ``p`` rows per tile, normalisation."""

    p: int
    norm: str
    patches: dict | None

    @classmethod
    def of(cls, info: dict) -> "Rows":
        patches = info.get("patches")
        return cls(patches["grid"][0] * patches["grid"][1] if patches else 1, "none" if patches else "l2", patches)


class FrameSet:
    """Images prepared with ``spec`` on demand: ``batches`` yields ``(i0, i1, tiles)`` with tiles
    frame-major (``(i1 - i0) * n_tiles`` network inputs)."""

    def __init__(self, images: Sequence, spec: InputSpec):
        self.images, self.spec = list(images), spec
        self.n_tiles = len(spec.tile_boxes())

    def __len__(self) -> int:
        return len(self.images)

    def frame(self, i: int) -> np.ndarray:
        return prepare_frame(self.images[i], self.spec)

    def tiles(self, i0: int, i1: int) -> np.ndarray:
        return np.concatenate([cut_tiles(self.frame(i), self.spec) for i in range(i0, i1)])

    def batches(self, frames: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
        frames = frames or max(1, 256 // self.n_tiles)
        for i0 in range(0, len(self), frames):
            i1 = min(len(self), i0 + frames)
            yield i0, i1, self.tiles(i0, i1)

    def sample_tiles(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` seeded random tiles (e.g. the representative set of full-int8 conversion)."""
        rng = np.random.default_rng(seed)
        frames = np.sort(rng.choice(len(self), min(len(self), n), replace=False))
        out = [cut_tiles(self.frame(int(i)), self.spec) for i in frames]
        t = np.concatenate(out)
        return t[np.sort(rng.choice(len(t), min(n, len(t)), replace=False))]


class DeviceRows:
    """Feature rows of a :class:`FrameSet` under a TFLite extractor, frame by frame as the device
    computes them. Kept when they fit :data:`KEEP_ROWS_BYTES`, recomputed per pass otherwise."""

    def __init__(self, ext, frames: FrameSet, rows: Rows, keep_bytes: int = KEEP_ROWS_BYTES):
        self.ext, self.frames, self.rows = ext, frames, rows
        self.n_tiles = frames.n_tiles
        self.per_frame = self.n_tiles * rows.p
        self._kept: np.ndarray | None = None
        self._keep_bytes = keep_bytes
        self.seconds = 0.0

    def __len__(self) -> int:
        return len(self.frames)

    def _compute(self, tiles: np.ndarray) -> np.ndarray:
        import time

        t0 = time.perf_counter()
        n = self.n_tiles
        f = np.concatenate([self.ext(tiles[i:i + n]) for i in range(0, len(tiles), n)])
        self.seconds += time.perf_counter() - t0
        return normalize_features(f.reshape(f.shape[0] * self.rows.p, -1), self.rows.norm).astype(np.float32)

    def batches(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(i0, i1, rows)``: rows of frames i0..i1, frame-major, tile-major, patch-minor."""
        if self._kept is not None:
            for i0 in range(0, len(self), 256):
                i1 = min(len(self), i0 + 256)
                yield i0, i1, self._kept[i0 * self.per_frame:i1 * self.per_frame]
            return
        parts, size, keep = [], 0, True
        for i0, i1, tiles in self.frames.batches():
            r = self._compute(tiles)
            if keep:
                size += r.nbytes
                keep = size * len(self) / max(i1, 1) <= self._keep_bytes
                parts.append(r) if keep else parts.clear()
            yield i0, i1, r
        if keep and parts:
            self._kept = np.concatenate(parts)

    def all(self) -> np.ndarray:
        """Every row (computed once; only for sets that fit in memory)."""
        if self._kept is None:
            parts = [r for _, _, r in self.batches()]
            if self._kept is None:
                self._kept = np.concatenate(parts)
        return self._kept


@dataclasses.dataclass
class Sample:
    """Rows a bank may hold, with the frame and tile position of each."""

    feats: np.ndarray
    frame: np.ndarray
    pos: np.ndarray


def bank_sample(train: DeviceRows, cap: int | None, subsample: str, scoring: str, seed: int = 0) -> Sample:
    """Pooled rows: every row; patch rows: a seeded random share of each frame's rows, then
    :func:`device.scoring.bank_rows` to the cap (the trainer's and the device's rule)."""
    p, n, per = train.rows.p, len(train), train.per_frame
    if p == 1:
        feats = train.all()
        frame, pos = np.repeat(np.arange(n), per), np.tile(np.arange(train.n_tiles), n)
    else:
        take = min(per, int(np.ceil(2 * (cap or PATCH_BANK_DEFAULT) / n)))
        rng = np.random.default_rng(seed)
        fs, frames, poss = [], [], []
        for i0, i1, r in train.batches():
            for j, i in enumerate(range(i0, i1)):
                pick = np.sort(rng.choice(per, take, replace=False))
                fs.append(r[j * per:(j + 1) * per][pick])
                frames.append(np.full(take, i))
                poss.append(pick // p)
        feats, frame, pos = np.concatenate(fs), np.concatenate(frames), np.concatenate(poss)
    keep = bank_rows(feats, cap, subsample, scoring, p, seed)
    return Sample(np.ascontiguousarray(feats[keep]), frame[keep], pos[keep])


def tile_scorer(sample: Sample, sel: np.ndarray | None, k: int, method: str, n_tiles: int, p: int,
                per_position: bool, projection=None) -> TileScorer:
    """The :class:`TileScorer` of the rows ``sel`` of a bank sample (None: all)."""
    feats = sample.feats if sel is None else sample.feats[sel]
    pos = sample.pos if sel is None else sample.pos[sel]
    kk = max(1, min(k, len(feats) if not per_position else int(np.bincount(pos, minlength=n_tiles).min())))
    return TileScorer(feats, kk, method, n_tiles=n_tiles, patches=p,
                      tile_index=pos.astype(np.int32) if per_position else None, projection=projection)


def score_sets(sets: Sequence[tuple[DeviceRows, np.ndarray]], scorers: list[TileScorer]) -> list[np.ndarray]:
    """Tile scores (N, T) of each ``(rows, which)`` set: frame i scored by ``scorers[which[i]]``."""
    out = []
    for drows, which in sets:
        res = np.full((len(drows), drows.n_tiles), np.nan, np.float32)
        for i0, i1, r in drows.batches():
            w = np.asarray(which[i0:i1])
            for s in np.unique(w):
                idx = np.flatnonzero(w == s)
                rr = r.reshape(i1 - i0, drows.per_frame, -1)[idx].reshape(len(idx) * drows.per_frame, -1)
                res[i0 + idx] = scorers[int(s)].tile_scores(rr)
        out.append(res)
    return out


def crossfit_tile_scores(train: DeviceRows, sample: Sample, fold: np.ndarray, defects: DeviceRows | None,
                         source: np.ndarray | None, k: int, method: str, per_position: bool,
                         extra: Sequence[DeviceRows] = ()) -> dict:
    """Cross-fitted tile scores: ``train`` (each frame without its fold), ``defects`` (each without
    its source image's fold) and ``extra`` sets against the full bank: ``{"train", "defects", "extra"}``."""
    nf = int(fold.max()) + 1
    scorers = [tile_scorer(sample, fold[sample.frame] != f, k, method, train.n_tiles, train.rows.p, per_position)
               for f in range(nf)]
    full = tile_scorer(sample, None, k, method, train.n_tiles, train.rows.p, per_position)
    sets = [(train, fold)] + ([(defects, fold[source])] if defects is not None else [])
    got = score_sets(sets, scorers)
    ext = score_sets([(e, np.zeros(len(e), int)) for e in extra], [full]) if extra else []
    return {"train": got[0], "defects": got[1] if defects is not None else None, "extra": ext,
            "scorers": scorers, "full": full}
