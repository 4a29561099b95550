"""Offline audit commands: AnoGAN, energy-based projection and NKN (zero training data).

Run over SSH on the device to investigate rejects or a new product. Each method follows
the one scoring contract (:mod:`core.contract`) and the one threshold calibration
(:mod:`core.threshold`). TensorFlow is imported only when an audit command runs, never
when this package is imported.

Example:
    $ anomaly-device audit projection --images rejects/ --normal good/ --out audit-out/
"""
