"""Probability-flow ODE sampler, integrated on device with diffrax."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import Solver, bind_cond, constrain, make_sampler
from jaxdiff.samplers.predictors import reverse_diffusion

Array = jax.Array

__all__ = ["ode_sampler", "ode_integrate", "get_solver", "solve_ode"]

# Vector-field evaluations of one diffrax solve with dt0=None (initial step selection included),
# as a function of the number of steps taken (accepted + rejected); checked in tests/test_ode.py.
_SOLVERS = {
    "dopri5": (diffrax.Dopri5, lambda n: 6 * n + 1),
    "tsit5": (diffrax.Tsit5, lambda n: 6 * n + 1),
    "bosh3": (diffrax.Bosh3, lambda n: 3 * n + 1),
    "heun": (diffrax.Heun, lambda n: 2 * n),
}


def get_solver(name: str):
    """``(diffrax solver, nfe(num_steps))`` for one of ``dopri5`` (RK45, the paper's), ``tsit5``,
    ``bosh3``, ``heun``."""
    try:
        cls, nfe = _SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown ODE solver {name!r}; choose one of {sorted(_SOLVERS)}") from None
    return cls(), nfe


def solve_ode(vector_field, y0, t0: float, t1: float, args, *, solver: str = "dopri5",
              rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 8192):
    """Adaptive solve of ``dy/dt = vector_field(t, y, args)`` from ``t0`` to ``t1``.

    Returns ``(y(t1), nfe)``. The error norm is the RMS over the whole state (the whole batch), as
    with the reference code's ``scipy.integrate.solve_ivp``.
    """
    solv, nfe_of = get_solver(solver)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), solv, t0=t0, t1=t1, dt0=None, y0=y0, args=args,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
    y1 = jax.tree_util.tree_map(lambda a: a[-1], sol.ys)
    return y1, nfe_of(sol.stats["num_steps"]).astype(jnp.int32)


def ode_integrate(sde, score_fn, params, x, t0, t1, *, solver: str = "dopri5",
                  rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 8192, sharding=None,
                  cond=None):
    """Integrate the probability-flow ODE of ``sde`` from ``t0`` to ``t1`` (adaptive, diffrax).

    Args:
      sde: the forward SDE.
      score_fn: ``score_fn(params, x, t)``, or ``score_fn(params, x, t, cond)`` when ``cond`` is
        given.
      params: the score function's parameters.
      x: the ``(B, ...)`` state at ``t0``.
      t0, t1: start and end time (``t0 > t1`` integrates backwards, as when sampling).
      solver, rtol, atol, max_steps: see :func:`solve_ode`.
      sharding: optional sharding of the state.
      cond: optional condition passed to the score as its fourth argument.

    Returns:
      ``(x(t1), nfe)``, ``nfe`` the int32 number of score evaluations.
    """
    rsde = sde.reverse(bind_cond(score_fn, cond), probability_flow=True)
    batch = x.shape[0]

    def vector_field(t, y, params):
        drift, _ = rsde.sde(params, y, jnp.full((batch,), t, y.dtype))
        return constrain(drift.astype(y.dtype), sharding)

    y, nfe = solve_ode(vector_field, x, t0, t1, params, solver=solver, rtol=rtol, atol=atol,
                       max_steps=max_steps)
    return y.astype(x.dtype), nfe  # diffrax promotes the state to the time dtype (float64 in x64)


def ode_sampler(sde, score_fn, shape: tuple[int, ...], *, rtol: float = 1e-5, atol: float = 1e-5,
                solver: str = "dopri5", eps: float = 1e-3, noise_removal: bool = False,
                dtype=jnp.float32, sharding=None, max_steps: int = 8192):
    """Sample by integrating the probability-flow ODE from ``T`` down to ``eps``.

    Args:
      sde, score_fn, shape: as for :func:`jaxdiff.samplers.pc_sampler`.
      rtol, atol: tolerances of the adaptive solver.
      solver: ``'dopri5'`` (default, RK45 as in the paper), ``'tsit5'``, ``'bosh3'`` or ``'heun'``.
      eps: end time of the integration.
      noise_removal: finish with the mean of one reverse-diffusion step at ``eps`` (one more
        evaluation), score_sde's ODE-sampler ``denoise``.
      sharding: optional sharding of the ``(B, ...)`` state.
      max_steps: bound on solver steps.

    Returns:
      ``sample(params, key, cond=None) -> (x, nfe)``, jitted; ``nfe`` counts every score
      evaluation.
    """
    get_solver(solver)  # validate the name now, not at the first call
    batch = shape[0]

    def integrate(score_fn, params, key, x, ts):
        # the span as Python floats (as diffrax got it before the builder existed): ts == [T, eps]
        x, nfe = ode_integrate(sde, score_fn, params, x, sde.T, eps, solver=solver, rtol=rtol,
                               atol=atol, max_steps=max_steps, sharding=sharding)
        if noise_removal:
            denoiser = reverse_diffusion(sde, score_fn, probability_flow=False)
            _, x = denoiser.update(params, key, x, jnp.full((batch,), eps, x.dtype))
            nfe = nfe + 1
        return x, nfe

    grid = lambda dt: jnp.asarray([sde.T, eps], dt)  # noqa: E731
    return make_sampler(sde, score_fn, shape, Solver(integrate, grid), dtype=dtype,
                        sharding=sharding)
