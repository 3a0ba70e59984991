"""Stochastic differential equations of score-based generative modelling.

Every SDE is a frozen dataclass pytree (its float hyper-parameters are leaves, the number of
discretisation steps ``N`` is static), so it can be passed through ``jax.jit`` and ``jax.vmap``.
All methods are pure. Formulas and defaults follow Song et al. 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations" (the ``sde_lib`` of the official code).

Shape convention: ``x`` has a leading batch axis, ``x.shape == (B, *event_shape)``; ``t`` is a
scalar or a vector of shape ``(B,)``. Per-example reductions (``prior_logp``) reduce every axis but
the first.

To define a new SDE, subclass :class:`SDE` and give ``sde`` (drift and diffusion) and
``marginal_prob`` (mean and std of ``p_{0t}(x_t | x_0)``); the prior, its log-density, the
Euler-Maruyama discretisation and the reverse SDE / probability-flow ODE come from the base class.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array
ScoreFn = Callable[[Any, Array, Array], Array]

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "ReverseSDE", "batch_broadcast"]


def batch_broadcast(t: Array, x: Array) -> Array:
    """Reshape ``t`` (scalar or ``(B,)``) so that it broadcasts against ``x`` of shape ``(B, ...)``."""
    t = jnp.asarray(t)
    if t.ndim == 0 or t.shape == x.shape:
        return t
    if t.ndim > x.ndim or x.shape[: t.ndim] != t.shape:
        raise ValueError(
            f"time t of shape {t.shape} does not match the leading axes of x of shape {x.shape}"
        )
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def _sum_per_example(z: Array) -> Array:
    return jnp.sum(z, axis=tuple(range(1, z.ndim)))


def _discrete_index(t: Array, N: int, T: float) -> Array:
    """Index of the discrete step for continuous time ``t`` as in the reference code."""
    return (jnp.asarray(t) * (N - 1) / T).astype(jnp.int32)


class SDE(struct.PyTreeNode, abc.ABC):
    """Base class: an Itô SDE ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, T]``.

    Subclasses are dataclass pytrees (``flax.struct.PyTreeNode``). They must implement
    :meth:`sde` and :meth:`marginal_prob` and set the static field ``N``. The default prior is the
    Gaussian ``N(0, std(T)^2 I)`` read off :meth:`marginal_prob`; override :meth:`prior_sampling`
    and :meth:`prior_logp` for another one.

    Declare the number of discretisation steps last, as a static field, so that positional
    arguments follow the paper's order::

        class MySDE(SDE):
            rate: float = 1.0
            N: int = struct.field(pytree_node=False, default=1000)
    """

    # ``N`` (static, with a default) is declared by every concrete subclass, last.
    @property
    def T(self) -> float:
        """End time of the forward process (1, as in the paper)."""
        return 1.0

    @abc.abstractmethod
    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift ``f(x, t)`` (shape of ``x``) and diffusion ``g(t)`` (broadcastable to ``x``)."""

    @abc.abstractmethod
    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Mean and std of the perturbation kernel ``p_{0t}(x(t) | x(0) = x)``."""

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """``(alpha(t), sigma(t))`` with ``x_t = alpha(t) x_0 + sigma(t) z`` (linear SDEs)."""
        t = jnp.asarray(t)
        mean, std = self.marginal_prob(jnp.ones(t.shape + (1,)), t)
        return mean[..., 0], jnp.broadcast_to(std, t.shape)

    def prior_std(self) -> Array:
        _, std = self.marginal_coeffs(jnp.asarray(self.T))
        return std

    def prior_sampling(self, key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        """Draw from the prior ``p_T``."""
        return jax.random.normal(key, shape, dtype) * jnp.asarray(self.prior_std(), dtype)

    def prior_logp(self, z: Array) -> Array:
        """Log-density of the prior, one value per example (sum over all non-batch axes)."""
        std = self.prior_std()
        d = np.prod(z.shape[1:])
        return -0.5 * d * jnp.log(2 * jnp.pi * std**2) - _sum_per_example(z**2) / (2 * std**2)

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """One step of the forward process ``x_{i+1} = x_i + f_i + G_i z_i`` (Euler-Maruyama)."""
        dt = 1.0 / self.N  # type: ignore[attr-defined]  # every concrete SDE declares N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * jnp.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or the probability-flow ODE) driven by ``score_fn(params, x, t)``."""
        return ReverseSDE(self, score_fn, probability_flow)

    def with_steps(self, N: int) -> SDE:
        """The same SDE with ``N`` discretisation steps."""
        if int(N) < 1:
            raise ValueError(f"the number of steps N must be >= 1, got {N}")
        return self.replace(N=int(N))


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    """Reverse-time SDE ``dx = [f - g^2 score] dt + g dw_bar`` or the probability-flow ODE
    ``dx = [f - g^2 score / 2] dt``. Methods take the score network's ``params`` first."""

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    @property
    def N(self) -> int:
        return self.forward.N  # type: ignore[attr-defined]

    @property
    def T(self) -> float:
        return self.forward.T

    def _combine(self, params, x, t, f, g):
        score = self.score_fn(params, x, t)
        g2 = batch_broadcast(jnp.asarray(g) ** 2, x)
        scale = 0.5 if self.probability_flow else 1.0
        drift = f - g2 * score * scale
        diffusion = jnp.zeros_like(g) if self.probability_flow else g
        return drift, diffusion

    def sde(self, params, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift and diffusion of the reverse SDE (diffusion 0 for the probability flow)."""
        f, g = self.forward.sde(x, t)
        return self._combine(params, x, t, f, g)

    def discretize(self, params, x: Array, t: Array) -> tuple[Array, Array]:
        """Discretised reverse step: ``rev_f = f - G^2 score (x 1/2)``, ``rev_G = G`` (or 0)."""
        f, G = self.forward.discretize(x, t)
        return self._combine(params, x, t, f, G)


class _LinearBetaSDE(SDE):
    """Shared schedule of the VP and sub-VP SDEs: ``beta(t) = beta_min + t (beta_max - beta_min)``
    and its DDPM discretisation ``beta_i = beta_min / N + i (beta_max - beta_min) / (N (N - 1))``."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = struct.field(pytree_node=False, default=1000)

    @property
    def discrete_betas(self) -> Array:
        return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @property
    def alphas(self) -> Array:
        return 1.0 - self.discrete_betas

    @property
    def alphas_cumprod(self) -> Array:
        return jnp.cumprod(self.alphas)

    def beta(self, t: Array) -> Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: Array) -> Array:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def prior_std(self):
        return jnp.asarray(1.0)

    def prior_logp(self, z):
        d = np.prod(z.shape[1:])
        return -0.5 * d * np.log(2 * np.pi) - _sum_per_example(z**2) / 2.0


class VPSDE(_LinearBetaSDE):
    """Variance-preserving SDE (the continuous DDPM): ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw``,
    ``beta(t) = beta_min + t (beta_max - beta_min)``; prior ``N(0, I)``."""

    def sde(self, x, t):
        beta_t = self.beta(jnp.asarray(t))
        drift = -0.5 * batch_broadcast(beta_t, x) * x
        return drift, jnp.sqrt(beta_t)

    def marginal_prob(self, x, t):
        lmc = self.log_mean_coeff(jnp.asarray(t))
        mean = jnp.exp(batch_broadcast(lmc, x)) * x
        std = jnp.sqrt(-jnp.expm1(2.0 * lmc))  # 1 - exp(2 lmc), exact near t = 0
        return mean, std

    def discretize(self, x, t):
        """DDPM discretisation: ``x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z``."""
        idx = _discrete_index(t, self.N, self.T)
        beta = self.discrete_betas[idx]
        alpha = self.alphas[idx]
        f = jnp.sqrt(batch_broadcast(alpha, x)) * x - x
        return f, jnp.sqrt(beta)


class SubVPSDE(_LinearBetaSDE):
    """Sub-VP SDE: ``dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw``;
    prior ``N(0, I)``. Its discrete betas (those of the VP SDE) serve the Langevin corrector."""

    def sde(self, x, t):
        t = jnp.asarray(t)
        beta_t = self.beta(t)
        discount = -jnp.expm1(-2.0 * self.beta_min * t - (self.beta_max - self.beta_min) * t**2)
        drift = -0.5 * batch_broadcast(beta_t, x) * x
        return drift, jnp.sqrt(beta_t * discount)

    def marginal_prob(self, x, t):
        lmc = self.log_mean_coeff(jnp.asarray(t))
        mean = jnp.exp(batch_broadcast(lmc, x)) * x
        std = -jnp.expm1(2.0 * lmc)  # 1 - exp(2 lmc), exact near t = 0
        return mean, std


class VESDE(SDE):
    """Variance-exploding SDE (continuous SMLD):
    ``dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw``,
    ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = struct.field(pytree_node=False, default=1000)

    @property
    def discrete_sigmas(self) -> Array:
        return jnp.exp(jnp.linspace(jnp.log(self.sigma_min), jnp.log(self.sigma_max), self.N))

    def sigma(self, t: Array) -> Array:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** jnp.asarray(t)

    def sde(self, x, t):
        sigma = self.sigma(t)
        diffusion = sigma * jnp.sqrt(2.0 * (jnp.log(self.sigma_max) - jnp.log(self.sigma_min)))
        return jnp.zeros_like(x), diffusion

    def marginal_prob(self, x, t):
        return x, self.sigma(t)

    def prior_std(self):
        return jnp.asarray(self.sigma_max)

    def discretize(self, x, t):
        """SMLD discretisation: ``x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z``."""
        idx = _discrete_index(t, self.N, self.T)
        sigma = self.discrete_sigmas[idx]
        adjacent = jnp.where(idx == 0, jnp.zeros_like(sigma), self.discrete_sigmas[idx - 1])
        return jnp.zeros_like(x), jnp.sqrt(sigma**2 - adjacent**2)
