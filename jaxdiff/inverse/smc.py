"""Asymptotically exact posterior sampling for noise-free linear observations by sequential Monte
Carlo (in the spirit of MCGdiff, Cardoso et al. 2023, and the twisted diffusion sampler).

Replacement / projection methods (:mod:`jaxdiff.inverse.consistency`) plug a forward-noised
observation into the *unconditional* reverse dynamics. That ignores how likely the observed path
is under the model, so when the observation must arbitrate between modes the component weights
come out biased towards the prior (measured in ``docs/inverse.md``). Here the batch is a particle
system for one observation ``y = A x`` (``A`` with orthonormal rows, e.g. a :class:`Mask`; a dense
:class:`Matrix` is whitened first):

* twisted targets ``p_t(x) g_t(x)`` with potentials ``g_t(x) = N(alpha_t y; A x, sigma_t^2 I)``
  (how well ``x_t`` explains the observation pushed to time ``t``); particles start from the prior
  with weight ``g_T``;
* each step draws the unobserved part from the model's Euler-Maruyama reverse kernel
  ``N(mu(x_t), g^2 h I)`` and the observed part from that kernel times the next potential (a
  Gaussian product, closed form), and multiplies the weight by
  ``int kernel * g_s / g_t = N(alpha_s y; A mu, (g^2 h + sigma_s^2) I) / g_t(x_t)`` (the kernel is
  isotropic, so observed and unobserved parts factorise); at ``s = 0`` with ``sigma(0) = 0`` the
  potential pins ``A x_0 = y``;
* systematic resampling when the effective sample size drops below ``ess_threshold * B``, and once
  at the end, so the returned samples are equally weighted.

The target is the model's own discretised reverse path conditioned on ``A x_0 = y``, so with the
exact score the samples converge to the exact posterior as the number of particles and steps grow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.inverse.linear import Mask, Matrix
from jaxdiff.inverse.observation import check_observation
from jaxdiff.samplers.base import keep_dtype
from jaxdiff.sde import batch_broadcast

Array = jax.Array

__all__ = ["smc_inverse_sampler", "orthonormalize", "systematic_resample"]


def orthonormalize(op, y: Array):
    """Equivalent operator with orthonormal rows and the matching observation.

    A :class:`Mask` is returned as is; a dense :class:`Matrix` ``A`` (full row rank) becomes
    ``L A`` with ``L = (A A^T)^{-1/2}`` and ``y -> y L^T``.
    """
    if isinstance(op, Mask):
        return op, y
    if isinstance(op, Matrix):
        lam, u = jnp.linalg.eigh(op.A @ op.A.T)
        L = (u / jnp.sqrt(lam)) @ u.T
        return Matrix.create(L @ op.A, op.event_shape), y @ L.T.astype(y.dtype)
    raise ValueError(
        f"the SMC sampler needs a Mask or a Matrix operator (orthonormalisable rows), got "
        f"{type(op).__name__}")


def systematic_resample(key: Array, log_w: Array) -> Array:
    """Indices ``(B,)`` of a systematic resampling of ``B`` particles with log-weights ``log_w``."""
    b = log_w.shape[0]
    w = jax.nn.softmax(log_w)
    cdf = jnp.cumsum(w)
    u = (jax.random.uniform(key, (), w.dtype) + jnp.arange(b, dtype=w.dtype)) / b
    return jnp.minimum(jnp.searchsorted(cdf, u), b - 1)


def _sum(v):
    return jnp.sum(v.reshape(v.shape[0], -1), axis=-1)


def smc_inverse_sampler(sde, score_fn, shape: tuple[int, ...], *, num_steps: int | None = None,
                        eps: float = 1e-3, ess_threshold: float = 0.5, dtype=jnp.float32):
    """Particle sampler of ``p(x | A x = y)``: the batch is one particle system per observation.

    Args:
      sde: linear forward SDE (VP, sub-VP, VE).
      score_fn: ``score_fn(params, x, t)`` of the prior.
      shape: ``(B, *event_shape)``; ``B`` is the number of particles.
      num_steps: number of reverse steps (default ``sde.N``) on ``linspace(T, eps, N)`` then to 0.
      eps: the last positive time.
      ess_threshold: resample when ``ESS < ess_threshold * B`` (0: only at the end).

    Returns:
      ``sample(params, key, cond) -> (x, nfe)``, jitted; ``cond`` an
      :class:`~jaxdiff.inverse.observation.Observation` whose ``op`` is a :class:`Mask` or
      :class:`Matrix` and ``y`` one observation ``(1, *obs_shape)`` shared by all particles
      (``vmap`` over observations for several; ``lam`` is not used). ``x`` holds ``B`` equally
      weighted samples with ``A x = y``.
    """
    n = sde.N if num_steps is None else int(num_steps)
    if n < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
    batch = shape[0]
    score_fn = keep_dtype(score_fn)

    def coeffs(t):
        alpha, sigma = sde.marginal_coeffs(t)
        return alpha, sigma

    @jax.jit
    def sample(params, key, cond=None):
        obs = check_observation(cond, "smc_inverse_sampler")
        op, y = obs.op, obs.y
        if y.shape[0] != 1:
            raise ValueError(f"y must hold one observation (leading axis 1), got shape {y.shape}")
        op, y = orthonormalize(op, y)
        y = y.astype(dtype)
        times = jnp.concatenate([jnp.linspace(sde.T, eps, n, dtype=dtype), jnp.zeros((1,), dtype)])
        k_init, k_loop, k_final = jax.random.split(key, 3)

        # twisted targets p_t(x) g_t(x) with potentials g_t(x) = N(alpha_t y; A x, sigma_t^2 I):
        # start from the prior with weight g_T; constants shared by all particles are dropped.
        def log_g(x, t):
            a_t, s_t = coeffs(t)
            return _sum(-0.5 * ((a_t * y - op(x)) / s_t) ** 2)

        x = sde.prior_sampling(k_init, shape, dtype)
        log_w = log_g(x, times[0])

        def body(carry, i):
            x, log_w = carry
            k_res, k_move = jax.random.split(jax.random.fold_in(k_loop, i))
            t, s = times[i], times[i + 1]
            h = t - s
            tb = jnp.full((batch,), t, dtype)
            f, _ = sde.sde(x, tb)
            _, g = sde.sde(x, t)                                # diffusion depends on t only
            score = score_fn(params, x, tb)
            mu = x - (f - batch_broadcast(g**2, x) * score) * h
            var = g**2 * h                                      # model kernel N(mu, var I)
            x_new = mu + jnp.sqrt(var) * jax.random.normal(k_move, x.shape, dtype)
            # observed part from the kernel times the next potential (a Gaussian product).
            a_s, s_s = coeffs(s)
            q_var = var * s_s**2 / (var + s_s**2)
            q_mean = (op(mu) * s_s**2 + a_s * y * var) / (var + s_s**2)
            x_new = op.project(x_new, q_mean + jnp.sqrt(q_var / var) * (op(x_new) - op(mu)))
            # incremental weight: int kernel * g_s / g_t.
            log_w = (log_w + _sum(-0.5 * (a_s * y - op(mu)) ** 2 / (var + s_s**2))
                     - log_g(x, t))
            # resample when the effective sample size is low.
            w = jax.nn.softmax(log_w)
            ess = 1.0 / jnp.sum(w**2)
            do = ess < ess_threshold * batch
            idx = jnp.where(do, systematic_resample(k_res, log_w), jnp.arange(batch))
            x_new = x_new[idx]
            log_w = jnp.where(do, jnp.zeros_like(log_w), log_w[idx])
            return (x_new, log_w), None

        (x, log_w), _ = jax.lax.scan(body, (x, log_w), jnp.arange(n))
        x = op.project(x[systematic_resample(k_final, log_w)], y)
        return x, jnp.asarray(n, jnp.int32)

    return sample
