"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models") and the log-SNR helpers shared by the fast samplers.

Every linear SDE of the library has Gaussian perturbation kernels ``x_t = alpha(t) x_0 + sigma(t) z``,
so its probability-flow ODE has the exact "variation of constants" solution in the half log-SNR
``lambda(t) = log(alpha(t) / sigma(t))``::

    x_t = sigma_t / sigma_s * x_s
          + sigma_t * int_{lambda_s}^{lambda_t} e^lambda x0_hat(x_lambda, lambda) dlambda

with the data prediction ``x0_hat(x, t) = (x + sigma(t)^2 score(x, t)) / alpha(t)``. DPM-Solver++
Taylor-expands ``x0_hat`` in ``lambda`` and integrates the exponential exactly. This holds for the
VP, sub-VP and VE SDEs alike (VE: ``alpha = 1``, ``lambda = -log sigma``), so the same solver is
the "VE equivalent" too. Only SDEs with scalar ``alpha(t), sigma(t)`` are supported (not
per-coordinate multi-speed SDEs).

Solvers:
  * ``method='multistep'``, ``order`` 1, 2, 3: DPM-Solver++(1) (= deterministic DDIM), (2M), (3M);
    one score evaluation per step, the first steps warm up with lower orders.
  * ``method='singlestep'``, ``order`` 1, 2, 3: DPM-Solver++(1), (2S) (``r1 = 1/2``), and the
    third-order single-step solver (``r1 = 1/3, r2 = 2/3``); ``order`` evaluations per step.

Time grids (``grid``): ``'time_quadratic'`` (uniform in ``sqrt(t)``, the default for VP / sub-VP;
``'logsnr'`` for VE: measured against the others and diffusers in docs/samplers.md),
``'logsnr'`` (uniform in ``lambda``, the paper's choice), ``'time_uniform'``, ``'karras'`` (EDM's
``rho`` schedule in ``sigma/alpha``),
``'trailing'`` (diffusers' spacing) or an explicit descending array of times (see
:func:`~jaxdiff.samplers.schedule.time_grid`). With ``denoise=True`` and the default ``eps=None``
the time-polynomial grids end at an ``N``-dependent time (:func:`~jaxdiff.samplers.schedule.end_time`).

The third-order multistep update (3M) estimates ``h^2 x0''(lambda_0)`` by ``D2 = 2 (D1_0 - D1_1) /
(r0 + r1)`` (``third_order='jaxdiff'``, the default: the Taylor term, third order). The original
DPM-Solver++ code (LuChengTHU/dpm-solver, ``multistep_dpm_solver_third_update``) and diffusers
(``multistep_dpm_solver_third_order_update``) use ``D2 = (D1_0 - D1_1) / (r0 + r1)`` with the same
``phi_3`` coefficient: ``third_order='original'`` reproduces them (second order asymptotically,
slightly more accurate at about 10 steps on some problems; see docs/samplers.md, Findings).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import Solver, bind_cond, constrain, make_sampler
from jaxdiff.samplers.schedule import (
    GRIDS,
    check_grid,
    check_scalar_schedule,
    data_prediction,
    default_grid,  # noqa: F401 - re-exported (their home before schedule.py)
    end_time,
    grid_coefficients,
    inverse_lambda,
    log_alpha_sigma,
    marginal_lambda,
    time_grid,
)

Array = jax.Array

__all__ = [
    "log_alpha_sigma", "marginal_lambda", "inverse_lambda", "time_grid", "data_prediction",
    "dpm_solver_pp_integrate", "dpm_solver_pp_sampler", "dpm_solver_pp_nfe", "GRIDS",
    "THIRD_ORDER",
]

# the second-difference factor of the 3M update: ours (2, the Taylor term) or the original's (1)
THIRD_ORDER = {"jaxdiff": 2.0, "original": 1.0}


def _phis(h: Array) -> tuple[Array, Array, Array]:
    """``phi1 = expm1(-h)``, ``phi2 = phi1/h + 1``, ``phi3 = phi2/h - 1/2`` (series for small h).

    The exact integrals are ``int_0^h e^{u-h} u^n/n! du``: ``-phi1``, ``h phi2`` and ``-h^2 phi3``.
    """
    phi1 = jnp.expm1(-h)
    small = h < 1e-2
    hs = jnp.where(small, 1.0, h)  # avoid 0/0 in the branch not taken
    phi2 = jnp.where(small, h / 2 - h**2 / 6 + h**3 / 24, phi1 / hs + 1.0)
    phi3 = jnp.where(small, -h / 6 + h**2 / 24 - h**3 / 120, (phi1 / hs + 1.0) / hs - 0.5)
    return phi1, phi2, phi3


# ---- DPM-Solver++ ------------------------------------------------------------------------------
def _multistep_update(order, x, lam, alpha_t, sigma_ratio, hist_m, hist_lam, d2_factor=2.0):
    """One multistep DPM-Solver++ update of the given order from the newest history entry.

    ``hist_m[0]`` is the data prediction at the current point, ``hist_m[1]``, ``hist_m[2]`` the
    previous ones; ``hist_lam`` their log-SNRs; ``lam`` the target log-SNR; ``d2_factor`` the
    second-difference factor of order 3 (:data:`THIRD_ORDER`).
    """
    h = lam - hist_lam[0]
    phi1, phi2, phi3 = _phis(h)
    m0 = hist_m[0]
    x_new = sigma_ratio * x - alpha_t * phi1 * m0
    if order == 1:
        return x_new
    r0 = (hist_lam[0] - hist_lam[1]) / h
    d1_0 = (m0 - hist_m[1]) / r0
    if order == 2:
        # DPM-Solver++(2M), Alg. 2 of the paper: D = (1 + 1/(2 r)) m0 - 1/(2 r) m1
        return x_new - 0.5 * alpha_t * phi1 * d1_0
    r1 = (hist_lam[1] - hist_lam[2]) / h
    d1_1 = (hist_m[1] - hist_m[2]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)      # ~ h x0'(lam_0)
    d2 = d2_factor * (d1_0 - d1_1) / (r0 + r1)     # ~ h^2 x0''(lam_0) for d2_factor = 2
    return x_new + alpha_t * phi2 * d1 - alpha_t * phi3 * d2


def _step_orders(num_steps: int, order: int, lower_order_final: bool) -> list[int]:
    orders = [min(order, i + 1) for i in range(num_steps)]
    if lower_order_final and num_steps < 15:
        orders = [min(k, num_steps - i) for i, k in enumerate(orders)]
    return orders


def dpm_solver_pp_integrate(sde, score_fn, params, x: Array, ts: Array, *, order: int = 2,
                            method: str = "multistep", lower_order_final: bool = True,
                            third_order: str = "jaxdiff", sharding=None,
                            cond=None) -> tuple[Array, int]:
    """Integrate the probability-flow ODE with DPM-Solver++ along the time grid ``ts``.

    Args:
      sde: linear SDE with scalar ``alpha(t), sigma(t)`` (VP, sub-VP, VE, ...).
      score_fn: ``score_fn(params, x, t) -> score``.
      params: the score function's parameters.
      x: the state at ``ts[0]``, shape ``(B, ...)``.
      ts: descending times, shape ``(num_steps + 1,)`` (e.g. from :func:`time_grid`); its length
        must be static.
      order: 1, 2 or 3.
      method: ``'multistep'`` (one evaluation per step) or ``'singlestep'`` (``order`` per step).
      lower_order_final: multistep only: with fewer than 15 steps, lower the order of the final
        steps (the reference implementation's stabiliser for very few steps).
      third_order: multistep order 3 only: ``'jaxdiff'`` (``D2 = 2 (D1_0 - D1_1) / (r0 + r1)``,
        third order) or ``'original'`` (the factor 1 of the original code and diffusers).
      sharding: optional sharding constraint for the ``(B, ...)`` state.
      cond: optional condition, passed to the score as its fourth argument.

    Returns:
      ``(x at ts[-1], nfe)`` with ``nfe`` a Python int.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {order}")
    if method not in ("multistep", "singlestep"):
        raise ValueError(f"method must be 'multistep' or 'singlestep', got {method!r}")
    if third_order not in THIRD_ORDER:
        raise ValueError(f"third_order must be one of {sorted(THIRD_ORDER)}, got {third_order!r}")
    d2_factor = THIRD_ORDER[third_order]
    num_steps, lams, alphas, sigmas = grid_coefficients(sde, ts)
    x0_fn = data_prediction(sde, bind_cond(score_fn, cond))
    dt = x.dtype

    if method == "singlestep":
        def step(x, xs):
            t_s, t_t, lam_s, lam_t, a_t, sig_s, sig_t = xs
            h = lam_t - lam_s
            m_s = x0_fn(params, x, t_s)
            phi1, phi2, _ = _phis(h)
            if order == 1:
                x_t = (sig_t / sig_s).astype(dt) * x - (a_t * phi1).astype(dt) * m_s
            else:
                r1 = 0.5 if order == 2 else 1.0 / 3.0
                lam_1 = lam_s + r1 * h
                t_1 = inverse_lambda(sde, lam_1)
                la1, ls1 = log_alpha_sigma(sde, t_1)
                u1 = ((jnp.exp(ls1) / sig_s).astype(dt) * x
                      - (jnp.exp(la1) * jnp.expm1(-r1 * h)).astype(dt) * m_s)
                m_1 = x0_fn(params, constrain(u1, sharding), t_1)
                if order == 2:
                    # DPM-Solver++(2S), Alg. 1: D = (1 - 1/(2 r1)) m_s + 1/(2 r1) m_1
                    d = (1.0 - 0.5 / r1) * m_s + (0.5 / r1) * m_1
                    x_t = (sig_t / sig_s).astype(dt) * x - (a_t * phi1).astype(dt) * d
                else:
                    r2 = 2.0 / 3.0
                    lam_2 = lam_s + r2 * h
                    t_2 = inverse_lambda(sde, lam_2)
                    la2, ls2 = log_alpha_sigma(sde, t_2)
                    _, phi2_r2, _ = _phis(r2 * h)
                    u2 = ((jnp.exp(ls2) / sig_s).astype(dt) * x
                          - (jnp.exp(la2) * jnp.expm1(-r2 * h)).astype(dt) * m_s
                          + (r2 / r1 * jnp.exp(la2) * phi2_r2).astype(dt) * (m_1 - m_s))
                    m_2 = x0_fn(params, constrain(u2, sharding), t_2)
                    x_t = ((sig_t / sig_s).astype(dt) * x - (a_t * phi1).astype(dt) * m_s
                           + (a_t * phi2 / r2).astype(dt) * (m_2 - m_s))
            return constrain(x_t, sharding), None

        xs = (ts[:-1], ts[1:], lams[:-1], lams[1:], alphas[1:], sigmas[:-1], sigmas[1:])
        x, _ = jax.lax.scan(step, x, xs)
        return x, order * num_steps

    # multistep: warm-up steps and low-order final steps are unrolled (at most 2 each), the
    # fixed-order middle runs in one scan.
    orders = _step_orders(num_steps, order, lower_order_final)
    hist_m = [None, None, None]
    hist_lam = [None, None, None]

    def one_step(i, k, x, hist_m, hist_lam):
        m = x0_fn(params, x, ts[i])
        hist_m = [m] + hist_m[:2]
        hist_lam = [lams[i]] + hist_lam[:2]
        x = _multistep_update(k, x, lams[i + 1], alphas[i + 1].astype(dt),
                              (sigmas[i + 1] / sigmas[i]).astype(dt), hist_m, hist_lam, d2_factor)
        return constrain(x, sharding), hist_m, hist_lam

    i = 0
    while i < num_steps and orders[i] < order:  # warm-up (static, <= order - 1 steps)
        x, hist_m, hist_lam = one_step(i, orders[i], x, hist_m, hist_lam)
        i += 1
    n_mid = 0
    while i + n_mid < num_steps and orders[i + n_mid] == order:
        n_mid += 1
    if n_mid > 0:
        depth = order - 1  # history entries carried between steps

        def body(carry, idx):
            x, ms, ls_ = carry
            m = x0_fn(params, x, ts[idx])
            hm = [m] + list(ms)
            hl = [lams[idx]] + list(ls_)
            x = _multistep_update(order, x, lams[idx + 1], alphas[idx + 1].astype(dt),
                                  (sigmas[idx + 1] / sigmas[idx]).astype(dt),
                                  hm + [None] * (3 - len(hm)), hl + [None] * (3 - len(hl)),
                                  d2_factor)
            return (constrain(x, sharding), tuple(hm[:depth]), tuple(hl[:depth])), None

        carry = (x, tuple(hist_m[:depth]), tuple(hist_lam[:depth]))
        (x, ms, ls_), _ = jax.lax.scan(body, carry, jnp.arange(i, i + n_mid))
        hist_m = list(ms) + [None] * (3 - depth)
        hist_lam = list(ls_) + [None] * (3 - depth)
        i += n_mid
    while i < num_steps:  # lower-order final steps (static, <= order - 1 steps)
        x, hist_m, hist_lam = one_step(i, orders[i], x, hist_m, hist_lam)
        i += 1
    return x, num_steps


def dpm_solver_pp_nfe(num_steps: int, *, order: int = 2, method: str = "multistep",
                      denoise: bool = False, **_) -> int:
    """Score evaluations of :func:`dpm_solver_pp_sampler`: ``num_steps`` (multistep) or ``order *
    num_steps`` (single-step), one more with ``denoise``."""
    per = 1 if method == "multistep" else int(order)
    return per * int(num_steps) + int(bool(denoise))


def dpm_solver_pp_sampler(sde, score_fn, shape: tuple[int, ...], *, num_steps: int = 20,
                          order: int = 2, method: str = "multistep", grid=None,
                          rho: float = 7.0, eps: float | None = None, T: float | None = None,
                          lower_order_final: bool = True, third_order: str = "jaxdiff",
                          denoise: bool = False, dtype=jnp.float32, sharding=None):
    """DPM-Solver++ sampler: prior noise at ``T``, probability-flow ODE down to ``eps``.

    Args:
      sde: VP, sub-VP, VE or any linear SDE with scalar ``alpha(t), sigma(t)``.
      score_fn: ``score_fn(params, x, t) -> score``, ``x`` of shape ``shape``, ``t`` of shape ``(B,)``.
      shape: ``(B, *event_shape)``.
      num_steps: number of steps (NFE = ``num_steps`` for multistep, ``order * num_steps`` for
        single-step).
      order, method, lower_order_final, third_order: see :func:`dpm_solver_pp_integrate`;
        ``order=2, method='multistep'`` is DPM-Solver++(2M), ``order=2, method='singlestep'`` is (2S).
      grid: time grid: ``None`` (default: ``'time_quadratic'``, ``'logsnr'`` for the VE SDE, see
        :func:`~jaxdiff.samplers.schedule.default_grid`), one of :data:`GRIDS` or an explicit
        array of ``num_steps + 1`` descending times in ``(0, T]`` (see :func:`time_grid`);
        rho: exponent of the ``'karras'`` grid.
      eps, T: end and start times (``eps=None``: :func:`~jaxdiff.samplers.schedule.end_time`,
        ``1e-3`` but with ``denoise`` on the ``time_quadratic`` / ``time_uniform`` grids).
      denoise: return the Tweedie data prediction ``x0_hat`` at ``eps`` (one more evaluation).
      dtype: dtype of the samples; sharding: optional sharding of the ``(B, ...)`` state.

    Returns:
      ``sample(params, key, cond=None) -> (x, nfe)``, jitted; ``x`` of shape ``shape``, ``nfe`` an int32.
      The prior draw uses ``split(key)[0]`` (as every sampler of the registry).
    """
    check_scalar_schedule(sde)
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {order}")
    if method not in ("multistep", "singlestep"):
        raise ValueError(f"method must be 'multistep' or 'singlestep', got {method!r}")
    if third_order not in THIRD_ORDER:
        raise ValueError(f"third_order must be one of {sorted(THIRD_ORDER)}, got {third_order!r}")
    grid = default_grid(grid, sde, "time_quadratic", "logsnr")
    eps = end_time(eps, num_steps, grid, denoise=denoise, T=sde.T if T is None else T)
    check_grid(grid, num_steps, T=sde.T if T is None else T)
    time_grid(sde, num_steps, grid=grid, eps=eps, T=T, rho=rho)  # validate arguments eagerly

    def integrate(score_fn, params, key, x, ts):  # deterministic: the key is unused
        return dpm_solver_pp_integrate(sde, score_fn, params, x, ts, order=order, method=method,
                                       lower_order_final=lower_order_final,
                                       third_order=third_order, sharding=sharding)

    solver = Solver(integrate, lambda dt: time_grid(sde, num_steps, grid=grid, eps=eps, T=T,
                                                    rho=rho, dtype=dt))
    return make_sampler(sde, score_fn, shape, solver, denoise=denoise, dtype=dtype,
                        sharding=sharding)
