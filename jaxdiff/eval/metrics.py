"""Sample-quality metrics from network features: FID (Fréchet distance), Inception Score, KID;
and the image metrics of conditional generation (Batzolis et al. 2021): SSIM, consistency with
the observation, diversity of several samples for one observation.

These run on the host in float64 (numpy / scipy): features come back from the device once per
evaluation, and the 2048x2048 matrix square root of FID is best done in double precision.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import scipy.linalg
import scipy.ndimage
import scipy.special

Array = jax.Array

__all__ = ["feature_statistics", "frechet_distance", "fid_from_features", "inception_score",
           "kernel_inception_distance", "polynomial_mmd2_unbiased", "ssim", "mse", "psnr_db",
           "consistency", "diversity"]


def _as_2d(name: str, x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (num_samples, dim), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (float64) of features ``(N, D)``, ``N >= 2``."""
    f = _as_2d("features", features)
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6,
                     imag_rtol: float = 1e-3) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (float64 on the host).

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})`` with
    ``scipy.linalg.sqrtm``. If the product is singular and ``sqrtm`` returns non-finite values,
    ``eps`` is added to both diagonals (as pytorch-fid does). Numerical noise makes the square root
    slightly complex: the imaginary part is dropped when it is below ``imag_rtol`` times the largest
    entry of the square root, otherwise a ``ValueError`` is raised.

    Args:
      mu1, mu2: ``(D,)`` means.
      sigma1, sigma2: ``(D, D)`` symmetric positive semi-definite covariances.

    Returns:
      the distance as a Python float (clipped at 0 against round-off).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, "
                         f"sigma2 {s2.shape} (want (D,), (D, D) with one D)")
    for name, v in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} contains NaN or Inf")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm warns on singular products; handled below.
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.all(np.isfinite(covmean)):
            offset = np.eye(d) * eps
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        scale = max(np.abs(covmean).max(), 1e-300)
        imag = np.abs(covmean.imag).max()
        if imag > imag_rtol * scale:
            raise ValueError(f"sqrtm(sigma1 @ sigma2) has an imaginary part {imag:.3g} (relative "
                             f"{imag / scale:.3g} > {imag_rtol}): are both covariances PSD?")
        covmean = covmean.real
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)
    return float(max(fd, 0.0))


def fid_from_features(features1, features2) -> float:
    """FID between two feature sets ``(N1, D)`` and ``(N2, D)`` (see :func:`frechet_distance`)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def inception_score(logits, *, splits: int = 10) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` over ``splits`` equal splits.

    Args:
      logits: ``(N, K)`` class logits (softmax is taken here, in float64); ``N >= splits``.
      splits: number of disjoint consecutive splits (10, as in Salimans et al.); the last
        ``N % splits`` samples are dropped.

    Returns:
      ``(mean, std)`` of the per-split scores; 1 for constant predictions, ``K`` at most.
    """
    z = _as_2d("logits", logits)
    n = z.shape[0]
    if splits < 1 or n < splits:
        raise ValueError(f"need splits >= 1 and at least `splits` samples, got splits={splits}, "
                         f"N={n}")
    logp = z - scipy.special.logsumexp(z, axis=1, keepdims=True)
    size = n // splits
    scores = []
    for i in range(splits):
        lp = logp[i * size:(i + 1) * size]
        p = np.exp(lp)
        log_py = np.log(p.mean(0) + 1e-300)
        kl = np.sum(p * (lp - log_py), axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def polynomial_mmd2_unbiased(x, y, *, degree: int = 3, gamma: float | None = None,
                             coef0: float = 1.0) -> float:
    """Unbiased MMD^2 with the kernel ``k(a, b) = (gamma a.b + coef0)^degree``.

    ``gamma`` defaults to ``1 / D`` (Bińkowski et al. 2018). Diagonal terms ``k(x_i, x_i)`` are
    excluded from the within-set means, so the estimate is unbiased (and can be negative).
    """
    x, y = _as_2d("x", x), _as_2d("y", y)
    if x.shape[1] != y.shape[1] or x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"x {x.shape} and y {y.shape} need equal D and at least 2 rows each")
    g = 1.0 / x.shape[1] if gamma is None else gamma
    kxx = (g * x @ x.T + coef0) ** degree
    kyy = (g * y @ y.T + coef0) ** degree
    kxy = (g * x @ y.T + coef0) ** degree
    m, n = x.shape[0], y.shape[0]
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kernel_inception_distance(key: Array, features1, features2, *, num_subsets: int = 100,
                              subset_size: int = 1000, degree: int = 3,
                              gamma: float | None = None, coef0: float = 1.0
                              ) -> tuple[float, float]:
    """KID: the unbiased polynomial-kernel MMD^2 averaged over random subsets.

    Args:
      key: PRNG key choosing the subsets (each subset drawn without replacement).
      features1, features2: ``(N1, D)`` and ``(N2, D)``.
      num_subsets, subset_size: as in Bińkowski et al. (100 subsets of 1000); ``subset_size`` is
        clipped to ``min(N1, N2)``.
      degree, gamma, coef0: the kernel (default ``(a.b / D + 1)^3``).

    Returns:
      ``(mean, std)`` over the subsets.
    """
    f1, f2 = _as_2d("features1", features1), _as_2d("features2", features2)
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2 or num_subsets < 1:
        raise ValueError(f"need subsets of at least 2 and num_subsets >= 1, got subset_size={m}, "
                         f"num_subsets={num_subsets}")
    k1, k2 = jax.random.split(key)
    # m distinct indices per subset: the m smallest of n uniforms (O(n) per subset, no sort).
    pick = lambda k, n: np.asarray(
        jax.lax.top_k(-jax.random.uniform(k, (num_subsets, n)), m)[1])
    i1, i2 = pick(k1, f1.shape[0]), pick(k2, f2.shape[0])
    vals = np.array([polynomial_mmd2_unbiased(f1[a], f2[b], degree=degree, gamma=gamma,
                                              coef0=coef0) for a, b in zip(i1, i2)])
    return float(vals.mean()), float(vals.std())


# ---- image metrics of conditional generation ------------------------------------------------
def _images(name: str, x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{name} must be images (B, H, W[, C]), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def ssim(x, y, *, data_range: float = 1.0, sigma: float = 1.5, truncate: float = 3.5,
         k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Per-image structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004), float64.

    The paper's settings: a Gaussian window of standard deviation ``sigma = 1.5`` (``truncate``
    3.5 gives the 11x11 window), ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` with ``k1 = 0.01``,
    ``k2 = 0.03`` and ``L = data_range``, population (not sample) local covariances. The SSIM map
    is computed per channel with reflecting borders (``scipy.ndimage.gaussian_filter``) and
    averaged over the pixels at least half a window from the border and over channels; this is
    ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=L, channel_axis=-1)``. Images smaller than the
    window (e.g. 8x8 or 16x16 digits, where skimage refuses) average the whole map instead.

    Args:
      x, y: ``(B, H, W[, C])`` images on the same scale.
      data_range: ``L``, the dynamic range (1 for ``[0, 1]`` images).

    Returns:
      ``(B,)`` SSIM values in ``[-1, 1]`` (1 iff ``x == y``).
    """
    x, y = _images("x", x), _images("y", y)
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ, {x.shape} vs {y.shape}")
    if not data_range > 0:
        raise ValueError(f"ssim: data_range must be > 0, got {data_range}")
    if not sigma > 0:
        raise ValueError(f"ssim: sigma must be > 0, got {sigma}")
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    filt = lambda a: scipy.ndimage.gaussian_filter(a, sigma=(0, sigma, sigma, 0),
                                                   truncate=truncate, mode="reflect")
    mx, my = filt(x), filt(y)
    vx = filt(x * x) - mx * mx
    vy = filt(y * y) - my * my
    cxy = filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    pad = (2 * int(truncate * sigma + 0.5) + 1 - 1) // 2
    h, w = x.shape[1:3]
    if h > 2 * pad and w > 2 * pad:
        s = s[:, pad:h - pad, pad:w - pad]
    return s.reshape(s.shape[0], -1).mean(axis=1)


def mse(x, y) -> np.ndarray:
    """Per-example mean squared error of ``(B, ...)`` arrays (float64)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim < 1:
        raise ValueError(f"mse: shapes differ, {x.shape} vs {y.shape}")
    return np.mean(np.square(x - y).reshape(x.shape[0], -1), axis=1)


def psnr_db(err_mse, *, data_range: float = 1.0) -> np.ndarray:
    """``10 log10(L^2 / MSE)`` (dB) of per-example MSEs (floored at ``1e-12 L^2``: 120 dB)."""
    if not data_range > 0:
        raise ValueError(f"psnr: data_range must be > 0, got {data_range}")
    m = np.asarray(err_mse, np.float64)
    return 10.0 * np.log10(data_range ** 2 / np.maximum(m, 1e-12 * data_range ** 2))


def consistency(y_of_sample, y, *, data_range: float = 1.0) -> dict:
    """Consistency of samples with their observations: the observation operator applied to the
    sample, ``A(x)``, against the observation ``y`` (the papers' "consistency").

    Args:
      y_of_sample: ``(B, ...)`` the operator applied to the samples, ``A(x)``.
      y: ``(B, ...)`` the observations ``A(x_true)`` on the same scale.
      data_range: peak of the PSNR.

    Returns:
      ``{'mse': (B,), 'psnr': (B,)}`` (PSNR in dB; higher is more consistent).
    """
    m = mse(y_of_sample, y)
    return {"mse": m, "psnr": psnr_db(m, data_range=data_range)}


def diversity(samples, *, distance=None) -> np.ndarray:
    """Mean pairwise distance of ``K >= 2`` samples drawn for each of ``B`` observations.

    Args:
      samples: ``(K, B, ...)``: ``samples[k, b]`` is the ``k``-th sample for observation ``b``.
      distance: ``distance(a, b) -> (B,)`` between two ``(B, ...)`` batches; default the
        root-mean-square difference per entry, ``sqrt(mean((a - b)^2))`` (on ``[0, 1]`` images:
        0 for identical samples, the standard deviation times ``sqrt(2)`` for independent ones).

    Returns:
      ``(B,)``: the mean over the ``K (K - 1) / 2`` pairs ``k < l`` of ``distance(s_k, s_l)``.
    """
    s = np.asarray(samples, np.float64)
    if s.ndim < 2 or s.shape[0] < 2:
        raise ValueError(f"diversity needs samples (K >= 2, B, ...), got shape {s.shape}")
    if distance is None:
        distance = lambda a, b: np.sqrt(mse(a, b))
    k = s.shape[0]
    pairs = [np.asarray(distance(s[i], s[j]), np.float64)
             for i in range(k) for j in range(i + 1, k)]
    return np.mean(pairs, axis=0)
