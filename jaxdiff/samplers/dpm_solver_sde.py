"""SDE-DPM-Solver++ (Lu et al. 2022, "DPM-Solver++", Sec. 5 / App. B): the first- and
second-order (2M, midpoint) multistep solvers of the reverse SDE in data-prediction form, as
diffusers' ``DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', solver_type='midpoint')``.

With ``h = lambda_t - lambda_s0 > 0``, ``m0, m1`` the data predictions at the last two points,
``r0 = (lambda_s0 - lambda_s1) / h`` and ``D1 = (m0 - m1) / r0``, one step from ``s0`` to ``t``::

    x_t = sigma_t / sigma_s0 * e^{-h} * x + alpha_t (1 - e^{-2h}) (m0 + D1 / 2)   (D1 = 0: order 1)
          + sigma_t sqrt(1 - e^{-2h}) z,     z ~ N(0, I)

(the exact solution of the linear part of the reverse SDE with ``x0_hat`` expanded to first order
in ``lambda``; order 1 is DDIM with ``eta = 1``). Line by line diffusers'
``dpm_solver_first_order_update`` and ``multistep_dpm_solver_second_order_update`` for
``sde-dpmsolver++`` / ``midpoint``; differences: ``1 - e^{-2h}`` is computed as ``-expm1(-2h)``,
the grid is continuous time ending at ``eps`` (``denoise=True`` adds the final data prediction,
which diffusers' last step to ``sigma = 0`` is), and the noise of step ``i`` is drawn from
``fold_in(key, i)``. The first step is first order (warm-up); with ``lower_order_final`` and fewer
than 15 steps the last one too, as for the deterministic solver.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import Solver, bind_cond, constrain, make_sampler
from jaxdiff.samplers.schedule import (
    check_grid,
    check_scalar_schedule,
    data_prediction,
    end_time,
    grid_coefficients,
    time_grid,
)

Array = jax.Array

__all__ = ["dpm_solver_pp_sde_integrate", "dpm_solver_pp_sde_sampler", "dpm_solver_pp_sde_nfe"]


def _orders(num_steps: int, order: int, lower_order_final: bool) -> list[int]:
    orders = [min(order, i + 1) for i in range(num_steps)]
    if lower_order_final and num_steps < 15:
        orders[-1] = 1
    return orders


def dpm_solver_pp_sde_integrate(sde, score_fn, params, x: Array, ts: Array, *, key: Array,
                                order: int = 2, lower_order_final: bool = True, sharding=None,
                                cond=None) -> tuple[Array, int]:
    """Integrate the reverse SDE with SDE-DPM-Solver++ (order 1 or 2M) along ``ts``.

    Args:
      sde: linear SDE with scalar ``alpha(t), sigma(t)``.
      score_fn, params: ``score_fn(params, x, t)`` and its parameters.
      x: the ``(B, ...)`` state at ``ts[0]``; ts: descending times ``(num_steps + 1,)`` in
        ``(0, T]``.
      key: PRNG key of the noise (step ``i`` uses ``fold_in(key, i)``).
      order: 1 or 2; lower_order_final: first order last step with fewer than 15 steps.
      sharding: optional sharding of the state; cond: optional 4th argument of the score.

    Returns:
      ``(x at ts[-1], nfe)``, ``nfe = num_steps`` (a Python int).
    """
    if order not in (1, 2):
        raise ValueError(f"SDE-DPM-Solver++ order must be 1 or 2, got {order}")
    num_steps, lams, alphas, sigmas = grid_coefficients(sde, ts)
    x0_fn = data_prediction(sde, bind_cond(score_fn, cond))
    dt = x.dtype

    def body(carry, xs):
        x, m_prev, lam_prev = carry
        i, p = xs
        m0 = x0_fn(params, x, ts[i])
        h = lams[i + 1] - lams[i]
        one_m = -jnp.expm1(-2.0 * h)  # 1 - e^{-2h}
        r0 = (lams[i] - lam_prev) / h
        d1 = (m0 - m_prev) / jnp.where(p > 1, r0, 1.0).astype(dt)
        d = m0 + jnp.where(p > 1, 0.5, 0.0).astype(dt) * d1
        z = jax.random.normal(jax.random.fold_in(key, i), x.shape, dt)
        x = ((sigmas[i + 1] / sigmas[i] * jnp.exp(-h)).astype(dt) * x
             + (alphas[i + 1] * one_m).astype(dt) * d
             + (sigmas[i + 1] * jnp.sqrt(one_m)).astype(dt) * z)
        return (constrain(x, sharding), m0, lams[i]), None

    orders = jnp.asarray(_orders(num_steps, order, lower_order_final), jnp.int32)
    carry = (x, jnp.zeros_like(x), lams[0] + (lams[0] - lams[1]))  # placeholder, never weighted
    (x, _, _), _ = jax.lax.scan(body, carry, (jnp.arange(num_steps), orders))
    return x, num_steps


def dpm_solver_pp_sde_nfe(num_steps: int, *, denoise: bool = False, **_) -> int:
    """Score evaluations of :func:`dpm_solver_pp_sde_sampler`: one per step, one more with
    ``denoise``."""
    return int(num_steps) + int(bool(denoise))


def dpm_solver_pp_sde_sampler(sde, score_fn, shape: tuple[int, ...], *, num_steps: int = 20,
                              order: int = 2, grid="logsnr", rho: float = 7.0,
                              eps: float | None = None, T: float | None = None,
                              lower_order_final: bool = True, denoise: bool = False,
                              dtype=jnp.float32, sharding=None):
    """SDE-DPM-Solver++ sampler (``order=2``: 2M SDE), prior noise at ``T`` down to ``eps``.

    Args:
      sde: VP, sub-VP, VE or any linear SDE with scalar ``alpha(t), sigma(t)``.
      score_fn: ``score_fn(params, x, t) -> score`` (``score_fn(params, x, t, cond)`` with a
        ``cond``); shape: ``(B, *event_shape)``.
      num_steps: number of steps (= NFE without ``denoise``).
      order, lower_order_final: see :func:`dpm_solver_pp_sde_integrate`.
      grid: one of :data:`~jaxdiff.samplers.schedule.GRIDS` or an explicit array of ``num_steps +
        1`` descending times in ``(0, T]``; rho: exponent of ``'karras'``.
      eps, T: end and start times (``eps=None``: :func:`~jaxdiff.samplers.schedule.end_time`,
        ``1e-3`` but with ``denoise`` on the ``time_quadratic`` / ``time_uniform`` grids).
      denoise: finish with the Tweedie data prediction at ``eps`` (one more evaluation).
      dtype, sharding: sample dtype and optional sharding of the ``(B, ...)`` state.

    Returns:
      ``sample(params, key, cond=None) -> (x, nfe)``, jitted; the prior uses ``split(key)[0]``, the
      noise of the steps ``split(key)[1]``.
    """
    check_scalar_schedule(sde)
    if order not in (1, 2):
        raise ValueError(f"SDE-DPM-Solver++ order must be 1 or 2, got {order}")
    eps = end_time(eps, num_steps, grid, denoise=denoise, T=sde.T if T is None else T)
    check_grid(grid, num_steps, T=sde.T if T is None else T)
    time_grid(sde, num_steps, grid=grid, eps=eps, T=T, rho=rho)  # validate eagerly

    def integrate(score_fn, params, key, x, ts):
        return dpm_solver_pp_sde_integrate(sde, score_fn, params, x, ts, key=key, order=order,
                                           lower_order_final=lower_order_final,
                                           sharding=sharding)

    solver = Solver(integrate, lambda dt: time_grid(sde, num_steps, grid=grid, eps=eps, T=T,
                                                    rho=rho, dtype=dt))
    return make_sampler(sde, score_fn, shape, solver, denoise=denoise, dtype=dtype,
                        sharding=sharding)
