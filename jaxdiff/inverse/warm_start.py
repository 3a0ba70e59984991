"""Gaussian-score warm start ("analytical teleportation", Wang & Vastola 2023).

For Gaussian data ``N(mu, Sigma)`` and a linear SDE every marginal is ``N(alpha mu, alpha^2 Sigma +
sigma^2 I)`` and the probability-flow ODE is linear and diagonal in the eigenbasis of ``Sigma``:
along eigenvector ``u_i``, ``x_t - alpha_t mu`` scales by ``sqrt((alpha_t^2 l_i + sigma_t^2) /
(alpha_s^2 l_i + sigma_s^2))`` from time ``s`` to ``t``. The early, high-noise part of sampling is
dominated by this Gaussian part of the data, so a sampler can jump from the prior to ``t_skip``
exactly for the data's Gaussian approximation (mean and covariance estimated once) and continue
with the learned score from there, saving the score evaluations on ``[t_skip, T]``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from jaxdiff.samplers.base import keep_dtype
from jaxdiff.samplers.ode import ode_integrate
from jaxdiff.samplers.pc import constrain, pc_loop, pc_step
from jaxdiff.samplers.predictors import reverse_diffusion

Array = jax.Array

__all__ = ["GaussianStats", "teleport", "warm_start_sampler"]


class GaussianStats(struct.PyTreeNode):
    """Mean ``(D,)`` and covariance in eigen-form (``eigvals (D,)``, ``eigvecs (D, D)``) of the data;
    ``event_shape`` (static) is the shape of one example."""

    mean: Array
    eigvals: Array
    eigvecs: Array
    event_shape: tuple = struct.field(pytree_node=False, default=None)

    @classmethod
    def from_moments(cls, mean, cov, event_shape: tuple | None = None) -> GaussianStats:
        """From a mean ``(D,)`` and a covariance ``(D, D)``."""
        mean = jnp.asarray(mean)
        cov = jnp.asarray(cov, mean.dtype)
        d = mean.shape[-1]
        if mean.ndim != 1 or cov.shape != (d, d):
            raise ValueError(f"need mean (D,) and cov (D, D), got {mean.shape} and {cov.shape}")
        event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(event_shape) != d:
            raise ValueError(f"event_shape {event_shape} does not hold {d} values")
        lam, u = jnp.linalg.eigh(0.5 * (cov + cov.T))
        return cls(mean, jnp.maximum(lam, 0.0), u, event_shape)

    @classmethod
    def from_data(cls, x: Array) -> GaussianStats:
        """Estimate from samples ``(n, *event_shape)`` (unbiased covariance)."""
        if x.shape[0] < 2:
            raise ValueError(f"need at least 2 examples to estimate a covariance, got {x.shape[0]}")
        xf = x.reshape(x.shape[0], -1)
        return cls.from_moments(xf.mean(0), jnp.cov(xf, rowvar=False).reshape(
            xf.shape[1], xf.shape[1]), x.shape[1:])


def teleport(sde, stats: GaussianStats, x: Array, t_from, t_to) -> Array:
    """Exact probability-flow map of Gaussian data from time ``t_from`` to ``t_to`` (scalars).

    Args:
      sde: linear forward SDE.
      stats: the Gaussian (data mean and covariance).
      x: ``(B, *event_shape)`` states at ``t_from``.
    Returns:
      The states at ``t_to``, same shape.
    """
    a0, s0 = (c.astype(x.dtype) for c in sde.marginal_coeffs(jnp.asarray(t_from, x.dtype)))
    a1, s1 = (c.astype(x.dtype) for c in sde.marginal_coeffs(jnp.asarray(t_to, x.dtype)))
    lam = stats.eigvals.astype(x.dtype)
    u = stats.eigvecs.astype(x.dtype)
    mu = stats.mean.astype(x.dtype)
    scale = jnp.sqrt((a1**2 * lam + s1**2) / (a0**2 * lam + s0**2))
    xf = x.reshape(x.shape[0], -1)
    coef = ((xf - a0 * mu) @ u) * scale
    return (a1 * mu + coef @ u.T).reshape(x.shape)


def warm_start_sampler(sde, score_fn, shape: tuple[int, ...], *, t_skip: float,
                       method: str = "ode", predictor="reverse_diffusion", corrector=None,
                       snr: float = 0.16, n_corrector_steps: int = 1,
                       num_steps: int | None = None, noise_removal: bool = True,
                       eps: float = 1e-3, rtol: float = 1e-5, atol: float = 1e-5,
                       solver: str = "dopri5", dtype=jnp.float32, sharding=None,
                       max_steps: int = 8192):
    """Sample with an exact Gaussian jump from the prior to ``t_skip``, then the learned score.

    Args:
      sde, score_fn, shape: as :func:`jaxdiff.samplers.pc_sampler`.
      t_skip: time in ``(eps, T]`` to jump to (``T``: no jump).
      method: ``'ode'`` (the probability flow from ``t_skip`` by
        :func:`jaxdiff.samplers.ode_integrate` with ``solver``, ``rtol``, ``atol``) or ``'pc'``
        (PC on ``linspace(t_skip, eps, round(t_skip N))`` with ``predictor``, ``corrector``...).
      noise_removal: score_sde's noise removal, as in the samplers it continues with: for
        ``'ode'`` finish with the mean of one reverse-diffusion step at ``eps`` (one more
        evaluation, :func:`jaxdiff.samplers.ode_sampler`), for ``'pc'`` return the noise-free mean
        of the last update (:func:`jaxdiff.samplers.pc_sampler`).

    Returns:
      ``sample(params, key, cond) -> (x, nfe)``, jitted; ``cond`` a :class:`GaussianStats`. The
      score evaluations saved are those of the same sampler from ``T`` minus ``nfe``.
    """
    if num_steps is not None:
        sde = sde.with_steps(num_steps)
    if not eps < t_skip <= sde.T:
        raise ValueError(f"t_skip must be in (eps={eps}, T={sde.T}], got {t_skip}")
    if method not in ("ode", "pc"):
        raise ValueError(f"unknown method {method!r}; choose 'ode' or 'pc'")
    batch = shape[0]
    score_fn = keep_dtype(score_fn)

    def start(key, stats):
        if not isinstance(stats, GaussianStats):
            raise TypeError(f"warm_start_sampler takes cond=GaussianStats, got "
                            f"{type(stats).__name__}")
        x = sde.prior_sampling(key, shape, dtype)
        return constrain(teleport(sde, stats, x, sde.T, t_skip), sharding)

    if method == "pc":
        n_steps = max(1, int(round(t_skip * sde.N)))
        step = pc_step(sde, score_fn, predictor=predictor, corrector=corrector, snr=snr,
                       n_corrector_steps=n_corrector_steps)
        nfe = step.nfe * n_steps

        @jax.jit
        def sample_pc(params, key, cond=None):
            k_prior, k_loop = jax.random.split(key)
            x = start(k_prior, cond)
            timesteps = jnp.linspace(t_skip, eps, n_steps, dtype=dtype)
            x, x_mean = pc_loop(step, params, k_loop, x, timesteps, sharding=sharding)
            return (x_mean if noise_removal else x), jnp.asarray(nfe, jnp.int32)

        return sample_pc

    denoiser = reverse_diffusion(sde, score_fn, probability_flow=False)

    @jax.jit
    def sample(params, key, cond=None):
        k_prior, k_denoise = jax.random.split(key)
        x = start(k_prior, cond)
        x, nfe = ode_integrate(sde, score_fn, params, x, t_skip, eps, solver=solver, rtol=rtol,
                               atol=atol, max_steps=max_steps, sharding=sharding)
        x = x.astype(dtype)   # diffrax promotes the state to the float64 time dtype under x64
        if noise_removal:
            _, x = denoiser.update(params, k_denoise, x, jnp.full((batch,), eps, x.dtype))
            nfe = nfe + 1
        return x.astype(dtype), nfe

    return sample
