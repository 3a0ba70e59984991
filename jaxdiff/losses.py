"""Denoising score matching losses (Song et al. 2021, Eq. 7; Ho et al. 2020; Song & Ermon 2019).

Every factory returns a pure ``loss_fn(params, key, batch) -> (loss, aux)`` ready for
``jax.value_and_grad(..., has_aux=True)``. ``batch`` is an array of shape ``(B, ...)``; ``aux`` holds
per-example losses and the sampled times.

Score functions that need randomness in training (dropout) can be called with it: pass
``rng_kwarg='rng'`` and the loss calls ``score_fn(params, x, t, rng=key)``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxdiff import sde as sde_lib
from jaxdiff.sde import batch_broadcast

Array = jax.Array

__all__ = ["score_matching_loss", "ddpm_loss", "smld_loss", "get_loss"]


def _reduce(losses: Array, reduce_mean: bool) -> Array:
    flat = losses.reshape(losses.shape[0], -1)
    return jnp.mean(flat, axis=-1) if reduce_mean else jnp.sum(flat, axis=-1)


def _call(score_fn, params, x, t, key, rng_kwarg):
    if rng_kwarg is None:
        return score_fn(params, x, t)
    return score_fn(params, x, t, **{rng_kwarg: key})


def _check_batch(batch):
    if not hasattr(batch, "shape") or batch.ndim < 2:
        raise ValueError(
            f"batch must be an array of shape (B, ...) with B >= 1, got {getattr(batch, 'shape', type(batch))}")


def score_matching_loss(sde, score_fn, *, reduce_mean: bool = True,
                        likelihood_weighting: bool = False, eps: float = 1e-5,
                        rng_kwarg: Optional[str] = None):
    """Continuous-time denoising score matching.

    ``t ~ U(eps, T)``, ``x_t = mean(t) x_0 + std(t) z``; the per-example loss is
    ``reduce(|score * std + z|^2)`` (the weighting ``lambda(t) = std(t)^2``), or with
    ``likelihood_weighting`` ``reduce(|score + z / std|^2) * g(t)^2`` (the likelihood weighting of
    Song et al. 2021b). ``reduce`` is the mean over data dimensions, or the sum when
    ``reduce_mean=False``.
    """

    def loss_fn(params, key, batch):
        _check_batch(batch)
        k_t, k_z, k_net = jax.random.split(key, 3)
        t = jax.random.uniform(k_t, (batch.shape[0],), batch.dtype, eps, sde.T)
        z = jax.random.normal(k_z, batch.shape, batch.dtype)
        mean, std = sde.marginal_prob(batch, t)
        std_b = batch_broadcast(std, batch)
        x_t = mean + std_b * z
        score = _call(score_fn, params, x_t, t, k_net, rng_kwarg)
        if likelihood_weighting:
            _, g = sde.sde(jnp.zeros_like(batch), t)
            losses = _reduce(jnp.square(score + z / std_b), reduce_mean) * g**2
        else:
            losses = _reduce(jnp.square(score * std_b + z), reduce_mean)
        return jnp.mean(losses), {"losses": losses, "t": t}

    return loss_fn


def _discrete_loss(sde, score_fn, std_table, mean_table, reduce_mean, rng_kwarg):
    """``t_i = i / (N - 1)`` for a uniform index ``i`` (so ``floor(t_i (N - 1)) = i`` exactly);
    ``x = mean_i x_0 + std_i z``; loss ``reduce(|score * std_i + z|^2)``."""

    def loss_fn(params, key, batch):
        _check_batch(batch)
        k_i, k_z, k_net = jax.random.split(key, 3)
        idx = jax.random.randint(k_i, (batch.shape[0],), 0, sde.N)
        t = idx.astype(batch.dtype) / (sde.N - 1) * sde.T
        # Discrete networks read their label as floor(t (N - 1)) (as the reference code does);
        # rounding can put i / (N - 1) * (N - 1) just below i, so move t up by one ulp there.
        t = jnp.where(jnp.floor(t * (sde.N - 1) / sde.T) < idx,
                      jnp.nextafter(t, jnp.asarray(2 * sde.T, t.dtype)), t)
        z = jax.random.normal(k_z, batch.shape, batch.dtype)
        std = batch_broadcast(std_table[idx].astype(batch.dtype), batch)
        x_t = batch_broadcast(mean_table[idx].astype(batch.dtype), batch) * batch + std * z
        score = _call(score_fn, params, x_t, t, k_net, rng_kwarg)
        losses = _reduce(jnp.square(score * std + z), reduce_mean)
        return jnp.mean(losses), {"losses": losses, "t": t, "labels": idx}

    return loss_fn


def ddpm_loss(sde, score_fn, *, reduce_mean: bool = True, rng_kwarg: Optional[str] = None):
    """The DDPM loss (Ho et al. 2020) ``|eps_theta - z|^2`` at the discrete noise levels of a VP SDE.

    With ``eps_theta = -std_i * score`` this is ``|score * std_i + z|^2`` with
    ``std_i = sqrt(1 - alphas_cumprod[i])``. ``score_fn`` is called at ``t_i = i / (N - 1)``, so a
    discrete network reads its integer label as ``round(t * (N - 1))``.
    """
    if not isinstance(sde, sde_lib.VPSDE):
        raise ValueError(f"the DDPM loss needs a VPSDE, got {type(sde).__name__}")
    ac = sde.alphas_cumprod
    return _discrete_loss(sde, score_fn, jnp.sqrt(1.0 - ac), jnp.sqrt(ac), reduce_mean, rng_kwarg)


def smld_loss(sde, score_fn, *, reduce_mean: bool = False, rng_kwarg: Optional[str] = None):
    """The SMLD / NCSN loss (Song & Ermon 2019): ``sigma_i^2 |score + z / sigma_i|^2`` at the
    geometric noise levels ``sigma_i`` of a VE SDE, ``t_i = i / (N - 1)`` (so ``sigma(t_i) = sigma_i``)."""
    if not isinstance(sde, sde_lib.VESDE):
        raise ValueError(f"the SMLD loss needs a VESDE, got {type(sde).__name__}")
    sig = sde.discrete_sigmas
    return _discrete_loss(sde, score_fn, sig, jnp.ones_like(sig), reduce_mean, rng_kwarg)


def get_loss(sde, score_fn, *, continuous: bool = True, reduce_mean: bool = True,
             likelihood_weighting: bool = False, eps: float = 1e-5,
             rng_kwarg: Optional[str] = None):
    """The loss a training config asks for: continuous DSM, or the discrete DDPM (VP) / SMLD (VE)."""
    if continuous:
        return score_matching_loss(sde, score_fn, reduce_mean=reduce_mean,
                                   likelihood_weighting=likelihood_weighting, eps=eps,
                                   rng_kwarg=rng_kwarg)
    if likelihood_weighting:
        raise ValueError("likelihood_weighting applies to continuous training only")
    if isinstance(sde, sde_lib.VESDE):
        return smld_loss(sde, score_fn, reduce_mean=reduce_mean, rng_kwarg=rng_kwarg)
    if isinstance(sde, sde_lib.VPSDE):
        return ddpm_loss(sde, score_fn, reduce_mean=reduce_mean, rng_kwarg=rng_kwarg)
    raise ValueError(f"discrete training is defined for VPSDE and VESDE, not {type(sde).__name__}")
