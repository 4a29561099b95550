"""MobileNetV2 feature extractor and DOC network definitions (Keras 3).

The extractor takes raw pixels (float 0..255, RGB) so the converted int8 model's
uint8 input is the pixel itself; MobileNetV2's [-1, 1] scaling is a layer inside.

Example:
    >>> m, info = build_extractor(alpha=0.35, size=(96, 96), weights=None)   # doctest: +SKIP
    >>> m.output_shape                                                        # doctest: +SKIP
    (None, 1280)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

WEIGHTS_ENV = "ANOMALY_BACKBONE_WEIGHTS"
POOLINGS = ("max", "avg", "maxavg", "grid2", "grid3", "patch")
# "gridG": average over a G x G grid of cells, flattened (keeps coarse layout: for aligned objects).
# "patch": no global pooling: every position of the feature map is one descriptor (its 3x3
# neighbourhood averaged, PatchCore's local aggregation; several taps are resized to the first
# tap's map and concatenated). Output (N, h, w, C); the scorer sees h*w patch rows per tile and
# the tile score is the worst patch's. For small defects: a pooled descriptor barely moves.
# Feature taps: name -> MobileNetV2 layer names concatenated (each pooled, then L2-normalised per tap).
FEATURE_TAPS = {
    "out": ["out_relu"],
    "b13+out": ["block_13_expand_relu", "out_relu"],
    "b6+b13+out": ["block_6_expand_relu", "block_13_expand_relu", "out_relu"],
    # mid-level taps (benchmark research: better than out_relu for shape/texture differences)
    "b6": ["block_6_expand_relu"],
    "b3+b6": ["block_3_expand_relu", "block_6_expand_relu"],
    "b10": ["block_10_expand_relu"],
    "b13": ["block_13_expand_relu"],
    "b10+b13": ["block_10_expand_relu", "block_13_expand_relu"],
    "b6+b10+b13": ["block_6_expand_relu", "block_10_expand_relu", "block_13_expand_relu"],
    "b3+b6+b10+b13+out": ["block_3_expand_relu", "block_6_expand_relu", "block_10_expand_relu",
                          "block_13_expand_relu", "out_relu"],
}


class WeightsError(FileNotFoundError):
    """A requested local weights file does not exist or does not fit the network."""


def resolve_weights(weights: str | None) -> str:
    """``weights`` option, else ``$ANOMALY_BACKBONE_WEIGHTS``, else ``"imagenet"``.

    Returns ``"imagenet"``, ``"random"`` or an existing file path.
    """
    w = weights or os.environ.get(WEIGHTS_ENV) or "imagenet"
    if w in ("imagenet", "random", "none"):
        return "random" if w == "none" else w
    p = Path(w).expanduser()
    if not p.is_file():
        src = "--weights" if weights else f"${WEIGHTS_ENV}"
        raise WeightsError(f"{p}: backbone weights file not found (from {src}); expected a Keras "
                           f"MobileNetV2 include_top=False .weights.h5, or 'imagenet'")
    return str(p)


def _mobilenet(alpha: float, size: tuple[int, int], weights: str):
    import keras

    kw = dict(input_shape=(size[0], size[1], 3), alpha=alpha, include_top=False)
    if weights == "random":
        return keras.applications.MobileNetV2(weights=None, **kw), "random"
    if weights == "imagenet":
        key = (alpha, tuple(size))
        if key in _IMAGENET_FAILED:        # tried once in this process: no second fetch, no second banner
            log.warning("no ImageNet weights for MobileNetV2 alpha %g at %s px (see above): random weights", alpha,
                        size[0])
            return keras.applications.MobileNetV2(weights=None, **kw), "random"
        try:
            return keras.applications.MobileNetV2(weights="imagenet", **kw), "imagenet"
        except Exception as exc:  # no network, no cache: keep going, loudly
            _IMAGENET_FAILED.add(key)
            log.warning("!" * 72)
            log.warning("COULD NOT GET IMAGENET WEIGHTS (%s: %s)", type(exc).__name__, str(exc)[:200])
            log.warning("USING RANDOM WEIGHTS: figures will be much lower. Set %s to a local "
                        ".weights.h5 file or run once with network access.", WEIGHTS_ENV)
            log.warning("!" * 72)
            return keras.applications.MobileNetV2(weights=None, **kw), "random"
    try:
        m = keras.applications.MobileNetV2(weights=None, **kw)
        m.load_weights(weights, skip_mismatch=False)
    except Exception as exc:
        raise WeightsError(f"{weights}: cannot load as MobileNetV2(alpha={alpha}, include_top=False) "
                           f"weights ({type(exc).__name__}: {str(exc)[:300]})") from exc
    return m, f"file:{Path(weights).name}"


IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
_IMAGENET_FILES: dict = {}
_IMAGENET_FAILED: set = set()     # (alpha, size) whose ImageNet weights could not be had in this process


def imagenet_weights_file(alpha: float) -> str | None:
    """Keras's published ImageNet weights of MobileNetV2 ``alpha`` (no top, trained at 224 px: the
    same weights serve every input size), fetched once into Keras's cache (``~/.keras/models``).

    Returns the file's path, or None when it cannot be had (no network and not cached): the
    caller then leaves that width out instead of running it on random weights. Asked once per
    process.
    """
    if alpha not in _IMAGENET_FILES:
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_224_no_top.h5"
        try:
            import contextlib
            import io

            from keras.utils import get_file

            home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
            if not (home / "models" / name).is_file():
                log.info("fetching Keras's MobileNetV2 alpha %g ImageNet weights (once: ~/.keras/models)", alpha)
            with contextlib.redirect_stdout(io.StringIO()):   # Keras's download bar: not on the default output
                _IMAGENET_FILES[alpha] = str(get_file(name, IMAGENET_URL + name, cache_subdir="models"))
        except Exception as exc:   # offline, blocked, interrupted download: the width is not available
            log.info("MobileNetV2 alpha %g ImageNet weights not available (%s: %s)", alpha, type(exc).__name__,
                     str(exc)[:160])
            _IMAGENET_FILES[alpha] = None
    return _IMAGENET_FILES[alpha]


def build_backbone(alpha: float = 0.35, size: tuple[int, int] = (96, 96), weights: str | None = None):
    """MobileNetV2 without top; returns ``(model, weights_source)``."""
    return _mobilenet(alpha, tuple(size), resolve_weights(weights))


def pooled_features(backbone, taps: str = "out", pooling: str = "max"):
    """Symbolic pooled feature tensor(s) on ``backbone`` for the named taps.

    Multi-tap features are each L2-normalised before concatenation so one tap cannot
    dominate; the caller L2-normalises the result again at scoring time.
    """
    import keras
    from keras import layers, ops

    if taps not in FEATURE_TAPS:
        raise ValueError(f"unknown feature taps {taps!r}; expected one of {sorted(FEATURE_TAPS)}")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    if pooling == "patch":
        return _patch_features(backbone, FEATURE_TAPS[taps])
    outs = []
    for name in FEATURE_TAPS[taps]:
        t = backbone.get_layer(name).output
        if pooling == "max":
            f = layers.GlobalMaxPooling2D()(t)
        elif pooling == "avg":
            f = layers.GlobalAveragePooling2D()(t)
        elif pooling.startswith("grid"):
            f = _grid_pool(t, int(pooling[4:]))
        else:
            f = layers.Concatenate()([layers.GlobalMaxPooling2D()(t), layers.GlobalAveragePooling2D()(t)])
        if len(FEATURE_TAPS[taps]) > 1:
            f = layers.UnitNormalization()(f)
        outs.append(f)
    return outs[0] if len(outs) == 1 else layers.Concatenate()(outs)


def _patch_features(backbone, names: list[str]):
    """(N, h, w, C) patch descriptors: each tap 3x3-averaged (stride 1), resized to the first
    tap's map with bilinear interpolation, concatenated along channels."""
    from keras import layers

    outs = [layers.AveragePooling2D(3, strides=1, padding="same")(backbone.get_layer(n).output) for n in names]
    h, w = int(outs[0].shape[1]), int(outs[0].shape[2])
    outs = [o if (int(o.shape[1]), int(o.shape[2])) == (h, w) else layers.Resizing(h, w, interpolation="bilinear")(o)
            for o in outs]
    return outs[0] if len(outs) == 1 else layers.Concatenate()(outs)


def patch_layout(model) -> dict | None:
    """``{"grid": [h, w], "dim": C}`` for a patch extractor (4-D output), else None."""
    shape = model.output_shape
    if len(shape) != 4:
        return None
    return {"grid": [int(shape[1]), int(shape[2])], "dim": int(shape[3])}


def _grid_pool(t, g: int):
    """Average ``t`` (N, H, W, C) over a ``g`` x ``g`` grid of cells and flatten to (N, g*g*C).

    Cells are ``H // g`` x ``W // g``; trailing rows/columns that do not fill a cell are dropped.
    """
    from keras import layers

    h, w = int(t.shape[1]), int(t.shape[2])
    if h < g or w < g:
        raise ValueError(f"grid{g} pooling needs a feature map of at least {g}x{g}, found {h}x{w}; "
                         f"use a larger input size or an earlier tap")
    ph, pw = h // g, w // g
    return layers.Flatten()(layers.AveragePooling2D((ph, pw), strides=(ph, pw), padding="valid")(t))


def build_extractor(alpha: float = 0.35, size: tuple[int, int] = (96, 96), weights: str | None = None,
                    taps: str = "out", pooling: str = "max", backbone=None):
    """Extractor: raw pixels (0..255) -> pooled features. Returns ``(model, info)``.

    ``backbone`` reuses an existing (e.g. fine-tuned) MobileNetV2 instead of building one.
    """
    import keras
    from keras import layers

    source = None
    if backbone is None:
        backbone, source = build_backbone(alpha, size, weights)
    inner = keras.Model(backbone.input, pooled_features(backbone, taps, pooling))
    inp = keras.Input((size[0], size[1], 3), name="pixels")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="mobilenet_scale")(inp)
    out = inner(x, training=False)
    model = keras.Model(inp, out, name="extractor")
    info = {"name": "MobileNetV2", "alpha": alpha, "input_size": list(size), "weights": source,
            "taps": taps, "layers": FEATURE_TAPS[taps], "pooling": pooling}
    if patch_layout(model):
        info["patches"] = patch_layout(model)
    return model, info


def set_trainable_from(backbone, first_trainable: str | None) -> int:
    """Freeze layers before ``first_trainable`` (e.g. ``block_13_expand``); BN stays frozen.

    Returns the number of trainable weights.
    """
    import keras

    names = [l.name for l in backbone.layers]
    if first_trainable is not None and first_trainable not in names:
        raise ValueError(f"layer {first_trainable!r} not in MobileNetV2; e.g. block_13_expand, block_16_expand")
    start = names.index(first_trainable) if first_trainable else len(names)
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= start and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(int(w.shape.num_elements()) for w in backbone.trainable_weights)
