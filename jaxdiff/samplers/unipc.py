"""UniPC (Zhao, Bai, Rao, Zhou & Lu 2023, "UniPC: A Unified Predictor-Corrector Framework for
Fast Sampling of Diffusion Models"), data-prediction (x0) form, on the probability-flow ODE of any
linear SDE with scalar ``alpha(t), sigma(t)``.

With ``lambda = log(alpha / sigma)``, ``h = lambda_t - lambda_s0``, the data predictions ``m_k =
x0_hat(x_k, t_k)`` and, for earlier points ``s_k``, ``r_k = (lambda_sk - lambda_s0) / h`` and
``D1_k = (m_k - m0) / r_k``, one step of order ``p`` is (``hh = -h``)::

    base = sigma_t / sigma_s0 * x - alpha_t * expm1(hh) * m0
    UniP-p:  x_t  = base - alpha_t * B(h) * sum_{k < p} rho_p[k] * D1_k
    UniC-p:  x_t^c = base - alpha_t * B(h) * (sum_{k < p} rho_c[k] * D1_k + rho_c[-1] * (m_t - m0))

with ``B(h) = hh`` (``variant='bh1'``) or ``expm1(hh)`` (``'bh2'``, diffusers' default), ``m_t`` the
data prediction at the UniP result ``x_t`` (the evaluation the next step needs anyway: the
corrector costs no extra NFE), ``rho_p`` solving ``R[:-1, :-1] rho = b[:-1]`` (``rho_p = 1/2`` for
``p = 2``) and ``rho_c`` solving ``R rho = b`` (``rho_c = 1/2`` for ``p = 1``), where ``R[i] =
rks^i`` (``rks = (r_1 .. r_{p-1}, 1)``) and ``b[i] = g_{i+1}(hh) (i+1)! / B(h)`` with ``g_1 =
expm1(hh)/hh - 1``, ``g_{k+1} = g_k / hh - 1/(k+1)!``. The corrected state continues; ``m_t``
(at the uncorrected point) enters the history. No corrector after the last step (no evaluation
there). UniP-p with UniC-p is of order ``p + 1`` (the paper's Theorem 3.1).

This follows diffusers' ``UniPCMultistepScheduler`` (``multistep_uni_p_bh_update``,
``multistep_uni_c_bh_update``, ``step``; ``predict_x0=True``) and the original
``wl-zhao/UniPC/uni_pc.py`` (``multistep_uni_pc_bh_update``, ``sample``) line by line: the same
``R``, ``b``, ``rho`` (including both simplified ``1/2`` cases), the warm-up order ``min(order,
i + 1)`` and, with ``lower_order_final``, ``min(order, num_steps - i)`` at step ``i`` (both
references apply it for every step count). Deliberate differences:

* ``g_k(hh)`` is evaluated by its Taylor series ``sum_{j > k} hh^(j-k) / j!`` for ``|h| < 1``
  instead of the recursion, which cancels catastrophically for small ``h`` in float32 (same
  values to rounding; the recursion is used for ``|h| >= 1``).
* The grid is continuous time ending at ``eps`` (``grid=``, default ``'time_quadratic'``,
  ``'logsnr'`` for VE, chosen by measurement: docs/samplers.md), not diffusers' discrete timesteps
  ending at ``sigma = 0``; ``denoise=True`` adds the final data prediction (diffusers'
  ``final_sigmas_type='zero'`` last step / the original's ``denoise_to_zero``), and then the
  default ``eps=None`` ends the grid at ``T / (N + 1)^2`` (:func:`~jaxdiff.samplers.schedule.end_time`).
* Only the data-prediction form (``predict_x0=True``) and no thresholding / ``solver_p``.
* ``corrector=False`` runs UniP alone (diffusers' ``disable_corrector`` for every step).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import Solver, bind_cond, constrain, make_sampler
from jaxdiff.samplers.schedule import (
    check_grid,
    check_scalar_schedule,
    data_prediction,
    default_grid,
    end_time,
    grid_coefficients,
    time_grid,
)

Array = jax.Array

__all__ = ["unipc_integrate", "unipc_sampler", "unipc_nfe", "unipc_orders", "VARIANTS"]

VARIANTS = ("bh1", "bh2")
_SERIES_TERMS = 16


def _g(hh: Array, k: int) -> Array:
    """``g_k(hh) = sum_{j >= k+1} hh^(j-k) / j!`` (``g_1 = expm1(hh)/hh - 1``, ``g_{k+1} = g_k/hh -
    1/(k+1)!``): series for ``|hh| < 1``, the recursion otherwise."""
    series = sum(hh ** (j - k) / float(math.factorial(j))
                 for j in range(k + 1, k + 1 + _SERIES_TERMS))
    big = jnp.abs(hh) >= 1.0
    hs = jnp.where(big, hh, 1.0)  # the recursion only where it is taken
    rec = jnp.expm1(hs) / hs - 1.0
    for i in range(1, k):
        rec = rec / hs - 1.0 / float(math.factorial(i + 1))
    return jnp.where(big, rec, series)


def _b_vector(h: Array, order: int, variant: str) -> tuple[Array, Array]:
    """``(B(h), b)`` with ``b[i] = g_{i+1}(hh) (i+1)! / B(h)``, ``i < order``, ``hh = -h``."""
    hh = -h
    b_h = hh if variant == "bh1" else jnp.expm1(hh)
    b = jnp.stack([_g(hh, i) * float(math.factorial(i)) / b_h for i in range(1, order + 1)])
    return b_h, b


def _rho_predictor(p: int, rks: list, b: Array) -> Array:
    """UniP-p coefficients of ``D1_1 .. D1_{p-1}`` (``R[:-1, :-1] rho = b[:-1]``; 1/2 for p=2)."""
    if p == 1:
        return jnp.zeros((0,), b.dtype)
    if p == 2:
        return jnp.full((1,), 0.5, b.dtype)
    r = jnp.stack(rks[: p - 1])
    mat = jnp.stack([r**i for i in range(p - 1)])
    return jnp.linalg.solve(mat, b[: p - 1])


def _rho_corrector(p: int, rks: list, b: Array) -> Array:
    """UniC-p coefficients of ``D1_1 .. D1_{p-1}, D1_t`` (``R rho = b``; 1/2 for p=1)."""
    if p == 1:
        return jnp.full((1,), 0.5, b.dtype)
    r = jnp.concatenate([jnp.stack(rks[: p - 1]), jnp.ones((1,), b.dtype)])
    mat = jnp.stack([r**i for i in range(p)])
    return jnp.linalg.solve(mat, b[:p])


def _padded(v: Array, n: int, at_end: bool = False) -> Array:
    """``v`` zero-padded to length ``n`` (its last entry moved to the end with ``at_end``)."""
    if not at_end:
        return jnp.concatenate([v, jnp.zeros((n - v.shape[0],), v.dtype)])
    return jnp.concatenate([v[:-1], jnp.zeros((n - v.shape[0],), v.dtype), v[-1:]])


def unipc_orders(num_steps: int, order: int, lower_order_final: bool = True) -> list[int]:
    """The predictor order of each step: ``min(order, i + 1)`` (warm-up), and ``min(.., num_steps -
    i)`` with ``lower_order_final`` (as diffusers and the original, for any step count). The
    corrector after step ``i`` has step ``i``'s order."""
    orders = [min(order, i + 1) for i in range(num_steps)]
    if lower_order_final:
        orders = [min(k, num_steps - i) for i, k in enumerate(orders)]
    return orders


def _weighted(coef: Array, d1s: Array) -> Array:
    """``sum_k coef[k] * d1s[k]`` for ``d1s`` of shape ``(K, B, ...)``."""
    return jnp.tensordot(coef.astype(d1s.dtype), d1s, axes=1)


def unipc_integrate(sde, score_fn, params, x: Array, ts: Array, *, order: int = 2,
                    variant: str = "bh2", corrector: bool = True, lower_order_final: bool = True,
                    sharding=None, cond=None) -> tuple[Array, int]:
    """Integrate the probability-flow ODE with multistep UniPC along the descending grid ``ts``.

    Args:
      sde: linear SDE with scalar ``alpha(t), sigma(t)`` (VP, sub-VP, VE, ...).
      score_fn, params: ``score_fn(params, x, t)`` and its parameters.
      x: the ``(B, ...)`` state at ``ts[0]``.
      ts: descending times ``(num_steps + 1,)`` in ``(0, T]`` (static length).
      order: predictor order ``p`` in 1, 2, 3 (UniPC-p; with the corrector the method has order
        ``p + 1``).
      variant: ``'bh2'`` (``B(h) = expm1(-h)``, diffusers' default) or ``'bh1'`` (``B(h) = -h``).
      corrector: apply UniC after every step but the last (no extra evaluation).
      lower_order_final: lower the order of the final steps (:func:`unipc_orders`).
      sharding: optional sharding of the state; cond: optional 4th argument of the score.

    Returns:
      ``(x at ts[-1], nfe)``, ``nfe = num_steps`` (a Python int).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
    if variant not in VARIANTS:
        raise ValueError(f"UniPC variant must be one of {VARIANTS}, got {variant!r}")
    num_steps, lams, alphas, sigmas = grid_coefficients(sde, ts)
    x0_fn = data_prediction(sde, bind_cond(score_fn, cond))
    dt = x.dtype
    depth = order  # history m_{i-1} .. m_{i-order} carried into step i
    p_orders = unipc_orders(num_steps, order, lower_order_final)
    c_orders = [0] + p_orders[:-1] if corrector else [0] * num_steps  # corrector before step i

    def coefs(h, rks, kind):
        """Coefficient vectors of every order up to ``order``, stacked ``(order, order[+1])``."""
        _, b = _b_vector(h, order, variant)
        if kind == "p":
            return jnp.stack([_padded(_rho_predictor(p, rks, b), max(order - 1, 1))
                              for p in range(1, order + 1)])
        return jnp.stack([_padded(_rho_corrector(p, rks, b), order, at_end=True)
                          for p in range(1, order + 1)])

    def diffs(m0, lam0, h, hist_m, hist_lam):
        """``r_k`` and ``D1_k = (m_k - m0) / r_k`` for the ``order - 1`` history entries."""
        rks = [(hist_lam[k] - lam0) / h for k in range(order - 1)]
        if order == 1:
            return rks, jnp.zeros((1,) + m0.shape, dt)
        d1s = jnp.stack([(hist_m[k] - m0) / rks[k].astype(dt) for k in range(order - 1)])
        return rks, d1s

    def body(carry, xs):
        x, x_prev, hist_m, hist_lam = carry
        i, p, q = xs
        m = x0_fn(params, x, ts[i])
        if corrector:  # UniC-q on the step s0 = ts[i-1] -> t = ts[i] (q = 0: none, at i = 0)
            j = jnp.maximum(i - 1, 0)
            h = lams[i] - hist_lam[0]
            rks, d1s = diffs(hist_m[0], hist_lam[0], h, hist_m[1:], hist_lam[1:])
            rho = coefs(h, rks, "c")[jnp.maximum(q - 1, 0)]
            b_h = (-h if variant == "bh1" else jnp.expm1(-h))
            base = ((sigmas[i] / sigmas[j]).astype(dt) * x_prev
                    - (alphas[i] * jnp.expm1(-h)).astype(dt) * hist_m[0])
            corr = _weighted(rho[:-1], d1s[: order - 1]) if order > 1 else 0.0
            x_c = base - (alphas[i] * b_h).astype(dt) * (corr + rho[-1].astype(dt) * (m - hist_m[0]))
            x = jnp.where(q > 0, x_c, x)
        # UniP-p from ts[i] to ts[i + 1], history m_i, m_{i-1}, ...
        new_m = jnp.concatenate([m[None], hist_m[: depth - 1]])
        new_lam = jnp.concatenate([lams[i][None], hist_lam[: depth - 1]])
        h = lams[i + 1] - lams[i]
        rks, d1s = diffs(m, lams[i], h, new_m[1:], new_lam[1:])
        rho = coefs(h, rks, "p")[p - 1]
        b_h = (-h if variant == "bh1" else jnp.expm1(-h))
        x_next = ((sigmas[i + 1] / sigmas[i]).astype(dt) * x
                  - (alphas[i + 1] * jnp.expm1(-h)).astype(dt) * m)
        if order > 1:
            x_next = x_next - (alphas[i + 1] * b_h).astype(dt) * _weighted(rho, d1s)
        return (constrain(x_next, sharding), x, new_m, new_lam), None

    # placeholders before the first step: zero predictions at equally spaced earlier log-SNRs
    # (distinct r_k, so every linear system stays regular; their coefficients are never selected)
    step0 = lams[1] - lams[0]
    hist_lam = lams[0] - step0 * jnp.arange(1, depth + 1, dtype=lams.dtype)
    hist_m = jnp.zeros((depth,) + x.shape, dt)
    xs = (jnp.arange(num_steps), jnp.asarray(p_orders, jnp.int32), jnp.asarray(c_orders, jnp.int32))
    (x, _, _, _), _ = jax.lax.scan(body, (x, x, hist_m, hist_lam), xs)
    return x, num_steps


def unipc_nfe(num_steps: int, *, denoise: bool = False, **_) -> int:
    """Score evaluations of :func:`unipc_sampler`: one per step (the corrector reuses the next
    step's evaluation), one more with ``denoise``."""
    return int(num_steps) + int(bool(denoise))


def unipc_sampler(sde, score_fn, shape: tuple[int, ...], *, num_steps: int = 20, order: int = 2,
                  variant: str = "bh2", corrector: bool = True, lower_order_final: bool = True,
                  grid=None, rho: float = 7.0, eps: float | None = None, T: float | None = None,
                  denoise: bool = False, dtype=jnp.float32, sharding=None):
    """UniPC sampler: prior noise at ``T``, probability-flow ODE down to ``eps`` (module docstring).

    Args:
      sde: VP, sub-VP, VE or any linear SDE with scalar ``alpha(t), sigma(t)``.
      score_fn: ``score_fn(params, x, t) -> score`` (``score_fn(params, x, t, cond)`` with a
        ``cond``); shape: ``(B, *event_shape)``.
      num_steps: number of steps (= NFE without ``denoise``).
      order, variant, corrector, lower_order_final: see :func:`unipc_integrate`.
      grid: ``None`` (default: ``'time_quadratic'``, ``'logsnr'`` for the VE SDE, see
        :func:`~jaxdiff.samplers.schedule.default_grid`), one of
        :data:`~jaxdiff.samplers.schedule.GRIDS` or an explicit array of ``num_steps +
        1`` descending times in ``(0, T]`` (see :func:`~jaxdiff.samplers.schedule.time_grid`);
        rho: exponent of ``'karras'``.
      eps, T: end and start times (``eps=None``: :func:`~jaxdiff.samplers.schedule.end_time`,
        ``1e-3`` but with ``denoise`` on the ``time_quadratic`` / ``time_uniform`` grids).
      denoise: finish with the Tweedie data prediction at ``eps`` (one more evaluation).
      dtype, sharding: sample dtype and optional sharding of the ``(B, ...)`` state.

    Returns:
      ``sample(params, key, cond=None) -> (x, nfe)``, jitted; the prior draw uses
      ``split(key)[0]``.
    """
    check_scalar_schedule(sde)
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
    if variant not in VARIANTS:
        raise ValueError(f"UniPC variant must be one of {VARIANTS}, got {variant!r}")
    grid = default_grid(grid, sde, "time_quadratic", "logsnr")
    eps = end_time(eps, num_steps, grid, denoise=denoise, T=sde.T if T is None else T)
    check_grid(grid, num_steps, T=sde.T if T is None else T)
    time_grid(sde, num_steps, grid=grid, eps=eps, T=T, rho=rho)  # validate eagerly

    def integrate(score_fn, params, key, x, ts):  # deterministic: the key is unused
        return unipc_integrate(sde, score_fn, params, x, ts, order=order, variant=variant,
                               corrector=corrector, lower_order_final=lower_order_final,
                               sharding=sharding)

    solver = Solver(integrate, lambda dt: time_grid(sde, num_steps, grid=grid, eps=eps, T=T,
                                                    rho=rho, dtype=dt))
    return make_sampler(sde, score_fn, shape, solver, denoise=denoise, dtype=dtype,
                        sharding=sharding)
