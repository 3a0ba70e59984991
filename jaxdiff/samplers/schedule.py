"""The noise schedule of a linear SDE in log-SNR form, shared by every sampler: ``(log alpha,
log sigma)``, the half log-SNR ``lambda`` and its inverse, the fast samplers' time grids and the
data (Tweedie) prediction ``x0_hat = (x + sigma^2 score) / alpha``.

Only SDEs with scalar ``alpha(t), sigma(t)`` (VP, sub-VP, VE) are supported, not per-coordinate
multi-speed SDEs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import sde as sde_lib

Array = jax.Array

__all__ = ["GRIDS", "DEFAULT_EPS", "end_time", "default_grid", "check_scalar_schedule",
           "log_alpha_sigma", "marginal_lambda",
           "inverse_lambda", "time_grid", "check_grid", "data_prediction", "grid_coefficients"]

# the named time grids of the fixed-step samplers; ``grid=`` also takes an explicit descending array
GRIDS = ("logsnr", "time_uniform", "time_quadratic", "karras", "trailing", "leading")
# the fixed-step samplers' last time when ``eps=None`` and no N-dependent end applies
DEFAULT_EPS = 1e-3


def default_grid(grid, sde, vp: str, ve: str):
    """``grid`` when given, else (``grid=None``, the samplers' default) the sampler's measured
    default for the SDE: ``ve`` for a :class:`~jaxdiff.sde.VESDE`, ``vp`` otherwise (VP, sub-VP and
    other scalar schedules). Measured against diffusers in docs/bench_samplers.md: on the VE SDE
    (sigma 0.01..50, 2-D mixture, RMSE to the exact flow map at 20 NFE) DPM-Solver++(2M) 0.020 on
    ``'logsnr'`` (= uniform in ``t`` there) vs 0.074 on ``'time_quadratic'``."""
    if grid is not None:
        return grid
    return ve if isinstance(sde, sde_lib.VESDE) else vp


def end_time(eps, num_steps: int, grid, *, denoise: bool, T: float) -> float:
    """The last time of a fixed-step sampler's grid: ``eps`` when given, else (``eps=None``, the
    samplers' default) an ``N``-dependent end when the sampler finishes with the Tweedie
    ``denoise`` step on a time-polynomial grid, else :data:`DEFAULT_EPS` (``1e-3``).

    With ``denoise`` the last score call is the jump to ``t = 0`` (the data prediction), so the
    grid is the named grid of ``num_steps + 1`` intervals from ``T`` down to ``0`` with its last
    point dropped (as diffusers' schedulers do with their final step to ``sigma = 0``):

    * ``'time_quadratic'`` (uniform in ``sqrt(t)``): ``T / (num_steps + 1)^2``;
    * ``'time_uniform'``: ``T / (num_steps + 1)``;
    * others (``'logsnr'``, ``'karras'``: no finite ``lambda`` at ``t = 0``; ``'trailing'``, which
      copies diffusers' spacing; explicit arrays) and without ``denoise``: ``1e-3``.

    Never below ``1e-3``. Chosen by measurement against diffusers (docs/bench_samplers.md): e.g.
    UniPC at 5 NFE on the 2-D mixture, RMSE to the exact flow map 0.217 with the ``N``-dependent end
    vs 0.276 ending at ``1e-3`` (diffusers 0.241).
    """
    if eps is not None:
        return float(eps)
    if not denoise or not isinstance(grid, str):
        return DEFAULT_EPS
    k = int(num_steps) + 1
    if grid == "time_quadratic":
        return max(DEFAULT_EPS, float(T) / k**2)
    if grid == "time_uniform":
        return max(DEFAULT_EPS, float(T) / k)
    return DEFAULT_EPS


# ---- the noise schedule in log-SNR form ------------------------------------------------------
def check_scalar_schedule(sde) -> None:
    """Raise a clear error when ``sde`` has no scalar ``(alpha(t), sigma(t))`` (e.g. multi-speed)."""
    if not isinstance(sde, sde_lib.SDE):
        raise TypeError(f"sde must be a jaxdiff.sde.SDE, got {type(sde).__name__}")
    try:
        shapes = jax.eval_shape(sde.marginal_coeffs, jax.ShapeDtypeStruct((), jnp.float32))
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ValueError(
            f"{type(sde).__name__} does not give scalar marginal coefficients (alpha(t), sigma(t)); "
            "the fast samplers need them") from e
    if any(s.shape != () for s in shapes):
        raise ValueError(
            f"{type(sde).__name__} has per-coordinate marginal coefficients of shapes "
            f"{[s.shape for s in shapes]}; the fast samplers need scalar alpha(t), sigma(t)")


def log_alpha_sigma(sde, t: Array) -> tuple[Array, Array]:
    """``(log alpha(t), log sigma(t))`` of the perturbation kernel, in closed form for the VP,
    sub-VP and VE SDEs (accurate near ``t = 0``) and from ``sde.marginal_coeffs`` otherwise.

    Args:
      sde: a linear SDE with scalar coefficients.
      t: times, any shape.

    Returns:
      two arrays of the shape of ``t``.
    """
    t = jnp.asarray(t)
    if isinstance(sde, sde_lib.VPSDE):
        lmc = sde.log_mean_coeff(t)
        return lmc, 0.5 * jnp.log(-jnp.expm1(2.0 * lmc))
    if isinstance(sde, sde_lib.SubVPSDE):
        lmc = sde.log_mean_coeff(t)
        return lmc, jnp.log(-jnp.expm1(2.0 * lmc))
    if isinstance(sde, sde_lib.VESDE):
        log_sigma = jnp.log(sde.sigma_min) + t * (jnp.log(sde.sigma_max) - jnp.log(sde.sigma_min))
        return jnp.zeros_like(log_sigma), log_sigma
    alpha, sigma = sde.marginal_coeffs(t)
    return jnp.log(alpha), jnp.log(sigma)


def marginal_lambda(sde, t: Array) -> Array:
    """Half log-SNR ``lambda(t) = log(alpha(t) / sigma(t))`` (decreasing in ``t``)."""
    la, ls = log_alpha_sigma(sde, t)
    return la - ls


def _t_of_log_mean_coeff(sde, lmc: Array) -> Array:
    """Solve ``-(b1 - b0) t^2 / 4 - b0 t / 2 = lmc`` for ``t >= 0`` (the linear-beta schedule),
    in the cancellation-free form ``t = -2 lmc / (b0/2 + sqrt(b0^2/4 - (b1 - b0) lmc))``."""
    b0, db = sde.beta_min, sde.beta_max - sde.beta_min
    return -2.0 * lmc / (0.5 * b0 + jnp.sqrt(0.25 * b0**2 - db * lmc))


def inverse_lambda(sde, lam: Array, *, num_bisections: int = 60) -> Array:
    """The time ``t`` with ``marginal_lambda(sde, t) == lam``.

    Closed form for VP, sub-VP and VE (also outside ``[0, T]``, e.g. for EDM's churn); other SDEs
    use ``num_bisections`` bisection steps on ``[0, T]`` (a ``fori_loop``, jittable).
    """
    lam = jnp.asarray(lam)
    if isinstance(sde, sde_lib.VPSDE):
        # alpha^2 = sigmoid(2 lam)  ->  lmc = log_sigmoid(2 lam) / 2
        return _t_of_log_mean_coeff(sde, 0.5 * jax.nn.log_sigmoid(2.0 * lam))
    if isinstance(sde, sde_lib.SubVPSDE):
        # sigma/alpha = (1 - a)/sqrt(a) = s with a = alpha^2  ->  a = 2 / (2 + s^2 + s sqrt(s^2 + 4))
        s = jnp.exp(-lam)
        log_a = jnp.log(2.0) - jnp.log(2.0 + s**2 + s * jnp.sqrt(s**2 + 4.0))
        return _t_of_log_mean_coeff(sde, 0.5 * log_a)
    if isinstance(sde, sde_lib.VESDE):
        return (-lam - jnp.log(sde.sigma_min)) / (jnp.log(sde.sigma_max) - jnp.log(sde.sigma_min))

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = marginal_lambda(sde, mid) > lam  # lambda decreases: the root is later than mid
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo = jnp.zeros_like(lam)
    lo, hi = jax.lax.fori_loop(0, num_bisections, body, (lo, jnp.full_like(lam, sde.T)))
    return 0.5 * (lo + hi)


def check_grid(grid, num_steps: int, *, eps: float | None = None, T: float = 1.0,
               positive: bool = True) -> None:
    """Validate a ``grid`` option eagerly: a name of :data:`GRIDS`, or an explicit array of
    ``num_steps + 1`` strictly descending times in ``[0, T]`` (``(0, T]`` when ``positive``: the
    log-SNR solvers need a finite ``lambda`` at the last time). ``eps`` is unused for arrays."""
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"unknown time grid {grid!r}; choose one of {GRIDS} or pass an "
                             "explicit descending array of times")
        return
    ts = np.asarray(grid, dtype=np.float64)
    if ts.ndim != 1 or ts.shape[0] != int(num_steps) + 1:
        raise ValueError(f"an explicit time grid needs {int(num_steps) + 1} times here (num_steps "
                         f"+ 1 for the multistep samplers), got shape {ts.shape}")
    if not np.all(np.diff(ts) < 0):
        raise ValueError(f"an explicit time grid must be strictly descending, got {ts}")
    lo_ok = ts[-1] > 0 if positive else ts[-1] >= 0
    if not (lo_ok and ts[0] <= T + 1e-12):
        raise ValueError(f"explicit grid times must lie in {'(0' if positive else '[0'}, T={T}], "
                         f"got {ts[0]} .. {ts[-1]}")


def time_grid(sde, num_steps: int, *, grid="logsnr", eps: float = 1e-3,
              T: float | None = None, rho: float = 7.0, dtype=jnp.float32) -> Array:
    """Descending times ``t_0 = T > t_1 > ... > t_num_steps = eps`` of a fast sampler.

    Args:
      sde: the forward SDE.
      num_steps: number of intervals (``>= 1``).
      grid: ``'logsnr'`` (uniform in ``lambda``), ``'time_uniform'``, ``'time_quadratic'`` (uniform
        in ``sqrt(t)``, DDIM's quadratic grid), ``'karras'`` (uniform in ``(sigma/alpha)^(1/rho)``,
        EDM's schedule), ``'trailing'`` (diffusers' ``timestep_spacing='trailing'`` in continuous
        time: ``t_k = T (1 - k / num_steps)`` for ``k < num_steps``, then ``eps``), ``'leading'``
        (diffusers' ``timestep_spacing='leading'``: ``t_k = T (num_steps - k) / (num_steps + 1)``
        for ``k < num_steps``, then ``eps``; it *starts below* ``T``, see below), or an explicit
        array of ``num_steps + 1`` strictly descending times (returned as given, cast to ``dtype``;
        ``eps`` and ``T`` are then ignored).
      eps: last time; T: first time (default ``sde.T``).
      rho: exponent of the ``'karras'`` grid.

    Returns:
      array of shape ``(num_steps + 1,)``.

    ``'trailing'``: diffusers' schedulers (1000 training steps ``n = 0 .. 999``, ``alpha_bar_n =
    prod_{i <= n} (1 - beta_i)``) take the inference steps ``round(arange(1000, 0, -1000 / N)) - 1``
    and end at ``alpha_bar = 1`` (``set_alpha_to_one`` / ``final_sigmas_type='zero'``). Discrete
    step ``n`` is continuous time ``t = (n + 1) / 1000`` of the VP SDE, so the steps are ``t = T,
    T (1 - 1/N), ..., T / N`` and the end ``t = 0``; here without the rounding to integer steps
    and ending at ``eps`` (the last interval is ``T / N - eps``). It differs from
    ``'time_uniform'`` (``linspace(T, eps, N + 1)``) only by ``O(eps)`` in the inner times.

    ``'leading'``: diffusers' ``DDIMScheduler`` default. With ``M`` score calls it evaluates at
    discrete steps ``(M - 1 - j) (1000 // M)``, i.e. ``t = T (M - 1) / M, ..., T / M, ~0``, and
    treats the prior draw as the state at its first time: the top interval ``[T (M-1)/M, T]`` is
    skipped without a score call. Here ``num_steps`` intervals (``M = num_steps + 1`` calls with the
    Tweedie ``denoise`` step) on the ``num_steps + 1`` equal intervals of ``[0, T]``, the top one
    skipped, ending at ``eps``. The sampler draws its prior at ``T`` and starts the grid at
    ``t_0 < T``: an approximation that is only good when the marginal at ``t_0`` is still close
    to the prior (VP-type SDEs with a small ``alpha(t_0)``: ``alpha(T (M-1)/M)`` is 0.04 at
    ``M = 5`` on ``VPSDE()``), never on the VE SDE (the prior's scale ``sigma_max`` is much
    larger than ``sigma(t_0)``), where it raises.
    """
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    T = sde.T if T is None else T
    if not isinstance(grid, str):
        check_grid(grid, num_steps, T=T, positive=False)
        return jnp.asarray(np.asarray(grid, np.float64), dtype)
    if not 0.0 <= eps < T:
        raise ValueError(f"need 0 <= eps < T, got eps={eps}, T={T}")
    u = jnp.linspace(0.0, 1.0, int(num_steps) + 1, dtype=dtype)
    if grid == "time_uniform":
        ts = T + u * (eps - T)
    elif grid == "trailing":
        ts = (T - u * T).at[-1].set(eps)
        if int(num_steps) > 1 and not T / int(num_steps) > eps:
            raise ValueError(f"grid 'trailing' needs T / num_steps > eps, got T={T}, "
                             f"num_steps={num_steps}, eps={eps}")
    elif grid == "leading":
        if isinstance(sde, sde_lib.VESDE):
            raise ValueError("grid 'leading' starts below T with the prior draw, which the VE "
                             "SDE's prior (scale sigma_max) does not allow; use 'karras' or "
                             "'logsnr'")
        n = int(num_steps)
        ts = (T * (n - u * n) / (n + 1)).at[-1].set(eps)
        if not T / (n + 1) > eps:
            raise ValueError(f"grid 'leading' needs T / (num_steps + 1) > eps, got T={T}, "
                             f"num_steps={num_steps}, eps={eps}")
    elif grid == "time_quadratic":
        ts = (jnp.sqrt(T) + u * (jnp.sqrt(eps) - jnp.sqrt(T))) ** 2
    elif grid in ("logsnr", "karras"):
        if eps <= 0.0:
            raise ValueError(f"grid {grid!r} needs eps > 0 (finite log-SNR), got eps={eps}")
        lam_T = marginal_lambda(sde, jnp.asarray(T, dtype))
        lam_e = marginal_lambda(sde, jnp.asarray(eps, dtype))
        if grid == "logsnr":
            lam = lam_T + u * (lam_e - lam_T)
        else:
            s_max, s_min = jnp.exp(-lam_T / rho), jnp.exp(-lam_e / rho)
            lam = -rho * jnp.log(s_max + u * (s_min - s_max))
        ts = inverse_lambda(sde, lam)
        ts = ts.at[0].set(T).at[-1].set(eps)  # exact end points
    else:
        raise ValueError(f"unknown time grid {grid!r}; choose one of {GRIDS} or pass an explicit "
                         "descending array of times")
    return ts.astype(dtype)


def data_prediction(sde, score_fn):
    """``x0_hat(params, x, t) = (x + sigma(t)^2 score(x, t)) / alpha(t)`` for a scalar time ``t``
    (the score network is called with a ``(B,)`` time vector)."""

    def x0_fn(params, x, t):
        la, ls = log_alpha_sigma(sde, t)
        score = score_fn(params, x, jnp.full((x.shape[0],), t, x.dtype))
        return ((x + jnp.exp(2.0 * ls).astype(x.dtype) * score)
                * jnp.exp(-la).astype(x.dtype))

    return x0_fn


def grid_coefficients(sde, ts: Array) -> tuple[int, Array, Array, Array]:
    """``(num_steps, lambdas, alphas, sigmas)`` of a descending time grid ``ts`` (static length
    ``num_steps + 1 >= 2``): what every exponential-integrator solver (DPM-Solver++, its SDE
    variant, UniPC) steps with."""
    num_steps = ts.shape[0] - 1
    if num_steps < 1:
        raise ValueError(f"the time grid needs at least 2 points, got shape {ts.shape}")
    la, ls = log_alpha_sigma(sde, ts)
    return num_steps, la - ls, jnp.exp(la), jnp.exp(ls)
