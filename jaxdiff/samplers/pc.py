"""The predictor-corrector sampler: one ``lax.fori_loop`` over time, no host work per step."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import Solver, constrain, make_sampler
from jaxdiff.samplers.predictors import Step, get_corrector, get_predictor

Array = jax.Array

__all__ = ["pc_step", "pc_loop", "pc_integrate", "pc_sampler", "pc_nfe", "constrain"]


def pc_step(sde, score_fn, *, predictor="euler_maruyama", corrector=None, snr: float = 0.16,
            n_corrector_steps: int = 1, probability_flow: bool = False) -> Step:
    """One corrector-then-predictor update as a :class:`Step` (either part may be ``None``)."""
    if predictor is None and corrector is None:
        raise ValueError("at least one of predictor and corrector must be given")
    if n_corrector_steps < 0:
        raise ValueError(f"n_corrector_steps must be >= 0, got {n_corrector_steps}")
    pred = get_predictor(predictor)(sde, score_fn, probability_flow) if predictor else None
    corr = (get_corrector(corrector)(sde, score_fn, snr=snr, n_steps=n_corrector_steps)
            if corrector else None)

    def update(params, key, x, t):
        kc, kp = jax.random.split(key)
        x_mean = x
        if corr is not None:
            x, x_mean = corr.update(params, kc, x, t)
        if pred is not None:
            x, x_mean = pred.update(params, kp, x, t)
        return x, x_mean

    nfe = (pred.nfe if pred else 0) + (corr.nfe if corr else 0)
    return Step(update, nfe)


def pc_loop(step: Step, params, key: Array, x: Array, timesteps: Array, *, sharding=None,
            transform: Callable | None = None, first_index: int = 0) -> tuple[Array, Array]:
    """Run ``step`` at each of ``timesteps`` (descending) inside one ``fori_loop``.

    ``transform(params, key, x, x_mean, t) -> (x, x_mean)``, if given, runs after every step (data
    consistency for inverse problems). Step ``i`` draws its noise from ``fold_in(key, first_index
    + i)`` (``first_index``: where ``timesteps`` starts in a longer grid run in pieces, e.g. the
    stages of :func:`jaxdiff.multiscale.multiscale_sampler`). Returns the last ``(x, x_mean)``, in
    the dtype of ``x`` (updates computed in a wider dtype, e.g. from float64 schedule constants,
    are cast back).
    """
    batch = x.shape[0]
    dtype = x.dtype

    def body(i, carry):
        x, x_mean = carry
        t = jnp.full((batch,), timesteps[i], x.dtype)
        k = jax.random.fold_in(key, i + first_index)
        if transform is not None:
            k, k_transform = jax.random.split(k)
        x, x_mean = step.update(params, k, x, t)
        if transform is not None:
            x, x_mean = transform(params, k_transform, x, x_mean, t)
        return constrain(x.astype(dtype), sharding), constrain(x_mean.astype(dtype), sharding)

    return jax.lax.fori_loop(0, timesteps.shape[0], body, (x, x))


def pc_integrate(sde, score_fn, params, x: Array, ts: Array, *, key: Array,
                 predictor="euler_maruyama", corrector=None, snr: float = 0.16,
                 n_corrector_steps: int = 1, probability_flow: bool = False,
                 noise_removal: bool = True, sharding=None) -> tuple[Array, int]:
    """Run the predictor-corrector loop at each of the descending times ``ts``.

    Args:
      sde: the forward SDE (its ``N`` and discrete schedule set the predictor's step ``-T / N``).
      score_fn, params: ``score_fn(params, x, t)`` and its parameters.
      x: the ``(B, ...)`` state at ``ts[0]``.
      ts: the times of the ``len(ts)`` steps (``linspace(T, eps, N)`` for :func:`pc_sampler`).
      key: PRNG key of the noise.
      predictor, corrector, snr, n_corrector_steps, probability_flow: see :func:`pc_step`.
      noise_removal: return the noise-free mean of the last update (score_sde's noise removal,
        no extra evaluation) instead of the noisy state.
      sharding: optional sharding of the state.

    Returns:
      ``(x, nfe)``, ``nfe`` a Python int: ``len(ts)`` times the step's evaluations.
    """
    step = pc_step(sde, score_fn, predictor=predictor, corrector=corrector, snr=snr,
                   n_corrector_steps=n_corrector_steps, probability_flow=probability_flow)
    x, x_mean = pc_loop(step, params, key, x, ts, sharding=sharding)
    return (x_mean if noise_removal else x), step.nfe * ts.shape[0]


def pc_nfe(num_steps: int, *, predictor="euler_maruyama", corrector=None,
           n_corrector_steps: int = 1, **_) -> int:
    """Score evaluations of :func:`pc_sampler` with ``num_steps`` steps: one per predictor step
    and ``n_corrector_steps`` per corrector step."""
    per = (1 if predictor else 0) + (n_corrector_steps if corrector else 0)
    return per * int(num_steps)


def pc_sampler(sde, score_fn, shape: tuple[int, ...], *, predictor="euler_maruyama",
               corrector=None, snr: float = 0.16, n_corrector_steps: int = 1,
               probability_flow: bool = False, num_steps: int | None = None,
               noise_removal: bool = True, eps: float = 1e-3, dtype=jnp.float32, sharding=None):
    """Predictor-corrector sampler (Song et al. 2021, Alg. 1).

    Args:
      sde: the forward SDE.
      score_fn: ``score_fn(params, x, t) -> score`` with ``x`` of shape ``shape`` and ``t`` ``(B,)``
        (``score_fn(params, x, t, cond)`` when sampling with a ``cond``).
      shape: ``(B, *event_shape)`` of the samples.
      predictor: ``'euler_maruyama' | 'reverse_diffusion' | 'ancestral' | None`` or a factory.
      corrector: ``'langevin' | 'ald' | None`` or a factory.
      snr, n_corrector_steps: the corrector's signal-to-noise ratio and steps per time.
      probability_flow: use the probability-flow ODE in the predictor.
      num_steps: number of time steps (default ``sde.N``); the SDE's discrete schedule and the step
        ``dt = -T / num_steps`` follow it.
      noise_removal: return the noise-free mean of the last step (no extra evaluation).
      eps: the last time (the grid is ``linspace(T, eps, num_steps)``).
      sharding: optional sharding of the ``(B, ...)`` state, e.g. ``NamedSharding(mesh, P('data'))``.
        The batch stays sharded through the loop (see :func:`constrain`).

    Returns:
      ``sample(params, key, cond=None) -> (x, nfe)``, jitted; ``nfe`` is the number of score
      evaluations.
    """
    if num_steps is not None:
        sde = sde.with_steps(num_steps)
    options = dict(predictor=predictor, corrector=corrector, snr=snr,
                   n_corrector_steps=n_corrector_steps, probability_flow=probability_flow)
    pc_step(sde, score_fn, **options)  # validate the options now, not at the first call

    def integrate(score_fn, params, key, x, ts):
        return pc_integrate(sde, score_fn, params, x, ts, key=key, noise_removal=noise_removal,
                            sharding=sharding, **options)

    solver = Solver(integrate, lambda dt: jnp.linspace(sde.T, eps, sde.N, dtype=dt))
    return make_sampler(sde, score_fn, shape, solver, dtype=dtype, sharding=sharding)
