"""The bundle manifest as typed, frozen specs: the one schema of ``manifest.json``.

Every value the device uses to decide is declared here with its type and range, and checked
where it enters (:meth:`Manifest.from_json`): unknown keys, wrong types (a JSON ``true`` is not an
integer, a list is not an object), NaN, infinities, negative thresholds, a ``k`` larger than the
bank, a projection file that is not a bundle entry are all refused with the key path, what was
expected and what was found. Records kept for people (backbone provenance, model selection,
training summary, quantisation measurements, lineage, capture conditions) are JSON objects that
no decision reads.

Schema versions: 1 (written up to this change; read by migration) and 2 (current). Version 2
adds nothing a version-1 bundle lacks but makes ``input.size`` and the extractor interface
mandatory; :func:`migrate` maps a version-1 document onto version 2.

Example:
    >>> spec = InputSpec(size=(96, 96))
    >>> spec.tile_boxes()
    [(0, 0, 96, 96)]
    >>> InputSpec.from_dict({"size": [32, 32], "color": "grey"}).color
    'grey'
    >>> InputSpec.from_dict({"size": [32, True]})
    Traceback (most recent call last):
    ...
    ValueError: size.1: expected a valid integer, found boolean True
"""
from __future__ import annotations

import functools
import json
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from device.errors import BundleError
from device.schema import IntPair, IntQuad, Record, Spec, ValidationError, problems

SCHEMA = "anomaly-bundle"
SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
REQUIRED_FILES = ("extractor.tflite", "bank.npy")

COLOR_MODES = ("rgb", "grey")
RESIZE_MODES = ("stretch", "letterbox", "center_crop")
INTERPOLATIONS = ("area", "linear", "nearest")
QUANTIZATIONS = ("int8", "float", "float16", "dynamic")
NORMALIZATIONS = ("l2", "none")
SCORING_METHODS = ("knn", "lof", "gauss")
BANK_MODES = ("shared", "per_position")


# ------------------------------------------------------------------------------------------- input
class InputSpec(Spec):
    """How a frame becomes network input.

    Attributes:
        size: network input (height, width) in pixels.
        color: ``"rgb"`` keeps colour (grey frames are replicated to 3 channels);
            ``"grey"`` converts to luminance first, then replicates (colour drift is not scored).
        roi: optional crop ``(x, y, width, height)`` in source pixels, applied first.
        resize: ``"stretch"`` (ignore aspect), ``"letterbox"`` (fit, pad with ``pad_value``)
            or ``"center_crop"`` (fill, crop the excess).
        interpolation: OpenCV interpolation used by the resize.
        min_size: smallest accepted source side (after the ROI), in pixels.
        pad_value: grey level of letterbox padding.
        pixel_scale, pixel_offset: float network input = pixel * scale + offset
            (MobileNetV2: 1/127.5 and -1, i.e. [-1, 1]).
        working_size: with a tile grid, the (height, width) the frame (or ROI) is first
            brought to (with ``resize``); tiles are cut from it and each stretched to ``size``.
        grid, overlap: tile grid as (rows, columns), neighbours overlapping by ``overlap``
            (a fraction of the tile, 0 <= overlap < 1).
        tile, stride: alternatively, tile (height, width) and stride in working-size pixels;
            the last row/column is aligned to the far edge so the whole frame is covered.
        normalize: ``"none"``, or ``"standardize"``: after the resize, the frame's grey levels are
            brought to a fixed mean and spread (:func:`device.preprocess.standardize`), so global
            lighting and exposure differences between parts are not scored (the drift watch still
            sees them in the raw frames). ``fit`` chooses it where validation shows it helps.
    """

    size: IntPair = (96, 96)
    color: Literal["rgb", "grey"] = "rgb"
    roi: Optional[IntQuad] = None
    resize: Literal["stretch", "letterbox", "center_crop"] = "stretch"
    interpolation: Literal["area", "linear", "nearest"] = "area"
    min_size: int = Field(8, ge=1, le=100_000)
    pad_value: int = Field(0, ge=0, le=255)
    pixel_scale: float = Field(1.0 / 127.5, gt=0.0, le=1e6)
    pixel_offset: float = Field(-1.0, ge=-1e6, le=1e6)
    working_size: Optional[IntPair] = None
    grid: Optional[IntPair] = None
    overlap: float = Field(0.0, ge=0.0, lt=1.0)
    tile: Optional[IntPair] = None
    stride: Optional[IntPair] = None
    normalize: Literal["none", "standardize"] = "none"

    @model_validator(mode="after")
    def _consistent(self) -> "InputSpec":
        problems_ = []
        if min(self.size) < 8 or max(self.size) > 4096:
            problems_.append(f"size must be (height, width) of 8..4096 px, found {self.size!r}")
        if self.roi is not None and (self.roi[2] <= 0 or self.roi[3] <= 0 or self.roi[0] < 0 or self.roi[1] < 0):
            problems_.append(f"roi must be (x, y, width, height) with x, y >= 0 and width, height > 0, "
                             f"found {self.roi!r}")
        problems_ += self._grid_problems()
        if problems_:
            raise ValueError("invalid input spec: " + "; ".join(problems_))
        return self

    def _grid_problems(self) -> list[str]:
        if not self.tiled:
            return [] if self.working_size is None else ["working_size is set but no grid or tile is declared"]
        p = []
        if self.grid is not None and self.tile is not None:
            p.append("declare either grid (rows, columns) or tile + stride, not both")
        if self.working_size is None or not 8 <= min(self.working_size) <= max(self.working_size) <= 65536:
            p.append(f"a tile grid needs working_size (height, width) of 8..65536 px, found {self.working_size!r}")
            return p
        wh, ww = self.working_size
        if self.grid is not None:
            if not 1 <= min(self.grid) <= max(self.grid) <= 256:
                p.append(f"grid must be (rows, columns) of 1..256, found {self.grid!r}")
            elif min(_grid_axis(wh, self.grid[0], self.overlap)[0], _grid_axis(ww, self.grid[1], self.overlap)[0]) < 8:
                p.append(f"grid {self.grid} with overlap {self.overlap} cuts tiles under 8 px from working size "
                         f"{wh}x{ww}")
        if self.tile is not None:
            if self.stride is None or min(self.stride) < 1:
                p.append(f"stride must be (rows, columns) >= 1 px, found {self.stride!r}")
            if min(self.tile) < 8:
                p.append(f"tile must be (height, width) >= 8 px, found {self.tile!r}")
            elif self.tile[0] > wh or self.tile[1] > ww:
                p.append(f"tile {self.tile[0]}x{self.tile[1]} is larger than the working size {wh}x{ww}")
            elif self.stride is not None and min(self.stride) >= 1 and \
                    len(_stride_axis(wh, self.tile[0], self.stride[0])) * len(_stride_axis(ww, self.tile[1], self.stride[1])) > 65536:
                p.append(f"tile {self.tile} with stride {self.stride} makes more than 65536 tiles")
        return p

    @property
    def tiled(self) -> bool:
        return self.grid is not None or self.tile is not None

    def tile_boxes(self) -> list[tuple[int, int, int, int]]:
        """Tile boxes ``(x, y, width, height)`` in working-size pixels, row-major; one box
        covering the network input when there is no grid."""
        return _tile_boxes(self)

    def _compute_tile_boxes(self) -> list[tuple[int, int, int, int]]:
        if not self.tiled:
            return [(0, 0, self.size[1], self.size[0])]
        wh, ww = self.working_size
        if self.grid is not None:
            th, ys = _grid_axis(wh, self.grid[0], self.overlap)
            tw, xs = _grid_axis(ww, self.grid[1], self.overlap)
        else:
            th, ys = self.tile[0], _stride_axis(wh, self.tile[0], self.stride[0])
            tw, xs = self.tile[1], _stride_axis(ww, self.tile[1], self.stride[1])
        return [(x, y, tw, th) for y in ys for x in xs]

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, columns) of the tile grid; (1, 1) without one."""
        boxes = self.tile_boxes()
        return len({b[1] for b in boxes}), len({b[0] for b in boxes})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        """Validate a manifest's ``input`` object (``ValueError`` naming the problem)."""
        try:
            return cls.model_validate(d)
        except ValidationError as exc:
            raise ValueError("; ".join(problems(exc, cls))) from None

    def replace(self, **changes) -> "InputSpec":
        """A validated copy with ``changes``."""
        return type(self).model_validate({**self.__dict__, **changes})


@functools.lru_cache(maxsize=64)
def _tile_boxes(spec: InputSpec) -> list[tuple[int, int, int, int]]:
    return spec._compute_tile_boxes()


def _grid_axis(length: int, n: int, overlap: float) -> tuple[int, list[int]]:
    """Tile length and start offsets for ``n`` tiles overlapping by ``overlap`` over ``length``."""
    tile = int(round(length / (n - (n - 1) * overlap)))
    tile = min(tile, length)
    if n == 1:
        return tile, [0]
    return tile, [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def _stride_axis(length: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


# --------------------------------------------------------------------------------------- extractor
class QuantParams(Spec):
    """TFLite tensor quantisation: real = (q - zero_point) * scale; scale 0 = not quantised."""

    scale: float = Field(0.0, ge=0.0)
    zero_point: int = Field(0, ge=-2 ** 31, le=2 ** 31 - 1)


class PatchLayout(Spec):
    """A patch extractor's output per tile: ``grid`` (h, w) positions of ``dim`` channels."""

    grid: IntPair
    dim: int = Field(ge=1, le=1 << 20)

    @field_validator("grid")
    @classmethod
    def _grid(cls, v):
        if min(v) < 1 or v[0] * v[1] > 1 << 16:
            raise ValueError(f"grid must be (h, w) >= 1 with at most 65536 positions, found {v!r}")
        return v

    @property
    def count(self) -> int:
        return self.grid[0] * self.grid[1]


class ExtractorSpec(Spec):
    """The ``.tflite`` feature extractor's interface (checked against the model itself by
    ``anomaly-device verify``)."""

    file: Literal["extractor.tflite"] = "extractor.tflite"
    quantization: Literal["int8", "float", "float16", "dynamic"]
    feature_normalize: Literal["l2", "none"]
    runtime_checked: Optional[str] = None
    input_shape: tuple[int, int, int] = Field(description="(height, width, 3)")
    input_dtype: Optional[Literal["uint8", "int8", "float32", "float16", "int16"]] = None
    input_quant: Optional[QuantParams] = None
    output_dim: int = Field(ge=1, le=1 << 24)
    output_quant: Optional[QuantParams] = None
    patches: Optional[PatchLayout] = None

    @field_validator("input_shape", mode="before")
    @classmethod
    def _shape(cls, v):
        return tuple(v) if isinstance(v, list) else v

    @model_validator(mode="after")
    def _consistent(self) -> "ExtractorSpec":
        if self.input_shape[2] != 3 or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be (height, width, 3), found {list(self.input_shape)}")
        if self.patches is not None and self.patches.count * self.patches.dim != self.output_dim:
            raise ValueError(f"patches {self.patches.grid[0]}x{self.patches.grid[1]}x{self.patches.dim} does not "
                             f"match output_dim {self.output_dim}")
        return self

    @property
    def patches_per_tile(self) -> int:
        """Feature rows per tile: h*w for a patch extractor, 1 for pooled features."""
        return self.patches.count if self.patches else 1

    @property
    def row_dim(self) -> int:
        """Width of one feature row (a bank row)."""
        return self.patches.dim if self.patches else self.output_dim


# ----------------------------------------------------------------------------------------- scoring
class ProjectionSpec(Spec):
    """A PCA of the bank (files are bundle entries): shortlist + exact re-rank, or k-NN in the
    projected space (``rerank: false``, approximate: the threshold is calibrated there)."""

    method: Literal["pca"] = "pca"
    dims: int = Field(ge=1, le=1 << 16)
    mean: str
    components: str
    explained_variance: Optional[float] = Field(None, ge=0.0, le=1.000001)
    rerank: bool = True
    shortlist: int = Field(64, ge=1, le=1 << 20)
    certify: bool = False


class ScoringSpec(Spec):
    """How feature rows become a score: method, k, bank layout."""

    method: Literal["knn", "lof", "gauss"] = "knn"
    k: int = Field(ge=1, le=1 << 20)
    metric: Optional[Literal["euclidean", "mahalanobis", "lof"]] = None
    features: Optional[str] = None
    image_score: Optional[str] = None
    bank_mode: Literal["shared", "per_position"] = "shared"
    bank_mode_measurement: Optional[Record] = None
    bank_size: Optional[int] = Field(None, ge=1)
    bank_max: Optional[int] = Field(None, ge=1, description="the bank cap fit applied (learn keeps to it)")
    bank_source_images: Optional[int] = Field(None, ge=0)
    bank_subsample: Optional[str] = None
    projection: Optional[ProjectionSpec] = None

    @model_validator(mode="after")
    def _consistent(self) -> "ScoringSpec":
        if self.projection is not None and self.method != "knn":
            raise ValueError(f"projection needs method 'knn', found {self.method!r}")
        return self


# --------------------------------------------------------------------------------------- threshold
class ThresholdSpec(Spec):
    """The shipped threshold and how it was chosen."""

    value: float = Field(ge=0.0)
    target_frr: float = Field(0.01, ge=0.0, lt=1.0)
    method: str = ""
    n_calibration: Optional[int] = Field(None, ge=0)
    achieved_frr: Optional[float] = Field(None, ge=0.0, le=1.0)
    normal_score_median: Optional[float] = None
    normal_score_max: Optional[float] = None
    estimator: Optional[Record] = None
    supported_frr: Optional[float] = Field(None, ge=0.0, le=1.0)
    previous: Optional[Record] = None


class FileEntry(Spec):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0, le=1 << 40)


# ---------------------------------------------------------------------------------------- manifest
class Manifest(Spec):
    """``manifest.json``: every section typed; ``files`` lists each entry's sha256 and size."""

    schema_: Literal["anomaly-bundle"] = Field(SCHEMA, alias="schema")
    schema_version: Literal[2] = SCHEMA_VERSION
    created: str = ""
    input: InputSpec
    extractor: ExtractorSpec
    scoring: ScoringSpec
    threshold: ThresholdSpec
    backbone: Record = Field(default_factory=dict)
    quantization: Optional[Record] = None
    training: Optional[Record] = None
    audit: Optional[dict[str, Record]] = None
    capture: Optional[Record] = None
    image_stats: Optional[Record] = None
    lineage: Optional[Record] = None
    migrated_from: Optional[int] = None
    files: dict[str, FileEntry] = Field(default_factory=dict)

    @field_validator("input", mode="before")
    @classmethod
    def _input_has_size(cls, v):
        if isinstance(v, dict) and "size" not in v:
            raise ValueError("input.size (network input [height, width]) is required")
        return v

    @field_validator("files")
    @classmethod
    def _names(cls, v):
        for name in v:
            bad = check_entry_name(name)
            if bad:
                raise ValueError(bad)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        if list(self.extractor.input_shape[:2]) != list(self.input.size):
            raise ValueError(f"extractor.input_shape {list(self.extractor.input_shape)} does not match input.size "
                             f"{list(self.input.size)} x 3")
        proj = self.scoring.projection
        for name in ([proj.mean, proj.components] if proj else []):
            if self.files and name not in self.files:
                raise ValueError(f"scoring.projection names {name!r}, which is not listed in files")
        return self

    # --------------------------------------------------------------------------- (de)serialisation
    @classmethod
    def from_dict(cls, doc: Any, where: str = MANIFEST) -> "Manifest":
        """Validate a parsed manifest (migrating schema version 1); :class:`BundleError` lists every
        problem with its key path."""
        if not isinstance(doc, dict):
            raise BundleError(f"{where}: expected a JSON object, found {type(doc).__name__}")
        if doc.get("schema") != SCHEMA:
            raise BundleError(f"{where}: schema is {doc.get('schema')!r}, expected {SCHEMA!r}; is this a model bundle?")
        ver = doc.get("schema_version")
        if isinstance(ver, bool) or not isinstance(ver, int) or ver < 1:
            raise BundleError(f"{where}: schema_version must be a positive integer, found {ver!r}")
        if ver > SCHEMA_VERSION:
            raise BundleError(f"{where}: schema_version {ver} is newer than this runtime supports ({SCHEMA_VERSION}); "
                              f"update the device software")
        if ver == 1:
            doc = migrate(doc)
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            lines = problems(exc, cls)
            raise BundleError(f"{where}: {len(lines)} problem(s):\n  " + "\n  ".join(lines)) from None

    @classmethod
    def from_json(cls, text: bytes | str, where: str = MANIFEST) -> "Manifest":
        """Parse ``manifest.json`` text (NaN / Infinity literals are refused)."""
        def refuse(const):
            raise BundleError(f"{where}: {const} is not a valid JSON number")

        try:
            doc = json.loads(text, parse_constant=refuse)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise BundleError(f"{where}: not valid JSON ({str(exc)[:200]})") from None
        return cls.from_dict(doc, where)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``schema`` first, ``files`` last)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def body(self) -> dict[str, Any]:
        """Everything but ``schema``, ``schema_version``, ``created`` and ``files``: what
        :func:`device.bundle.write_bundle` takes to write a derived bundle."""
        d = self.to_dict()
        for k in ("schema", "schema_version", "created", "files", "migrated_from"):
            d.pop(k, None)
        return d


def check_entry_name(name: Any) -> str | None:
    """Why ``name`` cannot be a bundle entry (None when it can): a plain file name only."""
    if not isinstance(name, str) or not name:
        return f"bundle entry name must be a non-empty string, found {name!r}"
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") or name == MANIFEST \
            or "\0" in name or len(name) > 255:
        return f"bad bundle entry name {name!r}: a plain file name is expected (no folders, no leading dot)"
    return None


def migrate(doc: dict) -> dict:
    """A schema-version-1 manifest as version 2 (nothing is lost: v1 keys all exist in v2)."""
    out = dict(doc)
    out["schema_version"] = SCHEMA_VERSION
    out["migrated_from"] = 1
    return out
