"""TFLite feature extractor: the exact model the device runs, on any runtime available.

The interpreter comes from ``ai_edge_litert``, else ``tflite_runtime``, else
``tensorflow.lite`` (the last only on a workstation). Input pixels arrive as uint8
RGB from :func:`device.preprocess.preprocess`; this module maps them to the model's
input type (float, or int8/uint8 with the model's own quantisation parameters) and
dequantises the output.

Example:
    >>> ext = TFLiteExtractor("bundle/extractor.tflite", num_threads=1)   # doctest: +SKIP
    >>> ext(batch_u8).shape                                                # doctest: +SKIP
    (1, 1280)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from device.errors import BundleError, RuntimeMissingError

log = logging.getLogger(__name__)

RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")


def load_interpreter_class(preferred: str | None = None):
    """Return ``(Interpreter class, runtime name)``, trying LiteRT first.

    ``preferred`` (or ``ANOMALY_TFLITE_RUNTIME``) forces one of :data:`RUNTIMES`.
    """
    preferred = preferred or os.environ.get("ANOMALY_TFLITE_RUNTIME") or None
    order = [preferred] if preferred else list(RUNTIMES)
    errors = []
    for name in order:
        try:
            if name == "ai_edge_litert":
                from ai_edge_litert.interpreter import Interpreter
            elif name == "tflite_runtime":
                from tflite_runtime.interpreter import Interpreter
            elif name == "tensorflow":
                import tensorflow as tf

                Interpreter = tf.lite.Interpreter
            else:
                raise ImportError(f"unknown runtime {name!r}; expected one of {RUNTIMES}")
            return Interpreter, name
        except ImportError as exc:  # pragma: no cover - depends on the machine
            errors.append(f"{name}: {exc}")
    raise RuntimeMissingError("no TFLite runtime could be imported (" + "; ".join(errors)
                              + "); install the device extra: pip install '.[device]'")


class TFLiteExtractor:
    """Runs a .tflite feature extractor on uint8 RGB batches.

    Args:
        model: path to a .tflite file or its bytes.
        num_threads: interpreter threads (1 on the Pi frame path leaves a core for the camera).
        pixel_scale, pixel_offset: float input = pixel * scale + offset, before any quantisation.
        runtime: force a runtime (see :func:`load_interpreter_class`).
    """

    def __init__(self, model: str | Path | bytes, num_threads: int = 1,
                 pixel_scale: float = 1.0, pixel_offset: float = 0.0, runtime: str | None = None):
        Interpreter, self.runtime = load_interpreter_class(runtime)
        self._content = bytes(model) if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
        self._name = "<bytes>" if isinstance(model, (bytes, bytearray)) else str(model)
        try:
            self._interp = Interpreter(model_content=self._content, num_threads=num_threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{self._name}: not a loadable TFLite model ({exc})") from exc
        self.num_threads = num_threads
        self.pixel_scale = float(pixel_scale)
        self.pixel_offset = float(pixel_offset)
        inp = self._interp.get_input_details()
        out = self._interp.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise BundleError(f"{self._name}: expected 1 input and 1 output, found {len(inp)} and {len(out)}")
        self._in, self._out = inp[0], out[0]
        self.input_shape = tuple(int(v) for v in self._in["shape"][1:])
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dim = int(np.prod(self._out["shape"][1:]))
        self.input_quant = tuple(float(v) for v in self._in.get("quantization", (0.0, 0)))
        self.output_quant = tuple(float(v) for v in self._out.get("quantization", (0.0, 0)))
        self._batch = int(self._in["shape"][0])
        # Fast path: quantised uint8 input whose real value equals the pixel value.
        s, zp = self.input_quant
        real_s, real_o = self.pixel_scale, self.pixel_offset
        self._identity_u8 = (self.input_dtype == np.uint8 and s > 0
                             and abs(s - real_s) < 1e-9 and abs(zp + real_o / s) < 1e-6)

    def describe(self) -> dict:
        """What the manifest records about the model's interface."""
        return {"input_shape": list(self.input_shape), "input_dtype": self.input_dtype.name,
                "input_quant": {"scale": self.input_quant[0], "zero_point": int(self.input_quant[1])},
                "output_dim": self.output_dim,
                "output_quant": {"scale": self.output_quant[0], "zero_point": int(self.output_quant[1])}}

    def _to_input(self, batch_u8: np.ndarray) -> np.ndarray:
        if self._identity_u8:
            return batch_u8
        x = batch_u8.astype(np.float32) * np.float32(self.pixel_scale) + np.float32(self.pixel_offset)
        if self.input_dtype in (np.uint8, np.int8, np.int16):
            s, zp = self.input_quant
            info = np.iinfo(self.input_dtype)
            return np.clip(np.round(x / s + zp), info.min, info.max).astype(self.input_dtype)
        return x.astype(self.input_dtype)

    def _ensure_batch(self, n: int) -> None:
        if n != self._batch:
            self._interp.resize_tensor_input(self._in["index"], [n, *self.input_shape])
            self._interp.allocate_tensors()
            self._in = self._interp.get_input_details()[0]
            self._out = self._interp.get_output_details()[0]
            self._batch = n

    def __call__(self, batch_u8: np.ndarray, max_batch: int = 64) -> np.ndarray:
        """Features (N, D) float32 for a uint8 batch (N, H, W, 3)."""
        if batch_u8.ndim != 4 or tuple(batch_u8.shape[1:]) != self.input_shape:
            raise ValueError(f"{self._name}: input batch must be (N, {', '.join(map(str, self.input_shape))}), "
                             f"found {batch_u8.shape}")
        n = batch_u8.shape[0]
        feats = np.empty((n, self.output_dim), np.float32)
        for i in range(0, n, max_batch):
            chunk = self._to_input(batch_u8[i:i + max_batch])
            self._ensure_batch(chunk.shape[0])
            self._interp.set_tensor(self._in["index"], chunk)
            self._interp.invoke()
            raw = self._interp.get_tensor(self._out["index"]).reshape(chunk.shape[0], -1)
            if raw.dtype != np.float32:
                s, zp = self.output_quant
                raw = (raw.astype(np.float32) - np.float32(zp)) * np.float32(s)
            feats[i:i + chunk.shape[0]] = raw
        return feats


def normalize_features(feats: np.ndarray, mode: str) -> np.ndarray:
    """Post-process extractor output as the manifest declares (``"l2"`` or ``"none"``)."""
    if mode == "none":
        return feats
    if mode == "l2":
        norm = np.linalg.norm(feats, axis=1, keepdims=True)
        return feats / np.maximum(norm, 1e-12)
    raise ValueError(f"unknown feature normalisation {mode!r}; expected 'l2' or 'none'")
