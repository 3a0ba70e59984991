"""DDIM (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models") on any time grid.

For a linear SDE with ``x_t = alpha(t) x_0 + sigma(t) z`` one DDIM step from ``s`` to ``t < s``
predicts ``x0_hat = (x + sigma_s^2 score) / alpha_s`` and ``eps_hat = (x - alpha_s x0_hat) / sigma_s``
and sets::

    x_t = alpha_t x0_hat + sqrt(sigma_t^2 - c^2) eps_hat + c z,
    c   = eta * sigma_t * sqrt(1 - exp(-2 (lambda_t - lambda_s)))

with ``lambda = log(alpha / sigma)``. ``c`` is the std of the exact posterior
``q(x_t | x_s, x_0)`` times ``eta``: ``eta = 0`` is the deterministic DDIM (the first-order
DPM-Solver / exponential integrator of the probability-flow ODE), ``eta = 1`` ancestral sampling
(DDPM on the VP SDE). The formula only uses ``alpha`` and ``sigma``, so it serves the VP and
sub-VP SDEs (and the VE SDE, where ``alpha = 1``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import Solver, bind_cond, constrain, make_sampler
from jaxdiff.samplers.schedule import (
    check_grid,
    check_scalar_schedule,
    data_prediction,
    default_grid,
    end_time,
    log_alpha_sigma,
    time_grid,
)

Array = jax.Array

__all__ = ["ddim_step", "ddim_integrate", "ddim_sampler", "ddim_nfe"]


def ddim_step(x: Array, x0_hat: Array, key: Array | None, log_alpha_sigma_s, log_alpha_sigma_t,
              eta: float = 0.0) -> Array:
    """One DDIM update from time ``s`` to ``t`` given the data prediction at ``s``.

    Args:
      x: state at ``s``, shape ``(B, ...)``.
      x0_hat: data prediction ``(x + sigma_s^2 score) / alpha_s``, shape of ``x``.
      key: PRNG key for the fresh noise (unused, may be ``None``, when ``eta == 0``).
      log_alpha_sigma_s, log_alpha_sigma_t: ``(log alpha, log sigma)`` at ``s`` and ``t``.
      eta: stochasticity, ``0`` (deterministic) to ``1`` (ancestral).

    Returns:
      the state at ``t``, shape of ``x``.
    """
    la_s, ls_s = log_alpha_sigma_s
    la_t, ls_t = log_alpha_sigma_t
    dt = x.dtype
    eps_hat = (x - jnp.exp(la_s).astype(dt) * x0_hat) * jnp.exp(-ls_s).astype(dt)
    sigma_t = jnp.exp(ls_t)
    if isinstance(eta, (int, float)) and eta == 0:
        return jnp.exp(la_t).astype(dt) * x0_hat + sigma_t.astype(dt) * eps_hat
    h = (la_t - ls_t) - (la_s - ls_s)
    c = eta * sigma_t * jnp.sqrt(-jnp.expm1(-2.0 * h))
    if key is None:
        raise ValueError(f"ddim_step with eta={eta} needs a PRNG key")
    noise = jax.random.normal(key, x.shape, dt)
    return (jnp.exp(la_t).astype(dt) * x0_hat
            + jnp.sqrt(jnp.maximum(sigma_t**2 - c**2, 0.0)).astype(dt) * eps_hat
            + c.astype(dt) * noise)


def ddim_integrate(sde, score_fn, params, x: Array, ts: Array, *, key: Array | None = None,
                   eta: float = 0.0, sharding=None, cond=None) -> tuple[Array, int]:
    """Run DDIM along the descending time grid ``ts`` (one ``lax.scan``).

    Args:
      sde: linear SDE with scalar ``alpha(t), sigma(t)``.
      score_fn, params: the score function and its parameters.
      x: state at ``ts[0]``, shape ``(B, ...)``.
      ts: descending times ``(num_steps + 1,)``.
      key: PRNG key, required when ``eta != 0`` (folded with the step index).
      eta: stochasticity (see :func:`ddim_step`).
      sharding: optional sharding constraint of the state.
      cond: optional condition, passed to the score as its fourth argument.

    Returns:
      ``(x at ts[-1], nfe)``, ``nfe = num_steps`` (a Python int).
    """
    stochastic = not (isinstance(eta, (int, float)) and eta == 0)
    if stochastic and key is None:
        raise ValueError(f"ddim with eta={eta} needs a PRNG key")
    x0_fn = data_prediction(sde, bind_cond(score_fn, cond))
    la, ls = log_alpha_sigma(sde, ts)

    def body(x, i):
        x0_hat = x0_fn(params, x, ts[i])
        k = jax.random.fold_in(key, i) if stochastic else None
        x = ddim_step(x, x0_hat, k, (la[i], ls[i]), (la[i + 1], ls[i + 1]), eta)
        return constrain(x, sharding), None

    num_steps = ts.shape[0] - 1
    x, _ = jax.lax.scan(body, x, jnp.arange(num_steps))
    return x, num_steps


def ddim_nfe(num_steps: int, *, denoise: bool = False, **_) -> int:
    """Score evaluations of :func:`ddim_sampler`: one per step, one more with ``denoise``."""
    return int(num_steps) + int(bool(denoise))


def ddim_sampler(sde, score_fn, shape: tuple[int, ...], *, num_steps: int = 50, eta: float = 0.0,
                 grid=None, rho: float = 7.0, eps: float | None = None,
                 T: float | None = None, denoise: bool = False, dtype=jnp.float32, sharding=None):
    """DDIM sampler from the prior at ``T`` down to ``eps``.

    Args:
      sde: VP or sub-VP SDE (any SDE with scalar ``alpha(t), sigma(t)`` works, VE included).
      score_fn: ``score_fn(params, x, t) -> score``.
      shape: ``(B, *event_shape)``.
      num_steps: number of steps (= NFE without ``denoise``).
      eta: ``0`` deterministic DDIM, ``1`` ancestral sampling; in between interpolates.
      grid: ``None`` (default: ``'leading'``, diffusers' DDIM spacing that skips the top interval
        of ``num_steps + 1`` equal ones without a score call; ``'karras'`` for the VE SDE; see
        :func:`~jaxdiff.samplers.schedule.default_grid` and docs/bench_samplers.md for the
        measurement; ``'time_uniform'`` when a start ``T < sde.T`` is given),
        ``'time_uniform'``, ``'time_quadratic'``, ``'logsnr'``, ``'karras'``,
        ``'trailing'``, ``'leading'`` or an explicit array of
        ``num_steps + 1`` descending times in ``[0, T]``
        (see :func:`~jaxdiff.samplers.schedule.time_grid`); rho: exponent of ``'karras'``.
      eps, T: end and start times (``eps=None``: :func:`~jaxdiff.samplers.schedule.end_time`,
        ``1e-3`` but with ``denoise`` on the ``time_quadratic`` / ``time_uniform`` grids).
      denoise: return the Tweedie ``x0_hat`` at ``eps`` (one more evaluation).
      dtype, sharding: sample dtype and optional sharding of the ``(B, ...)`` state.

    Returns:
      ``sample(params, key, cond=None) -> (x, nfe)``, jitted. The prior draw uses ``split(key)[0]``.
    """
    check_scalar_schedule(sde)
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    if grid is None and T is not None and float(T) < float(sde.T):
        # a start below sde.T is a state the caller means to integrate from: skip nothing
        grid = "time_uniform"
    grid = default_grid(grid, sde, "leading", "karras")
    eps = end_time(eps, num_steps, grid, denoise=denoise, T=sde.T if T is None else T)
    check_grid(grid, num_steps, T=sde.T if T is None else T, positive=False)
    time_grid(sde, num_steps, grid=grid, eps=eps, T=T, rho=rho)  # validate eagerly

    def integrate(score_fn, params, key, x, ts):
        return ddim_integrate(sde, score_fn, params, x, ts, key=key, eta=eta, sharding=sharding)

    solver = Solver(integrate, lambda dt: time_grid(sde, num_steps, grid=grid, eps=eps, T=T,
                                                    rho=rho, dtype=dt))
    return make_sampler(sde, score_fn, shape, solver, denoise=denoise, dtype=dtype,
                        sharding=sharding)
