"""Tweedie denoising (Efron 2011; Noise2Score, Kim & Ye 2021): posterior means from scores.

* Gaussian, ``y = x + s n``: ``E[x | y] = y + s^2 grad log p(y)``.
* Diffusion marginals, ``x_t = alpha(t) x_0 + sigma(t) z``:
  ``E[x_0 | x_t] = (x_t + sigma(t)^2 grad log p_t(x_t)) / alpha(t)`` (VP, sub-VP, VE alike), so a
  score network trained for diffusion denoises an image with Gaussian noise of std ``s`` at the
  time where ``sigma(t) / alpha(t) = s``, evaluated at ``alpha(t) y`` (:func:`gaussian_denoiser`).
* Poisson, ``y = zeta * Poisson(x / zeta)``: Noise2Score's formula
  ``x_hat = (y + zeta/2) exp(zeta grad log p(y))`` (the exponential-family Tweedie formula for
  ``E[log x | y]`` with Stirling's approximation of ``log y!``), and Robbins' exact discrete formula
  ``E[x | y] = (y + zeta) p(y + zeta) / p(y)`` (:func:`robbins_poisson`).
* Gamma, ``y ~ Gamma(shape k, mean x)``: ``x_hat = k y / ((k - 1) - y grad log p(y))`` which is
  exactly ``1 / E[1/x | y]`` (Tweedie for the natural parameter ``-k/x``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxdiff.sde import batch_broadcast

Array = jax.Array

__all__ = ["gaussian_tweedie", "poisson_tweedie", "gamma_tweedie", "robbins_poisson",
           "tweedie_denoiser", "time_for_noise_level", "gaussian_denoiser"]


def gaussian_tweedie(y: Array, score: Array, noise_std) -> Array:
    """``E[x | y] = y + s^2 score`` for ``y = x + s n``; ``noise_std`` scalar or ``(B,)``."""
    s = batch_broadcast(jnp.asarray(noise_std, y.dtype), y)
    return y + s**2 * score


def poisson_tweedie(y: Array, score: Array, zeta) -> Array:
    """Noise2Score estimate for ``y = zeta * Poisson(x / zeta)``: ``(y + zeta/2) exp(zeta score)``,
    with ``score = grad log p(y)`` of the noisy data."""
    zeta = batch_broadcast(jnp.asarray(zeta, y.dtype), y)
    return (y + zeta / 2.0) * jnp.exp(zeta * score)


def robbins_poisson(log_p: Callable[[Array], Array], y: Array, zeta) -> Array:
    """Exact ``E[x | y] = (y + zeta) p(y + zeta) / p(y)`` for ``y = zeta * Poisson(x / zeta)``.

    Args:
      log_p: the log probability mass function of the noisy data, elementwise on ``y``.
      y: observed values (multiples of ``zeta``).
      zeta: the gain.
    """
    zeta = jnp.asarray(zeta, y.dtype)
    return (y + zeta) * jnp.exp(log_p(y + zeta) - log_p(y))


def gamma_tweedie(y: Array, score: Array, k) -> Array:
    """``1 / E[1/x | y] = k y / ((k - 1) - y score)`` for ``y ~ Gamma(shape k, scale x / k)``."""
    k = batch_broadcast(jnp.asarray(k, y.dtype), y)
    return k * y / ((k - 1.0) - y * score)


def tweedie_denoiser(sde, score_fn: Callable) -> Callable:
    """``denoise(params, x_t, t) -> E[x_0 | x_t] = (x_t + sigma(t)^2 s(x_t, t)) / alpha(t)``.

    ``x_t`` of shape ``(B, ...)``, ``t`` scalar or ``(B,)``; one score evaluation.
    """

    def denoise(params, x_t, t):
        t = jnp.broadcast_to(jnp.asarray(t, x_t.dtype), x_t.shape[:1])
        alpha, sigma = sde.marginal_coeffs(t)
        score = score_fn(params, x_t, t)
        return (x_t + batch_broadcast(sigma**2, x_t) * score) / batch_broadcast(alpha, x_t)

    return denoise


def time_for_noise_level(sde, noise_std, *, iters: int = 64) -> Array:
    """The time ``t`` with ``sigma(t) / alpha(t) = noise_std`` (bisection on ``[0, T]``).

    The ratio must be increasing in ``t`` (true for VP, sub-VP, VE). Levels outside
    ``[ratio(0), ratio(T)]`` give ``0`` or ``T``. ``noise_std`` scalar or any shape.
    """
    s = jnp.asarray(noise_std)
    s = s.astype(jnp.result_type(s.dtype, float))

    def ratio(t):
        alpha, sigma = sde.marginal_coeffs(t)
        return sigma / alpha

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        up = ratio(mid) < s
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (jnp.zeros_like(s), jnp.full_like(s, sde.T)))
    return 0.5 * (lo + hi)


def gaussian_denoiser(sde, score_fn: Callable) -> Callable:
    """Denoise ``y = x + s n`` with a diffusion score model (Noise2Score with VP/VE conversion).

    Returns:
      ``denoise(params, y, noise_std) -> E[x | y]``: ``t`` solves ``sigma(t) / alpha(t) = s``, then
      ``E[x | y] = E[x_0 | x_t = alpha(t) y]`` by :func:`tweedie_denoiser` (for VE, ``x_t = y``). ``s``
      scalar or ``(B,)``; one score evaluation. Exact when the score is.
    """
    post_mean = tweedie_denoiser(sde, score_fn)

    def denoise(params, y, noise_std):
        s = jnp.broadcast_to(jnp.asarray(noise_std, y.dtype), y.shape[:1])
        t = time_for_noise_level(sde, s).astype(y.dtype)
        alpha, _ = sde.marginal_coeffs(t)
        return post_mean(params, batch_broadcast(alpha, y) * y, t)

    return denoise
