"""Errors specific to the audit commands."""
from device.errors import BundleError


class AuditModelError(BundleError):
    """An audit model is missing from a bundle, or does not fit the images or the method."""
