"""Reverse-time sampling with data consistency for linear inverse problems ``y = A x (+ noise)``.

The method of Song et al. 2022 ("Solving inverse problems in medical imaging with score-based
generative models"): after every reverse step landing at time ``s``, the state is pulled onto the
affine set ``{x: A x = y_s}`` where ``y_s = alpha(s) y + sigma(s) A z`` is a draw of the observation
pushed through the forward SDE (``x_s = alpha(s) x_0 + sigma(s) z`` implies ``A x_s = y_s``):

    x <- x + lam A^+ (y_s - A x).

With a corrector the same projection also runs after the corrector, before the predictor, at the
corrector's time ``t`` (score_sde's ``controllable_generation`` replaces the known pixels after
both updates; :func:`consistent_pc_step`; ``consistency_after_corrector=False`` turns it off).

With a :class:`~jaxdiff.inverse.linear.Mask` this is the inpainting of Song et al. 2021 (known
pixels replaced by forward-marginal samples). Initialisation is the prior draw ``x_T = std(T) z``
projected with ``y_T`` built from the *same* ``z``, i.e. the known part is exactly the forward
marginal ``alpha(T) y + sigma(T) z`` (for VE: ``y + sigma_max z``, not ``y + prior``).

The probability-flow ODE version keeps ``A x(t) = alpha(t) y + sigma(t) A z`` for one fixed ``z``
along the whole path: the state starts on that set and the vector field is the probability-flow
drift projected onto the null space of ``A`` plus the exact time derivative of the observed part.

Both samplers are built once and take the operator and the observation at call time, as
``sample(params, key, cond=Observation(op, y, lam))``, so one compilation serves every
observation (and every mask of the same shape).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.inverse.observation import check_observation
from jaxdiff.samplers.base import keep_dtype
from jaxdiff.samplers.ode import solve_ode
from jaxdiff.samplers.pc import constrain, pc_loop, pc_step
from jaxdiff.samplers.predictors import Step
from jaxdiff.sde import batch_broadcast

Array = jax.Array

__all__ = ["observation_at", "consistency_transform", "consistent_pc_step", "pc_inverse_sampler",
           "ode_inverse_sampler",
           "reverse_with_consistency", "init_from_prior"]


def observation_at(sde, op, y: Array, t: Array, z: Array | None) -> Array:
    """The observation pushed to time ``t``: ``alpha(t) y + sigma(t) A z`` (``z=None``: the mean).

    Args:
      sde: linear forward SDE (``marginal_coeffs``).
      op: the measurement operator.
      y: ``(B, *obs_shape)`` observation at time 0.
      t: ``(B,)`` times.
      z: ``(B, *event_shape)`` standard normal noise in data space, or ``None``.
    """
    alpha, sigma = sde.marginal_coeffs(t)
    out = batch_broadcast(alpha.astype(y.real.dtype), y) * y
    if z is not None:
        az = op(z)
        out = out + batch_broadcast(sigma.astype(y.real.dtype), az) * az
    return out


def consistency_transform(sde, op, y: Array, lam=1.0, *, has_predictor: bool = True):
    """The ``transform`` hook of :func:`jaxdiff.samplers.pc_loop` for data consistency.

    After a step taken at ``t`` the state is at ``s = max(t - T/N, 0)`` (``t`` if there is no
    predictor); ``x`` is projected onto ``A x = y_s`` with a fresh ``z`` and ``x_mean`` onto the
    noise-free ``A x = alpha(s) y``.

    Returns:
      ``transform(params, key, x, x_mean, t) -> (x, x_mean)``.
    """
    dt = sde.T / sde.N if has_predictor else 0.0

    def transform(params, key, x, x_mean, t):
        del params
        s = jnp.maximum(t - dt, 0.0)
        z = jax.random.normal(key, x.shape, x.dtype)
        x = op.project(x, observation_at(sde, op, y, s, z), lam)
        x_mean = op.project(x_mean, observation_at(sde, op, y, s, None), lam)
        return x, x_mean

    return transform


def consistent_pc_step(sde, score_fn, op, y: Array, lam=1.0, *, predictor="reverse_diffusion",
                       corrector="langevin", snr: float = 0.16, n_corrector_steps: int = 1,
                       after_corrector: bool = True) -> Step:
    """:func:`jaxdiff.samplers.pc_step` (corrector, then predictor, at time ``t``) with data
    consistency between the two: after the corrector the state is projected onto
    ``A x = y_t = alpha(t) y + sigma(t) A z`` (fresh ``z``, the corrector's own time ``t``), so the
    predictor sees the observed part at its forward marginal, as score_sde's
    ``controllable_generation`` (``get_inpaint_update_fn`` wraps both the corrector and the
    predictor update). The projection after the predictor is :func:`consistency_transform`.
    ``after_corrector=False`` (or no predictor / no corrector) is the plain ``pc_step``.
    Call inside ``jit`` (``op`` and ``y`` are traced values of the call).
    """
    step = pc_step(sde, score_fn, predictor=predictor, corrector=corrector, snr=snr,
                   n_corrector_steps=n_corrector_steps)
    if not after_corrector or predictor is None or corrector is None:
        return step
    corr = pc_step(sde, score_fn, predictor=None, corrector=corrector, snr=snr,
                   n_corrector_steps=n_corrector_steps)
    pred = pc_step(sde, score_fn, predictor=predictor, corrector=None)

    def update(params, key, x, t):
        kc, kz, kp = jax.random.split(key, 3)
        x, _ = corr.update(params, kc, x, t)
        z = jax.random.normal(kz, x.shape, x.dtype)
        x = op.project(x, observation_at(sde, op, y, t, z), lam)
        return pred.update(params, kp, x, t)

    return Step(update, step.nfe)


def init_from_prior(sde, op, y: Array, key: Array, shape, dtype, t=None, x_hat=None):
    """Start of a reverse run at time ``t`` (default ``T``).

    Draws ``z ~ N(0, I)`` and returns ``(x, z)`` with ``x = alpha(t) x_hat + sigma(t) z`` (``x_hat = 0``
    by default: the prior) projected so that its observed part is the forward marginal
    ``alpha(t) y + sigma(t) A z`` of the observation with the *same* ``z``. ``op=None`` skips the
    projection.
    """
    t = sde.T if t is None else t
    z = jax.random.normal(key, shape, dtype)
    tb = jnp.full((shape[0],), t, dtype)
    alpha, sigma = (c.astype(dtype) for c in sde.marginal_coeffs(tb))  # x64: keep the dtype
    x = batch_broadcast(sigma, z) * z
    if x_hat is not None:
        x = x + batch_broadcast(alpha, z) * jnp.broadcast_to(x_hat, shape).astype(dtype)
    if op is None:
        return x, z
    return op.project(x, observation_at(sde, op, y, tb, z)), z


def _check_obs(op, y, shape):
    ref = jax.eval_shape(op, jax.ShapeDtypeStruct(shape, jnp.float32))
    if y.ndim != len(ref.shape) or y.shape[1:] != ref.shape[1:] or y.shape[0] not in (1, shape[0]):
        raise ValueError(
            f"observation y of shape {y.shape} does not match A x of shape {ref.shape} "
            f"for x of shape {shape}")


def reverse_with_consistency(step, sde, op, params, key, x, y, timesteps, *, lam=1.0,
                             sharding=None, has_predictor=True):
    """Run ``step`` over ``timesteps`` with data consistency after every step (inside jit).

    Returns ``(x, x_mean)`` as :func:`jaxdiff.samplers.pc_loop`.
    """
    transform = consistency_transform(sde, op, y, lam, has_predictor=has_predictor)
    return pc_loop(step, params, key, x, timesteps, sharding=sharding, transform=transform)


def pc_inverse_sampler(sde, score_fn, shape: tuple[int, ...], *, predictor="reverse_diffusion",
                       corrector="langevin", snr: float = 0.16, n_corrector_steps: int = 1,
                       num_steps: int | None = None, noise_removal: bool = True,
                       eps: float = 1e-3, dtype=jnp.float32, sharding=None,
                       consistency_after_corrector: bool = True):
    """Predictor-corrector sampler of ``p(x | A x = y)`` with a data-consistency step.

    Args:
      sde: linear forward SDE (VP, sub-VP, VE).
      score_fn: ``score_fn(params, x, t)`` of the prior.
      shape: ``(B, *event_shape)`` of the samples.
      predictor, corrector, snr, n_corrector_steps, num_steps, eps: as
        :func:`jaxdiff.samplers.pc_sampler`.
      noise_removal: return the noise-free mean of the last update (projected onto ``A x = y``;
        score_sde's noise removal, no extra evaluation) instead of the noisy state.
      sharding: optional sharding of the ``(B, ...)`` state.
      consistency_after_corrector: also project after the corrector, before the predictor
        (:func:`consistent_pc_step`; score_sde's controllable_generation, default); ``False``:
        only after each full corrector-predictor step.

    Returns:
      ``sample(params, key, cond) -> (x, nfe)``, jitted; ``cond`` an
      :class:`~jaxdiff.inverse.observation.Observation` ``(op, y, lam=1.0)``: ``op`` a
      :class:`~jaxdiff.inverse.linear.LinearOperator`, ``y`` of shape ``(B, *obs_shape)`` (or a
      leading 1 to share one observation), ``lam`` the consistency weight (1: hard projection).
    """
    if num_steps is not None:
        sde = sde.with_steps(num_steps)
    step = pc_step(sde, keep_dtype(score_fn), predictor=predictor, corrector=corrector, snr=snr,
                   n_corrector_steps=n_corrector_steps)
    nfe = step.nfe * sde.N

    @jax.jit
    def sample(params, key, cond=None):
        obs = check_observation(cond, "pc_inverse_sampler")
        op, y = obs.op, obs.y
        _check_obs(op, y, shape)
        y = jnp.broadcast_to(y, (shape[0],) + y.shape[1:])
        k_init, k_loop = jax.random.split(key)
        x, _ = init_from_prior(sde, op, y, k_init, shape, dtype)
        x = constrain(x, sharding)
        timesteps = jnp.linspace(sde.T, eps, sde.N, dtype=dtype)
        step_c = consistent_pc_step(sde, keep_dtype(score_fn), op, y, obs.lam,
                                    predictor=predictor, corrector=corrector, snr=snr,
                                    n_corrector_steps=n_corrector_steps,
                                    after_corrector=consistency_after_corrector)
        x, x_mean = reverse_with_consistency(step_c, sde, op, params, k_loop, x, y, timesteps,
                                             lam=obs.lam, sharding=sharding,
                                             has_predictor=predictor is not None)
        return (x_mean if noise_removal else x), jnp.asarray(nfe, jnp.int32)

    return sample


def _coeff_rates(sde, t):
    """``(alpha, sigma, d alpha/dt, d sigma/dt)`` at scalar ``t``."""
    (alpha, sigma), (da, ds) = jax.jvp(sde.marginal_coeffs, (t,), (jnp.ones_like(t),))
    return alpha, sigma, da, ds


def ode_inverse_sampler(sde, score_fn, shape: tuple[int, ...], *, rtol: float = 1e-5,
                        atol: float = 1e-5, solver: str = "dopri5", eps: float = 1e-3,
                        dtype=jnp.float32, sharding=None, max_steps: int = 8192):
    """Probability-flow ODE sampler of ``p(x | A x = y)`` (noise-free ``y``).

    The observed part follows ``A x(t) = alpha(t) y + sigma(t) A z`` for one ``z`` per sample; the
    rest follows the probability-flow drift projected onto the null space of ``A``
    (``(I - A^+ A) f``). The result is projected onto ``A x = y`` at the end.

    Returns:
      ``sample(params, key, cond) -> (x, nfe)``, jitted; ``cond`` an
      :class:`~jaxdiff.inverse.observation.Observation` (its ``lam`` is not used: the ODE keeps
      ``A x = y`` exactly); ``nfe`` counts score evaluations.
    """
    rsde = sde.reverse(keep_dtype(score_fn), probability_flow=True)
    batch = shape[0]

    def vector_field(t, x, args):
        params, op, y, az = args
        alpha, sigma, da, ds = _coeff_rates(sde, jnp.asarray(t, x.dtype))
        target = alpha * y + sigma * az
        x = op.project(x, target)
        drift, _ = rsde.sde(params, x, jnp.full((batch,), t, x.dtype))
        drift = drift - op.pinv(op(drift)).astype(x.dtype)
        drift = drift + op.pinv(da * y + ds * az).astype(x.dtype)
        return constrain(drift.astype(x.dtype), sharding)

    @jax.jit
    def sample(params, key, cond=None):
        obs = check_observation(cond, "ode_inverse_sampler")
        op, y = obs.op, obs.y
        _check_obs(op, y, shape)
        y = jnp.broadcast_to(y, (batch,) + y.shape[1:])
        x, z = init_from_prior(sde, op, y, key, shape, dtype)
        x = constrain(x, sharding)
        args = (params, op, y, op(z))
        x, nfe = solve_ode(vector_field, x, sde.T, eps, args, solver=solver, rtol=rtol,
                           atol=atol, max_steps=max_steps)
        # (diffrax promotes the state to the float64 time dtype under x64: cast back)
        x = op.project(x.astype(dtype), y)
        return x, nfe

    return sample
