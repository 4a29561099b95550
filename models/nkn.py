"""Neural Kernel Network Gaussian process: anomaly detection from the test image alone.

Seed 000 (after Sun et al., "Differentiable compositional kernel learning for Gaussian
processes", ICML 2018). Primitive kernels (two RBF, two periodic, rational quadratic,
linear) on pixel coordinates are combined by a layer of positive-weighted sums, a layer
of pairwise products and a final positive-weighted sum (with a skip of the sums), so
every combination is a valid kernel. A mask slides over the image; for each position a
GP conditioned on the visible pixels of a local context window predicts mean and
standard deviation inside the mask; the predictions are stitched into a reconstruction
``x_hat`` and ``sigma``. Maps: ``|x - x_hat|`` (raw) and ``|x - x_hat| / sigma``
(normalised); scores: their maxima.

Tractability (the choice and its cost): every context window has the same geometry
(the image is reflect-padded), so with one set of kernel hyper-parameters per image
the visible-pixel covariance ``K`` (n x n, n = (m + 2c)^2 - m^2 = 512 for m = c = 8)
is the same for all positions. Per image: ``fit_steps`` Adam steps on the summed
marginal likelihood of ``fit_windows`` random windows, on a random subset of
``fit_points`` (256) of the visible pixels (subset of data: one 256 x 256 Cholesky per
step instead of 512 x 512, 2.7x faster on brick for a pixel-AUROC change of -0.003),
then a single Cholesky of the full ``K`` and one (positions x n) @ (n x m^2)
product predict every mask position. Optionally (``local_amplitude``) the GP amplitude
is re-estimated per window in closed form (``s^2 = y^T K^-1 y / n``) so ``sigma`` adapts
to local contrast; off by default because a defect inside the context inflates ``s^2``
and hides itself (measured on brick: pixel AUROC of the normalised map 0.94 with, 0.99
without). With one amplitude per image, ``sigma`` mostly encodes the distance to the
visible pixels, which the normalised map compensates.
Cost for a 128 x 128 image: about 6 s on this (shared) 2-core x86 machine, dominated by
the hyper-parameter steps; see BENCHMARKS.md.

Example:
    >>> det = NKNDetector(mask=8, context=8)                     # doctest: +SKIP
    >>> s = det.anomaly_score([image]); s.extra["norm_scores"]   # doctest: +SKIP
"""
from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

from core.contract import Scores
from models.audit_common import as_grey_batch, smooth_maps

log = logging.getLogger(__name__)

N_PRIMITIVES = 6  # rbf short, rbf long, periodic, periodic x2, rational quadratic, linear
N_SUMS = 4


def estimate_periods(img: np.ndarray, lo: int = 3, hi: int = 32) -> tuple[float, float]:
    """First autocorrelation peak along rows and columns (px), used to initialise periods.

    Returns ``hi / 2`` along an axis without a clear peak.
    """
    x = img - img.mean()
    out = []
    for axis in (0, 1):
        f = np.fft.rfft(x, n=2 * x.shape[axis], axis=axis)
        ac = np.fft.irfft(f * np.conj(f), axis=axis)
        ac = ac.mean(axis=1 - axis)[: x.shape[axis]]
        ac = ac / (ac[0] + 1e-12)
        top = min(hi, len(ac) - 1)
        peak = None
        for k in range(lo, top):
            if ac[k] > ac[k - 1] and ac[k] >= ac[k + 1] and ac[k] > 0.05:
                peak = k
                break
        out.append(float(peak if peak else hi / 2))
    return out[0], out[1]


class NKNKernel:
    """NKN kernel on 2-D pixel coordinates (TensorFlow variables, float64)."""

    def __init__(self, periods: tuple[float, float] = (8.0, 8.0), window: int = 24, seed: int = 0):
        import tensorflow as tf

        self.window = float(window)
        self.v = {k: tf.Variable(val) for k, val in self._initial(periods, seed).items()}

    @staticmethod
    def _initial(periods, seed) -> dict:
        rng = np.random.default_rng(seed)
        inv = lambda v: np.log(np.expm1(np.asarray(v, np.float64)))  # noqa: E731  softplus^-1
        py, px = periods
        return {
            "rbf_l": inv([[1.5, 1.5], [6.0, 6.0]]),
            "per_p": inv([[py, px], [2 * py, 2 * px]]),
            "per_l": inv([[1.0, 1.0], [1.0, 1.0]]),
            "rq_l": inv([3.0, 3.0]),
            "rq_a": inv(1.0),
            "lin_c": inv(0.1),
            "w1": inv(0.3 + 0.1 * rng.random((N_SUMS, N_PRIMITIVES))),
            "w2": inv(0.5 + 0.1 * rng.random(N_SUMS // 2)),
            "w_skip": inv(0.2 + 0.1 * rng.random(N_SUMS)),
            "noise": inv(0.05),
        }

    def reset(self, periods: tuple[float, float], seed: int = 0) -> None:
        """Re-initialise every hyper-parameter (periods from the image's autocorrelation)."""
        for k, val in self._initial(periods, seed).items():
            self.v[k].assign(val)

    @property
    def variables(self):
        return list(self.v.values())

    def __call__(self, a, b):
        """Covariance between coordinate sets ``a`` (n, 2) and ``b`` (k, 2) (tf float64)."""
        import tensorflow as tf

        sp = {k: tf.nn.softplus(v) for k, v in self.v.items()}
        d = a[:, None, :] - b[None, :, :]
        prims = []
        for i in range(2):
            prims.append(tf.exp(-0.5 * tf.reduce_sum(tf.square(d / sp["rbf_l"][i]), -1)))
        for i in range(2):
            s = tf.square(tf.sin(np.pi * d / sp["per_p"][i])) / tf.square(sp["per_l"][i])
            prims.append(tf.exp(-2.0 * tf.reduce_sum(s, -1)))
        r2 = tf.reduce_sum(tf.square(d / sp["rq_l"]), -1)
        prims.append(tf.pow(1.0 + r2 / (2.0 * sp["rq_a"]), -sp["rq_a"]))
        prims.append(tf.matmul(a, b, transpose_b=True) / self.window ** 2 + sp["lin_c"])
        p = tf.stack(prims, -1)                                   # (n, k, 6)
        sums = tf.tensordot(p, tf.transpose(sp["w1"]), 1)         # (n, k, 4)  positive-weighted sums
        prods = sums[..., 0::2] * sums[..., 1::2]                 # (n, k, 2)  products of pairs
        return tf.tensordot(prods, sp["w2"], 1) + tf.tensordot(sums, sp["w_skip"], 1)

    def noise(self):
        import tensorflow as tf

        return tf.nn.softplus(self.v["noise"]) + 1e-4


class NKNDetector:
    """Zero-training-data detector: a GP with an NKN kernel fitted on each test image.

    Args:
        mask: side of the moving mask (px).
        context: border of visible pixels around the mask (px).
        stride: mask step (default ``mask``: tiles; smaller strides average overlaps).
        fit_steps: Adam steps on the kernel hyper-parameters per image.
        fit_windows: random context windows in the marginal likelihood.
        fit_points: random subset of the visible pixels (same for every window) used while fitting
            the hyper-parameters (subset of data: the Cholesky per step is (n_fit)^3 instead of
            n^3); prediction always uses every visible pixel. ``None``: all.
        lr: Adam learning rate.
        score_map: ``"norm"`` (|x - x_hat| / sigma) or ``"raw"`` (|x - x_hat|) for ``scores``/``maps``.
        smooth: Gaussian sigma (px) on both maps before the max (0: the seed's plain max).
        local_amplitude: re-estimate the GP amplitude per window in closed form (sigma adapts
            to local contrast); ``False`` keeps the image-wide amplitude.
    """

    any_size = True

    def __init__(self, mask: int = 8, context: int = 8, stride: int | None = None, fit_steps: int = 40,
                 fit_windows: int = 32, fit_points: int | None = 256, lr: float = 0.05,
                 score_map: str = "norm", smooth: float = 1.0,
                 local_amplitude: bool = False, seed: int = 0):
        if mask < 1 or context < 1:
            raise ValueError(f"mask and context must be >= 1 px, found {mask}, {context}")
        if score_map not in ("norm", "raw"):
            raise ValueError(f"score_map must be 'norm' or 'raw', found {score_map!r}")
        self.mask, self.context = int(mask), int(context)
        self.stride = int(stride or mask)
        if not 1 <= self.stride <= self.mask:
            raise ValueError(f"stride must be in 1..mask ({self.mask}), found {self.stride}")
        self.fit_steps, self.fit_windows, self.lr = int(fit_steps), int(fit_windows), float(lr)
        self.fit_points = int(fit_points) if fit_points else None
        self.score_map, self.smooth, self.seed = score_map, float(smooth), int(seed)
        self.local_amplitude = bool(local_amplitude)
        self.last_kernel: NKNKernel | None = None
        self.last_nll: list[float] = []

    def params(self) -> dict:
        return {"mask": self.mask, "context": self.context, "stride": self.stride, "fit_steps": self.fit_steps,
                "fit_windows": self.fit_windows, "fit_points": self.fit_points, "lr": self.lr,
                "score_map": self.score_map,
                "smooth": self.smooth, "local_amplitude": self.local_amplitude, "seed": self.seed}

    def fit(self, normal_images: Sequence = ()) -> "NKNDetector":
        """No training data needed: every image is fitted on itself. Returns ``self``."""
        return self

    # ------------------------------------------------------------------ geometry
    def _geometry(self):
        m, c = self.mask, self.context
        w = m + 2 * c
        yy, xx = np.mgrid[:w, :w]
        inside = (yy >= c) & (yy < c + m) & (xx >= c) & (xx < c + m)
        coords = np.stack([yy, xx], -1).reshape(-1, 2).astype(np.float64) - (w - 1) / 2.0
        vis = np.flatnonzero(~inside.ravel())
        hid = np.flatnonzero(inside.ravel())
        return w, coords, vis, hid

    def _positions(self, n: int) -> list[int]:
        pos = list(range(0, max(1, n - self.mask + 1), self.stride))
        if pos[-1] != n - self.mask:
            pos.append(n - self.mask)
        return pos

    def _fitter(self, window: int):
        """Kernel and compiled Adam loop for one window geometry (built once, reused per image)."""
        import tensorflow as tf

        if getattr(self, "_fit_cache", None) and self._fit_cache[0] == window:
            return self._fit_cache[1], self._fit_cache[2]
        kern = NKNKernel(window=window, seed=self.seed)
        variables = kern.variables
        b1, b2, eps = 0.9, 0.999, 1e-8

        @tf.function(reduce_retracing=True)
        def fit(xv, yfit, steps, lr):
            n = tf.cast(tf.shape(xv)[0], tf.float64)
            eye = tf.eye(tf.shape(xv)[0], dtype=tf.float64)
            ms = [tf.zeros_like(v) for v in variables]
            vs = [tf.zeros_like(v) for v in variables]
            losses = tf.TensorArray(tf.float64, size=steps)
            for t in tf.range(steps):
                with tf.GradientTape() as tape:
                    k = kern(xv, xv) + (kern.noise() + 1e-6) * eye
                    chol = tf.linalg.cholesky(k)
                    alpha = tf.linalg.cholesky_solve(chol, yfit)
                    logdet = 2.0 * tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol)))
                    nll = 0.5 * tf.reduce_sum(yfit * alpha) / tf.cast(tf.size(yfit), tf.float64) + 0.5 * logdet / n
                grads = tape.gradient(nll, variables)
                tt = tf.cast(t + 1, tf.float64)
                ok = tf.math.is_finite(nll)
                for i, (v, g) in enumerate(zip(variables, grads)):
                    g = tf.where(ok, g, tf.zeros_like(g))
                    ms[i] = b1 * ms[i] + (1 - b1) * g
                    vs[i] = b2 * vs[i] + (1 - b2) * g * g
                    v.assign_sub(lr * (ms[i] / (1 - b1 ** tt)) / (tf.sqrt(vs[i] / (1 - b2 ** tt)) + eps))
                losses = losses.write(t, nll)
            return losses.stack()

        self._fit_cache = (window, kern, fit)
        return kern, fit

    # ------------------------------------------------------------------- scoring
    def reconstruct(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """GP inpainting of one (H, W) float image; returns ``(x_hat, sigma)`` in image units."""
        import tensorflow as tf

        h, wd = image.shape
        if min(h, wd) < self.mask:
            raise ValueError(f"image {wd}x{h} is smaller than the {self.mask}-px mask")
        mu0, sd0 = float(image.mean()), float(image.std()) + 1e-6
        z = (image.astype(np.float64) - mu0) / sd0
        m, c = self.mask, self.context
        w, coords, vis, hid = self._geometry()
        pad = np.pad(z, c, mode="reflect" if min(h, wd) > c else "symmetric")
        rs, cs = self._positions(h), self._positions(wd)
        oy, ox = np.divmod(np.arange(w * w), w)
        win = pad[np.add.outer(np.repeat(rs, len(cs)), oy), np.add.outer(np.tile(cs, len(rs)), ox)]  # (P, w*w)
        yv = win[:, vis]
        yv_c = yv - yv.mean(axis=1, keepdims=True)
        kern, step = self._fitter(w)
        kern.reset(estimate_periods(z, hi=max(4, w - 1)), self.seed)
        xv, xh = tf.constant(coords[vis]), tf.constant(coords[hid])
        rng = np.random.default_rng(self.seed)
        fit_rows = rng.choice(len(yv_c), min(self.fit_windows, len(yv_c)), replace=False)
        fit_pts = np.sort(rng.choice(len(vis), min(self.fit_points or len(vis), len(vis)), replace=False))
        yfit = tf.constant(yv_c[fit_rows][:, fit_pts].T)         # (n_fit, B)
        xfit = tf.constant(coords[vis][fit_pts])
        eye = tf.eye(len(vis), dtype=tf.float64)
        self.last_nll = []
        if self.fit_steps > 0:
            losses = step(xfit, yfit, tf.constant(self.fit_steps), tf.constant(self.lr, tf.float64)).numpy()
            finite = np.isfinite(losses)
            if not finite.all():
                log.warning("NKN marginal likelihood diverged after %d steps; resetting the kernel",
                            int(np.argmin(finite)))
                kern.reset(estimate_periods(z, hi=max(4, w - 1)), self.seed)
            self.last_nll = [float(v) for v in losses[finite]]
        self.last_kernel = kern
        k_vv = kern(xv, xv) + (kern.noise() + 1e-6) * eye
        chol = tf.linalg.cholesky(k_vv)
        k_hv = kern(xh, xv)                                      # (m*m, n)
        a = tf.transpose(tf.linalg.cholesky_solve(chol, tf.transpose(k_hv)))   # K_hv K_vv^-1
        var_signal = tf.linalg.diag_part(kern(xh, xh)) - tf.reduce_sum(a * k_hv, -1)
        noise = float(kern.noise())
        alpha = tf.linalg.cholesky_solve(chol, tf.constant(yv_c.T))          # (n, P)
        s2 = np.maximum(np.sum(yv_c.T * alpha.numpy(), axis=0) / len(vis), 1e-6)   # local amplitude
        if not self.local_amplitude:
            s2 = np.ones_like(s2)
        mean_h = yv.mean(axis=1, keepdims=True) + yv_c @ a.numpy().T           # (P, m*m)
        # local amplitude scales the signal part; the learned noise is a floor on sigma
        var_h = s2[:, None] * np.maximum(var_signal.numpy(), 0.0)[None, :] + noise
        acc, vacc, cnt = np.zeros((h, wd)), np.zeros((h, wd)), np.zeros((h, wd))
        for p, (r, cc) in enumerate((r, cc) for r in rs for cc in cs):
            acc[r:r + m, cc:cc + m] += mean_h[p].reshape(m, m)
            vacc[r:r + m, cc:cc + m] += var_h[p].reshape(m, m)
            cnt[r:r + m, cc:cc + m] += 1
        xhat = acc / cnt * sd0 + mu0
        sigma = np.sqrt(vacc / cnt) * sd0
        return xhat.astype(np.float32), sigma.astype(np.float32)

    def anomaly_score(self, images: Sequence) -> Scores:
        """Score each image on its own; ``maps`` follow ``score_map``.

        ``extra``: ``recon``, ``sigma``, ``raw_maps``, ``norm_maps``, ``raw_scores``, ``norm_scores``
        (arrays when all images share a size, else lists).
        """
        items = [as_grey_batch([im])[0] for im in images]
        recs, sigs, raws, norms = [], [], [], []
        for im in items:
            t0 = time.perf_counter()
            xhat, sig = self.reconstruct(im)
            raw = np.abs(im - xhat)
            norm = raw / np.maximum(sig, 1e-6)
            raws.append(smooth_maps(raw[None], self.smooth)[0])
            norms.append(smooth_maps(norm[None], self.smooth)[0])
            recs.append(xhat)
            sigs.append(sig)
            log.debug("NKN %dx%d in %.2f s", im.shape[1], im.shape[0], time.perf_counter() - t0)
        raw_s = np.array([r.max() for r in raws], np.float64)
        norm_s = np.array([n.max() for n in norms], np.float64)
        same = len({r.shape for r in raws}) == 1
        pack = (lambda v: np.stack(v)) if same else (lambda v: v)
        maps = norms if self.score_map == "norm" else raws
        return Scores(scores=norm_s if self.score_map == "norm" else raw_s, maps=pack(maps),
                      extra={"recon": pack(recs), "sigma": pack(sigs), "raw_maps": pack(raws),
                             "norm_maps": pack(norms), "raw_scores": raw_s, "norm_scores": norm_s})
