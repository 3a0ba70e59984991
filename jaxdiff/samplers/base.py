"""The sampler interface every sampler of the library shares (see ``docs/sampler_interface.md``).

* The **sample contract**: a sampler factory returns a jitted ``sample(params, key, cond=None) ->
  (x, nfe)``; ``x`` has the requested shape and dtype, ``nfe`` is the int32 number of batched
  score evaluations. A non-None ``cond`` (any pytree) reaches the score function as its fourth
  positional argument, ``score_fn(params, x, t, cond)``.
* The **integrate contract**: a :class:`Solver` bundles ``integrate(score_fn, params, key, x, ts)
  -> (x, nfe)`` (the solver's options already bound; ``score_fn(params, x, t)`` is unconditional
  here, the builder binds ``cond``) and ``grid(dtype) -> ts``, its time grid.
* :func:`make_sampler` is the one builder: prior draw from ``split(key)[0]`` (the solver gets
  ``split(key)[1]``), time grid, integrate, optional ``denoise`` (the Tweedie data prediction at the
  final time, one more score call), dtype, sharding, ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding

from jaxdiff.samplers.schedule import check_scalar_schedule, data_prediction

Array = jax.Array

__all__ = ["Solver", "make_sampler", "bind_cond", "keep_dtype", "constrain"]


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


def bind_cond(score_fn: Callable, cond: Any) -> Callable:
    """``score_fn`` itself when ``cond`` is None, else ``(params, x, t) -> score_fn(params, x, t,
    cond)`` (the one conditional-score convention: condition fourth, positional)."""
    if cond is None:
        return score_fn
    return lambda params, x, t: score_fn(params, x, t, cond)


def keep_dtype(score_fn: Callable) -> Callable:
    """``score_fn`` with its output cast to the dtype of the state ``x`` (a float64 score, e.g. an
    analytic one under ``jax_enable_x64``, then drives float32 samples; a no-op when they agree)."""

    def fn(params, x, t, *cond):
        return jnp.asarray(score_fn(params, x, t, *cond)).astype(x.dtype)

    return fn


@dataclasses.dataclass(frozen=True)
class Solver:
    """A solver of the reverse dynamics with its options bound (the integrate contract).

    Attributes:
      integrate: ``integrate(score_fn, params, key, x, ts) -> (x, nfe)``: advance the ``(B, ...)``
        state ``x`` from ``ts[0]`` along ``ts``; ``score_fn(params, x, t)`` with ``t`` of shape
        ``(B,)``; ``key`` drives any noise (unused by deterministic solvers); ``nfe`` the number of
        batched score evaluations (a Python int or an int32 array).
      grid: ``grid(dtype) -> ts``, the solver's time grid (descending; called inside the jitted
        sample). Its last entry is the final time at which ``denoise`` evaluates the data
        prediction.
    """

    integrate: Callable[..., tuple[Array, Any]]
    grid: Callable[[Any], Array]


def make_sampler(sde, score_fn: Callable, shape: tuple[int, ...], solver: Solver, *,
                 denoise: bool = False, dtype=jnp.float32, sharding=None,
                 prior: Callable | None = None):
    """The one sampler builder: ``sample(params, key, cond=None) -> (x, nfe)``, jitted.

    Args:
      sde: the forward SDE (its ``prior_sampling`` draws the start).
      score_fn: ``score_fn(params, x, t)``, or ``score_fn(params, x, t, cond)`` for a non-None
        ``cond``; its output is cast to ``dtype``.
      shape: ``(B, *event_shape)`` of the samples.
      solver: the :class:`Solver` to run.
      denoise: finish with the Tweedie data prediction ``x0_hat = (x + sigma(t)^2 score(x, t)) /
        alpha(t)`` at ``t = ts[-1]`` (one more score call; needs scalar ``alpha, sigma``).
      dtype: dtype of the samples; sharding: optional sharding of the ``(B, ...)`` state.
      prior: optional ``prior(key, shape, dtype) -> x`` replacing ``sde.prior_sampling``.

    Returns:
      ``sample(params, key, cond=None) -> (x, nfe)``; the prior draw uses ``split(key)[0]``, the
      solver ``split(key)[1]``.
    """
    if denoise:
        check_scalar_schedule(sde)
    shape = tuple(shape)
    draw = sde.prior_sampling if prior is None else prior
    score = keep_dtype(score_fn)

    @jax.jit
    def sample(params, key, cond=None):
        fn = bind_cond(score, cond)
        k_prior, k_loop = jax.random.split(key)
        x = constrain(draw(k_prior, shape, dtype), sharding)
        ts = solver.grid(dtype)
        x, nfe = solver.integrate(fn, params, k_loop, x, ts)
        nfe = jnp.asarray(nfe, jnp.int32)
        if denoise:
            x = data_prediction(sde, fn)(params, x, ts[-1])
            nfe = nfe + 1
        return constrain(x, sharding), nfe

    return sample
