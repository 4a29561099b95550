"""Exceptions of the appliance.

Each inherits both the package base and the builtin it most resembles (as gpiozero
does), so callers may catch either ``AnomalyError`` or e.g. ``ValueError``.
"""


class AnomalyError(Exception):
    """Base class of every error raised by this package."""


class ImageError(AnomalyError, ValueError):
    """An image could not be decoded, is empty or is too small."""


class BundleError(AnomalyError, ValueError):
    """A model bundle is missing, tampered with, truncated or of an unknown schema."""


class ConfigError(AnomalyError, ValueError):
    """A configuration file has an unknown key or a bad value."""


class RuntimeMissingError(AnomalyError, ImportError):
    """No TFLite interpreter (ai_edge_litert, tflite_runtime, tensorflow.lite) is installed."""


class ClosedError(AnomalyError, RuntimeError):
    """An object (journal, outputs, archive, extractor, daemon) was used after ``close()``."""
