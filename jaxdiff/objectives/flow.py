"""Flow matching / rectified flow (Lipman et al. 2023 with ``sigma_min = 0``; Liu et al. 2023) as
an SDE-family object, so that every existing solver and the likelihood code run on it.

The linear interpolant ``x_t = (1 - t) x_0 + t eps`` (``eps ~ N(0, I)``) is the Gaussian path
``alpha(t) = 1 - t``, ``sigma(t) = t``; its conditional velocity is ``eps - x_0`` and the
marginal velocity ``v(x, t) = E[eps - x_0 | x_t = x]``. The linear SDE with

* drift ``f(t) x``, ``f(t) = d log alpha / dt = -1 / (1 - t)``,
* diffusion ``g(t)^2 = d sigma^2 / dt - 2 f(t) sigma(t)^2 = 2 t / (1 - t)``

has exactly these marginals, and its probability-flow ODE ``dx/dt = f x - g^2 score / 2`` *is*
the flow ODE ``dx/dt = v(x, t)`` (see :func:`velocity_to_score`). ``f`` is singular at ``t = 1``,
so the SDE ends at ``T = 1 - 1e-3`` (``t_end``, static), with prior ``N(0, T^2 I)``: the data
keep a weight ``alpha(T) = 1e-3`` at ``T``, negligible against ``sigma(T) ~ 1`` (the prior
mismatch for unit-scale data is ``O(1e-6)`` nats per dimension).

Conversions for any Gaussian path ``x = alpha x_0 + sigma eps`` (velocity
``u = alpha' x_0 + sigma' eps``): :func:`velocity_to_x0_eps`, :func:`velocity_to_score`,
:func:`score_to_velocity`, :func:`x0_to_velocity`, :func:`eps_to_velocity`.
:func:`velocity_score_fn` wraps a velocity ``(params, x, t) -> v`` into the library's
``score_fn(params, x, t)``; :func:`flow_matching_loss` is the training objective;
:func:`model_velocity_fn` wraps a network; :func:`reflow_pairs` draws the (noise, data) couplings
of the rectified-flow "reflow" step from the ODE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxdiff import losses as losses_lib
from jaxdiff.scores import get_model_fn
from jaxdiff.sde import SDE, batch_broadcast

Array = jax.Array
VelocityFn = Callable[..., Array]

__all__ = ["GaussianPathSDE", "RectifiedFlowSDE", "velocity_to_x0_eps", "velocity_to_score",
           "score_to_velocity", "x0_to_velocity", "eps_to_velocity", "velocity_score_fn",
           "score_velocity_fn", "model_velocity_fn", "flow_matching_loss", "sample_times",
           "TIME_SAMPLINGS", "reflow_pairs", "DEFAULT_T_END"]

DEFAULT_T_END = 1.0 - 1e-3
TIME_SAMPLINGS = ("uniform", "logit_normal")


class GaussianPathSDE(SDE):
    """A linear SDE given by its Gaussian path ``x_t = alpha(t) x_0 + sigma(t) eps``: subclasses
    give :meth:`alpha`, :meth:`sigma` and their time derivatives; the drift
    ``f = alpha' / alpha`` and ``g^2 = 2 sigma (sigma' - f sigma)`` follow."""

    def alpha(self, t: Array) -> Array:
        raise NotImplementedError

    def sigma(self, t: Array) -> Array:
        raise NotImplementedError

    def dalpha(self, t: Array) -> Array:
        raise NotImplementedError

    def dsigma(self, t: Array) -> Array:
        raise NotImplementedError

    def drift_coeff(self, t: Array) -> Array:
        """``f(t) = d log alpha(t) / dt``."""
        t = jnp.asarray(t)
        return self.dalpha(t) / self.alpha(t)

    def diffusion_sq(self, t: Array) -> Array:
        """``g(t)^2 = d sigma^2 / dt - 2 f(t) sigma(t)^2``."""
        t = jnp.asarray(t)
        s = self.sigma(t)
        return 2.0 * s * (self.dsigma(t) - self.drift_coeff(t) * s)

    def sde(self, x, t):
        t = jnp.asarray(t)
        return batch_broadcast(self.drift_coeff(t), x) * x, jnp.sqrt(self.diffusion_sq(t))

    def marginal_prob(self, x, t):
        t = jnp.asarray(t)
        return batch_broadcast(self.alpha(t), x) * x, self.sigma(t)


class RectifiedFlowSDE(GaussianPathSDE):
    """The linear interpolant ``x_t = (1 - t) x_0 + t eps`` on ``[0, t_end]`` (``t_end < 1``,
    static; default ``1 - 1e-3``). ``f = -1 / (1 - t)``, ``g^2 = 2 t / (1 - t)``; prior
    ``N(0, t_end^2 I)``. ``N`` (static): steps of the Euler-Maruyama / PC discretisations."""

    t_end: float = struct.field(pytree_node=False, default=DEFAULT_T_END)
    N: int = struct.field(pytree_node=False, default=1000)

    def __post_init__(self):
        if not 0.0 < float(self.t_end) < 1.0:
            raise ValueError(f"t_end must lie in (0, 1) (f = -1/(1-t) is singular at t = 1), "
                             f"got {self.t_end}")

    @property
    def T(self) -> float:
        return float(self.t_end)

    def alpha(self, t):
        return 1.0 - jnp.asarray(t)

    def sigma(self, t):
        return jnp.asarray(t)

    def dalpha(self, t):
        return -jnp.ones_like(jnp.asarray(t))

    def dsigma(self, t):
        return jnp.ones_like(jnp.asarray(t))

    def drift_coeff(self, t):
        return -1.0 / (1.0 - jnp.asarray(t))

    def diffusion_sq(self, t):
        t = jnp.asarray(t)
        return 2.0 * t / (1.0 - t)

    def discretize(self, x, t):
        """Euler-Maruyama step of length ``T / N`` (the base class uses ``1 / N``)."""
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * jnp.sqrt(dt)


# ---- conversions (x = alpha x0 + sigma eps, u = alpha' x0 + sigma' eps) ----------------------
def _coeffs(sde: GaussianPathSDE, x: Array, t: Array):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
    b = lambda v: batch_broadcast(v, x).astype(x.dtype)  # noqa: E731
    return (b(sde.alpha(t)), b(sde.sigma(t)), b(sde.dalpha(t)), b(sde.dsigma(t)))


def velocity_to_x0_eps(sde: GaussianPathSDE, v: Array, x: Array, t: Array) -> tuple[Array, Array]:
    """``(x0_hat, eps_hat)`` from a velocity: solves ``x = a x0 + s eps``, ``v = a' x0 + s' eps``
    (determinant ``a s' - s a'``, 1 for the linear path: ``x0 = x - t v``,
    ``eps = x + (1 - t) v``)."""
    a, s, da, ds = _coeffs(sde, x, t)
    det = a * ds - s * da
    return (ds * x - s * v) / det, (a * v - da * x) / det


def velocity_to_score(sde: GaussianPathSDE, v: Array, x: Array, t: Array) -> Array:
    """``score = -eps_hat / sigma`` (linear path: ``-(x + (1 - t) v) / t``)."""
    _, s, _, _ = _coeffs(sde, x, t)
    return -velocity_to_x0_eps(sde, v, x, t)[1] / s


def x0_to_velocity(sde: GaussianPathSDE, x0: Array, x: Array, t: Array) -> Array:
    """Velocity from a denoiser (x0-prediction): ``eps = (x - a x0) / s``, ``v = a' x0 + s' eps``."""
    a, s, da, ds = _coeffs(sde, x, t)
    return da * x0 + ds * (x - a * x0) / s


def eps_to_velocity(sde: GaussianPathSDE, eps: Array, x: Array, t: Array) -> Array:
    """Velocity from an eps-prediction: ``x0 = (x - s eps) / a``, ``v = a' x0 + s' eps``."""
    a, s, da, ds = _coeffs(sde, x, t)
    return da * (x - s * eps) / a + ds * eps


def score_to_velocity(sde: GaussianPathSDE, score: Array, x: Array, t: Array) -> Array:
    """Velocity from a score: ``eps = -s score`` then :func:`eps_to_velocity` (equal to the
    probability-flow drift ``f x - g^2 score / 2``)."""
    _, s, _, _ = _coeffs(sde, x, t)
    return eps_to_velocity(sde, -s * score, x, t)


def velocity_score_fn(sde: GaussianPathSDE, velocity_fn: VelocityFn) -> Callable:
    """``score_fn(params, x, t, *args, **kw)`` from ``velocity_fn(params, x, t, *args, **kw)``
    (conditions / ``rng=`` pass through), for every sampler and the likelihood code."""

    def score_fn(params, x, t, *args, **kwargs):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        return velocity_to_score(sde, velocity_fn(params, x, t, *args, **kwargs), x, t)

    return score_fn


def score_velocity_fn(sde: GaussianPathSDE, score_fn: Callable) -> VelocityFn:
    """``velocity_fn(params, x, t, ...)`` of a score function (e.g. an exact mixture score)."""

    def velocity_fn(params, x, t, *args, **kwargs):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        return score_to_velocity(sde, score_fn(params, x, t, *args, **kwargs), x, t)

    return velocity_fn


def model_velocity_fn(model, *, train: bool = False, label_scale: float = 999.0) -> VelocityFn:
    """A network predicting the velocity, called with time labels ``label_scale * t`` (the
    ``t * 999`` labels of the VP networks): ``velocity_fn(params, x, t, *, rng=None, y=None)``.
    ``model``: a Linen module (``apply({'params': p}, x, labels, train=, y=)``) or a callable
    ``model(params, x, labels, *, rng=None, y=None)``."""
    model_fn = model if not hasattr(model, "apply") else get_model_fn(model, train=train)

    def velocity_fn(params: Any, x: Array, t: Array, *, rng: Array | None = None,
                    y: Array | None = None) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        out = model_fn(params, x, label_scale * t, rng=rng, y=y)
        if out.shape != x.shape:
            raise ValueError(f"network output shape {out.shape} differs from x shape {x.shape}")
        return out

    return velocity_fn


# ---- the loss --------------------------------------------------------------------------------
def sample_times(key: Array, n: int, dtype, *, t_min: float, t_max: float,
                 time_sampling: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0) -> Array:
    """``n`` training times in ``[t_min, t_max]``: uniform, or logit-normal
    (``t_min + (t_max - t_min) sigmoid(m + s n)``, Esser et al. 2024)."""
    if time_sampling == "uniform":
        return jax.random.uniform(key, (n,), dtype, t_min, t_max)
    if time_sampling == "logit_normal":
        u = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(key, (n,), dtype))
        return t_min + (t_max - t_min) * u
    raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")


def flow_matching_loss(velocity_fn: VelocityFn, *, sde: RectifiedFlowSDE | None = None,
                       t_min: float = 0.0, t_max: float | None = None,
                       time_sampling: str = "uniform", logit_mean: float = 0.0,
                       logit_std: float = 1.0, reduce_mean: bool = True,
                       rng_kwarg: str | None = None) -> Callable:
    """Conditional flow matching for the linear path: ``t`` from :func:`sample_times`,
    ``x_t = (1 - t) x_0 + t eps``, per-example loss ``reduce(|v(x_t, t) - (eps - x_0)|^2)``
    (mean over data dimensions, or sum with ``reduce_mean=False``).

    Args:
      velocity_fn: ``velocity_fn(params, x, t)`` (``rng=key`` too when ``rng_kwarg='rng'``).
      sde: the :class:`RectifiedFlowSDE` whose ``T`` is the default ``t_max``.
      t_min, t_max: the time range (``0 <= t_min < t_max <= 1``).
      time_sampling: ``'uniform'`` or ``'logit_normal'`` (``logit_mean``, ``logit_std``).

    Returns:
      ``loss_fn(params, key, batch) -> (loss, {'losses', 't'})``.
    """
    if t_max is None:
        t_max = sde.T if sde is not None else DEFAULT_T_END
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")
    if not logit_std > 0:
        raise ValueError(f"logit_std must be > 0, got {logit_std}")

    def loss_fn(params, key, batch):
        losses_lib.check_batch(batch)
        k_t, k_z, k_net = jax.random.split(key, 3)
        t = sample_times(k_t, batch.shape[0], batch.dtype, t_min=t_min, t_max=t_max,
                         time_sampling=time_sampling, logit_mean=logit_mean,
                         logit_std=logit_std)
        eps = jax.random.normal(k_z, batch.shape, batch.dtype)
        tb = batch_broadcast(t, batch)
        x_t = (1.0 - tb) * batch + tb * eps
        v = losses_lib.call_net(velocity_fn, rng_kwarg, k_net, params, x_t, t)
        losses = losses_lib.reduce_per_example(jnp.square(v - (eps - batch)), reduce_mean)
        return jnp.mean(losses), {"losses": losses, "t": t}

    return loss_fn


# ---- rectified-flow reflow ------------------------------------------------------------------
def reflow_pairs(sde: RectifiedFlowSDE, velocity_fn: VelocityFn, params, key: Array,
                 shape: tuple, *, num_steps: int = 100, t_min: float = 0.0) -> tuple[Array, Array]:
    """Couplings ``(z, x)`` for the reflow step of Liu et al. 2023: ``z ~ N(0, I)`` at
    ``t = 1`` and ``x`` its image under the flow ODE ``dx/dt = v`` integrated to ``t_min`` with
    ``num_steps`` Heun steps (the velocity is finite at ``t = 1``). Training
    :func:`flow_matching_loss`-style on ``x_t = (1 - t) x + t z`` straightens the flow."""
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    z = jax.random.normal(key, shape)
    ts = jnp.linspace(1.0, t_min, int(num_steps) + 1).astype(z.dtype)

    def v(x, t):
        return velocity_fn(params, x, jnp.full(x.shape[:1], t, x.dtype))

    def step(x, i):
        t0, t1 = ts[i], ts[i + 1]
        d0 = v(x, t0)
        x1 = x + (t1 - t0) * d0
        return x + (t1 - t0) * 0.5 * (d0 + v(x1, t1)), None

    x, _ = jax.lax.scan(step, z, jnp.arange(int(num_steps)))
    return z, x
