"""``fit``'s options, each declared once: type, default, range, help, command-line flag and group.

:class:`FitConfig` is the one declaration; :func:`add_fit_options` builds the ``argparse``
options from it (flag, type, choices, default and help all come from the field), and
:func:`fit_config` turns parsed arguments back into a validated :class:`FitConfig`. DOC's
own settings live in :class:`DocOptions`, nested as ``FitConfig.doc_cfg``.

**A field left at None is searched** (``fit``'s configuration search, :mod:`trainer.search`):
setting it (``--size 160``, ``--taps b10``, ``--grid 4x4`` ...) pins that dimension of the
candidate space. ``--no-search`` fits one default configuration (:data:`NO_SEARCH`) instead.
:meth:`FitConfig.resolve` fills the searched fields from the chosen candidate.

Example:
    >>> cfg = FitConfig(size=(160, 160), taps="b6+b13+out")
    >>> cfg.pins()["size"], cfg.pins()["taps"], "pooling" in cfg.pins()
    (160, 'b6+b13+out', False)
    >>> cfg.resolve({"alpha": 0.35, "pooling": "max", "k": 1, "scoring": "knn", "doc": False}).input_spec().size
    (160, 160)
    >>> try:
    ...     FitConfig(k=0)
    ... except ValidationError as exc:
    ...     print(problems(exc, FitConfig))
    ['k: expected >= 1, found integer 0']
"""
from __future__ import annotations

import argparse
import os
import re
import typing
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from device.cli import size
from device.errors import ConfigError
from device.manifest import InputSpec
from device.schema import IntPair, IntQuad, problems

FIRST = "the options most fits need"
SEARCH = "search space (an option left unset is searched; setting it pins that dimension)"
TILES = "tile grid (large frames, small defects)"
DOC = "DOC fine-tuning"
EXPORT = "export, bank and threshold"
INPUT = "input preprocessing"
GROUPS = (FIRST, SEARCH, TILES, DOC, EXPORT, INPUT)
SEARCHED = "searched"
WEIGHTS_10_ENV = "ANOMALY_BACKBONE_WEIGHTS_1_0"
MIN_SEARCH_IMAGES = 20          # fewer normal images: the search refuses (--no-search fits anyway)
DEFAULT_TIME_BUDGET_S = 900.0   # 15 min for the whole fit

# --no-search (and fields a search could not decide): one configuration that works on most
# products (docs/AUTOCONFIG.md); pooling becomes grid3 for aligned parts (trainer.candidates.alignment_score).
NO_SEARCH = {"alpha": 0.35, "size": (96, 96), "taps": "b13+out", "pooling": "max", "k": 1, "scoring": "knn",
             "overlap": 0.0, "normalize": "none"}


def opt(default: Any, help: str, group: str = SEARCH, flag: str | None = None, shown: str | None = None,
        **constraints):
    """A field that is also a command-line option (``flag`` defaults to ``--field-name``;
    ``shown`` is the default as ``--help`` words it, e.g. ``searched``)."""
    return Field(default, description=help, json_schema_extra={"group": group, "flag": flag, "shown": shown},
                 **constraints)


class _Options(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True, allow_inf_nan=False,
                              protected_namespaces=())


class DocOptions(_Options):
    """DOC (Perera & Patel 2018) joint fine-tuning settings."""

    steps: int = opt(200, "DOC optimisation steps", DOC, "--doc-steps", ge=1, le=100_000)
    batch: int = opt(32, "DOC batch size (normal and reference images each)", DOC, "--doc-batch", ge=1, le=4096)
    lr: float = opt(5e-5, "DOC learning rate (Adam)", DOC, "--doc-lr", gt=0, le=1.0)
    lam: float = opt(0.1, "weight of the compactness loss: L = l_D + lambda * l_C", DOC, "--doc-lambda", ge=0,
                     le=1e6)
    train_from: Optional[str] = opt(None, "first trainable MobileNetV2 layer", DOC, "--train-from",
                                    shown="three blocks before the deepest feature tap (out_relu: block_13_expand)")
    taps: str = "out"
    pooling: str = "max"
    normalize: bool = True   # compactness on L2-normalised features (what the k-NN scores)
    seed: int = 0


class FitConfig(_Options):
    """Everything ``fit`` needs besides the images (None: searched, see the module docstring)."""

    weights: Optional[str] = opt(None, "MobileNetV2 alpha 0.35 weights: a local .weights.h5, 'imagenet' (downloads) "
                                       "or 'random'", FIRST, shown="env ANOMALY_BACKBONE_WEIGHTS, else imagenet")
    weights_10: Optional[str] = opt(None, "MobileNetV2 alpha 1.0 weights (.weights.h5, with or without the top); "
                                          "alpha 1.0 is searched when they are given", FIRST, "--weights-1.0",
                                    shown=f"env {WEIGHTS_10_ENV}, else ImageNet's when --weights is imagenet and "
                                          "they can be fetched, else alpha 1.0 is not searched")
    min_defect_px: Optional[float] = opt(None, "smallest defect that matters, in source pixels (chooses tile grids "
                                               "and validation defect sizes)", FIRST,
                                         shown="3%% of the short side, 2..8 px", ge=0.5, le=10_000)
    budget_ms: Optional[float] = opt(None, "per-frame latency budget on this machine (device path, 1 thread)", FIRST,
                                     shown="3.7 ms = a Raspberry Pi 4 near 30 frames/s (33 ms / 9, the Pi 4 / x86 "
                                           "inference factor; see docs/AUTOCONFIG.md)", gt=0, le=1e6)
    time_budget: float = opt(DEFAULT_TIME_BUDGET_S, "wall-clock budget of the whole fit, seconds (the search takes "
                                                    "what the later stages leave)", FIRST, shown="900 s = 15 min",
                             ge=30, le=7 * 86400)
    target_frr: float = opt(0.01, "false-reject rate of the threshold", FIRST, ge=0.0, lt=1.0)

    search: bool = opt(True, "fit one default configuration (96 px, alpha 0.35, taps b13+out, max pooling, "
                             "1-NN) instead of searching", SEARCH, "--no-search")
    alpha: Optional[float] = opt(None, "MobileNetV2 width (0.35, or 1.0 with --weights-1.0)", shown=SEARCHED,
                                 ge=0.35, le=1.4)
    size: Optional[IntPair] = opt(None, "network input, e.g. 96 or 160x160", shown=SEARCHED)
    taps: Optional[str] = opt(None, "feature layers (MobileNetV2 block expansions and out_relu)", shown=SEARCHED)
    pooling: Optional[str] = opt(None, "global max/avg; gridG: average over G x G cells (keeps layout: aligned "
                                       "parts); patch: one descriptor per feature-map position, tile score = worst "
                                       "patch (small defects; use an early tap such as b6 and --scoring gauss)",
                                 shown=SEARCHED)
    scoring: Optional[Literal["knn", "lof", "gauss"]] = opt(
        None, "knn: distance to the nearest bank features; lof: local outlier factor; gauss: Mahalanobis "
              "distance to a Gaussian of the bank (cheap per query: patches)", shown=SEARCHED)
    k: Optional[int] = opt(None, "neighbours averaged in the score", shown=SEARCHED, ge=1, le=1000)
    color: Optional[Literal["rgb", "grey"]] = opt(None, "colour mode (grey: colour drift is not scored)",
                                                  shown="grey when every training image is grey, else rgb")

    working_size: Optional[IntPair] = opt(None, "tile grid: bring the frame (or ROI) to this size first, e.g. 1024",
                                          TILES, shown=SEARCHED)
    grid: Optional[IntPair] = opt(None, "tile grid rows x columns, e.g. 4x4 ('none': whole frame)", TILES,
                                  shown=SEARCHED)
    overlap: Optional[float] = opt(None, "tile overlap, fraction of a tile", TILES, shown=SEARCHED, ge=0.0, lt=1.0)
    bank_mode: Literal["auto", "shared", "per_position"] = opt(
        "auto", "tiled inputs: one shared bank or one per tile position (auto: measured)", TILES)

    doc: Optional[bool] = opt(None, "DOC fine-tuning of the chosen extractor (--no-doc: never; --doc: always)", DOC,
                              shown="measured on the winner, kept only when it wins by more than noise")
    doc_cfg: DocOptions = Field(default_factory=DocOptions)
    reference: str = opt("samples", "DOC reference set: 'samples' (scikit-image photos), a folder, or keras:cifar10",
                         DOC)
    n_reference: int = 2000

    quant: Literal["auto", "int8", "float", "float16", "dynamic"] = opt(
        "auto", "auto: full int8 unless float is better by more than 0.01 validation AUROC and by more than noise "
                "(measured and recorded in the manifest); int8 forces full integer", EXPORT)
    compare_float: bool = True
    bank_max: Optional[int] = opt(None, "subsample the bank to this many features", EXPORT, ge=1)
    bank_subsample: Literal["coreset", "random"] = opt("coreset", "bank subsampling", EXPORT)
    projection: Optional[int] = opt(None, "PCA shortlist of this many dimensions with exact re-rank (0: none)",
                                    EXPORT, shown="shipped when measured faster at unchanged scores", ge=0, le=4096)
    folds: int = opt(10, "cross-fitting folds: each training image is scored against a bank without its fold "
                         "(threshold, validation)", EXPORT, ge=2, le=100)
    seed: int = opt(0, "random seed (folds, synthetic defects, DOC)", EXPORT)

    resize: Literal["stretch", "letterbox", "center_crop"] = opt("stretch", "how the frame meets the input aspect",
                                                                 INPUT)
    interpolation: Literal["area", "linear", "nearest"] = opt(
        "area", "resize filter (area: anti-aliased, keeps thin defects; linear: cheaper)", INPUT)
    roi: Optional[IntQuad] = opt(None, "x,y,width,height crop in source pixels", INPUT)
    normalize: Optional[Literal["none", "standardize"]] = opt(
        None, "standardize: bring every frame to one mean grey level and contrast before the network, so lighting "
              "and exposure differences between parts are not scored (the drift watch still sees them)", INPUT,
        shown="searched: standardize when validation with it is better by more than noise")

    @model_validator(mode="after")
    def _consistent(self) -> "FitConfig":
        from models.backbone import FEATURE_TAPS, POOLINGS

        if self.taps is not None and self.taps not in FEATURE_TAPS:
            raise ValueError(f"taps: expected one of {', '.join(FEATURE_TAPS)}, found {self.taps!r}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {', '.join(POOLINGS)}, found {self.pooling!r}")
        if self.projection and self.scoring not in (None, "knn"):
            raise ValueError(f"projection: a PCA shortlist needs --scoring knn, found {self.scoring!r}")
        tiled = self.grid is not None and tuple(self.grid) != (1, 1)
        if tiled and self.working_size is None:
            raise ValueError(f"grid: a tile grid needs --working-size, the size the frame is brought to before it "
                             f"is cut (e.g. --working-size 1024), found --grid {self.grid[0]}x{self.grid[1]} alone")
        if self.working_size is not None and not tiled:
            raise ValueError("working_size: a working size is for a tile grid; give --grid too (e.g. --grid 4x4), "
                             f"found --working-size {self.working_size[0]}x{self.working_size[1]} with "
                             + ("--grid none" if self.grid is not None else "no --grid"))
        if self.size is not None and (tiled or self.grid is None and self.working_size is None):
            self.input_spec(NO_SEARCH["overlap"] if self.overlap is None else self.overlap)   # the spec's own checks
        return self

    # ------------------------------------------------------------------ search
    @property
    def whole_frame(self) -> bool:
        """``--grid none``: the whole frame is pinned (no tile grid)."""
        return self.grid is not None and tuple(self.grid) == (1, 1)

    def pins(self) -> dict:
        """The search dimensions this config fixes (``trainer.candidates.derive_space`` pins)."""
        p: dict[str, Any] = {}
        for name in ("alpha", "taps", "pooling", "scoring", "k", "doc", "normalize"):
            if getattr(self, name) is not None:
                p[name] = getattr(self, name)
        if self.size is not None and self.size[0] == self.size[1]:
            p["size"] = int(self.size[0])
        if self.whole_frame:
            p["grid"] = None
        elif self.grid is not None:
            p["grid"] = tuple(self.grid)
        return p

    def unresolved(self) -> list[str]:
        """Names of the searched fields still unset."""
        return [n for n in ("alpha", "size", "taps", "pooling", "scoring", "k", "doc", "overlap", "color", "normalize")
                if getattr(self, n) is None]

    def resolve(self, chosen: dict) -> "FitConfig":
        """A copy with every searched field (None) taken from ``chosen`` (a candidate's
        ``fit_overrides()``, or :data:`NO_SEARCH`); pinned fields stay as they are."""
        d = self.model_dump()
        for k, v in {**NO_SEARCH, **chosen}.items():
            if k in ("grid", "working_size"):
                if self.grid is None and self.working_size is None:
                    d[k] = v
            elif d.get(k) is None:
                d[k] = v
        if d["grid"] is not None and tuple(d["grid"]) == (1, 1):
            d["grid"] = d["working_size"] = None
        return FitConfig.model_validate(d)

    def input_spec(self, overlap: float | None = None) -> InputSpec:
        """The device's input spec (size must be resolved: :meth:`resolve`)."""
        if self.size is None:
            raise ValueError("size: not resolved yet (searched); call FitConfig.resolve first")
        tiled = self.grid is not None and tuple(self.grid) != (1, 1)
        try:
            return InputSpec(size=tuple(self.size), color=self.color or "rgb", resize=self.resize, roi=self.roi,
                             interpolation=self.interpolation, pixel_scale=1.0, pixel_offset=0.0,
                             normalize=self.normalize or "none",
                             working_size=tuple(self.working_size) if tiled else None,
                             grid=tuple(self.grid) if tiled else None,
                             overlap=(overlap if overlap is not None else self.overlap or 0.0) if tiled else 0.0)
        except ValidationError as exc:
            raise ValueError("; ".join(problems(exc, InputSpec))) from None

    def weights_by_alpha(self) -> dict:
        """{alpha: weights} of the backbones the search may use: alpha 0.35 always, alpha 1.0 when its
        weights are given (``--weights-1.0`` or ``$ANOMALY_BACKBONE_WEIGHTS_1_0``) or, with
        ImageNet weights (the default), when Keras's published alpha 1.0 file can be fetched (or is
        cached): a searched width never runs on random weights."""
        from models.backbone import imagenet_weights_file, resolve_weights

        out = {0.35: resolve_weights(self.weights)}
        w10 = self.weights_10 or os.environ.get(WEIGHTS_10_ENV)
        if not w10 and out[0.35] == "imagenet" and self.search and self.alpha in (None, 1.0):
            w10 = imagenet_weights_file(1.0)
            if w10:
                out[1.0] = w10
            return out
        if w10:
            from models.backbone import WeightsError

            if not os.path.isfile(w10):
                src = "--weights-1.0" if self.weights_10 else f"${WEIGHTS_10_ENV}"
                raise WeightsError(f"{w10}: alpha 1.0 weights file not found (from {src})")
            out[1.0] = w10
        return out


def _depth(layer: str) -> float:
    """Position of a MobileNetV2 layer by its block number (``out_relu`` is the deepest)."""
    m = re.match(r"block_(\d+)_", layer)
    return float(m.group(1)) if m else (-1.0 if layer.startswith(("Conv1", "bn_Conv1", "expanded_conv")) else 99.0)


def default_train_from(taps: str) -> str:
    """First trainable layer for DOC when ``--train-from`` is unset: three blocks before the deepest tap.

    Example:
        >>> default_train_from("out"), default_train_from("b10"), default_train_from("b6+b10+b13")
        ('block_13_expand', 'block_7_expand', 'block_10_expand')
    """
    deepest = min(_depth(max(_feature_taps()[taps], key=_depth)), 16.0)
    return f"block_{max(1, int(deepest) - 3)}_expand"


def check_trainable_reaches_taps(taps: str, train_from: str | None) -> None:
    """Refuse a DOC set-up whose trainable layers all lie after the tapped features."""
    if train_from is None:
        return
    deepest = max(_feature_taps()[taps], key=_depth)
    if _depth(train_from) > _depth(deepest):
        raise ConfigError(f"DOC would change nothing: first trainable layer {train_from!r} lies after the "
                          f"deepest feature tap {deepest!r}; train from an earlier block "
                          f"(e.g. --train-from block_8_expand for tap b10) or use --no-doc")


def _feature_taps() -> dict:
    from models.backbone import FEATURE_TAPS

    return FEATURE_TAPS


# --------------------------------------------------------------------------------------- argparse
def grid_arg(s: str):
    """``RxC`` tile grid, ``N`` for N x N, or ``none`` (whole frame, stored as 1x1)."""
    if s.strip().lower() == "none":
        return (1, 1)
    try:
        v = [int(x) for x in s.lower().split("x")]
    except ValueError:
        v = []
    if len(v) not in (1, 2) or min(v) < 1:
        raise argparse.ArgumentTypeError(f"expected RxC (e.g. 4x4) or none, found {s!r}")
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _roi(s: str):
    try:
        parts = tuple(int(v) for v in s.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--roi expects x,y,width,height; found {s!r}")
    return parts


def _base(ann):
    if typing.get_origin(ann) is typing.Union:          # Optional[X] -> X
        return next(a for a in typing.get_args(ann) if a is not type(None))
    return ann


def _arg_kwargs(name: str, field, default, shown: str | None) -> dict:
    """argparse keyword arguments for one field (type and choices from its annotation)."""
    base = _base(field.annotation)
    kw: dict[str, Any] = {"dest": name, "default": default, "metavar": name.split(".")[-1].upper()}
    if typing.get_origin(base) is Literal:
        kw["choices"] = typing.get_args(base)
        kw.pop("metavar")
    elif name in ("size", "working_size", "grid"):
        kw["type"] = grid_arg if name == "grid" else size
    elif name == "roi":
        kw["type"] = _roi
    elif base in (int, float):
        kw["type"] = base
    if name in ("taps", "pooling"):
        from models.backbone import FEATURE_TAPS, POOLINGS

        kw["choices"] = sorted(FEATURE_TAPS) if name == "taps" else POOLINGS
        kw.pop("metavar", None)
    if shown is None:
        shown = "x".join(map(str, default)) if isinstance(default, tuple) else default
    kw["help"] = f"{field.description} (default: {shown})"
    return kw


def _declared(model: type[BaseModel]):
    for name, f in model.model_fields.items():
        extra = f.json_schema_extra or {}
        if isinstance(extra, dict) and "group" in extra:
            yield name, f, extra


def option_groups(p: argparse.ArgumentParser) -> dict:
    """The argument groups of ``fit``'s options, in the order ``--help`` shows them."""
    return {g: p.add_argument_group(g) for g in GROUPS}


def add_fit_options(p: argparse.ArgumentParser, defaults: dict | None = None, groups: dict | None = None) -> None:
    """Add every :class:`FitConfig` option to ``p``, grouped; ``defaults`` overrides shown defaults."""
    defaults = defaults or {}
    groups = groups or option_groups(p)
    for model, prefix in ((FitConfig, ""), (DocOptions, "doc_cfg.")):
        for name, f, extra in _declared(model):
            flag = extra.get("flag") or "--" + name.replace("_", "-")
            dest = prefix + name
            default = defaults.get(dest, f.default)
            shown = None if dest in defaults else extra.get("shown")
            g = groups[extra["group"]]
            if _base(f.annotation) is bool and f.default is None:     # --doc / --no-doc, unset = searched
                g.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=default,
                               help=f"{f.description} (default: {shown})")
            elif f.annotation is bool:     # a switch that turns the default off (--no-search)
                g.add_argument(flag, dest=dest, action="store_false", default=default, help=f.description)
            else:
                g.add_argument(flag, **_arg_kwargs(dest, f, default, shown))


def _as_flags(line: str, model: type[BaseModel]) -> str:
    """``steps: expected …`` -> ``--doc-steps: expected …`` (the option the user typed)."""
    key, _, rest = line.partition(":")
    if key == "(document)":
        return rest.strip().removeprefix("(document): ")
    f = model.model_fields.get(key)
    extra = (f.json_schema_extra or {}) if f is not None else {}
    flag = extra.get("flag") if isinstance(extra, dict) else None
    return (flag or "--" + key.replace("_", "-")) + ":" + rest


def fit_config(args: argparse.Namespace) -> FitConfig:
    """A validated :class:`FitConfig` from parsed options; :class:`ConfigError` names the option."""
    values = vars(args)
    doc = {n: values[f"doc_cfg.{n}"] for n, _, _ in _declared(DocOptions) if f"doc_cfg.{n}" in values}
    top = {n: values[n] for n, _, _ in _declared(FitConfig) if n in values}
    try:
        doc_cfg = DocOptions(**doc)
    except ValidationError as exc:
        raise ConfigError("; ".join(_as_flags(ln, DocOptions) for ln in problems(exc, DocOptions))) from None
    try:
        cfg = FitConfig(**top, doc_cfg=doc_cfg)
    except ValidationError as exc:
        raise ConfigError("; ".join(_as_flags(ln, FitConfig) for ln in problems(exc, FitConfig))) from None
    if cfg.doc is not False and cfg.taps is not None:
        check_trainable_reaches_taps(cfg.taps, cfg.doc_cfg.train_from)
    return cfg
