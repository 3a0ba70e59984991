"""EDM training (Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Table 1 / Sec. 5) as pure functions over any network.

With data ``y`` and noise ``n ~ N(0, sigma^2 I)`` the *denoiser* is the preconditioned network

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

    c_skip = sd^2 / (sigma^2 + sd^2)       c_out = sigma sd / sqrt(sigma^2 + sd^2)
    c_in   = 1 / sqrt(sigma^2 + sd^2)      c_noise = ln(sigma) / 4

(``sd`` = ``sigma_data``, the RMS of the data), trained with ``ln sigma ~ N(P_mean, P_std^2)``
(``-1.2``, ``1.2``) and the loss weight ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2``, so
that ``lambda c_out^2 = 1``: the network's own target ``(y - c_skip x) / c_out`` has unit weight.

The optimal denoiser is ``E[y | x]``, so by Tweedie's formula ``score = (D - x) / sigma^2`` of the
noised data ``x = y + sigma z``: exactly the VE SDE's marginal at the time ``t`` with
``sigma_VE(t) = sigma`` (:class:`jaxdiff.sde.VESDE`, ``marginal_prob`` std ``sigma(t)``).
:func:`denoiser_to_score` makes that score function, so every sampler of the registry and the
probability-flow likelihood (:mod:`jaxdiff.likelihood`, bits/dim) run on an EDM model unchanged.

Nothing here needs the training system::

    from jaxdiff.objectives import edm
    D = edm.edm_denoiser(net_fn, sigma_data=0.5)        # net_fn(params, x_in, c_noise) -> F
    loss_fn = edm.edm_loss(D)                           # loss_fn(params, key, batch) -> (loss, aux)
    score_fn = edm.denoiser_to_score(D, VESDE(0.002, 80.0))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff import losses as losses_lib
from jaxdiff import sde as sde_lib
from jaxdiff.sde import batch_broadcast

Array = jax.Array

__all__ = ["P_MEAN", "P_STD", "SIGMA_DATA", "edm_preconditioning", "edm_loss_weight",
           "edm_denoiser", "sample_sigma", "edm_loss", "denoiser_to_score", "score_to_denoiser",
           "ve_time", "edm_score_fn"]

#: EDM's defaults (Karras et al. 2022, Table 1, the "ours" column)
P_MEAN = -1.2
P_STD = 1.2
SIGMA_DATA = 0.5


def _check_sigma_data(sigma_data) -> float:
    try:
        sd = float(sigma_data)
    except (TypeError, ValueError):
        raise ValueError(f"sigma_data must be a positive number, got {sigma_data!r}") from None
    if not (sd > 0.0 and math.isfinite(sd)):
        raise ValueError(f"sigma_data must be a positive number, got {sigma_data!r}")
    return sd


def edm_preconditioning(sigma: Array, sigma_data: float = SIGMA_DATA
                        ) -> tuple[Array, Array, Array, Array]:
    """``(c_skip, c_out, c_in, c_noise)`` at noise level(s) ``sigma`` (any shape, > 0)."""
    sd = _check_sigma_data(sigma_data)
    sigma = jnp.asarray(sigma)
    s2 = jnp.square(sigma) + sd * sd
    c_skip = sd * sd / s2
    c_out = sigma * sd * jax.lax.rsqrt(s2)
    c_in = jax.lax.rsqrt(s2)
    c_noise = jnp.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: Array, sigma_data: float = SIGMA_DATA) -> Array:
    """``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` (``= 1 / c_out^2``)."""
    sd = _check_sigma_data(sigma_data)
    sigma = jnp.asarray(sigma)
    return (jnp.square(sigma) + sd * sd) / jnp.square(sigma * sd)


def edm_denoiser(net_fn: Callable, sigma_data: float = SIGMA_DATA) -> Callable:
    """The preconditioned denoiser of a raw network.

    Args:
      net_fn: ``net_fn(params, x_in, c_noise, **kw) -> F`` with ``x_in`` ``(B, ...)`` and
        ``c_noise`` ``(B,)`` (the network's noise label); ``F`` has the shape of ``x_in``. Any
        keyword (``rng=``, ``y=``) given to the denoiser is passed on.
      sigma_data: the RMS of the training data (EDM: 0.5 for CIFAR-10 in ``[-1, 1]``).

    Returns:
      ``denoiser(params, x, sigma, **kw) -> D`` (``sigma`` a scalar or ``(B,)``), pure and
      jittable.
    """
    sd = _check_sigma_data(sigma_data)

    def denoiser(params: Any, x: Array, sigma: Array, **kw) -> Array:
        sigma = jnp.asarray(sigma, x.dtype)
        if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.shape[0] != x.shape[0]):
            raise ValueError(f"sigma must be a scalar or of shape ({x.shape[0]},), got "
                             f"{sigma.shape}")
        sigma = jnp.broadcast_to(sigma, (x.shape[0],))
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, sd)
        out = net_fn(params, batch_broadcast(c_in, x) * x, c_noise, **kw)
        if out.shape != x.shape:
            raise ValueError(f"network output shape {out.shape} differs from x shape {x.shape}")
        return batch_broadcast(c_skip, x) * x + batch_broadcast(c_out, x) * out

    return denoiser


def sample_sigma(key: Array, shape: tuple[int, ...], *, p_mean: float = P_MEAN,
                 p_std: float = P_STD, dtype=jnp.float32) -> Array:
    """EDM's training noise levels: ``ln sigma ~ N(p_mean, p_std^2)``."""
    if not float(p_std) >= 0.0:
        raise ValueError(f"p_std must be >= 0, got {p_std!r}")
    return jnp.exp(p_mean + p_std * jax.random.normal(key, shape, dtype))


def edm_loss(denoiser_fn: Callable, *, sigma_data: float = SIGMA_DATA, p_mean: float = P_MEAN,
             p_std: float = P_STD, reduce_mean: bool = True, rng_kwarg: str | None = None
             ) -> Callable:
    """EDM's loss ``E lambda(sigma) |D(y + sigma z, sigma) - y|^2`` as
    ``loss_fn(params, key, batch) -> (loss, aux)``.

    Per example ``sigma ~ exp(N(p_mean, p_std^2))``, ``z ~ N(0, I)``; the squared error is
    reduced over the data dimensions by the mean (``reduce_mean``, the per-pixel scale of
    :mod:`jaxdiff.losses`) or the sum (EDM's code), weighted by :func:`edm_loss_weight`, and
    averaged over the batch. ``aux``: ``losses`` ``(B,)`` and ``sigma`` ``(B,)``.

    Args:
      denoiser_fn: ``denoiser_fn(params, x, sigma, **kw) -> D`` (e.g. :func:`edm_denoiser`).
      sigma_data: only for the loss weight (use the denoiser's).
      p_mean, p_std: the log-normal noise-level distribution.
      reduce_mean: mean (else sum) over data dimensions.
      rng_kwarg: call ``denoiser_fn(..., **{rng_kwarg: key})`` (dropout), as in
        :func:`jaxdiff.losses.score_matching_loss`.
    """
    sd = _check_sigma_data(sigma_data)
    if not float(p_std) >= 0.0:
        raise ValueError(f"p_std must be >= 0, got {p_std!r}")

    def loss_fn(params, key, batch):
        losses_lib.check_batch(batch)
        k_s, k_z, k_net = jax.random.split(key, 3)
        sigma = sample_sigma(k_s, (batch.shape[0],), p_mean=p_mean, p_std=p_std,
                             dtype=batch.dtype)
        z = jax.random.normal(k_z, batch.shape, batch.dtype)
        x = batch + batch_broadcast(sigma, batch) * z
        d = losses_lib.call_net(denoiser_fn, rng_kwarg, k_net, params, x, sigma)
        err = losses_lib.reduce_per_example(jnp.square(d - batch), reduce_mean)
        losses = edm_loss_weight(sigma, sd) * err
        return jnp.mean(losses), {"losses": losses, "sigma": sigma}

    return loss_fn


def _check_ve(sde) -> None:
    if not isinstance(sde, sde_lib.VESDE):
        raise ValueError(f"the EDM denoiser <-> score maps need a VESDE (x_t = x_0 + sigma(t) z), "
                         f"got {type(sde).__name__}")


def ve_time(sde, sigma: Array) -> Array:
    """The time ``t`` of a :class:`~jaxdiff.sde.VESDE` with ``sigma(t) = sigma``:
    ``log(sigma / sigma_min) / log(sigma_max / sigma_min)``."""
    _check_ve(sde)
    sigma = jnp.asarray(sigma)
    return jnp.log(sigma / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)


def denoiser_to_score(denoiser_fn: Callable, sde) -> Callable:
    """``score_fn(params, x, t, **kw) = (D(x, sigma(t)) - x) / sigma(t)^2`` on a VE SDE.

    Tweedie: for ``x = y + sigma z`` the score of the noised density is
    ``(E[y | x] - x) / sigma^2``; the VE SDE's marginal at ``t`` is that density with
    ``sigma = sde.sigma(t)`` (its ``marginal_prob`` std). The result plugs into every sampler
    and :mod:`jaxdiff.likelihood`.

    Args:
      denoiser_fn: ``denoiser_fn(params, x, sigma, **kw) -> D``.
      sde: a :class:`jaxdiff.sde.VESDE` (its ``sigma_min`` / ``sigma_max`` are the sampling
        range; EDM uses 0.002 and 80).
    """
    _check_ve(sde)

    def score_fn(params: Any, x: Array, t: Array, **kw) -> Array:
        t = jnp.asarray(t, x.dtype)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
            raise ValueError(f"t must be a scalar or of shape ({x.shape[0]},), got {t.shape}")
        sigma = jnp.broadcast_to(sde.sigma(t).astype(x.dtype), (x.shape[0],))
        d = denoiser_fn(params, x, sigma, **kw)
        return (d - x) / batch_broadcast(jnp.square(sigma), x)

    return score_fn


def score_to_denoiser(score_fn: Callable, sde) -> Callable:
    """The inverse map: ``D(x, sigma) = x + sigma^2 score(x, t(sigma))`` on a VE SDE
    (:func:`ve_time`), e.g. to evaluate the EDM loss of any VE score model."""
    _check_ve(sde)

    def denoiser(params: Any, x: Array, sigma: Array, **kw) -> Array:
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
        s = score_fn(params, x, ve_time(sde, sigma), **kw)
        return x + batch_broadcast(jnp.square(sigma), x) * s

    return denoiser


def edm_score_fn(net_fn: Callable, sde, sigma_data: float = SIGMA_DATA) -> Callable:
    """``denoiser_to_score(edm_denoiser(net_fn, sigma_data), sde)``: a raw network as the score
    function of an EDM-trained model."""
    return denoiser_to_score(edm_denoiser(net_fn, sigma_data), sde)
