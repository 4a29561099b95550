"""The candidate space of ``fit``'s configuration search, derived from the data.

A :class:`Candidate` is one complete extractor + scoring set-up (network width and input
size, whole frame or a tile grid, taps, pooled or patch features, k-NN or Gaussian scoring,
k, DOC on/off). :func:`derive_space` builds a small, well-chosen list from what the data
say (frame size, the smallest defect the user cares about, the weights available) and
from the options the user pinned; :class:`LatencyModel` estimates each candidate's
per-frame cost here and on a Raspberry Pi 4 with a documented basis; :class:`SearchClock`
keeps the search inside its time budget.

Rules behind the space (measured: ``docs/AUTOCONFIG.md``, ``scripts/bench/explore_selection.py``):

* input size from the image: 96 px always; 160 and 224 px only when the frames have the
  pixels for them (short side >= 0.8 x the input), since upscaling adds cost, not detail;
* a tile grid only for frames much larger than the network input, and only grids whose tiles
  make the smallest defect at least ``MIN_VISIBLE_PX`` network pixels, down to tiles of
  2/3 of the input (finer tiles are only upscaled);
* pooled features of a few proven taps with max, average or 3x3-grid pooling; aligned parts
  (:func:`alignment_score`) keep their layout with grid pooling only; patch features of an early
  tap with Gaussian scoring (small defects);
* alpha 1.0 only where its weights are available;
* k and DOC are refinements of the winner (same features: they cost no extra forward pass
  for k, one fine-tuning run for DOC).

Example:
    >>> space = derive_space((28, 28), weights={0.35: "w035.h5"})
    >>> sorted({c.size for c in space}), len(space) > 10
    ([96], True)
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

SIZES = (96, 160, 224)
POOLED_TAPS = ("out", "b13", "b10", "b13+out", "b6+b10+b13")
POOLED_REDUCTIONS = ("max", "avg", "grid3")
TILE_TAPS = ("out", "b13+out")            # pooled features of tiles (unaligned: no grid pooling)
PATCH_TAPS = ("b6",)
PATCH_SCORINGS = ("gauss",)        # k-NN over patches scans the bank per patch: slow on the device
REFINE_K = (1, 3, 5, 10)
MIN_VISIBLE_PX = 4.0       # the smallest defect must span this many network pixels for a tile grid to be offered
MAX_TILE_UPSCALE = 1.5     # tiles are at least size / 1.5 px (finer tiles are only upscaled)
LARGE_FRAME_FACTOR = 2.0   # grids are offered when the short side is >= this x the largest input size


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One configuration ``fit`` can ship.

    Attributes:
        size: square network input side (px).
        alpha: MobileNetV2 width (0.35 or 1.0).
        taps: a ``models.backbone.FEATURE_TAPS`` key.
        pooling: ``max`` / ``avg`` / ``grid3`` (pooled rows) or ``patch`` (one row per position).
        scoring: ``knn`` or ``gauss``.
        k: neighbours averaged (k-NN).
        grid: tile grid (rows, columns) or None (whole frame); working_size and overlap with it.
        doc: DOC fine-tuned trunk instead of the untouched one.
        normalize: the input spec's photometric normalisation (``none`` / ``standardize``).
    """

    size: int
    alpha: float = 0.35
    taps: str = "out"
    pooling: str = "max"
    scoring: str = "knn"
    k: int = 1
    grid: tuple[int, int] | None = None
    working_size: tuple[int, int] | None = None
    overlap: float = 0.0
    doc: bool = False
    normalize: str = "none"

    @property
    def name(self) -> str:
        g = f"-g{self.grid[0]}x{self.grid[1]}" if self.grid else ""
        return (f"a{self.alpha:g}-{self.size}{g}-{self.taps}-{self.pooling}-{self.scoring}"
                + (f"{self.k}" if self.scoring == "knn" else "") + ("-doc" if self.doc else "")
                + ("-std" if self.normalize == "standardize" else ""))

    @property
    def n_tiles(self) -> int:
        return self.grid[0] * self.grid[1] if self.grid else 1

    @property
    def layers(self) -> tuple[str, ...]:
        from models.backbone import FEATURE_TAPS

        return tuple(FEATURE_TAPS[self.taps])

    def fit_overrides(self) -> dict:
        """``trainer.pipeline.FitConfig`` fields that realise this candidate.

        Example:
            >>> Candidate(96, taps="b10", pooling="grid3", k=5).fit_overrides()["taps"]
            'b10'
        """
        d = {"alpha": self.alpha, "size": (self.size, self.size), "taps": self.taps, "pooling": self.pooling,
             "scoring": self.scoring, "k": self.k, "doc": self.doc, "normalize": self.normalize}
        if self.grid:
            d.update(grid=self.grid, working_size=self.working_size, overlap=self.overlap)
        return d

    def complexity(self) -> tuple:
        """Order among equals: fewer tiles, smaller net, fewer taps, plain pooling, k=1, no DOC."""
        return (self.n_tiles, self.alpha, self.size, len(self.layers), self.pooling != "max",
                self.scoring != "knn", self.k, self.doc, self.normalize != "none")


def default_min_defect_px(frame_hw: Sequence[int]) -> float:
    """Default ``--min-defect-px``: 3 % of the short side, at least 2 px, at most 8 px.

    8 px on a 1024-px frame keeps the few-pixel scratches and spots a high-resolution camera is
    bought for; on small images (28-64 px) it falls to 2 px.

    Example:
        >>> default_min_defect_px((1024, 1024)), default_min_defect_px((28, 28))
        (8.0, 2.0)
    """
    return float(min(8.0, max(2.0, 0.03 * min(frame_hw))))


def tile_side(working: int, n: int, overlap: float) -> int:
    """Tile side of ``n`` tiles overlapping by ``overlap`` over ``working`` px (as the input spec cuts)."""
    return min(working, int(round(working / (n - (n - 1) * overlap))))


def candidate_grids(frame_hw: Sequence[int], size: int, min_defect_px: float) -> list[tuple]:
    """Tile grids worth trying for ``size``-px inputs: ``[(grid, working_size, overlap), ...]``.

    Offered only for frames at least ``LARGE_FRAME_FACTOR`` x the largest input size; square
    grids 2, 4, 8, 16 whose tiles show ``min_defect_px`` at >= ``MIN_VISIBLE_PX`` network pixels
    (and the next coarser one), with tiles no smaller than ``size / MAX_TILE_UPSCALE``.

    Example:
        >>> [g for g, _, _ in candidate_grids((1024, 1024), 96, 8)]
        [(4, 4), (8, 8), (16, 16)]
    """
    short = min(frame_hw)
    if short < LARGE_FRAME_FACTOR * max(SIZES):
        return []
    working = (int(frame_hw[0]), int(frame_hw[1])) if max(frame_hw) <= 2048 else (1024, 1024)
    out = []
    for n in (2, 4, 8, 16):
        ov = 0.25 if n <= 4 else 0.0
        t = tile_side(min(working), n, ov)
        if t < size / MAX_TILE_UPSCALE:
            break
        out.append(((n, n), working, ov, min_defect_px * size / t))
    visible = [i for i, o in enumerate(out) if o[3] >= MIN_VISIBLE_PX]
    first = max(0, visible[0] - 1) if visible else max(0, len(out) - 1)
    return [o[:3] for o in out[first:]]


ALIGNED_MIN = 0.3   # alignment score above which frames count as aligned parts (see alignment_score)


def alignment_score(images: Sequence, side: int = 32) -> float:
    """How much of the images' pixel variance their mean image explains (0: stationary texture,
    1: every frame the same). Aligned parts (fixtured objects, centred digits, tiles with a fixed
    lighting layout) score 0.3-0.7; random windows of a texture ~0.02.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> noise = [rng.integers(0, 255, (40, 40)).astype(np.uint8) for _ in range(20)]
        >>> alignment_score(noise) < 0.1
        True
    """
    import cv2

    x = []
    for im in images:
        g = im if im.ndim == 2 else im[..., :3].mean(axis=2)
        x.append(cv2.resize(np.asarray(g, np.float32), (side, side), interpolation=cv2.INTER_AREA))
    x = np.stack(x)
    per = float(np.mean([v.var() for v in x]))
    return float(x.mean(axis=0).var() / per) if per > 0 else 1.0


def input_sizes(frame_hw: Sequence[int]) -> list[int]:
    """Network input sizes worth trying: 96 always, 160 / 224 when the frames have the pixels.

    Example:
        >>> input_sizes((28, 28)), input_sizes((290, 400))
        ([96], [96, 160, 224])
    """
    return [s for s in SIZES if s == SIZES[0] or min(frame_hw) >= 0.8 * s]


def derive_space(frame_hw: Sequence[int], weights: dict, min_defect_px: float | None = None,
                 pins: dict | None = None, sizes: Sequence[int] | None = None,
                 aligned: bool = False) -> list[Candidate]:
    """The stage-1 candidates for frames of ``frame_hw`` (median height, width after the ROI).

    Args:
        frame_hw: typical frame (height, width) in source pixels.
        weights: {alpha: weights path} of the backbones available (alpha 0.35 at least).
        min_defect_px: smallest defect the user cares about (source px); default
            :func:`default_min_defect_px`.
        pins: options the user set, which fix a dimension: any of ``size``, ``alpha``, ``taps``,
            ``pooling``, ``scoring``, ``k``, ``grid``, ``doc`` (a value or a list of values).
        sizes: input sizes to consider (default :func:`input_sizes`).
        aligned: the frames are aligned parts (:func:`alignment_score` >= ``ALIGNED_MIN``): pooled
            whole-frame features keep their layout (3x3-grid pooling only). Measured: on aligned
            sets grid pooling is best or within 0.01 of it, and without this rule synthetic
            validation picks max pooling on magnetic tile (regret 0.09).

    Returns:
        Candidates with k = 1 and DOC off (unless pinned); k and DOC are refined on the winner
        (:func:`refinements`). Tile grids use the smallest input and the narrowest backbone (tiles
        exist to keep pixels per defect high at a low cost per tile).
    """
    d = default_min_defect_px(frame_hw) if min_defect_px is None else float(min_defect_px)
    sizes = list(sizes) if sizes else input_sizes(frame_hw)
    out = []
    reductions = ("grid3",) if aligned else POOLED_REDUCTIONS
    for alpha in sorted(weights):
        for s in sizes:
            out += [Candidate(s, alpha, t, p) for t in POOLED_TAPS for p in reductions]
            out += [Candidate(s, alpha, t, "patch", sc) for t in PATCH_TAPS for sc in PATCH_SCORINGS]
    s, alpha = min(sizes), min(weights)
    for grid, working, ov in candidate_grids(frame_hw, s, d):
        g = dict(grid=grid, working_size=working, overlap=ov)
        out += [Candidate(s, alpha, t, "max", **g) for t in TILE_TAPS]
        out += [Candidate(s, alpha, t, "patch", "gauss", **g) for t in PATCH_TAPS]
    return apply_pins(out, pins or {})


def apply_pins(cands: Iterable[Candidate], pins: dict) -> list[Candidate]:
    """Keep candidates matching every pinned option (a value or a list of allowed values);
    ``k``, ``doc`` and ``normalize`` pins are set on every candidate instead (refinements, and a
    property of the input rather than of the network)."""
    pins = dict(pins)
    fixed = {k: pins.pop(k) for k in ("k", "doc", "normalize") if k in pins and not isinstance(pins[k], (list, tuple, set))}
    out = []
    for c in cands:
        ok = all(getattr(c, k) in (v if isinstance(v, (list, set)) else [v]) for k, v in pins.items())
        if ok:
            out.append(dataclasses.replace(c, **fixed) if fixed else c)
    return list(dict.fromkeys(out))


def refinements(winner: Candidate, doc_available: bool = True) -> list[Candidate]:
    """Stage-2 variants of the stage-1 winner: other k (k-NN) and DOC on (when it can train).

    Example:
        >>> [c.k for c in refinements(Candidate(96), doc_available=False)]
        [3, 5, 10]
    """
    out = []
    if winner.scoring == "knn" and winner.pooling != "patch":
        out += [dataclasses.replace(winner, k=k) for k in REFINE_K if k != winner.k]
    if doc_available and not winner.doc and winner.pooling != "patch":
        out.append(dataclasses.replace(winner, doc=True))
    return out


# ---------------------------------------------------------------------------- cost


@functools.lru_cache(maxsize=8)
def _trunk(alpha: float, size: int):
    """A weightless MobileNetV2 (shapes and MACs only)."""
    import keras

    return keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, include_top=False, weights=None)


@functools.lru_cache(maxsize=64)
def trunk_macs(alpha: float, size: int, upto: str) -> float:
    """Multiply-accumulates of MobileNetV2(alpha) at ``size`` px up to layer ``upto`` (inclusive).

    Example:
        >>> round(trunk_macs(1.0, 224, "out_relu") / 1e6)   # doctest: +SKIP
        300
    """
    import keras

    total = 0.0
    for layer in _trunk(alpha, size).layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            oh, ow, oc = layer.output.shape[1:]
            kh, kw = layer.kernel_size
            per = kh * kw * (1 if isinstance(layer, keras.layers.DepthwiseConv2D) else layer.input.shape[-1])
            total += float(oh * ow * oc * per)
        if layer.name == upto:
            break
    return total


def feature_dim(c: Candidate) -> tuple[int, int]:
    """(feature dimension per row, rows per tile) of a candidate's extractor.

    Example:
        >>> feature_dim(Candidate(96, taps="out", pooling="grid3"))   # doctest: +SKIP
        (11520, 1)
    """
    shapes = [tuple(_trunk(c.alpha, c.size).get_layer(n).output.shape[1:]) for n in c.layers]
    if c.pooling == "patch":
        return sum(s[2] for s in shapes), shapes[0][0] * shapes[0][1]
    g = int(c.pooling[4:]) ** 2 if c.pooling.startswith("grid") else 1
    return sum(g * s[2] for s in shapes), 1


# int8 LiteRT, 1 thread, one frame, whole trunk up to out_relu, ms on the 2-core x86 workstation
# (scripts/bench/explore_selection.py --part latency, load average ~3: a contended machine).
MEASURED_TRUNK_MS = {(0.35, 96): 0.33, (0.35, 160): 0.73, (0.35, 224): 1.73, (1.0, 96): 0.75, (1.0, 224): 3.56}


@dataclasses.dataclass
class LatencyModel:
    """Per-frame cost of a candidate on the device path (int8 extractor, 1 thread), here and on a Pi 4.

    x86 terms (this machine, 1 thread; constants measured by ``scripts/bench/explore_selection.py
    --part latency`` and the daemon / tile benchmarks, see docs/AUTOCONFIG.md):

    * inference: the measured int8 time of the trunk (``trunk_ms``, else ``inf_fixed_ms +
      inf_ns_per_mac * MACs``), scaled by the share of the trunk's MACs up to the deepest tap,
      times the tiles;
    * preprocess: ``prep_fixed_ms + prep_ns_per_px * frame pixels`` (x ``prep_tiled_factor`` with a grid),
      plus ``std_ns_per_px`` per resized-frame pixel with ``normalize = "standardize"`` (measured:
      0.14 ms for 224 x 224 x 3, 0.26 ms for a 1024 x 1024 grey working frame);
    * scoring: k-NN ``knn_ns_per_madd * rows * dim`` per query row; Gaussian ``gauss_ns_per_madd * dim^2``
      per row (patch rows: every position of every tile).

    Pi 4 (Cortex-A72 1.5 GHz): inference x ``pi4_inference_factor`` = the documented Pi 4 time of
    MobileNetV2 1.0/224 int8 with 4 threads (17-20 ms, GUIDE.md) over the same model on one
    uncontended x86 core (~2 ms, GUIDE.md); the numpy stages x ``pi4_numpy_factor`` (one A72 core vs
    one x86 core: the 6-10x estimate of bench_audit.py). Measured here under load the x86 figure
    is 3.6 ms (factor 5.2): the documented, larger factor keeps the Pi estimate on the safe side.
    """

    inf_fixed_ms: float = 0.38
    inf_ns_per_mac: float = 0.011
    trunk_ms: dict = dataclasses.field(default_factory=lambda: dict(MEASURED_TRUNK_MS))
    prep_fixed_ms: float = 0.05
    prep_ns_per_px: float = 1.0
    prep_tiled_factor: float = 3.5
    std_ns_per_px: float = 1.0
    knn_ns_per_madd: float = 0.22
    gauss_ns_per_madd: float = 0.035
    pi4_inference_factor: float = 9.0
    pi4_numpy_factor: float = 8.0
    basis: str = ("x86: int8 LiteRT 1 thread measured on the workstation (trunk table) + brute-force k-NN / "
                  "Gaussian cost per multiply-add; Pi 4: inference x9 (documented Pi 4 MobileNetV2 1.0/224 int8, "
                  "4 threads, 17-20 ms vs ~2 ms on one x86 core), numpy stages x8 (estimate)")

    def inference_ms(self, c: Candidate) -> float:
        """int8 inference of one frame (all its tiles) on this machine, 1 thread."""
        full = trunk_macs(c.alpha, c.size, "out_relu")
        upto = trunk_macs(c.alpha, c.size, c.layers[-1])
        ms = self.trunk_ms.get((c.alpha, c.size))
        if ms is None:
            ms = self.inf_fixed_ms + self.inf_ns_per_mac * 1e-6 * full
        return ms * upto / full * c.n_tiles

    def estimate(self, c: Candidate, frame_hw: Sequence[int], bank_rows: int, dim: int,
                 patches_per_tile: int = 1) -> dict:
        """``{"x86_ms", "pi4_ms", "inference_ms", "preprocess_ms", "scoring_ms", "basis"}`` for ``c``."""
        inf = self.inference_ms(c)
        px = (c.working_size[0] * c.working_size[1]) if c.grid else frame_hw[0] * frame_hw[1]
        prep = self.prep_fixed_ms + self.prep_ns_per_px * 1e-6 * px * (self.prep_tiled_factor if c.grid else 1.0)
        if c.normalize == "standardize":
            prep += self.std_ns_per_px * 1e-6 * (px if c.grid else c.size * c.size * 3)
        q = c.n_tiles * patches_per_tile
        if c.scoring == "gauss":
            score = self.gauss_ns_per_madd * 1e-6 * q * dim * dim
        else:
            score = self.knn_ns_per_madd * 1e-6 * q * bank_rows * dim
        x86 = inf + prep + score
        return {"x86_ms": x86, "pi4_ms": inf * self.pi4_inference_factor + (prep + score) * self.pi4_numpy_factor,
                "inference_ms": inf, "preprocess_ms": prep, "scoring_ms": score, "basis": self.basis}


PI4_FRAME_BUDGET_MS = 1000.0 / 30


def default_budget_ms(model: LatencyModel | None = None) -> float:
    """Default ``--budget-ms`` (this machine, 1 thread): what keeps a Pi 4 near 30 frames/s.

    The Pi's time is dominated by inference, so the budget is the 33 ms frame period over the Pi
    inference factor (9 -> 3.7 ms here).

    Example:
        >>> round(default_budget_ms(), 1)
        3.7
    """
    m = model or LatencyModel()
    return PI4_FRAME_BUDGET_MS / m.pi4_inference_factor


# ---------------------------------------------------------------------------- time budget


class SearchClock:
    """Wall-clock budget of a search, with a running estimate of what each step costs.

    Example:
        >>> clock = SearchClock(60.0)
        >>> clock.can_afford(10.0), clock.can_afford(120.0)
        (True, False)
    """

    def __init__(self, budget_s: float, reserve_s: float = 0.0):
        self.budget_s = float(budget_s)
        self.reserve_s = float(reserve_s)     # kept for the stages after the search (convert, bank)
        self.t0 = time.monotonic()
        self.skipped: list[str] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget_s - self.reserve_s - self.elapsed()

    def can_afford(self, estimate_s: float) -> bool:
        return estimate_s <= self.left()

    def skip(self, what: str, estimate_s: float) -> None:
        """Record a step left out for time (reported in the fit report)."""
        self.skipped.append(f"{what} (est. {estimate_s:.0f} s, {max(0.0, self.left()):.0f} s left)")
        log.warning("search time budget: skipping %s (estimated %.0f s, %.0f s left)", what, estimate_s,
                    max(0.0, self.left()))


def forward_seconds(ms_per_input: float, n_inputs: int) -> float:
    """Seconds of forward passes for ``n_inputs`` network inputs at a measured rate."""
    return ms_per_input * n_inputs / 1e3


def group_by_network(cands: Sequence[Candidate]) -> dict[tuple, list[Candidate]]:
    """Candidates grouped by the forward pass they share: (alpha, size, grid, working, overlap, doc, normalize).

    Example:
        >>> g = group_by_network([Candidate(96, taps="out"), Candidate(96, taps="b10"), Candidate(160)])
        >>> sorted(len(v) for v in g.values())
        [1, 2]
    """
    out: dict[tuple, list[Candidate]] = {}
    for c in cands:
        out.setdefault((c.alpha, c.size, c.grid, c.working_size, c.overlap, c.doc, c.normalize), []).append(c)
    return out


def log_space(cands: Sequence[Candidate]) -> str:
    """One line: how many candidates, over which networks."""
    g = group_by_network(cands)
    nets = ", ".join(f"a{a:g}/{s}{'/' + 'x'.join(map(str, gr)) if gr else ''}" for a, s, gr, *_ in g)
    return f"{len(cands)} candidates over {len(g)} forward passes ({nets})"

