"""Autoencoders (plain L2 AE, VAE) and energy-based gradient projection.

Dehaene et al., "Iterative energy-based projection on a normal data manifold for
anomaly localization" (ICLR 2020). An autoencoder ``f`` is trained on normal images;
at test time the image itself is moved towards the normal manifold::

    E(x)     = L_r(x) + lam * ||x - x_0||_1,       L_r(x) = sum (x - f(x))^2
    x_{t+1}  = x_t - alpha * (grad_x E(x_t) * (x_t - f(x_t))^2)

The anomaly map is ``|x_0 - x_T|`` (plain reconstruction error ``|x_0 - f(x_0)|`` is
kept for comparison). With a mask ``Omega`` the update is ``alpha * grad E * Omega``
(inpainting inside the mask only).

Architectures: ``dense`` (the seed's 784-392-64-392-784 baseline generalised to
H*W-392-64-392-H*W) and ``conv`` (strided convolutions to a dense latent).

Example:
    >>> det = ProjectionDetector(kind="vae", epochs=5).fit(normal)      # doctest: +SKIP
    >>> s = det.anomaly_score(test); s.scores, s.maps.shape             # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Sequence

import numpy as np

from core.contract import Scores
from models.audit_common import (as_grey_batch, batches, check_size, score_from_maps, set_seed,
                                 smooth_maps)
from models.audit_common import weights_from_bytes, weights_to_bytes

log = logging.getLogger(__name__)

KINDS = ("ae", "vae")
ARCHS = ("conv", "dense")


@dataclasses.dataclass
class AEConfig:
    """Architecture and training settings (stored in the bundle manifest)."""

    kind: str = "ae"
    arch: str = "conv"
    size: tuple = (128, 128)
    latent: int = 64
    hidden: int = 392
    filters: int = 16
    epochs: int = 30
    batch: int = 32
    lr: float = 1e-3
    beta: float = 1.0
    seed: int = 0

    def __post_init__(self):
        self.size = tuple(int(v) for v in self.size)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, found {self.kind!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, found {self.arch!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["size"] = list(self.size)
        return d


def _conv_depth(size: tuple) -> int:
    """Number of stride-2 stages so the smallest feature map is 4..8 px."""
    return max(1, min(4, int(math.log2(min(size) / 4))))


def build_autoencoder(cfg: AEConfig):
    """Return ``(encoder, decoder)`` Keras models.

    The encoder maps (H, W, 1) to ``latent`` (AE) or ``2 * latent`` (VAE: mean, log-variance).
    The decoder maps ``latent`` to a sigmoid (H, W, 1) image.
    """
    import keras
    from keras import layers

    h, w = cfg.size
    out_dim = cfg.latent * (2 if cfg.kind == "vae" else 1)
    inp = keras.Input((h, w, 1))
    if cfg.arch == "dense":
        x = layers.Flatten()(inp)
        x = layers.Dense(cfg.hidden, activation="relu")(x)
        enc = keras.Model(inp, layers.Dense(out_dim)(x), name=f"{cfg.kind}_dense_encoder")
        z = keras.Input((cfg.latent,))
        y = layers.Dense(cfg.hidden, activation="relu")(z)
        y = layers.Dense(h * w, activation="sigmoid")(y)
        dec = keras.Model(z, layers.Reshape((h, w, 1))(y), name=f"{cfg.kind}_dense_decoder")
        return enc, dec
    depth = _conv_depth(cfg.size)
    if h % (2 ** depth) or w % (2 ** depth):
        raise ValueError(f"conv autoencoder needs a size divisible by {2 ** depth}, found {cfg.size}")
    x = inp
    for i in range(depth):
        x = layers.Conv2D(cfg.filters * 2 ** i, 4, strides=2, padding="same")(x)
        x = layers.LeakyReLU(0.2)(x)
    x = layers.Flatten()(x)
    enc = keras.Model(inp, layers.Dense(out_dim)(x), name=f"{cfg.kind}_conv_encoder")
    sh, sw, sc = h // 2 ** depth, w // 2 ** depth, cfg.filters * 2 ** (depth - 1)
    z = keras.Input((cfg.latent,))
    y = layers.Dense(sh * sw * sc)(z)
    y = layers.LeakyReLU(0.2)(y)
    y = layers.Reshape((sh, sw, sc))(y)
    for i in reversed(range(depth - 1)):
        y = layers.Conv2DTranspose(cfg.filters * 2 ** i, 4, strides=2, padding="same")(y)
        y = layers.LeakyReLU(0.2)(y)
    y = layers.Conv2DTranspose(1, 4, strides=2, padding="same", activation="sigmoid")(y)
    dec = keras.Model(z, y, name=f"{cfg.kind}_conv_decoder")
    return enc, dec


class ProjectionDetector:
    """AE / VAE anomaly detector with energy-based gradient projection.

    Args:
        config: :class:`AEConfig` (or keyword arguments for one).
        steps: projection iterations ``T``.
        alpha: step size.
        lam: weight of the ``||x - x_0||_1`` term.
        map_mode: ``"grad"`` (|x_0 - x_T|) or ``"recon"`` (|x_0 - f(x_0)|) for the image score.
        smooth: Gaussian sigma (px) applied to maps before taking the score.
        batch: images projected at once.
        inpaint_alpha: step size of the masked (inpainting) projection.
    """

    def __init__(self, config: AEConfig | None = None, *, steps: int = 50, alpha: float = 2.0,
                 lam: float = 0.05, map_mode: str = "grad", smooth: float = 2.0, batch: int = 32,
                 inpaint_alpha: float = 0.05, **cfg):
        self.config = config or AEConfig(**cfg)
        if map_mode not in ("grad", "recon"):
            raise ValueError(f"map_mode must be 'grad' or 'recon', found {map_mode!r}")
        self.steps, self.alpha, self.lam = int(steps), float(alpha), float(lam)
        self.map_mode, self.smooth, self.batch = map_mode, float(smooth), int(batch)
        self.inpaint_alpha = float(inpaint_alpha)
        self.encoder = self.decoder = None
        self.history: list[float] = []
        self._project_fn = None

    # ----------------------------------------------------------------- training
    def _check(self, x: np.ndarray, what: str) -> None:
        check_size(x, self.config.size, what, self.config.kind)

    def fit(self, normal_images: Sequence) -> "ProjectionDetector":
        """Train the autoencoder on normal images; returns ``self``."""
        import tensorflow as tf

        x = as_grey_batch(normal_images)
        self._check(x, "fit")
        cfg = self.config
        set_seed(cfg.seed)
        self.encoder, self.decoder = build_autoencoder(cfg)
        import keras

        opt = keras.optimizers.Adam(cfg.lr)
        params = self.encoder.trainable_variables + self.decoder.trainable_variables
        vae = cfg.kind == "vae"

        @tf.function(reduce_retracing=True)
        def step(xb, eps):
            with tf.GradientTape() as tape:
                h = self.encoder(xb, training=True)
                if vae:
                    mu, logvar = tf.split(h, 2, axis=-1)
                    z = mu + tf.exp(0.5 * logvar) * eps
                    kl = -0.5 * tf.reduce_sum(1 + logvar - mu ** 2 - tf.exp(logvar), axis=-1)
                else:
                    z, kl = h, tf.zeros(tf.shape(xb)[0])
                rec = self.decoder(z, training=True)
                rl = tf.reduce_sum(tf.square(xb - rec), axis=[1, 2, 3])
                loss = tf.reduce_mean(rl + cfg.beta * kl)
            grads = tape.gradient(loss, params)
            opt.apply_gradients(zip(grads, params))
            return loss

        rng = np.random.default_rng(cfg.seed)
        x4 = x[..., None]
        t0 = time.perf_counter()
        for ep in range(cfg.epochs):
            order = rng.permutation(len(x4))
            losses = []
            for sl in batches(len(order), cfg.batch):
                xb = x4[order[sl]]
                eps = rng.standard_normal((len(xb), cfg.latent)).astype(np.float32)
                losses.append(float(step(tf.constant(xb), tf.constant(eps))))
            self.history.append(float(np.mean(losses)))
            log.debug("%s epoch %d/%d loss %.4f", cfg.kind, ep + 1, cfg.epochs, self.history[-1])
        log.info("trained %s-%s on %d images (%d epochs, %.1f s, final loss %.4f)", cfg.arch, cfg.kind,
                 len(x), cfg.epochs, time.perf_counter() - t0, self.history[-1] if self.history else float("nan"))
        self._project_fn = None
        return self

    # --------------------------------------------------------------- inference
    def _require(self):
        if self.encoder is None:
            raise RuntimeError("ProjectionDetector is not fitted; call fit() or load it from a bundle")

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """Deterministic reconstruction ``f(x)`` (VAE: decoder of the posterior mean)."""
        self._require()
        out = []
        for sl in batches(len(x), self.batch):
            h = self.encoder(x[sl][..., None], training=False)
            if self.config.kind == "vae":
                h = h[:, : self.config.latent]
            out.append(np.asarray(self.decoder(h, training=False))[..., 0])
        return np.concatenate(out).astype(np.float32)

    def _f(self, xb):
        h = self.encoder(xb, training=False)
        if self.config.kind == "vae":
            h = h[:, : self.config.latent]
        return self.decoder(h, training=False)

    def energy(self, x: np.ndarray, x0: np.ndarray) -> np.ndarray:
        """Per-image energy ``E(x) = sum (x - f(x))^2 + lam * sum |x - x0|``."""
        self._require()
        fx = self.reconstruct(x)
        return (np.square(x - fx).sum(axis=(1, 2)) + self.lam * np.abs(x - x0).sum(axis=(1, 2))).astype(np.float64)

    def _build_project(self):
        import tensorflow as tf

        lam = self.lam

        @tf.function(reduce_retracing=True)
        def project(x0, mask, steps, alpha):
            x = tf.identity(x0)
            for _ in tf.range(steps):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    fx = self._f(x)
                    e = tf.reduce_sum(tf.square(x - fx)) + lam * tf.reduce_sum(tf.abs(x - x0))
                g = tape.gradient(e, x)
                weight = tf.square(x - fx) if mask is None else mask
                x = tf.clip_by_value(x - alpha * g * tf.stop_gradient(weight), 0.0, 1.0)
            return x

        return project

    def project(self, images, mask: np.ndarray | None = None, steps: int | None = None,
                alpha: float | None = None) -> np.ndarray:
        """Run the gradient projection; returns ``x_T`` as (N, H, W).

        Args:
            images: the images ``x_0``.
            mask: optional (N, H, W) or (H, W) 0/1 inpainting mask: only pixels inside are
                updated, with ``alpha * grad E * mask`` (the paper's inpainting variant).
            steps: iterations (default: ``self.steps``).
            alpha: step size (default: ``self.alpha``, or ``self.inpaint_alpha`` with a mask: the
                mask weight is 1 where the error weight is ~(x - f(x))^2 << 1).
        """
        import tensorflow as tf

        self._require()
        x = as_grey_batch(images)
        self._check(x, "project")
        if self._project_fn is None:
            self._project_fn = {}
        key = mask is None
        if key not in self._project_fn:
            self._project_fn[key] = self._build_project()
        fn = self._project_fn[key]
        steps = self.steps if steps is None else int(steps)
        if alpha is None:
            alpha = self.alpha if mask is None else self.inpaint_alpha
        out = []
        for sl in batches(len(x), self.batch):
            xb = tf.constant(x[sl][..., None])
            if mask is None:
                m = None
            else:
                mm = np.broadcast_to(np.asarray(mask, np.float32), x.shape)[sl]
                m = tf.constant(np.ascontiguousarray(mm)[..., None])
            out.append(np.asarray(fn(xb, m, tf.constant(steps), tf.constant(alpha, tf.float32)))[..., 0])
        return np.concatenate(out)

    def anomaly_score(self, images: Sequence) -> Scores:
        """Score images; ``maps`` are the ``map_mode`` maps.

        ``extra`` holds ``recon`` (f(x_0)), ``projected`` (x_T), ``recon_maps``, ``grad_maps``,
        ``recon_scores`` and ``grad_scores``.
        """
        self._require()
        x = as_grey_batch(images)
        self._check(x, "anomaly_score")
        rec = self.reconstruct(x)
        xt = self.project(x) if self.steps > 0 else x.copy()
        rmap, gmap = np.abs(x - rec), np.abs(x - xt)
        rs, gs = score_from_maps(rmap, self.smooth), score_from_maps(gmap, self.smooth)
        maps = gmap if self.map_mode == "grad" else rmap
        return Scores(scores=gs if self.map_mode == "grad" else rs, maps=smooth_maps(maps, self.smooth),
                      extra={"recon": rec, "projected": xt, "recon_maps": smooth_maps(rmap, self.smooth),
                             "grad_maps": smooth_maps(gmap, self.smooth), "recon_scores": rs, "grad_scores": gs})

    # ------------------------------------------------------------ persistence
    def params(self) -> dict:
        """Settings stored next to the weights (architecture + projection)."""
        return {"config": self.config.to_dict(), "steps": self.steps, "alpha": self.alpha, "lam": self.lam,
                "map_mode": self.map_mode, "smooth": self.smooth, "batch": self.batch,
                "inpaint_alpha": self.inpaint_alpha}

    def to_files(self, prefix: str) -> dict[str, bytes]:
        """Weights as bundle entries ``{prefix}_encoder.weights.h5`` and ``..._decoder``."""
        self._require()
        return {f"{prefix}_encoder.weights.h5": weights_to_bytes(self.encoder),
                f"{prefix}_decoder.weights.h5": weights_to_bytes(self.decoder)}

    @classmethod
    def from_files(cls, params: dict, files: dict[str, bytes], prefix: str) -> "ProjectionDetector":
        """Rebuild from :meth:`params` and :meth:`to_files` output.

        Raises:
            ValueError: weights missing or not matching the declared architecture.
        """
        p = dict(params)
        det = cls(AEConfig(**p.pop("config")), **p)
        det.encoder, det.decoder = build_autoencoder(det.config)
        for part, model in (("encoder", det.encoder), ("decoder", det.decoder)):
            name = f"{prefix}_{part}.weights.h5"
            if name not in files:
                raise ValueError(f"{name}: missing (have {sorted(files)})")
            weights_from_bytes(model, files[name], name)
        return det
