"""The predictor-corrector sampler: one ``lax.fori_loop`` over time, no host work per step."""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding

from jaxdiff.samplers.predictors import Step, get_corrector, get_predictor

Array = jax.Array

__all__ = ["pc_step", "pc_loop", "pc_sampler", "constrain"]


def constrain(x: Array, sharding) -> Array:
    """Lay ``x`` out as ``sharding`` (e.g. the batch over a ``data`` axis); a no-op for ``None``.

    The samplers use sharding *hints* (``with_sharding_constraint`` on a mesh with Auto axes), which
    compose with diffrax's solver loops; a mesh made with Explicit axes (``jax.make_mesh``'s default)
    is viewed with Auto axes for this. Call the samplers outside an Explicit-axes ``jax.set_mesh``.
    """
    if sharding is None:
        return x
    mesh = getattr(sharding, "mesh", None)
    if isinstance(mesh, Mesh) and any(a != AxisType.Auto for a in mesh.axis_types):
        mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
        sharding = NamedSharding(mesh, sharding.spec, memory_kind=sharding.memory_kind)
    return jax.lax.with_sharding_constraint(x, sharding)


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
            transform: Optional[Callable] = None) -> tuple[Array, Array]:
    """Run ``step`` at each of ``timesteps`` (descending) inside one ``fori_loop``.

    ``transform(params, key, x, x_mean, t) -> (x, x_mean)``, if given, runs after every step (data
    consistency for inverse problems). Returns the last ``(x, x_mean)``.
    """
    batch = x.shape[0]

    def body(i, carry):
        x, x_mean = carry
        t = jnp.full((batch,), timesteps[i], x.dtype)
        k = jax.random.fold_in(key, i)
        if transform is not None:
            k, k_transform = jax.random.split(k)
        x, x_mean = step.update(params, k, x, t)
        if transform is not None:
            x, x_mean = transform(params, k_transform, x, x_mean, t)
        return constrain(x, sharding), constrain(x_mean, sharding)

    return jax.lax.fori_loop(0, timesteps.shape[0], body, (x, x))


def pc_sampler(sde, score_fn, shape: tuple[int, ...], *, predictor="euler_maruyama",
               corrector=None, snr: float = 0.16, n_corrector_steps: int = 1,
               probability_flow: bool = False, num_steps: Optional[int] = None,
               denoise: bool = True, eps: float = 1e-3, dtype=jnp.float32, sharding=None):
    """Predictor-corrector sampler (Song et al. 2021, Alg. 1).

    Args:
      sde: the forward SDE.
      score_fn: ``score_fn(params, x, t) -> score`` with ``x`` of shape ``shape`` and ``t`` ``(B,)``.
      shape: ``(B, *event_shape)`` of the samples.
      predictor: ``'euler_maruyama' | 'reverse_diffusion' | 'ancestral' | None`` or a factory.
      corrector: ``'langevin' | 'ald' | None`` or a factory.
      snr, n_corrector_steps: the corrector's signal-to-noise ratio and steps per time.
      probability_flow: use the probability-flow ODE in the predictor.
      num_steps: number of time steps (default ``sde.N``); the SDE's discrete schedule and the step
        ``dt = -T / num_steps`` follow it.
      denoise: return the noise-free mean of the last step.
      eps: the last time (the grid is ``linspace(T, eps, num_steps)``).
      sharding: optional sharding of the ``(B, ...)`` state, e.g. ``NamedSharding(mesh, P('data'))``.
        The batch stays sharded through the loop (see :func:`constrain`).

    Returns:
      ``sample(params, key) -> (x, nfe)``, jitted; ``nfe`` is the number of score evaluations.
    """
    if num_steps is not None:
        sde = sde.with_steps(num_steps)
    step = pc_step(sde, score_fn, predictor=predictor, corrector=corrector, snr=snr,
                   n_corrector_steps=n_corrector_steps, probability_flow=probability_flow)
    nfe = step.nfe * sde.N

    @jax.jit
    def sample(params, key):
        k_prior, k_loop = jax.random.split(key)
        x = constrain(sde.prior_sampling(k_prior, shape, dtype), sharding)
        timesteps = jnp.linspace(sde.T, eps, sde.N, dtype=dtype)
        x, x_mean = pc_loop(step, params, k_loop, x, timesteps, sharding=sharding)
        return (x_mean if denoise else x), jnp.asarray(nfe, jnp.int32)

    return sample
