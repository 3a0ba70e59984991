"""Denoising score matching losses (Song et al. 2021, Eq. 7; Ho et al. 2020; Song & Ermon 2019).

Every factory returns a pure ``loss_fn(params, key, batch) -> (loss, aux)`` ready for
``jax.value_and_grad(..., has_aux=True)``. ``batch`` is an array of shape ``(B, ...)``; ``aux`` holds
per-example losses and the sampled times.

Score functions that need randomness in training (dropout) can be called with it: pass
``rng_kwarg='rng'`` and the loss calls ``score_fn(params, x, t, rng=key)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff import sde as sde_lib
from jaxdiff.sde import batch_broadcast

Array = jax.Array

__all__ = ["score_matching_loss", "ddpm_loss", "smld_loss", "get_loss", "dsm_per_example",
           "perturb", "reduce_per_example", "check_batch", "call_net"]


def reduce_per_example(losses: Array, reduce_mean: bool) -> Array:
    """``(B, ...) -> (B,)``: the mean (else the sum) over the data dimensions; the one reduction
    of every loss here and in :mod:`jaxdiff.objectives`."""
    flat = losses.reshape(losses.shape[0], -1)
    return jnp.mean(flat, axis=-1) if reduce_mean else jnp.sum(flat, axis=-1)


def perturb(sde, x: Array, t: Array, z: Array) -> tuple[Array, Array]:
    """``(x_t, std)`` with ``x_t = mean(t) x + std(t) z`` from ``sde.marginal_prob``; ``std``
    broadcast against ``x`` (``(B, 1, ...)`` for a uniform SDE, ``x``'s shape for a multi-speed
    one)."""
    mean, std = sde.marginal_prob(x, t)
    std = batch_broadcast(std, x)
    return mean + std * z, std


def dsm_per_example(score: Array, z: Array, std: Array, *, g2: Array | None = None,
                    reduce_mean: bool = True) -> Array:
    """The one denoising-score-matching body: per-example losses ``(B,)``.

    ``reduce(|score * std + z|^2)`` (the weighting ``lambda(t) = std(t)^2``), or, given the squared
    diffusion ``g2`` ``(B,)``, the likelihood weighting ``reduce(|score + z / std|^2) * g2``
    (Song et al. 2021b). ``reduce`` is the mean over the data dimensions, or the sum when
    ``reduce_mean=False``.

    Args:
      score: the network's score at ``x_t = mean + std z``, shape ``(B, ...)``.
      z: the standard normal noise of the perturbation, shape of ``score``.
      std: the marginal std broadcastable to ``score`` (``(B, 1, ...)`` or per coordinate).
      g2: ``g(t)^2`` of shape ``(B,)`` for the likelihood weighting, else ``None``.
      reduce_mean: mean (else sum) over data dimensions.
    """
    if g2 is None:
        return reduce_per_example(jnp.square(score * std + z), reduce_mean)
    return reduce_per_example(jnp.square(score + z / std), reduce_mean) * g2


def call_net(fn, rng_kwarg: str | None, key, *args):
    """``fn(*args)``, or ``fn(*args, **{rng_kwarg: key})`` for a network that needs randomness in
    training (dropout; ``rng_kwarg='rng'``)."""
    if rng_kwarg is None:
        return fn(*args)
    return fn(*args, **{rng_kwarg: key})


def check_batch(batch) -> None:
    """Refuse a batch that is not an array of shape ``(B, ...)``, naming what it got."""
    if not hasattr(batch, "shape") or batch.ndim < 2:
        raise ValueError(
            "batch must be an array of shape (B, ...) with B >= 1, got "
            f"{getattr(batch, 'shape', type(batch))}")


def score_matching_loss(sde, score_fn, *, reduce_mean: bool = True,
                        likelihood_weighting: bool = False, eps: float = 1e-5,
                        rng_kwarg: str | None = None):
    """Continuous-time denoising score matching.

    ``t ~ U(eps, T)``, ``x_t = mean(t) x_0 + std(t) z``; the per-example loss is
    ``reduce(|score * std + z|^2)`` (the weighting ``lambda(t) = std(t)^2``), or with
    ``likelihood_weighting`` ``reduce(|score + z / std|^2) * g(t)^2`` (the likelihood weighting of
    Song et al. 2021b). ``reduce`` is the mean over data dimensions, or the sum when
    ``reduce_mean=False``.
    """

    def loss_fn(params, key, batch):
        check_batch(batch)
        k_t, k_z, k_net = jax.random.split(key, 3)
        t = jax.random.uniform(k_t, (batch.shape[0],), batch.dtype, eps, sde.T)
        z = jax.random.normal(k_z, batch.shape, batch.dtype)
        x_t, std = perturb(sde, batch, t, z)
        score = call_net(score_fn, rng_kwarg, k_net, params, x_t, t)
        g2 = sde.sde(jnp.zeros_like(batch), t)[1] ** 2 if likelihood_weighting else None
        losses = dsm_per_example(score, z, std, g2=g2, reduce_mean=reduce_mean)
        return jnp.mean(losses), {"losses": losses, "t": t}

    return loss_fn


def _discrete_loss(sde, score_fn, std_table, mean_table, reduce_mean, rng_kwarg):
    """``t_i = i / (N - 1)`` for a uniform index ``i`` (so ``floor(t_i (N - 1)) = i`` exactly);
    ``x = mean_i x_0 + std_i z``; loss ``reduce(|score * std_i + z|^2)``."""

    def loss_fn(params, key, batch):
        check_batch(batch)
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
        score = call_net(score_fn, rng_kwarg, k_net, params, x_t, t)
        losses = dsm_per_example(score, z, std, reduce_mean=reduce_mean)
        return jnp.mean(losses), {"losses": losses, "t": t, "labels": idx}

    return loss_fn


def ddpm_loss(sde, score_fn, *, reduce_mean: bool = True, rng_kwarg: str | None = None):
    """The DDPM loss (Ho et al. 2020) ``|eps_theta - z|^2`` at the discrete noise levels of a VP SDE.

    With ``eps_theta = -std_i * score`` this is ``|score * std_i + z|^2`` with
    ``std_i = sqrt(1 - alphas_cumprod[i])``. ``score_fn`` is called at ``t_i = i / (N - 1)``, so a
    discrete network reads its integer label as ``round(t * (N - 1))``.
    """
    if not isinstance(sde, sde_lib.VPSDE):
        raise ValueError(f"the DDPM loss needs a VPSDE, got {type(sde).__name__}")
    ac = sde.alphas_cumprod
    return _discrete_loss(sde, score_fn, jnp.sqrt(1.0 - ac), jnp.sqrt(ac), reduce_mean, rng_kwarg)


def smld_loss(sde, score_fn, *, reduce_mean: bool = True, rng_kwarg: str | None = None):
    """The SMLD / NCSN loss (Song & Ermon 2019): ``sigma_i^2 |score + z / sigma_i|^2`` at the
    geometric noise levels ``sigma_i`` of a VE SDE, ``t_i = i / (N - 1)`` (so ``sigma(t_i) = sigma_i``).

    ``reduce_mean`` defaults to ``True`` like every loss factory here and :func:`get_loss` (the
    reference score_sde code defaults its SMLD loss to a sum but always passes the config's
    ``training.reduce_mean``; ``configs`` set that key explicitly, so training is unchanged)."""
    if not isinstance(sde, sde_lib.VESDE):
        raise ValueError(f"the SMLD loss needs a VESDE, got {type(sde).__name__}")
    sig = sde.discrete_sigmas
    return _discrete_loss(sde, score_fn, sig, jnp.ones_like(sig), reduce_mean, rng_kwarg)


def get_loss(sde, score_fn, *, continuous: bool = True, reduce_mean: bool = True,
             likelihood_weighting: bool = False, eps: float = 1e-5,
             rng_kwarg: str | None = None):
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
