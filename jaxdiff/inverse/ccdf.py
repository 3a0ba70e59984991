"""Come-Closer-Diffuse-Faster (Chung, Sim & Ye 2022): start the reverse run from a forward-diffused
initial estimate at ``t0 < T`` instead of from the prior.

Given an estimate ``x_hat`` (e.g. ``A^T y``, ``A^+ y`` or any cheap reconstruction), draw
``x_{t0} = alpha(t0) x_hat + sigma(t0) z`` (observed part set to the forward marginal of ``y``)
and run the PC sampler with data consistency on ``linspace(t0, eps, N')``, ``N' = round(t0 N)``:
the same step size as the full run, a fraction ``t0`` of its score evaluations. The error of
``x_hat`` contracts along the reverse run, so a good estimate reaches full-run accuracy with far
fewer steps, while a poor one degrades gracefully as ``t0`` shrinks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.inverse.consistency import _check_obs, consistency_transform, consistent_pc_step, init_from_prior
from jaxdiff.inverse.observation import Estimate
from jaxdiff.samplers.base import keep_dtype
from jaxdiff.samplers.pc import constrain, pc_loop, pc_step

__all__ = ["ccdf_sampler", "ccdf_num_steps"]


def ccdf_num_steps(t0: float, num_steps: int) -> int:
    """``N' = max(1, round(t0 * N))`` reverse steps from ``t0``."""
    return max(1, int(round(t0 * num_steps)))


def ccdf_sampler(sde, score_fn, shape: tuple[int, ...], *, t0: float,
                 predictor="reverse_diffusion", corrector="langevin", snr: float = 0.16,
                 n_corrector_steps: int = 1, num_steps: int | None = None,
                 noise_removal: bool = True, eps: float = 1e-3, dtype=jnp.float32,
                 sharding=None, consistency_after_corrector: bool = True):
    """CCDF sampler.

    Args:
      sde: linear forward SDE; its ``N`` (or ``num_steps``) is the step count of a *full* run.
      score_fn: ``score_fn(params, x, t)`` of the prior.
      shape: ``(B, *event_shape)``.
      t0: start time in ``(eps, T]``; ``t0 = T`` is the full run from a diffused estimate.
      predictor, corrector, snr, n_corrector_steps, noise_removal, eps, dtype, sharding,
        consistency_after_corrector: as :func:`jaxdiff.inverse.consistency.pc_inverse_sampler`.

    Returns:
      ``sample(params, key, cond) -> (x, nfe)``, jitted; ``cond`` an
      :class:`~jaxdiff.inverse.observation.Estimate` ``(x_init, obs=None)``: ``x_init`` the
      estimate (``shape`` or broadcastable), ``obs`` an optional
      :class:`~jaxdiff.inverse.observation.Observation` for data consistency (``None``: plain
      diffuse-and-denoise); ``nfe = N' * evaluations per step``.
    """
    if num_steps is not None:
        sde = sde.with_steps(num_steps)
    if not eps < t0 <= sde.T:
        raise ValueError(f"t0 must be in (eps={eps}, T={sde.T}], got {t0}")
    n_steps = ccdf_num_steps(t0, sde.N)
    step = pc_step(sde, keep_dtype(score_fn), predictor=predictor, corrector=corrector, snr=snr,
                   n_corrector_steps=n_corrector_steps)
    nfe = step.nfe * n_steps

    @jax.jit
    def sample(params, key, cond=None):
        if not isinstance(cond, Estimate):
            raise TypeError(f"ccdf_sampler takes cond=Estimate(x_init, obs=None), got "
                            f"{type(cond).__name__}")
        op = y = None
        if cond.obs is not None:
            op, y = cond.obs.op, cond.obs.y
            _check_obs(op, y, shape)
            y = jnp.broadcast_to(y, (shape[0],) + y.shape[1:])
        k_init, k_loop = jax.random.split(key)
        x, _ = init_from_prior(sde, op, y, k_init, shape, dtype, t=t0, x_hat=cond.x_init)
        x = constrain(x, sharding)
        timesteps = jnp.linspace(t0, eps, n_steps, dtype=dtype)
        transform = (None if op is None else
                     consistency_transform(sde, op, y, cond.obs.lam,
                                           has_predictor=predictor is not None))
        run_step = step if op is None else consistent_pc_step(
            sde, keep_dtype(score_fn), op, y, cond.obs.lam, predictor=predictor,
            corrector=corrector, snr=snr, n_corrector_steps=n_corrector_steps,
            after_corrector=consistency_after_corrector)
        x, x_mean = pc_loop(run_step, params, k_loop, x, timesteps, sharding=sharding,
                            transform=transform)
        return (x_mean if noise_removal else x), jnp.asarray(nfe, jnp.int32)

    return sample
