"""Feature cache for the configuration search: each network pass runs once per image set.

A search over candidates (input size, backbone width, taps, pooling, k, scoring, tile grid)
needs the same MobileNetV2 features many times. The cache runs one forward pass per
(image set, :class:`Network`) and computes every requested :class:`Head` (one layer pooled
one way, or a patch map) in that pass; pooled taps are combined into a candidate's feature
rows in numpy (:func:`compose`), exactly as ``models.backbone.pooled_features`` +
``device.extractor.normalize_features`` do inside the extractor the bundle ships.

Entries are keyed on the *content* of the network-ready uint8 batch (a hash), the network
(width, input size, weights file) and the head, so two candidates sharing a network never
recompute it. Entries live in memory and, with ``cache_dir``, as ``.npy`` files that later
runs (and the ``fit`` stages after the search) reuse.

Patch maps are large (a 1024-px frame cut into 16x16 tiles gives 36 864 rows per frame):
for a bank keep a seeded sample of rows per image (``Head(..., rows=N)``); for query images
reduce them on the fly with :meth:`FeatureCache.stream` (e.g. to the worst patch per tile),
which caches only the reduction.

Example:
    >>> import numpy as np
    >>> cache = FeatureCache()                                            # doctest: +SKIP
    >>> net = Network(alpha=0.35, size=96, weights="w.h5")                 # doctest: +SKIP
    >>> src = ArraySource(np.zeros((8, 96, 96, 3), np.uint8))              # doctest: +SKIP
    >>> f = cache.get(src, net, [Head("max", ("out_relu",))])              # doctest: +SKIP
    >>> compose(f, ["out_relu"], "max").shape                              # doctest: +SKIP
    (8, 1280)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

REDUCTIONS = ("max", "avg", "grid2", "grid3", "grid4", "patch")


@dataclasses.dataclass(frozen=True)
class Network:
    """One MobileNetV2 trunk: width, square input side, weights (file path, ``imagenet`` or ``random``).

    ``tag`` names a modified trunk (e.g. a DOC fine-tuned one) so its features are not confused
    with the untouched network's; pass its Keras backbone to :meth:`FeatureCache.register`.
    """

    alpha: float
    size: int
    weights: str
    tag: str = "untouched"

    def key(self) -> str:
        w = self.weights
        if Path(w).is_file():   # a file: identify by name + size + mtime, not by the whole path
            st = Path(w).stat()
            w = f"{Path(w).name}:{st.st_size}:{int(st.st_mtime)}"
        return f"a{self.alpha:g}-s{self.size}-{w}-{self.tag}"


@dataclasses.dataclass(frozen=True)
class Head:
    """One output of a forward pass.

    Attributes:
        reduction: ``max`` / ``avg`` (global pooling), ``gridG`` (average over a G x G grid of
            cells, flattened), or ``patch`` (3x3-averaged map, one row per position; several
            layers are resized to the first one's map and concatenated).
        layers: MobileNetV2 layer names; one for pooled reductions.
        rows: patch heads only: keep this many seeded random rows per input (a bank sample);
            None keeps every row.
    """

    reduction: str
    layers: tuple[str, ...]
    rows: int | None = None

    def __post_init__(self):
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduction!r}; expected one of {REDUCTIONS}")
        if self.reduction != "patch" and len(self.layers) != 1:
            raise ValueError(f"a pooled head takes one layer, found {self.layers!r}")

    def key(self) -> str:
        return f"{self.reduction}:{'+'.join(self.layers)}" + (f":r{self.rows}" if self.rows else "")


def content_hash(*parts) -> str:
    """Short hash of arrays (shape, dtype, bytes) and JSON-able values.

    Example:
        >>> content_hash(np.zeros(3, np.uint8)) == content_hash(np.zeros(3, np.uint8))
        True
    """
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(repr((p.shape, str(p.dtype))).encode())
            h.update(np.ascontiguousarray(p).data)
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


class ArraySource:
    """Network-ready uint8 images (N, H, W, 3) as a batch source.

    Example:
        >>> src = ArraySource(np.zeros((5, 8, 8, 3), np.uint8))
        >>> len(src), [b.shape[0] for b in src.batches(2)]
        (5, [2, 2, 1])
    """

    def __init__(self, images: np.ndarray, key: str | None = None):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 (N, H, W, 3) images, found {images.dtype} {images.shape}")
        self.images = images
        self.key = key or content_hash(images)
        self.per_item = 1

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, size: int) -> Iterator[np.ndarray]:
        for i in range(0, len(self.images), size):
            yield self.images[i:i + size]


class TiledSource:
    """Prepared frames cut into the tiles of ``spec`` on the fly (frame-major, tile-minor).

    A 1024-px frame cut 16x16 makes 256 network inputs; cutting lazily keeps memory flat.
    ``per_item`` is the number of tiles per frame.

    Example:
        >>> from device.preprocess import InputSpec
        >>> spec = InputSpec(size=(32, 32), working_size=(64, 64), grid=(2, 2))
        >>> src = TiledSource(np.zeros((3, 64, 64), np.uint8), spec)
        >>> len(src), src.per_item, next(src.batches(8)).shape
        (12, 4, (8, 32, 32, 3))
    """

    def __init__(self, frames: np.ndarray, spec, key: str | None = None, changed: np.ndarray | None = None,
                 source: np.ndarray | None = None):
        from device.preprocess import cut_tiles

        self._cut = cut_tiles
        self.frames, self.spec = frames, spec
        self.per_item = len(spec.tile_boxes())
        self.changed = None if changed is None else np.asarray(changed, bool).reshape(len(frames), self.per_item)
        self.source = None if source is None else np.asarray(source)
        self.key = key or content_hash(frames, spec.to_dict(), *(() if changed is None else (self.changed,)))

    def __len__(self) -> int:
        return len(self.frames) * self.per_item if self.changed is None else int(self.changed.sum())

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """Tiles in order; with ``changed`` (frames x tiles, bool) only those tiles: the others of a
        defect frame are pixel for pixel its source normal frame's (``source``), whose features the
        caller already has (see ``trainer.search.changed_tiles``)."""
        per = max(1, size // self.per_item)
        for i in range(0, len(self.frames), per):
            parts = [self._cut(f, self.spec) for f in self.frames[i:i + per]]
            if self.changed is not None:
                parts = [t[m] for t, m in zip(parts, self.changed[i:i + per])]
            buf = np.concatenate(parts)
            yield from (buf[j:j + size] for j in range(0, len(buf), size))


def l2(f: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (as ``device.extractor.normalize_features(f, "l2")``)."""
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def compose(feats: dict, layers: Sequence[str], reduction: str) -> np.ndarray:
    """A candidate's feature rows from cached pooled heads: single tap -> L2; several taps ->
    each L2-normalised, concatenated, L2 again (what the shipped extractor computes).

    Args:
        feats: ``{Head.key(): array}`` as returned by :meth:`FeatureCache.get`.
        layers: MobileNetV2 layer names of the taps.
        reduction: the pooled reduction (``max``, ``avg``, ``gridG``).

    Example:
        >>> f = {"max:a": np.ones((2, 3), np.float32), "max:b": np.ones((2, 1), np.float32)}
        >>> compose(f, ["a", "b"], "max").shape
        (2, 4)
    """
    parts = [np.asarray(feats[Head(reduction, (n,)).key()], np.float32) for n in layers]
    if len(parts) == 1:
        return l2(parts[0])
    return l2(np.concatenate([l2(p) for p in parts], axis=1))


class FeatureCache:
    """Features of image sets under MobileNetV2 trunks, computed once (see module docstring).

    Args:
        cache_dir: optional folder for ``.npy`` entries (created); None keeps memory only.
        batch_size: images per forward call.
        float16: store patch rows as float16 (halves memory; distances are unchanged to ~1e-3).

    Attributes:
        seconds: {network key: seconds spent in forward passes}; images: {network key: inputs run}.
    """

    def __init__(self, cache_dir: str | Path | None = None, batch_size: int = 64, float16: bool = False):
        self.dir = Path(cache_dir) if cache_dir else None
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.batch_size = batch_size
        self.float16 = float16
        self._mem: dict[str, np.ndarray] = {}
        self._backbones: dict[str, object] = {}
        self._models: dict[tuple, object] = {}
        self.seconds: dict[str, float] = {}
        self.images: dict[str, int] = {}

    # ------------------------------------------------------------------ networks
    def register(self, net: Network, backbone) -> None:
        """Use ``backbone`` (a Keras MobileNetV2 without top, e.g. DOC fine-tuned) for ``net``."""
        self._backbones[net.key()] = backbone

    def _backbone(self, net: Network):
        if net.key() not in self._backbones:
            from models.backbone import build_backbone

            if net.tag != "untouched":
                raise KeyError(f"network {net.key()} has no registered backbone; call register() first")
            self._backbones[net.key()] = build_backbone(net.alpha, (net.size, net.size), net.weights)[0]
        return self._backbones[net.key()]

    def _model(self, net: Network, heads: tuple[Head, ...]):
        """A Keras model: raw pixels -> one output per head (only the layers they need)."""
        key = (net.key(), tuple(h.key() for h in heads))
        if key not in self._models:
            import keras
            from keras import layers

            from models.backbone import _grid_pool, _patch_features

            bb = self._backbone(net)
            outs = []
            for h in heads:
                if h.reduction == "patch":
                    outs.append(_patch_features(bb, list(h.layers)))
                    continue
                t = bb.get_layer(h.layers[0]).output
                outs.append(layers.GlobalMaxPooling2D()(t) if h.reduction == "max" else
                            layers.GlobalAveragePooling2D()(t) if h.reduction == "avg" else
                            _grid_pool(t, int(h.reduction[4:])))
            inner = keras.Model(bb.input, outs)
            inp = keras.Input((net.size, net.size, 3))
            x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(inp)
            self._models[key] = keras.Model(inp, inner(x, training=False))
            if len(self._models) > 24:       # keep the graph count bounded over a long search
                self._models.pop(next(iter(self._models)))
        return self._models[key]

    # ------------------------------------------------------------------ storage
    def _entry_key(self, source, net: Network, head: Head, seed: int) -> str:
        return content_hash(source.key, net.key(), head.key(), seed if head.rows else 0)

    def _load(self, key: str) -> np.ndarray | None:
        if key in self._mem:
            return self._mem[key]
        if self.dir and (self.dir / f"{key}.npy").is_file():
            self._mem[key] = np.load(self.dir / f"{key}.npy", mmap_mode="r")
            return self._mem[key]
        return None

    def _store(self, key: str, arr: np.ndarray) -> None:
        if self.dir:
            tmp = self.dir / f".{key}.tmp.npy"
            np.save(tmp, arr)
            tmp.replace(self.dir / f"{key}.npy")
        self._mem[key] = arr

    def drop_memory(self) -> None:
        """Forget in-memory entries (disk entries stay); frees RAM between data sets."""
        self._mem.clear()
        self._models.clear()

    # ------------------------------------------------------------------ features
    def get(self, source, net: Network, heads: Sequence[Head], seed: int = 0) -> dict[str, np.ndarray]:
        """Features of every input of ``source`` for each head: ``{head.key(): array}``.

        Pooled heads give (N, D) rows; patch heads (N * h * w, C) rows, or (N * rows, C) with
        ``Head.rows``. Heads not cached yet are computed together in one forward pass.
        """
        out, missing = {}, []
        for h in heads:
            arr = self._load(self._entry_key(source, net, h, seed))
            if arr is None:
                missing.append(h)
            else:
                out[h.key()] = arr
        if missing:
            got = self._run(source, net, tuple(missing), seed)
            for h, arr in zip(missing, got):
                self._store(self._entry_key(source, net, h, seed), arr)
                out[h.key()] = arr
        return out

    def _run(self, source, net: Network, heads: tuple[Head, ...], seed: int) -> list[np.ndarray]:
        model = self._model(net, heads)
        rng = np.random.default_rng(seed)
        acc: list[list[np.ndarray]] = [[] for _ in heads]
        t0 = time.perf_counter()
        for batch in source.batches(self.batch_size):
            outs = self._predict(model, batch)
            for i, (h, o) in enumerate(zip(heads, outs)):
                acc[i].append(self._rows(o, h, rng))
        dt = time.perf_counter() - t0
        self.seconds[net.key()] = self.seconds.get(net.key(), 0.0) + dt
        self.images[net.key()] = self.images.get(net.key(), 0) + len(source)
        log.debug("forward %s on %d inputs: %.1f s (%s)", net.key(), len(source), dt, [h.key() for h in heads])
        return [np.concatenate(a) if a else np.zeros((0, 0), np.float32) for a in acc]

    def _predict(self, model, batch: np.ndarray) -> list[np.ndarray]:
        """One compiled forward call (``predict_on_batch``: ~1.6x faster than eager); a short last
        batch is padded to ``batch_size`` so the graph is traced once."""
        n = len(batch)
        if n < self.batch_size:
            batch = np.concatenate([batch, np.zeros((self.batch_size - n,) + batch.shape[1:], batch.dtype)])
        outs = model.predict_on_batch(batch.astype(np.float32))
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return [np.asarray(o, np.float32)[:n] for o in outs]

    def _rows(self, o: np.ndarray, h: Head, rng) -> np.ndarray:
        if h.reduction != "patch":
            return o
        n, gh, gw, c = o.shape
        o = o.reshape(n, gh * gw, c)
        if h.rows and h.rows < gh * gw:
            pick = np.stack([rng.choice(gh * gw, h.rows, replace=False) for _ in range(n)])
            o = np.take_along_axis(o, pick[:, :, None], axis=1)
        o = o.reshape(-1, c)
        return o.astype(np.float16) if self.float16 else o

    def stream(self, source, net: Network, head: Head, reduce: Callable[[np.ndarray], np.ndarray],
               reduce_key: str) -> np.ndarray:
        """Run ``head`` over ``source`` and keep only ``reduce(batch_features)`` per batch.

        For query images of patch candidates: ``reduce`` maps a (B, h, w, C) patch batch to, say,
        (B,) worst-patch scores under a fitted scorer; ``reduce_key`` names that reduction (e.g.
        the scorer's hash) so the cached result is reused only for the same one.
        """
        key = content_hash(source.key, net.key(), head.key(), "stream", reduce_key)
        hit = self._load(key)
        if hit is not None:
            return hit
        model = self._model(net, (head,))
        t0 = time.perf_counter()
        parts = [np.asarray(reduce(self._predict(model, b)[0])) for b in source.batches(self.batch_size)]
        self.seconds[net.key()] = self.seconds.get(net.key(), 0.0) + time.perf_counter() - t0
        self.images[net.key()] = self.images.get(net.key(), 0) + len(source)
        arr = np.concatenate(parts)
        self._store(key, arr)
        return arr

    def ms_per_input(self, net: Network) -> float | None:
        """Measured forward-pass milliseconds per network input so far (None before any pass)."""
        n = self.images.get(net.key())
        return 1e3 * self.seconds[net.key()] / n if n else None
