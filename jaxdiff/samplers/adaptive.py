"""Adaptive-step reverse-SDE sampler (Jolicoeur-Martineau, Li, Piché-Taillefer, Kachman &
Mitliagkas 2021, "Gotta Go Fast When Generating Data with Score-Based Models", Alg. 1).

Each iteration proposes, from ``(x, t)`` with step ``h`` and one Gaussian draw ``z``,

* the Euler-Maruyama step ``x' = x - h drift(x, t) + sqrt(h) g(t) z`` and
* the improved-Euler (Heun) step ``x'' = (x' + x~) / 2`` with
  ``x~ = x - h drift(x', t - h) + sqrt(h) g(t - h) z``,

where ``drift = f - g^2 score`` is the reverse-SDE drift in forward-time convention. The local
error is ``E = ||(x' - x'') / delta||_2 / sqrt(n)`` per example, with the mixed tolerance
``delta = max(eps_abs, eps_rel * max(|x'|, |x'_prev|))`` (element-wise; ``x'_prev`` is the previous
accepted Euler proposal). The step is accepted when ``E <= 1`` (keeping the extrapolated
``x''``), and the next step size is ``min(t - eps, theta * h * E^(-r))``. Every example has its own
time and step size; the loop (one ``lax.while_loop``) runs until all reach ``eps``.

One deliberate change from the paper: by default the Brownian increments come from one fixed
Brownian path per example (``noise='brownian_tree'``) instead of a fresh draw per proposal. With
fresh draws, whether a step is accepted depends on its noise (the relative tolerance grows with
``|x'|``), which biases the accepted increments; tightening the tolerance then makes the samples
*worse*. ``noise='resample'`` keeps the paper's literal scheme for comparison.
"""

from __future__ import annotations

from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import Solver, bind_cond, constrain, make_sampler
from jaxdiff.sde import batch_broadcast

Array = jax.Array

__all__ = ["AdaptiveInfo", "adaptive_sde_solve", "adaptive_sde_integrate", "adaptive_sde_sampler"]


class AdaptiveInfo(NamedTuple):
    """Diagnostics of an adaptive solve.

    Fields: ``iterations`` (batched proposals, 2 score evaluations each), ``accepted`` and
    ``rejected`` ``(B,)`` step counts per example, ``max_error`` ``(B,)`` the largest scaled error
    ``E`` of an accepted step (``<= 1`` when the tolerance was met), ``t`` ``(B,)`` the final times.
    """

    iterations: Array
    accepted: Array
    rejected: Array
    max_error: Array
    t: Array


def _validate(sde, eps, T, eps_abs, eps_rel, h_init, safety, exponent, max_iterations,
              noise, brownian_tol):
    """Check the options of the adaptive solver; returns ``T`` (default ``sde.T``)."""
    T = sde.T if T is None else T
    for name, v in (("eps_abs", eps_abs), ("eps_rel", eps_rel)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    if eps_abs == 0 and eps_rel == 0:
        raise ValueError("eps_abs and eps_rel cannot both be 0")
    if not 0.0 <= eps < T:
        raise ValueError(f"need 0 <= eps < T, got eps={eps}, T={T}")
    if not 0.0 < h_init:
        raise ValueError(f"h_init must be positive, got {h_init}")
    if not (0.0 < safety <= 1.0 and exponent > 0.0):
        raise ValueError(f"need 0 < safety <= 1 and exponent > 0, got {safety}, {exponent}")
    if not 0.0 < brownian_tol < 1.0:
        raise ValueError(f"brownian_tol must lie in (0, 1), got {brownian_tol}")
    if noise not in ("brownian_tree", "resample"):
        raise ValueError(f"noise must be 'brownian_tree' or 'resample', got {noise!r}")
    if int(max_iterations) < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    return T


def adaptive_sde_solve(sde, score_fn, params, x: Array, t0: float, t1: float, *, key: Array,
                       eps_abs: float = 0.0078, eps_rel: float = 0.05, h_init: float = 0.01,
                       safety: float = 0.9, exponent: float = 0.9, max_iterations: int = 10_000,
                       noise: str = "brownian_tree", brownian_tol: float = 1e-5,
                       sharding=None, cond=None) -> tuple[Array, AdaptiveInfo]:
    """Integrate the reverse SDE from ``t0`` down to ``t1`` with tolerance-controlled steps.

    Args:
      sde: the forward SDE (any SDE of the library: only ``sde.reverse`` is used).
      score_fn, params: the score function and its parameters.
      x: state at ``t0``, shape ``(B, ...)``.
      t0, t1: start and end times (``t1 < t0``; Python floats), e.g. ``sde.T`` and ``eps``.
      key: PRNG key of the Brownian motion.
      eps_abs, eps_rel: absolute and relative tolerances (paper defaults 0.0078, 0.05).
      h_init: first step size; safety (``theta``) and exponent (``r``) of the controller (0.9, 0.9).
      max_iterations: bound on batched proposals (the loop stops there even if unfinished;
        ``info.t > eps`` then shows it).
      noise: ``'brownian_tree'`` (default): every example follows one fixed Brownian path (a
        ``diffrax.VirtualBrownianTree`` with resolution ``brownian_tol * (T - eps)``), so a
        rejected step is retried on the same path (as in rejection sampling with memory) and the
        solution converges to the reverse SDE's as the tolerance shrinks. ``'resample'``: a fresh
        ``N(0, h)`` draw per proposal (``fold_in(key, i)``), literally the paper's Alg. 1; its
        accept/reject decisions depend on the noise and bias the samples (wider than the truth,
        increasingly so at tight tolerances; see ``docs/samplers.md``).
      sharding: optional sharding constraint of the state.
      cond: optional condition, passed to the score as its fourth argument.

    Returns:
      ``(x at t1, info)`` with :class:`AdaptiveInfo`; the number of score evaluations is
      ``2 * info.iterations`` (:func:`adaptive_sde_integrate` returns it).
    """
    T, eps = t0, t1
    _validate(sde, eps, T, eps_abs, eps_rel, h_init, safety, exponent, max_iterations, noise,
              brownian_tol)
    rsde = sde.reverse(bind_cond(score_fn, cond), probability_flow=False)
    batch = x.shape[0]
    dt = x.dtype
    n = x[0].size
    eps_t = jnp.asarray(eps, dt)

    def drift_diffusion(x, t):
        drift, g = rsde.sde(params, x, t)
        return drift, batch_broadcast(jnp.broadcast_to(g, t.shape), x)

    if noise == "brownian_tree":
        # one Brownian path per example, in the forward variable s = T - t; rejected steps are
        # retried on the same path, so the accept/reject decisions cannot bias the noise
        keys = jax.random.split(key, batch)
        tree_tol = brownian_tol * (T - eps)

        def one(k, s0, s1):
            tree = diffrax.VirtualBrownianTree(0.0, T - eps, tree_tol, x.shape[1:], k)
            return tree.evaluate(s0, s1)

        def increment(i, t, t_next, h):
            dw = jax.vmap(one)(keys, T - t, T - t_next).astype(dt)
            return jnp.where(batch_broadcast(h > 0, x), dw, 0.0)
    elif noise == "resample":
        def increment(i, t, t_next, h):
            z = jax.random.normal(jax.random.fold_in(key, i), x.shape, dt)
            return jnp.sqrt(batch_broadcast(h, x)) * z
    else:
        raise ValueError(f"noise must be 'brownian_tree' or 'resample', got {noise!r}")

    def not_done(state):
        i, _, t, *_ = state
        return (i < max_iterations) & jnp.any(t > eps_t)

    def body(state):
        i, x, t, h, x_prev, acc, rej, emax = state
        h = jnp.where(t > eps_t, jnp.minimum(h, t - eps_t), 0.0)  # done examples stand still
        t_next = jnp.where(h >= t - eps_t, eps_t, t - h)
        dw = increment(i, t, t_next, h)
        hb = batch_broadcast(h, x)
        drift, g = drift_diffusion(x, t)
        x_euler = x - hb * drift + g * dw
        drift2, g2 = drift_diffusion(x_euler, t_next)
        x_tilde = x - hb * drift2 + g2 * dw
        x_heun = 0.5 * (x_euler + x_tilde)
        delta = jnp.maximum(eps_abs, eps_rel * jnp.maximum(jnp.abs(x_euler), jnp.abs(x_prev)))
        err = (x_euler - x_heun) / delta
        err = jnp.sqrt(jnp.sum(err.reshape(batch, -1) ** 2, axis=-1) / n)
        active = t > eps_t
        accept = err <= 1.0
        ab = batch_broadcast(accept, x)
        x = constrain(jnp.where(ab, x_heun, x), sharding)
        x_prev = constrain(jnp.where(ab, x_euler, x_prev), sharding)
        t = jnp.where(accept, t_next, t)
        factor = safety * jnp.maximum(err, 1e-10) ** (-exponent)
        h = jnp.minimum(h * factor, jnp.maximum(t - eps_t, 0.0))
        acc = acc + (accept & active)
        rej = rej + (~accept & active)
        emax = jnp.where(accept & active, jnp.maximum(emax, err), emax)
        return i + 1, x, t, h, x_prev, acc, rej, emax

    zeros = jnp.zeros((batch,), jnp.int32)
    state = (jnp.asarray(0, jnp.int32), x, jnp.full((batch,), T, dt), jnp.full((batch,), h_init, dt),
             x, zeros, zeros, jnp.zeros((batch,), dt))
    i, x, t, _, _, acc, rej, emax = jax.lax.while_loop(not_done, body, state)
    return x, AdaptiveInfo(i, acc, rej, emax, t)


def adaptive_sde_integrate(sde, score_fn, params, x: Array, t0: float, t1: float, *,
                           key: Array, **options) -> tuple[Array, Array]:
    """:func:`adaptive_sde_solve` in the integrate contract: ``(x at t1, nfe)`` with ``nfe =
    2 * iterations`` (int32). ``options`` are those of :func:`adaptive_sde_solve`."""
    x, info = adaptive_sde_solve(sde, score_fn, params, x, t0, t1, key=key, **options)
    return x, 2 * info.iterations


def adaptive_sde_sampler(sde, score_fn, shape: tuple[int, ...], *, eps_abs: float = 0.0078,
                         eps_rel: float = 0.05, h_init: float = 0.01, safety: float = 0.9,
                         exponent: float = 0.9, eps: float = 1e-3, T: float | None = None,
                         denoise: bool = True, max_iterations: int = 10_000,
                         noise: str = "brownian_tree", brownian_tol: float = 1e-5,
                         dtype=jnp.float32, sharding=None):
    """"Gotta Go Fast" adaptive reverse-SDE sampler.

    Args:
      sde: the forward SDE; score_fn: ``score_fn(params, x, t) -> score``; shape: ``(B, ...)``.
      eps_abs, eps_rel, h_init, safety, exponent, max_iterations, noise, brownian_tol: see
        :func:`adaptive_sde_solve`.
      eps, T: end and start times.
      denoise: return the Tweedie estimate ``(x + sigma^2 score) / alpha`` at ``eps`` (one more
        evaluation; needs scalar ``alpha, sigma``).
      dtype, sharding: sample dtype and optional sharding of the ``(B, ...)`` state.

    Returns:
      ``sample(params, key, cond=None) -> (x, nfe)``, jitted; ``nfe = 2 * iterations (+1)`` batched score
      evaluations (it varies with the key). The prior draw uses ``split(key)[0]``.
    """
    T = _validate(sde, eps, T, eps_abs, eps_rel, h_init, safety, exponent, max_iterations, noise,
                  brownian_tol)
    options = dict(eps_abs=eps_abs, eps_rel=eps_rel, h_init=h_init, safety=safety,
                   exponent=exponent, max_iterations=max_iterations, noise=noise,
                   brownian_tol=brownian_tol, sharding=sharding)

    def integrate(score_fn, params, key, x, ts):
        return adaptive_sde_integrate(sde, score_fn, params, x, T, eps, key=key, **options)

    solver = Solver(integrate, lambda dt: jnp.asarray([T, eps], dt))
    return make_sampler(sde, score_fn, shape, solver, denoise=denoise, dtype=dtype,
                        sharding=sharding)
