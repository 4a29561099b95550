"""Neutral core shared by ``device/``, ``trainer/`` and ``models/`` (numpy only).

* :mod:`core.contract` - the scoring contract every detector follows (``Scores``);
* :mod:`core.decision` - the one decision rule (PASS / REJECT / ERROR) and the validated threshold;
* :mod:`core.threshold` - threshold calibration from normal scores;
* :mod:`core.metrics` - the one image AUROC and the one pixel AUROC.

Nothing here imports ``device``, ``trainer``, ``models``, TensorFlow or OpenCV.
"""
