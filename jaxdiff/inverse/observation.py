"""The ``cond`` pytrees of the inverse-problem samplers.

Every sampler of :mod:`jaxdiff.inverse` returns a jitted ``sample(params, key, cond=None) -> (x,
nfe)``, like every other sampler of the library; ``cond`` is one pytree:

* :class:`Observation` ``(op, y, lam=1.0)``: a linear measurement ``y = A x`` for
  :func:`~jaxdiff.inverse.consistency.pc_inverse_sampler`,
  :func:`~jaxdiff.inverse.consistency.ode_inverse_sampler`,
  :func:`~jaxdiff.inverse.smc.smc_inverse_sampler`, :func:`~jaxdiff.inverse.inpainting.
  linear_inverse_sampler` and (with a :class:`~jaxdiff.inverse.linear.Mask`, built by
  :meth:`Observation.inpainting`) :func:`~jaxdiff.inverse.inpainting.inpaint_sampler`;
* :class:`Estimate` ``(x_init, obs=None)``: the starting estimate of
  :func:`~jaxdiff.inverse.ccdf.ccdf_sampler`, with an optional :class:`Observation` for data
  consistency;
* an array: the gray image of :func:`~jaxdiff.inverse.colorization.colorize_sampler`;
* a :class:`~jaxdiff.inverse.warm_start.GaussianStats`: the data Gaussian of
  :func:`~jaxdiff.inverse.warm_start.warm_start_sampler`.

Operators and observations are pytree leaves, so one compilation serves every observation (and
every mask or matrix of the same shape), and ``jax.vmap`` over ``cond`` draws samples for many
observations at once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxdiff.inverse.linear import LinearOperator, Mask

Array = jax.Array

__all__ = ["Observation", "Estimate"]


class Observation(struct.PyTreeNode):
    """A linear measurement ``y = A x`` (the ``cond`` of the inverse samplers).

    Fields:
      op: the :class:`~jaxdiff.inverse.linear.LinearOperator` ``A``.
      y: the measurement ``(B, *obs_shape)``, or with a leading 1 to share one observation.
      lam: data-consistency weight in ``[0, 1]`` (scalar or ``(B,)``; 1: the hard projection
        ``A x = y``; smaller for noisy measurements, Song et al. 2022, Eq. 12). Used by the PC
        samplers (PC, CCDF); the ODE and SMC samplers always project exactly.
    """

    op: LinearOperator
    y: Array
    lam: Any = 1.0

    @classmethod
    def inpainting(cls, y: Array, mask: Array) -> Observation:
        """The inpainting observation: ``y`` of the rank of the samples holds the known values
        (anything where ``mask == 0``), ``mask`` is binary (1 = known), broadcastable to ``y``'s
        example shape; it becomes a :class:`~jaxdiff.inverse.linear.Mask` of the same rank and the
        measurement ``mask * y``."""
        y = jnp.asarray(y)
        mask = jnp.asarray(mask)
        if mask.ndim > y.ndim:
            raise ValueError(f"mask of shape {mask.shape} has more axes than y of shape {y.shape}")
        op = Mask(jnp.broadcast_to(mask, (1,) * (y.ndim - mask.ndim) + mask.shape))
        return cls(op, op(y))


class Estimate(struct.PyTreeNode):
    """A starting estimate (the ``cond`` of :func:`~jaxdiff.inverse.ccdf.ccdf_sampler`).

    Fields:
      x_init: the estimate ``x_hat`` (the samples' shape, or broadcastable to it).
      obs: an optional :class:`Observation` for data consistency along the reverse run
        (``None``: plain diffuse-and-denoise).
    """

    x_init: Array
    obs: Observation | None = None


def check_observation(cond, what: str) -> Observation:
    """``cond`` if it is an :class:`Observation`, else a ``TypeError`` naming the sampler."""
    if not isinstance(cond, Observation):
        raise TypeError(f"{what} takes cond=Observation(op, y, lam=1.0), got {type(cond).__name__}")
    return cond
