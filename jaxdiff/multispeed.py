"""Non-uniform (multi-speed) diffusion: one SDE whose coordinates diffuse at different speeds.

Batzolis, Stanczuk, Schönlieb, Etmann, "Non-Uniform Diffusion Models" (2022) and "Conditional Image
Generation with Score-Based Diffusion Models" (2021, the CMDE estimator).

:class:`MultiSpeedSDE` warps the time of a uniform base SDE (VP, sub-VP, VE, or any :class:`SDE`
whose methods accept a ``t`` of the shape of ``x``) separately for every coordinate::

    tau_i(t) = min(speed_i * t, T_base)

so coordinate ``i`` follows ``dx_i = speed_i f(x_i, tau_i) dt + sqrt(speed_i) g(tau_i) dw_i`` while
``tau_i < T_base`` and is frozen afterwards (zero drift, zero diffusion). Its marginals are the base
SDE's at the warped time, per coordinate, so they stay exact::

    x_t = alpha(tau(t)) * x_0 + sigma(tau(t)) * z        (element-wise)

``speed > 1`` makes a block finish its diffusion early, at ``t = T / speed`` (the detail
coefficients of multi-scale diffusion); ``speed < 1`` makes it diffuse more slowly and stop short of
the prior (the condition ``y`` of CMDE). With all speeds 1 it is exactly the base SDE.

``speeds`` is a pytree leaf (an array broadcastable to the event shape ``x.shape[1:]``: a scalar,
one speed per coordinate, or per channel / per block). Build per-block maps with
:func:`block_speeds`. The SDE is a frozen dataclass pytree, so the core samplers
(:func:`jaxdiff.samplers.pc_sampler`, :func:`~jaxdiff.samplers.ode_sampler`), the losses and
:func:`jaxdiff.likelihood.log_likelihood` work on it unchanged, and
``GaussianMixture.score_fn(sde)`` gives its exact perturbed scores.

The prior is ``N(0, diag(sigma(tau(T))^2))`` (the base prior for coordinates with
``speed >= 1``); it is the true ``p_T`` only where
``alpha(tau_i(T)) x_0`` is negligible, i.e. for coordinates with ``speed >= 1`` under a VP or
sub-VP base, or ``sigma_max`` much larger than the data under VE.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxdiff.sde import SDE, VESDE, batch_broadcast

Array = jax.Array

__all__ = ["MultiSpeedSDE", "block_speeds", "joint_speeds", "sigma_y_max", "speed_for_sigma_max"]


def _sum_per_example(z: Array) -> Array:
    return jnp.sum(z, axis=tuple(range(1, z.ndim)))


class MultiSpeedSDE(SDE):
    """A base SDE run at a different speed on each coordinate (see the module docstring).

    Fields:
      base: the uniform SDE (a pytree, e.g. ``VPSDE()``); its methods must accept a time array of
        the shape of ``x`` (all built-in SDEs do).
      speeds: positive speeds, an array broadcastable to the event shape ``x.shape[1:]``.
      N: number of discretisation steps (static; the Euler-Maruyama discretisation uses it).

    Build with :meth:`create`, which checks the speeds and takes ``N`` from the base.
    """

    # (mypy places the redeclared N first, where SDE declares it for the type checker; the
    # runtime dataclass has no N in the base, so base and speeds stay positional)
    base: SDE
    speeds: Array
    N: int = struct.field(pytree_node=False, default=1000)

    @classmethod
    def create(cls, base: SDE, speeds, N: int | None = None) -> MultiSpeedSDE:
        """Multi-speed version of ``base`` with ``speeds`` (scalar or array, all > 0).

        Args:
          base: uniform SDE.
          speeds: array-like broadcastable to the event shape; every entry must be positive and
            finite (checked when ``speeds`` is concrete).
          N: discretisation steps; defaults to ``base.N``.

        Returns:
          the :class:`MultiSpeedSDE`.
        """
        if not isinstance(base, SDE):
            raise TypeError(f"base must be a jaxdiff.sde.SDE, got {type(base).__name__}")
        if isinstance(base, MultiSpeedSDE):
            raise TypeError("base is already a MultiSpeedSDE; multiply the speeds instead")
        speeds = jnp.asarray(speeds, dtype=jnp.result_type(float))
        try:
            concrete = np.asarray(speeds)
        except jax.errors.TracerArrayConversionError:
            concrete = None
        if concrete is not None and (not np.all(np.isfinite(concrete)) or np.any(concrete <= 0)):
            raise ValueError(f"speeds must be positive and finite, got {concrete}")
        n = base.N if N is None else int(N)  # type: ignore[attr-defined]  # concrete SDEs declare N
        if n < 1:
            raise ValueError(f"the number of steps N must be >= 1, got {N}")
        return cls(base=base, speeds=speeds, N=n)

    @property
    def T(self) -> float:
        return self.base.T

    # ---- time warp ------------------------------------------------------------------------
    def _check_event(self, x: Array) -> None:
        try:
            np.broadcast_shapes(self.speeds.shape, x.shape[1:])
        except ValueError:
            raise ValueError(
                f"speeds of shape {self.speeds.shape} do not broadcast to the event shape "
                f"{x.shape[1:]} of x {x.shape}") from None
        if np.broadcast_shapes(self.speeds.shape, x.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(
                f"speeds of shape {self.speeds.shape} would enlarge the event shape {x.shape[1:]}")

    def warp(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Per-coordinate base time ``tau = min(speed * t, T)`` and the rate ``d tau / dt``.

        Args:
          x: state ``(B, *event)`` (only its shape is used).
          t: scalar or ``(B,)``.

        Returns:
          ``(tau, rate)``, both of the shape of ``x``; ``rate`` is ``speed`` while ``speed * t <= T`` and
          0 once the coordinate is frozen.
        """
        self._check_event(x)
        tb = batch_broadcast(jnp.asarray(t, x.dtype), x)
        s = self.speeds.astype(x.dtype)
        raw = jnp.broadcast_to(s * tb, x.shape)
        tau = jnp.minimum(raw, self.base.T)
        rate = jnp.where(raw <= self.base.T, jnp.broadcast_to(s, x.shape), 0.0)
        return tau, rate

    def freeze_times(self) -> Array:
        """Time ``T / speed`` at which each coordinate stops diffusing (``>= T``: never)."""
        return self.base.T / self.speeds

    # ---- SDE interface --------------------------------------------------------------------
    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift ``rate * f(x, tau)`` and diffusion ``sqrt(rate) * g(tau)``, both of ``x``'s shape."""
        tau, rate = self.warp(x, t)
        drift, g = self.base.sde(x, tau)
        g = jnp.broadcast_to(g, x.shape)
        return rate * drift, jnp.sqrt(rate) * g

    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Mean ``alpha(tau) x`` and std ``sigma(tau)`` (of ``x``'s shape) of ``p_{0t}(x_t | x)``."""
        tau, _ = self.warp(x, t)
        mean, std = self.base.marginal_prob(x, tau)
        return mean, jnp.broadcast_to(std, x.shape)

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """``(alpha, sigma)`` of shape ``t.shape + speeds.shape``: ``x_t = alpha x_0 + sigma z``."""
        t = jnp.asarray(t)
        ones = jnp.ones(t.shape + self.speeds.shape, self.speeds.dtype)
        if t.ndim == 0:
            mean, std = self.marginal_prob(ones[None], t)
            return mean[0], std[0]
        flat = ones.reshape((-1,) + self.speeds.shape)
        mean, std = self.marginal_prob(flat, t.reshape(-1))
        return mean.reshape(ones.shape), std.reshape(ones.shape)

    def prior_std(self) -> Array:
        """Per-coordinate std of the prior, of the shape of ``speeds``: the base SDE's prior std
        for coordinates that complete their diffusion (``speed >= 1``), ``sigma(speed * T)`` for
        slower ones."""
        sigma = self.marginal_coeffs(jnp.asarray(self.T))[1]
        return jnp.where(self.speeds >= 1.0, jnp.asarray(self.base.prior_std(), sigma.dtype), sigma)

    def prior_sampling(self, key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        """Draw from ``N(0, diag(sigma(tau(T))^2))`` with ``shape = (B, *event)``."""
        std = jnp.broadcast_to(self.prior_std(), shape[1:]).astype(dtype)
        return jax.random.normal(key, shape, dtype) * std

    def prior_logp(self, z: Array) -> Array:
        """Log-density of the prior, one value per example."""
        std = jnp.broadcast_to(self.prior_std(), z.shape[1:]).astype(z.dtype)
        logp = -0.5 * jnp.log(2 * jnp.pi * std**2) - z**2 / (2 * std**2)
        return _sum_per_example(logp)

    def with_speeds(self, speeds) -> MultiSpeedSDE:
        """The same SDE with other speeds."""
        return MultiSpeedSDE.create(self.base, speeds, self.N)


def block_speeds(event_shape: Sequence[int], blocks: Sequence[tuple], default: float = 1.0):
    """A per-coordinate speed map built from blocks.

    Args:
      event_shape: shape of one example, e.g. ``(D,)`` or ``(H, W, C)``.
      blocks: pairs ``(index, speed)``; ``index`` is anything that indexes an array of
        ``event_shape`` (a slice, a tuple of slices, a boolean mask). Later blocks win.
      default: speed of coordinates that no block covers.

    Returns:
      a float array of shape ``event_shape``.
    """
    out = np.full(tuple(event_shape), float(default))
    for index, speed in blocks:
        if not (np.isfinite(speed) and speed > 0):
            raise ValueError(f"block speed must be positive and finite, got {speed} for {index}")
        out[index] = speed
    return jnp.asarray(out, jnp.result_type(float))


def joint_speeds(x_dim: int, y_dim: int, y_speed: float, x_speed: float = 1.0) -> Array:
    """Speeds of a flat joint state ``[x, y]`` of dimension ``x_dim + y_dim`` (the CMDE set-up)."""
    if x_dim < 1 or y_dim < 1:
        raise ValueError(f"x_dim and y_dim must be >= 1, got {x_dim} and {y_dim}")
    return block_speeds((x_dim + y_dim,), [(slice(0, x_dim), x_speed), (slice(x_dim, None), y_speed)])


# ---- speed <-> sigma_max_y (CMDE's y SDE) ----------------------------------------------------
def sigma_y_max(base: SDE, speed) -> Array:
    """``sigma(speed * T)`` of ``base``: the largest std a coordinate of speed ``speed`` reaches
    (CMDE's ``sigma_max_y``). Under a VE base with ``sigma(t) = sigma_min (sigma_max /
    sigma_min)^t`` a speed-``s`` coordinate is exactly the VE SDE of ``sigma_min`` and
    ``sigma_max_y = sigma_min^(1-s) sigma_max^s`` (same marginals, same ``g^2 = s g_base(s t)^2``)."""
    s = jnp.asarray(speed, jnp.result_type(float))
    one = jnp.ones((1,) + s.shape, s.dtype)
    return base.marginal_prob(one, jnp.minimum(s * base.T, base.T)[None])[1][0]


def speed_for_sigma_max(base: SDE, sigma_max_y, iters: int = 60) -> Array:
    """The speed ``s`` in ``(0, 1]`` with ``sigma_y_max(base, s) = sigma_max_y`` (inverse of
    :func:`sigma_y_max`; works on traced values). VE: the closed form ``s = log(sigma_max_y /
    sigma_min) / log(sigma_max / sigma_min)``; other bases: bisection (``sigma(t)`` increases).
    ``sigma_max_y`` outside ``(sigma(0), sigma(T)]`` is clipped to that range (speed 1 at the top;
    a concrete value outside raises ``ValueError``)."""
    sig = jnp.asarray(sigma_max_y, jnp.result_type(float))
    try:
        lo_c, hi_c = float(sigma_y_max(base, 1e-12)), float(sigma_y_max(base, 1.0))
        v = float(sig)
    except (jax.errors.ConcretizationTypeError, TypeError):
        v = None
    if v is not None and not (lo_c < v <= hi_c * (1 + 1e-6)):
        raise ValueError(f"sigma_max_y={v} must lie in (sigma(0), sigma(T)] = ({lo_c}, {hi_c}] of "
                         f"the x SDE")
    if isinstance(base, VESDE):
        s = jnp.log(sig / base.sigma_min) / jnp.log(base.sigma_max / base.sigma_min)
        return jnp.clip(s, 1e-12, 1.0)
    lo, hi = jnp.zeros_like(sig), jnp.ones_like(sig)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        up = sigma_y_max(base, mid) < sig
        lo, hi = jnp.where(up, mid, lo), jnp.where(up, hi, mid)
    return jnp.clip(0.5 * (lo + hi), 1e-12, 1.0)
