"""Predictors and correctors of the predictor-corrector sampler (Song et al. 2021, Alg. 2-5).

Each factory takes ``(sde, score_fn, ...)`` and returns a :class:`Step`: a pure
``update(params, key, x, t) -> (x, x_mean)`` with ``t`` of shape ``(B,)``, and the number of score
evaluations one update makes. Register a new one with :func:`register_predictor` /
:func:`register_corrector`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff import sde as sde_lib
from jaxdiff.sde import batch_broadcast

Array = jax.Array

__all__ = [
    "Step", "PREDICTORS", "CORRECTORS", "register_predictor", "register_corrector",
    "get_predictor", "get_corrector", "euler_maruyama", "reverse_diffusion", "ancestral",
    "langevin", "ald",
]


class Step(NamedTuple):
    """One predictor or corrector update and its score evaluations per call."""

    update: Callable[[object, Array, Array, Array], tuple[Array, Array]]
    nfe: int


PREDICTORS: dict[str, Callable[..., Step]] = {}
CORRECTORS: dict[str, Callable[..., Step]] = {}


def register_predictor(name: str):
    """Decorator registering a predictor factory ``(sde, score_fn, probability_flow) -> Step``
    under ``name`` (usable as ``pc_sampler(..., predictor=name)``)."""
    def deco(fn):
        PREDICTORS[name] = fn
        return fn
    return deco


def register_corrector(name: str):
    """Decorator registering a corrector factory ``(sde, score_fn, snr, n_steps) -> Step``
    under ``name`` (usable as ``pc_sampler(..., corrector=name)``)."""
    def deco(fn):
        CORRECTORS[name] = fn
        return fn
    return deco


def _lookup(table, kind, name):
    if callable(name):
        return name
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {sorted(table)} or None") from None


def get_predictor(name) -> Callable[..., Step]:
    """The predictor factory registered as ``name`` (a callable is returned as is)."""
    return _lookup(PREDICTORS, "predictor", name)


def get_corrector(name) -> Callable[..., Step]:
    """The corrector factory registered as ``name`` (a callable is returned as is)."""
    return _lookup(CORRECTORS, "corrector", name)


def _per_example_norm_mean(v: Array) -> Array:
    """Mean over the batch of per-example L2 norms (a global mean when the batch is sharded)."""
    return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1))


# ---- predictors ----------------------------------------------------------------------------
@register_predictor("euler_maruyama")
def euler_maruyama(sde, score_fn, probability_flow: bool = False) -> Step:
    """Euler-Maruyama step of the reverse SDE with ``dt = -T / N``."""
    rsde = sde.reverse(score_fn, probability_flow)
    dt = -sde.T / sde.N

    def update(params, key, x, t):
        drift, diffusion = rsde.sde(params, x, t)
        x_mean = x + drift * dt
        noise = jax.random.normal(key, x.shape, x.dtype)
        return x_mean + batch_broadcast(diffusion, x) * jnp.sqrt(-dt) * noise, x_mean

    return Step(update, 1)


@register_predictor("reverse_diffusion")
def reverse_diffusion(sde, score_fn, probability_flow: bool = False) -> Step:
    """Reverse of the SDE's own discretisation: ``x_mean = x - rev_f``, ``x = x_mean + rev_G z``."""
    rsde = sde.reverse(score_fn, probability_flow)

    def update(params, key, x, t):
        f, G = rsde.discretize(params, x, t)
        x_mean = x - f
        noise = jax.random.normal(key, x.shape, x.dtype)
        return x_mean + batch_broadcast(G, x) * noise, x_mean

    return Step(update, 1)


@register_predictor("ancestral")
def ancestral(sde, score_fn, probability_flow: bool = False) -> Step:
    """Ancestral sampling of DDPM (VP) and SMLD (VE) with the SDE's discrete schedule."""
    if probability_flow:
        raise ValueError("the ancestral predictor has no probability-flow version")
    if isinstance(sde, sde_lib.VESDE):
        def update(params, key, x, t):
            idx = sde_lib._discrete_index(t, sde.N, sde.T)
            sigma = sde.discrete_sigmas[idx]
            adjacent = jnp.where(idx == 0, jnp.zeros_like(sigma), sde.discrete_sigmas[idx - 1])
            score = score_fn(params, x, t)
            x_mean = x + score * batch_broadcast(sigma**2 - adjacent**2, x)
            std = jnp.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)
            noise = jax.random.normal(key, x.shape, x.dtype)
            return x_mean + batch_broadcast(std, x) * noise, x_mean
    elif type(sde) is sde_lib.VPSDE:
        def update(params, key, x, t):
            idx = sde_lib._discrete_index(t, sde.N, sde.T)
            beta = batch_broadcast(sde.discrete_betas[idx], x)
            score = score_fn(params, x, t)
            x_mean = (x + beta * score) / jnp.sqrt(1.0 - beta)
            noise = jax.random.normal(key, x.shape, x.dtype)
            return x_mean + jnp.sqrt(beta) * noise, x_mean
    else:
        raise ValueError(
            f"the ancestral predictor is defined for VPSDE and VESDE only, not {type(sde).__name__}")
    return Step(update, 1)


# ---- correctors ----------------------------------------------------------------------------
def _langevin_alpha(sde, t):
    """The ``alpha_i`` of the discrete VP schedule (1 for other SDEs), as in the reference code."""
    if isinstance(sde, sde_lib._LinearBetaSDE):
        return sde.alphas[sde_lib._discrete_index(t, sde.N, sde.T)]
    return jnp.ones_like(t)


@register_corrector("langevin")
def langevin(sde, score_fn, snr: float = 0.16, n_steps: int = 1) -> Step:
    """Langevin MCMC with the step size ``2 alpha (snr ||z|| / ||score||)^2`` (Alg. 4-5); the
    norms are batch means of per-example norms."""

    def update(params, key, x, t):
        alpha = _langevin_alpha(sde, t)

        def body(i, carry):
            x, _ = carry
            grad = score_fn(params, x, t)
            noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
            ratio = snr * _per_example_norm_mean(noise) / _per_example_norm_mean(grad)
            step = batch_broadcast(ratio**2 * 2.0 * alpha, x).astype(x.dtype)
            x_mean = x + step * grad
            return x_mean + jnp.sqrt(2.0 * step) * noise, x_mean

        return jax.lax.fori_loop(0, n_steps, body, (x, x))

    return Step(update, n_steps)


@register_corrector("ald")
def ald(sde, score_fn, snr: float = 0.16, n_steps: int = 1) -> Step:
    """Annealed Langevin dynamics (Song & Ermon 2019): step ``2 alpha (snr * std(t))^2``."""

    def update(params, key, x, t):
        alpha = _langevin_alpha(sde, t)
        _, std = sde.marginal_prob(x, t)

        def body(i, carry):
            x, _ = carry
            grad = score_fn(params, x, t)
            noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
            step = batch_broadcast((snr * std) ** 2 * 2.0 * alpha, x).astype(x.dtype)
            x_mean = x + step * grad
            return x_mean + jnp.sqrt(2.0 * step) * noise, x_mean

        return jax.lax.fori_loop(0, n_steps, body, (x, x))

    return Step(update, n_steps)
