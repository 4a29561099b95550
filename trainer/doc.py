"""Joint DOC fine-tuning of MobileNetV2: one optimizer, ``L = l_D + lambda * l_C``.

Each step takes a batch of target (normal) images and a batch of reference images
and updates the shared backbone with the summed loss, as the paper does (the seed's
alternating batches were a Keras workaround). Batch norm stays in inference mode.

Example:
    >>> backbone, hist = train_doc(backbone, target_u8, ref_u8, ref_y, steps=200)   # doctest: +SKIP
"""
from __future__ import annotations

import logging
import sys
import time

import numpy as np

from models.backbone import pooled_features, set_trainable_from
from models.doc import compactness_loss, descriptiveness_loss
from trainer.options import DocOptions, check_trainable_reaches_taps

log = logging.getLogger(__name__)


DocConfig = DocOptions      # DOC's settings are declared once, with the other fit options


def _augment(tf, x):
    x = tf.image.random_flip_left_right(x)
    return tf.image.random_flip_up_down(x)


def train_doc(backbone, target_u8: np.ndarray, ref_u8: np.ndarray, ref_y: np.ndarray,
              cfg: DocConfig = DocConfig(), progress: bool = True):
    """Fine-tune ``backbone`` in place; returns ``(backbone, history)``."""
    import keras
    import tensorflow as tf
    from keras import layers

    keras.utils.set_random_seed(cfg.seed)
    check_trainable_reaches_taps(cfg.taps, cfg.train_from)
    n_trainable = set_trainable_from(backbone, cfg.train_from)
    feat = keras.Model(backbone.input, pooled_features(backbone, cfg.taps, cfg.pooling))
    n_cls = int(ref_y.max()) + 1
    head = layers.Dense(n_cls, name="doc_reference_head")
    head.build((None, feat.output_shape[-1]))
    opt = keras.optimizers.Adam(cfg.lr)
    train_vars = list(feat.trainable_variables) + list(head.trainable_variables)
    opt.build(train_vars)
    scale = layers.Rescaling(1.0 / 127.5, offset=-1.0)
    log.info("DOC: %d trainable backbone weights from %s, %d reference classes, %d steps, lr %g, lambda %g",
             n_trainable, cfg.train_from, n_cls, cfg.steps, cfg.lr, cfg.lam)

    @tf.function
    def step(xt, xr, yr):
        xt = _augment(tf, scale(tf.cast(xt, tf.float32)))
        xr = _augment(tf, scale(tf.cast(xr, tf.float32)))
        with tf.GradientTape() as tape:
            ft = feat(xt, training=False)
            if cfg.normalize:
                ft = tf.math.l2_normalize(ft, axis=1)
            l_c = compactness_loss(ft)
            l_d = descriptiveness_loss(yr, head(feat(xr, training=False)))
            loss = l_d + cfg.lam * l_c
        grads = tape.gradient(loss, train_vars)
        opt.apply_gradients(zip(grads, train_vars))
        return l_d, l_c

    rng = np.random.default_rng(cfg.seed)
    bt = min(cfg.batch, len(target_u8))
    hist = {"l_d": [], "l_c": []}
    live = progress and sys.stdout.isatty()     # Keras draws with \r, \b and colours even into a log file
    bar = keras.utils.Progbar(cfg.steps, stateful_metrics=["l_D", "l_C"], verbose=(1 if live else 2) if progress else 0)
    t0 = time.time()
    for s in range(cfg.steps):
        it = rng.choice(len(target_u8), bt, replace=False)
        ir = rng.choice(len(ref_u8), cfg.batch, replace=len(ref_u8) < cfg.batch)
        l_d, l_c = step(target_u8[it], ref_u8[ir], ref_y[ir])
        hist["l_d"].append(float(l_d))
        hist["l_c"].append(float(l_c))
        if progress and (s % 5 == 0 or s == cfg.steps - 1):
            bar.update(s + 1, [("l_D", float(l_d)), ("l_C", float(l_c))])
    if progress:
        sys.stdout.flush()
    hist["seconds"] = time.time() - t0
    for layer in backbone.layers:
        layer.trainable = False
    return backbone, hist
