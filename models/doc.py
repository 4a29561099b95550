"""DOC (Perera & Patel 2018, "Learning Deep Features for One-Class Classification") losses.

Compactness loss on a batch of target features (n samples, k dims):
``z_i = x_i - m_i`` with ``m_i`` the mean of the *other* samples, and
``l_C = 1/(n k) * sum_i ||z_i||^2``, which equals ``n^2/(n-1)^2`` times the mean
per-dimension batch variance (the paper's appendix form). The descriptiveness loss
``l_D`` is cross-entropy of a classifier head on the reference set.

Example:
    >>> import numpy as np
    >>> float(compactness_loss(np.ones((4, 3), np.float32)))
    0.0
"""
from __future__ import annotations


def compactness_loss(features):
    """Mean squared distance of each sample to the mean of the others (paper's l_C)."""
    from keras import ops

    n = ops.cast(ops.shape(features)[0], features.dtype)
    k = ops.cast(ops.shape(features)[1], features.dtype)
    centred = features - ops.mean(features, axis=0, keepdims=True)
    z = centred * (n / (n - 1.0))
    return ops.sum(ops.square(z)) / (n * k)


def descriptiveness_loss(labels, logits):
    """Cross-entropy of the reference-set classifier (l_D)."""
    from keras import ops

    return ops.mean(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True))
