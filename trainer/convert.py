"""Keras extractor -> TFLite (full int8 by default; float16, dynamic-range or float).

Example:
    >>> blob = convert(model, representative=batch_u8, mode="int8")   # doctest: +SKIP
"""
from __future__ import annotations

import logging
import warnings

import numpy as np

from device.quiet import quiet_native, verbose

log = logging.getLogger(__name__)

MODES = ("int8", "float", "float16", "dynamic")


def convert(model, representative: np.ndarray | None = None, mode: str = "int8", max_rep: int = 200) -> bytes:
    """Convert ``model`` (input: float pixels 0..255) to a .tflite blob.

    Args:
        representative: uint8 (N, H, W, 3) target images for int8 calibration.
        mode: ``int8`` (full integer, uint8 pixels in, float features out), ``float``,
            ``float16`` (weights) or ``dynamic`` (int8 weights, float activations).
    """
    import tensorflow as tf

    if mode not in MODES:
        raise ValueError(f"unknown quantisation mode {mode!r}; expected one of {MODES}")
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("int8 conversion needs representative target images")
        rep = representative[:max_rep]

        def gen():
            for i in range(len(rep)):
                x = rep[i:i + 1].astype(np.float32)
                if i == 0:
                    # Pin the uint8 input range to the full 0..255: calibration takes the input's
                    # range from these images, and a set whose brightest pixel is 209 would clip
                    # every brighter pixel to 209 on the device. Two pixels of one image change
                    # nothing else measurably.
                    x[0, 0, 0, :], x[0, 0, 1, :] = 0.0, 255.0
                yield [x]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = gen
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.float32
    elif mode == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    with warnings.catch_warnings(), quiet_native(keep_errors_only=True):   # the converter's dumps: -v only
        if not verbose():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs", category=UserWarning)
        blob = conv.convert()
    log.debug("converted extractor to TFLite (%s): %.1f KiB", mode, len(blob) / 1024)
    return blob
