"""``fit``'s options, each declared once: type, default, range, help, command-line flag and group.

:class:`FitConfig` is the one declaration; :func:`add_fit_options` builds the ``argparse``
options from it (flag, type, choices, default and help all come from the field), and
:func:`fit_config` turns parsed arguments back into a validated :class:`FitConfig`. DOC's
own settings live in :class:`DocOptions`, nested as ``FitConfig.doc_cfg``.

Example:
    >>> cfg = FitConfig(size=(160, 160), taps="b6+b13+out")
    >>> cfg.input_spec().size, cfg.doc_cfg.steps
    ((160, 160), 200)
    >>> try:
    ...     FitConfig(k=0)
    ... except ValidationError as exc:
    ...     print(problems(exc, FitConfig))
    ['k: expected >= 1, found integer 0']
"""
from __future__ import annotations

import argparse
import re
import typing
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from device.cli import size
from device.errors import ConfigError
from device.manifest import InputSpec
from device.schema import IntPair, IntQuad, problems

GROUPS = ("model", "DOC fine-tuning", "export and threshold")


def opt(default: Any, help: str, group: str = "model", flag: str | None = None, **constraints):
    """A field that is also a command-line option (``flag`` defaults to ``--field-name``)."""
    return Field(default, description=help, json_schema_extra={"group": group, "flag": flag}, **constraints)


class _Options(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True, allow_inf_nan=False,
                              protected_namespaces=())


class DocOptions(_Options):
    """DOC (Perera & Patel 2018) joint fine-tuning settings."""

    steps: int = opt(200, "DOC optimisation steps", "DOC fine-tuning", "--doc-steps", ge=1, le=100_000)
    batch: int = opt(32, "DOC batch size (normal and reference images each)", "DOC fine-tuning", "--doc-batch",
                     ge=1, le=4096)
    lr: float = opt(5e-5, "DOC learning rate (Adam)", "DOC fine-tuning", "--doc-lr", gt=0, le=1.0)
    lam: float = opt(0.1, "weight of the compactness loss: L = l_D + lambda * l_C", "DOC fine-tuning",
                     "--doc-lambda", ge=0, le=1e6)
    train_from: str = opt("block_13_expand", "first trainable MobileNetV2 layer", "DOC fine-tuning", "--train-from")
    taps: str = "out"
    pooling: str = "max"
    normalize: bool = True   # compactness on L2-normalised features (what the k-NN scores)
    seed: int = 0


class FitConfig(_Options):
    """Everything ``fit`` needs besides the images."""

    alpha: float = opt(0.35, "MobileNetV2 width", ge=0.35, le=1.4)
    size: IntPair = opt((96, 96), "network input, e.g. 96 or 160x160")
    weights: Optional[str] = opt(None, "'imagenet' (default; downloads), a local .weights.h5, or 'random'; "
                                       "env ANOMALY_BACKBONE_WEIGHTS")
    color: Literal["rgb", "grey"] = opt("rgb", "colour mode (grey: colour drift is not scored)")
    resize: Literal["stretch", "letterbox", "center_crop"] = opt("stretch", "how the frame meets the input aspect")
    interpolation: Literal["area", "linear", "nearest"] = opt(
        "area", "resize filter (area: anti-aliased, keeps thin defects; linear: cheaper)")
    roi: Optional[IntQuad] = opt(None, "x,y,width,height crop in source pixels")
    working_size: Optional[IntPair] = opt(None, "tile grid: bring the frame (or ROI) to this size first, e.g. 1024")
    grid: Optional[IntPair] = opt(None, "tile grid rows x columns, e.g. 4x4")
    overlap: float = opt(0.0, "tile overlap, fraction of a tile", ge=0.0, lt=1.0)
    bank_mode: Literal["auto", "shared", "per_position"] = opt(
        "auto", "tiled inputs: one shared bank or one per tile position (auto: measured)")
    taps: str = opt("out", "feature layers (MobileNetV2 block expansions and out_relu)")
    pooling: str = opt("max", "global max/avg; gridG: average over G x G cells (keeps layout: aligned parts); "
                              "patch: one descriptor per feature-map position, tile score = worst patch (small "
                              "defects; use an early tap such as b6 and --scoring gauss)")
    k: int = opt(1, "neighbours averaged in the score", ge=1, le=1000)
    scoring: Literal["knn", "lof", "gauss"] = opt(
        "knn", "knn: distance to the nearest bank features; lof: local outlier factor; gauss: Mahalanobis "
               "distance to a Gaussian of the bank (cheap per query: patches)")
    doc: bool = opt(True, "ship the untouched backbone (no DOC fine-tuning)", "DOC fine-tuning", "--no-doc")
    doc_cfg: DocOptions = Field(default_factory=DocOptions)
    reference: str = opt("samples", "DOC reference set: 'samples' (scikit-image photos), a folder, or keras:cifar10",
                         "DOC fine-tuning")
    n_reference: int = 2000
    quant: Literal["auto", "int8", "float", "float16", "dynamic"] = opt(
        "auto", "auto: full int8 unless it loses more than 0.01 validation AUROC against float, then float "
                "(measured and recorded in the manifest); int8 forces full integer", "export and threshold")
    compare_float: bool = True
    bank_max: Optional[int] = opt(None, "subsample the bank to this many features", "export and threshold", ge=1)
    bank_subsample: Literal["coreset", "random"] = opt("coreset", "bank subsampling", "export and threshold")
    projection: Optional[int] = opt(None, "ship a PCA shortlist of this many dimensions (exact scores, faster k-NN)",
                                    "export and threshold", ge=1, le=4096)
    target_frr: float = opt(0.01, "false-reject rate of the threshold", "export and threshold", ge=0.0, lt=1.0)
    calib_fraction: float = opt(0.2, "share of the training images held out for the threshold",
                                "export and threshold", gt=0.0, lt=1.0)
    seed: int = opt(0, "random seed (splits, synthetic defects, DOC)", "export and threshold")

    @model_validator(mode="after")
    def _consistent(self) -> "FitConfig":
        from models.backbone import FEATURE_TAPS, POOLINGS

        if self.taps not in FEATURE_TAPS:
            raise ValueError(f"taps: expected one of {', '.join(FEATURE_TAPS)}, found {self.taps!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {', '.join(POOLINGS)}, found {self.pooling!r}")
        if self.projection is not None and self.scoring != "knn":
            raise ValueError(f"projection: a PCA shortlist needs --scoring knn, found {self.scoring!r}")
        self.input_spec()        # the spec's own checks (tile grid needs a working size, ...)
        return self

    def input_spec(self) -> InputSpec:
        try:
            return InputSpec(size=tuple(self.size), color=self.color, resize=self.resize, roi=self.roi,
                             interpolation=self.interpolation, pixel_scale=1.0, pixel_offset=0.0,
                             working_size=tuple(self.working_size) if self.working_size else None,
                             grid=tuple(self.grid) if self.grid else None, overlap=self.overlap)
        except ValidationError as exc:
            hint = (" (a tile grid needs --working-size, e.g. --working-size 1024)"
                    if self.grid and not self.working_size else "")
            raise ValueError("; ".join(problems(exc, InputSpec)) + hint) from None


def _depth(layer: str) -> float:
    """Position of a MobileNetV2 layer by its block number (``out_relu`` is the deepest)."""
    m = re.match(r"block_(\d+)_", layer)
    return float(m.group(1)) if m else (-1.0 if layer.startswith(("Conv1", "bn_Conv1", "expanded_conv")) else 99.0)


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
    """``RxC`` tile grid (or ``N`` for N x N)."""
    try:
        v = [int(x) for x in s.lower().split("x")]
    except ValueError:
        v = []
    if len(v) not in (1, 2) or min(v) < 1:
        raise argparse.ArgumentTypeError(f"expected RxC (e.g. 4x4), found {s!r}")
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _roi(s: str):
    try:
        parts = tuple(int(v) for v in s.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--roi expects x,y,width,height; found {s!r}")
    return parts


def _arg_kwargs(name: str, field, default) -> dict:
    """argparse keyword arguments for one field (type and choices from its annotation)."""
    ann = field.annotation
    base = ann
    if typing.get_origin(ann) is typing.Union:          # Optional[X] -> X
        base = next(a for a in typing.get_args(ann) if a is not type(None))
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
    shown = "x".join(map(str, default)) if isinstance(default, tuple) else default
    kw["help"] = f"{field.description} (default: {shown})"
    return kw


def _declared(model: type[BaseModel]):
    for name, f in model.model_fields.items():
        extra = f.json_schema_extra or {}
        if isinstance(extra, dict) and "group" in extra:
            yield name, f, extra


def add_fit_options(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """Add every :class:`FitConfig` option to ``p``, grouped; ``defaults`` overrides shown defaults."""
    defaults = defaults or {}
    groups = {g: p.add_argument_group(g) for g in GROUPS}
    for model, prefix in ((FitConfig, ""), (DocOptions, "doc_cfg.")):
        for name, f, extra in _declared(model):
            flag = extra.get("flag") or "--" + name.replace("_", "-")
            dest = prefix + name
            default = defaults.get(dest, f.default)
            if f.annotation is bool:     # a switch that turns the default off (--no-doc)
                groups[extra["group"]].add_argument(flag, dest=dest, action="store_false", default=default,
                                                    help=f.description)
                continue
            groups[extra["group"]].add_argument(flag, **_arg_kwargs(dest, f, default))


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
    if cfg.doc:
        check_trainable_reaches_taps(cfg.taps, cfg.doc_cfg.train_from)
    return cfg
