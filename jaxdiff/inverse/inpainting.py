"""Inpainting, super-resolution, MRI and any linear inverse problem through one entry point.

:func:`linear_inverse_sampler` picks the PC or the probability-flow ODE sampler with data
consistency (:mod:`jaxdiff.inverse.consistency`); :func:`inpaint_sampler` is the mask special case
with an image-shaped observation, as in Song et al. 2021 (Sec. 5.3, App. I.2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.inverse.consistency import ode_inverse_sampler, pc_inverse_sampler
from jaxdiff.inverse.linear import Mask
from jaxdiff.inverse.observation import check_observation
from jaxdiff.inverse.smc import smc_inverse_sampler

__all__ = ["linear_inverse_sampler", "inpaint_sampler"]

_METHODS = ("pc", "ode", "smc")


def linear_inverse_sampler(sde, score_fn, shape: tuple[int, ...], *, method: str = "pc", **kwargs):
    """Sampler of ``p(x | A x = y)`` for any :class:`~jaxdiff.inverse.linear.LinearOperator`.

    Args:
      sde: linear forward SDE.
      score_fn: ``score_fn(params, x, t)`` of the prior.
      shape: ``(B, *event_shape)``.
      method: ``'pc'`` (:func:`~jaxdiff.inverse.consistency.pc_inverse_sampler`; keywords
        ``predictor, corrector, snr, n_corrector_steps, num_steps, noise_removal, eps, dtype,
        sharding, consistency_after_corrector``: known entries are replaced after the corrector
        and after the predictor, as score_sde's controllable_generation)
        or ``'ode'`` (:func:`~jaxdiff.inverse.consistency.ode_inverse_sampler`; keywords
        ``rtol, atol, solver, eps, dtype, sharding, max_steps``) or ``'smc'``
        (:func:`~jaxdiff.inverse.smc.smc_inverse_sampler`, asymptotically exact; the batch is the
        particle system of one observation ``y`` with leading axis 1; ``Mask`` or ``Matrix`` only;
        keywords ``num_steps, eps, ess_threshold, dtype``).

    Returns:
      ``sample(params, key, cond) -> (x, nfe)``, jitted; ``cond`` an
      :class:`~jaxdiff.inverse.observation.Observation` ``(op, y, lam=1.0)`` (``lam`` used by
      ``'pc'``).
    """
    if method == "pc":
        return pc_inverse_sampler(sde, score_fn, shape, **kwargs)
    if method == "ode":
        return ode_inverse_sampler(sde, score_fn, shape, **kwargs)
    if method == "smc":
        return smc_inverse_sampler(sde, score_fn, shape, **kwargs)
    raise ValueError(f"unknown method {method!r}; choose one of {_METHODS}")


def inpaint_sampler(sde, score_fn, shape: tuple[int, ...], *, method: str = "pc", **kwargs):
    """Inpainting: sample the unknown entries given the known ones.

    Args:
      sde, score_fn, shape, method, kwargs: as :func:`linear_inverse_sampler`.

    Returns:
      ``sample(params, key, cond) -> (x, nfe)``, jitted; ``cond`` an
      :class:`~jaxdiff.inverse.observation.Observation` with a :class:`Mask` operator, built by
      ``Observation.inpainting(y, mask)``: ``y`` of shape ``shape`` (or with a leading 1) holds
      the known values (anything where ``mask == 0``), ``mask`` is binary, broadcastable to
      ``shape`` (1 = known). The known entries of ``x`` equal ``y`` exactly.
    """
    inner = linear_inverse_sampler(sde, score_fn, shape, method=method, **kwargs)

    @jax.jit
    def sample(params, key, cond=None):
        obs = check_observation(cond, "inpaint_sampler")
        if not isinstance(obs.op, Mask):
            raise TypeError(f"inpaint_sampler needs a Mask operator (Observation.inpainting(y, "
                            f"mask)), got {type(obs.op).__name__}")
        if jnp.ndim(obs.y) != len(shape):
            raise ValueError(
                f"y of shape {jnp.shape(obs.y)} must have the rank of the samples {shape}")
        return inner(params, key, obs)

    return sample
