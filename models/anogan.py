"""AnoGAN (Schlegl et al. 2017): a DCGAN on normal images, scored by latent search.

For a test image ``x`` the latent ``z`` is found by gradient descent on::

    L(z) = (1 - lam) * sum |x - G(z)| + lam * sum |f(x) - f(G(z))|

with ``f`` the discriminator's last convolutional features (flattened) and ``lam = 0.1``.
Score = the final ``L(z)``; map = ``|x - G(z)|``. The search runs for a whole batch
of images at once (Adam is per coordinate, so this equals independent searches).

Fast variant (``encoder=True``, f-AnoGAN "izi_f" style): after the GAN, an encoder
``E`` is trained with ``G`` and ``D`` frozen to minimise
``|x - G(E(x))|^2 + kappa * |f(x) - f(G(E(x)))|^2``; the search then starts at ``E(x)``
(``steps=0``: one forward pass only).

Example:
    >>> det = AnoGANDetector(size=(28, 28), epochs=30).fit(ones)   # doctest: +SKIP
    >>> det.anomaly_score(test).scores                             # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Sequence

import numpy as np

from core.contract import Scores
from models.audit_common import as_grey_batch, batches, check_size, set_seed, smooth_maps
from models.audit_common import weights_from_bytes, weights_to_bytes

log = logging.getLogger(__name__)


@dataclasses.dataclass
class GANConfig:
    """DCGAN architecture and training settings (stored in the bundle manifest)."""

    size: tuple = (28, 28)
    latent: int = 64
    filters: int = 32
    epochs: int = 40
    batch: int = 64
    lr: float = 2e-4
    encoder: bool = False
    encoder_epochs: int = 20
    kappa: float = 1.0
    seed: int = 0

    def __post_init__(self):
        self.size = tuple(int(v) for v in self.size)
        d = self.depth
        if self.size[0] % 2 ** d or self.size[1] % 2 ** d:
            raise ValueError(f"DCGAN needs a size divisible by {2 ** d}, found {self.size}")

    @property
    def depth(self) -> int:
        return max(1, min(4, int(math.log2(min(self.size) / 4))))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["size"] = list(self.size)
        return d


def build_dcgan(cfg: GANConfig):
    """Return ``(generator, discriminator, features, encoder-or-None)`` Keras models.

    ``features`` maps an image to the discriminator's flattened last conv activations
    (shares the discriminator's layers); the discriminator outputs a logit.
    """
    import keras
    from keras import layers

    h, w = cfg.size
    d = cfg.depth
    sh, sw, top = h // 2 ** d, w // 2 ** d, cfg.filters * 2 ** (d - 1)
    z = keras.Input((cfg.latent,))
    y = layers.Dense(sh * sw * top, use_bias=False)(z)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    y = layers.Reshape((sh, sw, top))(y)
    for i in reversed(range(d - 1)):
        y = layers.Conv2DTranspose(cfg.filters * 2 ** i, 4, strides=2, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        y = layers.ReLU()(y)
    y = layers.Conv2DTranspose(1, 4, strides=2, padding="same", activation="sigmoid")(y)
    gen = keras.Model(z, y, name="anogan_generator")

    def conv_stack(name):
        inp = keras.Input((h, w, 1))
        x = inp
        for i in range(d):
            x = layers.Conv2D(cfg.filters * 2 ** i, 4, strides=2, padding="same")(x)
            x = layers.LeakyReLU(0.2)(x)
        return inp, layers.Flatten()(x)

    inp, feat = conv_stack("d")
    disc = keras.Model(inp, layers.Dense(1)(feat), name="anogan_discriminator")
    features = keras.Model(inp, feat, name="anogan_features")
    enc = None
    if cfg.encoder:
        ein, efeat = conv_stack("e")
        enc = keras.Model(ein, layers.Dense(cfg.latent)(efeat), name="anogan_encoder")
    return gen, disc, features, enc


class AnoGANDetector:
    """AnoGAN detector following the scoring contract.

    Args:
        config: :class:`GANConfig` (or keyword arguments for one).
        steps: latent-search steps (0 with ``encoder`` = single pass).
        lam: weight of the discriminator-feature residual (0.1 in the paper).
        z_lr: Adam step size of the latent search.
        batch: images searched at once.
        smooth: Gaussian sigma (px) of the displayed map.
    """

    def __init__(self, config: GANConfig | None = None, *, steps: int | None = None, lam: float = 0.1,
                 z_lr: float = 0.05, batch: int = 256, smooth: float = 1.0, **cfg):
        self.config = config or GANConfig(**cfg)
        self.steps = int(steps if steps is not None else (20 if self.config.encoder else 200))
        self.lam, self.z_lr, self.batch, self.smooth = float(lam), float(z_lr), int(batch), float(smooth)
        self.gen = self.disc = self.features = self.encoder = None
        self.history: list[tuple[float, float]] = []
        self._search = None

    def _check(self, x: np.ndarray, what: str) -> None:
        check_size(x, self.config.size, what, "GAN")

    # ----------------------------------------------------------------- training
    def fit(self, normal_images: Sequence) -> "AnoGANDetector":
        """Train the DCGAN (and the encoder for the fast variant) on normal images."""
        import keras
        import tensorflow as tf

        x = as_grey_batch(normal_images)
        self._check(x, "fit")
        cfg = self.config
        set_seed(cfg.seed)
        self.gen, self.disc, self.features, self.encoder = build_dcgan(cfg)
        g_opt, d_opt = keras.optimizers.Adam(cfg.lr, beta_1=0.5), keras.optimizers.Adam(cfg.lr, beta_1=0.5)
        bce = keras.losses.BinaryCrossentropy(from_logits=True)
        gen, disc = self.gen, self.disc

        @tf.function(reduce_retracing=True)
        def gan_step(xb, zb):
            with tf.GradientTape() as gt, tf.GradientTape() as dt:
                fake = gen(zb, training=True)
                lr_, lf = disc(xb, training=True), disc(fake, training=True)
                d_loss = bce(tf.ones_like(lr_), lr_) + bce(tf.zeros_like(lf), lf)
                g_loss = bce(tf.ones_like(lf), lf)
            g_opt.apply_gradients(zip(gt.gradient(g_loss, gen.trainable_variables), gen.trainable_variables))
            d_opt.apply_gradients(zip(dt.gradient(d_loss, disc.trainable_variables), disc.trainable_variables))
            return d_loss, g_loss

        rng = np.random.default_rng(cfg.seed)
        x4 = x[..., None]
        t0 = time.perf_counter()
        for ep in range(cfg.epochs):
            order = rng.permutation(len(x4))
            losses = [gan_step(tf.constant(x4[order[sl]]),
                               tf.constant(rng.standard_normal((sl.stop - sl.start, cfg.latent)).astype(np.float32)))
                      for sl in batches(len(order), cfg.batch)]
            self.history.append(tuple(float(np.mean([float(l[i]) for l in losses])) for i in (0, 1)))
            log.debug("GAN epoch %d/%d d=%.3f g=%.3f", ep + 1, cfg.epochs, *self.history[-1])
        log.info("trained DCGAN on %d images (%d epochs, %.1f s)", len(x), cfg.epochs, time.perf_counter() - t0)
        if self.encoder is not None:
            self._fit_encoder(x4, rng)
        self._search = None
        return self

    def _fit_encoder(self, x4: np.ndarray, rng) -> None:
        import keras
        import tensorflow as tf

        cfg, enc, gen, feats = self.config, self.encoder, self.gen, self.features
        opt = keras.optimizers.Adam(1e-3)

        @tf.function(reduce_retracing=True)
        def step(xb):
            with tf.GradientTape() as tape:
                rec = gen(enc(xb, training=True), training=False)
                loss = tf.reduce_mean(tf.square(xb - rec)) + cfg.kappa * tf.reduce_mean(
                    tf.square(feats(xb, training=False) - feats(rec, training=False)))
            opt.apply_gradients(zip(tape.gradient(loss, enc.trainable_variables), enc.trainable_variables))
            return loss

        t0 = time.perf_counter()
        for _ in range(cfg.encoder_epochs):
            order = rng.permutation(len(x4))
            for sl in batches(len(order), cfg.batch):
                step(tf.constant(x4[order[sl]]))
        log.info("trained AnoGAN encoder (%d epochs, %.1f s)", cfg.encoder_epochs, time.perf_counter() - t0)

    # ---------------------------------------------------------------- scoring
    def _require(self):
        if self.gen is None:
            raise RuntimeError("AnoGANDetector is not fitted; call fit() or load it from a bundle")

    def _build_search(self):
        import tensorflow as tf

        gen, feats, lam, lr = self.gen, self.features, self.lam, self.z_lr
        b1, b2, eps = 0.9, 0.999, 1e-7

        def loss_fn(x, fx, z):
            g = gen(z, training=False)
            lr_ = tf.reduce_sum(tf.abs(x - g), axis=[1, 2, 3])
            ld = tf.reduce_sum(tf.abs(fx - feats(g, training=False)), axis=-1)
            return (1.0 - lam) * lr_ + lam * ld, g

        @tf.function(reduce_retracing=True)
        def search(x, z0, steps):
            fx = feats(x, training=False)
            z, m, v = z0, tf.zeros_like(z0), tf.zeros_like(z0)
            for t in tf.range(1, steps + 1):
                with tf.GradientTape() as tape:
                    tape.watch(z)
                    total = tf.reduce_sum(loss_fn(x, fx, z)[0])
                g = tape.gradient(total, z)
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                tf_ = tf.cast(t, tf.float32)
                z = z - lr * (m / (1 - b1 ** tf_)) / (tf.sqrt(v / (1 - b2 ** tf_)) + eps)
            loss, g = loss_fn(x, fx, z)
            return loss, g

        return search

    def anomaly_score(self, images: Sequence) -> Scores:
        """Latent search for every image; score = final loss, map = |x - G(z)|.

        ``extra``: ``recon`` (G(z)), ``residual_scores`` (sum |x - G(z)|).
        """
        import tensorflow as tf

        self._require()
        x = as_grey_batch(images)
        self._check(x, "anomaly_score")
        if self._search is None:
            self._search = self._build_search()
        rng = np.random.default_rng(self.config.seed + 1)
        scores, recs = [], []
        for sl in batches(len(x), self.batch):
            xb = tf.constant(x[sl][..., None])
            if self.encoder is not None:
                z0 = self.encoder(xb, training=False)
            else:
                z0 = tf.constant(rng.standard_normal((sl.stop - sl.start, self.config.latent)).astype(np.float32))
            loss, g = self._search(xb, z0, tf.constant(self.steps))
            scores.append(loss.numpy())
            recs.append(g.numpy()[..., 0])
        rec = np.concatenate(recs).astype(np.float32)
        res = np.abs(x - rec)
        return Scores(scores=np.concatenate(scores).astype(np.float64), maps=smooth_maps(res, self.smooth),
                      extra={"recon": rec, "residual_scores": res.sum(axis=(1, 2)).astype(np.float64)})

    # ------------------------------------------------------------ persistence
    def params(self) -> dict:
        return {"config": self.config.to_dict(), "steps": self.steps, "lam": self.lam, "z_lr": self.z_lr,
                "batch": self.batch, "smooth": self.smooth}

    def _parts(self):
        parts = {"generator": self.gen, "discriminator": self.disc}
        if self.encoder is not None:
            parts["encoder"] = self.encoder
        return parts

    def to_files(self, prefix: str) -> dict[str, bytes]:
        """Weights as bundle entries ``{prefix}_{generator,discriminator[,encoder]}.weights.h5``."""
        self._require()
        return {f"{prefix}_{k}.weights.h5": weights_to_bytes(m) for k, m in self._parts().items()}

    @classmethod
    def from_files(cls, params: dict, files: dict[str, bytes], prefix: str) -> "AnoGANDetector":
        """Rebuild from :meth:`params` and :meth:`to_files` output.

        Raises:
            ValueError: weights missing or not matching the declared architecture.
        """
        p = dict(params)
        det = cls(GANConfig(**p.pop("config")), **p)
        det.gen, det.disc, det.features, det.encoder = build_dcgan(det.config)
        for k, m in det._parts().items():
            name = f"{prefix}_{k}.weights.h5"
            if name not in files:
                raise ValueError(f"{name}: missing (have {sorted(files)})")
            weights_from_bytes(m, files[name], name)
        return det
