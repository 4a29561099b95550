"""Device runtime of the anomaly-detection appliance.

Everything here runs on a Raspberry Pi with numpy, OpenCV and LiteRT only:
no TensorFlow is imported on the scoring path.

Example:
    >>> from device.detector import Detector          # doctest: +SKIP
    >>> det = Detector.from_bundle("bundle/")         # doctest: +SKIP
    >>> det.score_paths(["part.png"])                 # doctest: +SKIP
"""

__version__ = "0.1.0"
