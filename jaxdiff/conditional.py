"""Conditional score estimators for ``p(x | y)``: CDE, CDiffE and CMDE.

Batzolis, Stanczuk, Schönlieb, Etmann, "Conditional Image Generation with Score-Based Diffusion
Models" (2021), and the multi-speed view of "Non-Uniform Diffusion Models" (2022).

A *conditional score function* is ``cond_score_fn(params, x, t, y) -> array like x`` (the
library's one convention: time third, condition fourth, positional): the network sees the diffused
``x_t`` (shape ``(B, *x_shape)``), ``t`` (scalar or ``(B,)``) and a version ``y_t`` of the condition
(``(B, *y_shape)``).

* **CDE** (conditional denoising estimator): only ``x`` diffuses; the network sees the clean ``y``
  and learns ``grad_x log p_t(x_t | y)`` directly.
* **CDiffE** (conditional diffusive estimator): ``x`` and ``y`` diffuse together with the same SDE;
  the network learns the ``x``-part of the joint score ``grad_x log p_t(x_t, y_t)``, and sampling
  feeds it a diffused observation ``y_t ~ p_t(y_t | y)``. This approximates
  ``grad_x log p_t(x_t | y)`` by ``grad_x log p_t(x_t | y_t)``: a bias.
* **CMDE** (conditional multi-speed diffusive estimator): as CDiffE, but ``y`` diffuses more slowly
  (speed ``y_speed < 1``, :class:`jaxdiff.multispeed.MultiSpeedSDE`), so ``y_t`` stays closer to
  ``y`` and the bias shrinks; ``y_speed -> 0`` recovers CDE, ``y_speed = 1`` is CDiffE.

An estimator is a :class:`ConditionalEstimator` (a pytree) with :meth:`~ConditionalEstimator.loss`
(denoising score matching on the ``x``-part) and :meth:`~ConditionalEstimator.pc_sampler`
(predictor-corrector sampling of ``x`` given ``y``, reusing the core predictors and correctors).
:func:`joint_to_conditional` turns a score of the joint flat state ``[x, y]`` (e.g. the exact score
of a Gaussian mixture under :meth:`~ConditionalEstimator.joint_sde`) into a conditional score
function; :func:`concat_conditional` does the same for an image network that sees ``x`` and ``y``
stacked along channels. :func:`observe` makes the observations of the paper's tasks
(super-resolution, inpainting, Sobel edges).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxdiff.losses import dsm_per_example, perturb
from jaxdiff.multispeed import MultiSpeedSDE, sigma_y_max, speed_for_sigma_max
from jaxdiff.samplers.base import keep_dtype
from jaxdiff.samplers.pc import constrain, pc_step
from jaxdiff.sde import SDE, batch_broadcast

Array = jax.Array
CondScoreFn = Callable[..., Array]

__all__ = [
    "ConditionalEstimator", "get_estimator", "ESTIMATORS", "joint_to_conditional",
    "concat_conditional", "observe", "TASKS", "downsample", "upsample", "inpaint_mask",
    "sobel_edges", "split_batch", "config_section", "validate_section", "condition_channels",
    "make_observe", "get_conditional_loss", "section_condition_channels", "random_observation",
    "section_estimator", "reduction_fn", "LOSS_TARGETS",
    "Y_PATHS", "SR_DOWNSAMPLE", "SR_Y", "MASKS", "resize", "random_square_mask",
    "observation_operator", "make_operator",
]

ESTIMATORS = ("cde", "cdiffe", "cmde", "vs_cmde")
#: what the diffusive estimators' loss trains: the joint score of ``(x, y)`` (the papers') or only
#: its ``x``-part (ours before issue 13)
LOSS_TARGETS = ("joint", "x")
#: how the conditional sampler makes ``y_t`` (see :meth:`ConditionalEstimator.pc_sampler`)
Y_PATHS = ("fresh", "per_step", "fixed", "backward")
#: super-resolution's low-resolution operator: PyTorch's bicubic resize (the reference's
#: ``torchvision Resize(BICUBIC)`` on tensors) or average pooling (ours before issue 13)
SR_DOWNSAMPLE = ("bicubic", "average")
#: super-resolution's ``y``: the low-resolution image nearest-upsampled to full resolution (the
#: reference's ``upscale_lr``: ``y`` diffuses at full resolution), bicubic-upsampled, or kept at low
#: resolution (ours before issue 13)
SR_Y = ("nearest", "bicubic", "low")
#: inpainting masks: a random-position square of ``mask_coverage`` of the area per image (the
#: reference's), the central square of half the side, the right half
MASKS = ("random", "center", "half")
#: the key of the observations of held-out images (per image index, as the reference seeds its
#: test masks with the image index)
EVAL_OBSERVATION_SEED = 0


def reduction_fn(start: float, target: float, reach_steps: int) -> Callable:
    """The reference's ``get_reduction_fn`` (MSDiff ``lightning_callbacks/callbacks.py``): the
    inverse-multiplicative decay ``f(k) = K y_K y_0 / (k (y_0 - y_K) + K y_K)`` from
    ``f(0) = start`` to ``f(K) = target`` at ``K = reach_steps``; held at ``target`` after ``K``
    (the reference keeps decaying; its configs train exactly ``K`` steps). Works on traced steps."""
    y0, yk, xk = float(start), float(target), float(reach_steps)
    if not (y0 > 0 and yk > 0 and xk > 0):
        raise ValueError(f"reduction_fn needs positive start, target and reach_steps, got "
                         f"{start}, {target}, {reach_steps}")

    def f(step):
        k = jnp.minimum(jnp.asarray(step, jnp.result_type(float)), xk)
        return xk * yk * y0 / (k * (y0 - yk) + xk * yk)

    return f


def split_batch(batch) -> tuple[Array, Array]:
    """``(x, y)`` from a batch given as a pair or a dict with keys ``'x'`` and ``'y'``."""
    if isinstance(batch, dict):
        try:
            return batch["x"], batch["y"]
        except KeyError:
            raise ValueError(
                f"a conditional batch dict needs keys 'x' and 'y', got {sorted(batch)}") from None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(f"a conditional batch is (x, y) or {{'x': x, 'y': y}}, got {type(batch).__name__}")


class ConditionalEstimator(struct.PyTreeNode):
    """One of CDE / CDiffE / CMDE for ``p(x | y)``.

    Fields:
      x_sde: the (uniform) SDE that diffuses ``x``.
      y_sde: the SDE that diffuses ``y`` (``None`` for CDE; ``x_sde`` for CDiffE; ``x_sde`` at speed
        ``y_speed`` for CMDE).
      name: ``'cde' | 'cdiffe' | 'cmde' | 'vs_cmde'`` (static).
      vs_schedule: VS-CMDE only: ``(sigma_max_y_start, sigma_max_y_target, reach_target_steps)``
        (static floats): during
        training the ``y`` SDE's ``sigma_max_y`` decays from ``sigma_max_y_start`` to the target
        (that of ``y_sde``) by :func:`reduction_fn`; sampling uses the target.

    Build with :meth:`cde`, :meth:`cdiffe`, :meth:`cmde`, :meth:`vs_cmde` or :func:`get_estimator`.
    """

    x_sde: SDE
    y_sde: SDE | None
    name: str = struct.field(pytree_node=False, default="cde")
    vs_schedule: tuple | None = struct.field(pytree_node=False, default=None)

    @classmethod
    def cde(cls, x_sde: SDE) -> ConditionalEstimator:
        """Conditional denoising estimator: ``y`` is never diffused."""
        return cls(x_sde=x_sde, y_sde=None, name="cde")

    @classmethod
    def cdiffe(cls, x_sde: SDE) -> ConditionalEstimator:
        """Conditional diffusive estimator: ``y`` diffuses with ``x_sde``."""
        return cls(x_sde=x_sde, y_sde=x_sde, name="cdiffe")

    @classmethod
    def cmde(cls, x_sde: SDE, y_speed: float) -> ConditionalEstimator:
        """Conditional multi-speed diffusive estimator: ``y`` diffuses with ``x_sde`` at speed
        ``y_speed`` (in ``(0, 1]``; 1 is CDiffE)."""
        if not (0.0 < float(y_speed) <= 1.0):
            raise ValueError(f"y_speed must be in (0, 1] (y diffuses more slowly than x), got {y_speed}")
        return cls(x_sde=x_sde, y_sde=MultiSpeedSDE.create(x_sde, float(y_speed)), name="cmde")

    @classmethod
    def vs_cmde(cls, x_sde: SDE, y_speed: float, *, sigma_max_y_start: float | None = None,
                reach_target_steps: int = 1) -> ConditionalEstimator:
        """Variance-scheduled CMDE: trained with ``sigma_max_y`` annealed from
        ``sigma_max_y_start`` (default: the ``x`` SDE's ``sigma(T)``, i.e. CDiffE) to the CMDE
        target ``sigma_y(T)`` of speed ``y_speed`` over ``reach_target_steps`` steps; samples as
        the CMDE of ``y_speed``."""
        est = cls.cmde(x_sde, y_speed)
        start = float(sigma_y_max(x_sde, 1.0)) if sigma_max_y_start is None \
            else float(sigma_max_y_start)
        if not start > 0 or int(reach_target_steps) < 1:
            raise ValueError(f"vs_cmde needs sigma_max_y_start > 0 and reach_target_steps >= 1, "
                             f"got {sigma_max_y_start} and {reach_target_steps}")
        target = float(sigma_y_max(x_sde, float(y_speed)))
        return est.replace(name="vs_cmde", vs_schedule=(start, target, int(reach_target_steps)))

    def sigma_max_y_at(self, step):
        """VS-CMDE: ``sigma_max_y`` of training step ``step`` (:func:`reduction_fn`)."""
        if self.vs_schedule is None:
            raise ValueError(f"estimator {self.name!r} has no sigma_max_y schedule (vs_cmde only)")
        start, target, reach = self.vs_schedule
        return reduction_fn(start, target, reach)(step)

    def at_step(self, step) -> ConditionalEstimator:
        """The estimator trained at ``step``: VS-CMDE's CMDE of ``sigma_max_y_at(step)``; the
        estimator itself for the others or ``step=None``."""
        if self.vs_schedule is None or step is None:
            return self
        speed = speed_for_sigma_max(self.x_sde, self.sigma_max_y_at(step))
        return self.replace(y_sde=MultiSpeedSDE.create(self.x_sde, speed))

    @property
    def y_speed(self):
        """Speed of ``y`` relative to ``x``: 0 for CDE, 1 for CDiffE, ``y_speed`` for CMDE (an
        array leaf, possibly traced)."""
        if self.y_sde is None:
            return 0.0
        if isinstance(self.y_sde, MultiSpeedSDE):
            return self.y_sde.speeds
        return 1.0

    def joint_sde(self, x_dim: int, y_dim: int) -> MultiSpeedSDE:
        """The SDE of the flat joint state ``[x, y]`` (dimension ``x_dim + y_dim``) whose ``x``-part
        score the diffusive estimators learn. For CDE ``y`` is given a tiny speed (``1e-6``), the
        limit in which the joint score's ``x``-part is the conditional score."""
        if x_dim < 1 or y_dim < 1:
            raise ValueError(f"x_dim and y_dim must be >= 1, got {x_dim} and {y_dim}")
        s = jnp.maximum(jnp.asarray(self.y_speed, jnp.result_type(float)), 1e-6)
        speeds = jnp.concatenate([jnp.ones((x_dim,), s.dtype), jnp.broadcast_to(s, (y_dim,))])
        return MultiSpeedSDE.create(self.x_sde, speeds)

    def diffuse_y(self, key: Array, y: Array, t: Array, z: Array | None = None) -> Array:
        """A draw of ``y_t ~ p_{0t}(y_t | y)`` (``y`` itself for CDE).

        Args:
          key: PRNG key (unused when ``z`` is given or for CDE).
          y: clean condition ``(B, *y_shape)``.
          t: scalar or ``(B,)``.
          z: optional standard-normal noise of ``y``'s shape (a fixed diffusion path).
        """
        if self.y_sde is None:
            return y
        mean, std = self.y_sde.marginal_prob(y, t)
        if z is None:
            z = jax.random.normal(key, y.shape, y.dtype)
        return mean + batch_broadcast(std, y) * z

    # ---- training ---------------------------------------------------------------------------
    def loss(self, cond_score_fn: CondScoreFn, *, reduce_mean: bool = True,
             likelihood_weighting: bool = False, eps: float = 1e-5,
             rng_kwarg: str | None = None, target: str = "x"):
        """Denoising score matching for the estimator's target.

        ``t ~ U(eps, T)``, ``x_t = alpha_x x + sigma_x z_x``, ``y_t = alpha_y y + sigma_y z_y``
        (:meth:`diffuse_y`).

        * ``target='x'``: ``cond_score_fn(params, x_t, t, y_t) -> s_x``; per-example loss
          ``reduce(|s_x sigma_x + z_x|^2)``, or with ``likelihood_weighting``
          ``reduce(|s_x + z_x / sigma_x|^2 g_x(t)^2)``. Minimiser: ``grad_x log p_t(x_t, y_t)``
          (the ``x``-part of the joint score; for CDE, ``grad_x log p_t(x_t | y)``).
        * ``target='joint'`` (the papers', MSDiff ``get_general_sde_loss_fn``; diffusive
          estimators only): ``cond_score_fn(params, x_t, t, y_t) -> (s_x, s_y)`` and the loss is
          the reduction over all ``D_x + D_y`` coordinates of ``[|s_x sigma_x + z_x|^2,
          |s_y sigma_y + z_y|^2]``, or with ``likelihood_weighting`` of ``[|s_x + z_x/sigma_x|^2
          g_x(t)^2, |s_y + z_y/sigma_y|^2 g_y(t)^2]`` (each part its own ``g^2``; ``g_y`` of the
          ``y`` SDE, per coordinate for CMDE). Minimiser: the joint score
          ``grad_{(x, y)} log p_t(x_t, y_t)``.

        Args:
          cond_score_fn: see ``target``.
          reduce_mean: mean (else sum) over data dimensions.
          likelihood_weighting: weight by ``g(t)^2 / sigma(t)^2`` instead of 1 (in ``sigma``-units).
          eps: smallest time.
          rng_kwarg: if given, ``cond_score_fn`` is called with ``**{rng_kwarg: key}`` (dropout).
          target: ``'x'`` or ``'joint'``.

        Returns:
          ``loss_fn(params, key, batch, step=None) -> (loss, aux)`` with ``batch = (x, y)`` or
          ``{'x': x, 'y': y}`` and ``aux = {'losses': (B,), 't': (B,)}``; ``step`` (the training
          step) matters for VS-CMDE only (``None``: the target ``sigma_max_y``). The function
          has ``takes_step = True`` for VS-CMDE (the train step then passes ``step=``).
        """
        if target not in LOSS_TARGETS:
            raise ValueError(f"loss target must be one of {LOSS_TARGETS}, got {target!r}")
        if target == "joint" and self.y_sde is None:
            raise ValueError("target='joint': CDE does not diffuse y, it has no joint score; "
                             "use target='x'")
        x_sde = self.x_sde

        def loss_fn(params, key, batch, step=None):
            x, y = split_batch(batch)
            if x.ndim < 2 or y.ndim < 2 or x.shape[0] != y.shape[0]:
                raise ValueError(f"x and y must be (B, ...) with the same B, got {x.shape} and {y.shape}")
            est = self.at_step(step)
            k_t, k_x, k_y, k_net = jax.random.split(key, 4)
            t = jax.random.uniform(k_t, (x.shape[0],), x.dtype, eps, x_sde.T)
            z = jax.random.normal(k_x, x.shape, x.dtype)
            x_t, std = perturb(x_sde, x, t, z)
            z_y = jax.random.normal(k_y, y.shape, y.dtype)
            y_t = est.diffuse_y(k_y, y, t, z=z_y)
            kwargs = {} if rng_kwarg is None else {rng_kwarg: k_net}
            score = cond_score_fn(params, x_t, t, y_t, **kwargs)
            if target == "x":
                if isinstance(score, (tuple, list)):
                    raise ValueError("target='x' needs a score function returning the x-score "
                                     "only (got a pair)")
                g2 = x_sde.sde(jnp.zeros_like(x), t)[1] ** 2 if likelihood_weighting else None
                losses = dsm_per_example(score, z, std, g2=g2, reduce_mean=reduce_mean)
                return jnp.mean(losses), {"losses": losses, "t": t}
            if not (isinstance(score, (tuple, list)) and len(score) == 2):
                raise ValueError("target='joint' needs a score function returning (s_x, s_y)")
            s_x, s_y = score
            if s_x.shape != x.shape or s_y.shape != y.shape:
                raise ValueError(f"joint score parts {s_x.shape}, {s_y.shape} do not match x "
                                 f"{x.shape} and y {y.shape}")
            assert est.y_sde is not None
            std_y = batch_broadcast(est.y_sde.marginal_prob(y, t)[1], y)
            if likelihood_weighting:
                g_x = batch_broadcast(x_sde.sde(jnp.zeros_like(x), t)[1], x)
                g_y = batch_broadcast(est.y_sde.sde(jnp.zeros_like(y), t)[1], y)
                lx = jnp.square(s_x + z / std) * g_x ** 2
                ly = jnp.square(s_y + z_y / std_y) * g_y ** 2
            else:
                lx = jnp.square(s_x * std + z)
                ly = jnp.square(s_y * std_y + z_y)
            b = x.shape[0]
            per = jnp.concatenate([lx.reshape(b, -1), ly.reshape(b, -1)], axis=-1)
            losses = jnp.mean(per, axis=-1) if reduce_mean else jnp.sum(per, axis=-1)
            return jnp.mean(losses), {"losses": losses, "t": t}

        loss_fn.takes_step = self.vs_schedule is not None  # type: ignore[attr-defined]
        return loss_fn

    # ---- sampling ---------------------------------------------------------------------------
    def backward_y(self, key: Array, y: Array, y_next: Array, t: Array, t_next: Array) -> Array:
        """A draw of ``y_t ~ p(y_t | y_0 = y, y_{t_next} = y_next)`` (``t < t_next``): the
        Gaussian bridge of the ``y`` SDE (the reference's ``compute_backward_kernel``, written
        for any ``alpha``, ``sigma``: with ``a = alpha(t_next) / alpha(t)`` and
        ``b^2 = sigma(t_next)^2 - a^2 sigma(t)^2``, mean ``(alpha(t) b^2 y + a sigma(t)^2 y_next) /
        sigma(t_next)^2`` and variance ``sigma(t)^2 b^2 / sigma(t_next)^2``; VE: ``a = 1``).
        ``y`` itself for CDE."""
        if self.y_sde is None:
            return y
        ones = jnp.ones_like(y)
        al_t, sd_t = self.y_sde.marginal_prob(ones, t)
        al_n, sd_n = self.y_sde.marginal_prob(ones, t_next)
        sd_t, sd_n = batch_broadcast(sd_t, y), batch_broadcast(sd_n, y)
        a = al_n / al_t
        b2 = jnp.maximum(sd_n**2 - a**2 * sd_t**2, 0.0)
        den = sd_n**2
        mean = (al_t * b2 * y + a * sd_t**2 * y_next) / den
        std = jnp.sqrt(sd_t**2 * b2 / den)
        return mean + std * jax.random.normal(key, y.shape, y.dtype)

    def pc_sampler(self, cond_score_fn: CondScoreFn, shape: tuple[int, ...], *,
                   predictor="euler_maruyama", corrector=None, snr: float = 0.16,
                   n_corrector_steps: int = 1, num_steps: int | None = None,
                   noise_removal: bool = True, eps: float = 1e-3, resample_y: bool = True,
                   y_path: str | None = None, dtype=jnp.float32, sharding=None):
        """Predictor-corrector sampler of ``x ~ p(x | y)``.

        The reverse SDE of ``x_sde`` with the core predictors and correctors; the score is
        ``cond_score_fn(params, x, t, y_t)`` (the ``x``-score; a joint score function's pair is
        cut to its first part) and ``y_t`` follows ``y_path``:

        * ``'fresh'`` (default, the reference's ``use_path=False``): a fresh
          ``y_t ~ p_t(y_t | y)`` before each corrector and each predictor step (corrector first,
          then predictor, at each time);
        * ``'per_step'``: one fresh ``y_t`` per time step, shared by corrector and predictor;
        * ``'fixed'``: one noise ``z`` for the whole path, ``y_t = alpha_y(t) y + sigma_y(t) z``;
        * ``'backward'`` (the reference's ``use_path=True``): ``y_{T + tau} ~ p(. | y)``, then
          at each time ``y_t ~ p(y_t | y, y_{t + tau})`` (:meth:`backward_y`, ``tau`` the time
          step): one reverse path of ``y``; predictor first, then the corrector with the same
          ``y_t`` (the reference's order in that mode).

        CDE uses the clean ``y`` throughout.

        Args:
          cond_score_fn: ``cond_score_fn(params, x, t, y)``.
          shape: ``(B, *x_shape)``.
          predictor, corrector, snr, n_corrector_steps: as for :func:`jaxdiff.samplers.pc_sampler`.
          num_steps: time steps (default ``x_sde.N``).
          noise_removal: return the noise-free mean of the last update (score_sde's noise
            removal, no extra evaluation) instead of the noisy state.
          eps: last time.
          resample_y: legacy switch used when ``y_path`` is ``None``: ``True`` -> ``'fresh'``,
            ``False`` -> ``'fixed'``.
          y_path: one of :data:`Y_PATHS`.
          sharding: optional sharding of the ``(B, ...)`` state.

        Returns:
          ``sample(params, key, cond) -> (x, nfe)``, jitted; ``cond`` is ``y``, of shape
          ``(B, *y_shape)`` (one condition per sample; broadcast a single one to draw many samples
          of the same posterior).
        """
        if y_path is None:
            y_path = "fresh" if resample_y else "fixed"
        if y_path not in Y_PATHS:
            raise ValueError(f"y_path must be one of {Y_PATHS}, got {y_path!r}")
        if predictor is None and corrector is None:
            raise ValueError("at least one of predictor and corrector must be given")
        x_sde = self.x_sde if num_steps is None else self.x_sde.with_steps(num_steps)
        n_steps = x_sde.N  # type: ignore[attr-defined]  # every concrete SDE declares N
        est = self
        score = keep_dtype(cond_score_fn)

        def x_score(py, x, t):
            out = score(py[0], x, t, py[1])
            return out[0] if isinstance(out, (tuple, list)) else out

        # each part's "params" are (params, y_t): the condition of the current step.
        pred = pc_step(x_sde, x_score, predictor=predictor) if predictor else None
        corr = (pc_step(x_sde, x_score, predictor=None, corrector=corrector, snr=snr,
                        n_corrector_steps=n_corrector_steps) if corrector else None)
        per_step = (pred.nfe if pred else 0) + (corr.nfe if corr else 0)
        nfe = per_step * n_steps
        tau = (x_sde.T - eps) / max(n_steps - 1, 1)

        @jax.jit
        def sample(params, key, cond=None):
            y = cond
            if y is None or y.shape[0] != shape[0]:
                raise ValueError(f"y has batch {None if y is None else y.shape[0]}, the samples "
                                 f"{shape[0]}: give one y per sample")
            k_prior, k_path, k_loop = jax.random.split(key, 3)
            x = constrain(x_sde.prior_sampling(k_prior, shape, dtype), sharding)
            y = y.astype(dtype)
            b = shape[0]
            z_path = jax.random.normal(k_path, y.shape, dtype)
            timesteps = jnp.linspace(x_sde.T, eps, n_steps, dtype=dtype)
            y_top = est.diffuse_y(k_path, y, jnp.full((b,), x_sde.T + tau, dtype))

            def run(part, params, k, x, x_mean, y_t, t):
                if part is None:
                    return x, x_mean
                return part.update((params, y_t), k, x, t)

            def body(i, carry):
                x, x_mean, y_prev = carry
                t = jnp.full((b,), timesteps[i], dtype)
                k = jax.random.fold_in(k_loop, i)
                k_c, k_p, k_y1, k_y2 = jax.random.split(k, 4)
                if y_path == "backward":
                    y_t = est.backward_y(k_y1, y, y_prev, t, t + tau)
                    x, x_mean = run(pred, params, k_p, x, x_mean, y_t, t)
                    x, x_mean = run(corr, params, k_c, x, x_mean, y_t, t)
                    y_prev = y_t
                else:
                    if y_path == "fixed":
                        y_c = y_p = est.diffuse_y(k_y1, y, t, z=z_path)
                    else:
                        y_c = est.diffuse_y(k_y1, y, t)
                        y_p = est.diffuse_y(k_y2, y, t) if y_path == "fresh" else y_c
                    x, x_mean = run(corr, params, k_c, x, x_mean, y_c, t)
                    x, x_mean = run(pred, params, k_p, x, x_mean, y_p, t)
                return (constrain(x.astype(dtype), sharding),
                        constrain(x_mean.astype(dtype), sharding), y_prev.astype(dtype))

            x, x_mean, _ = jax.lax.fori_loop(0, n_steps, body, (x, x, y_top))
            return (x_mean if noise_removal else x), jnp.asarray(nfe, jnp.int32)

        return sample


def get_estimator(name: str, x_sde: SDE, *, y_speed: float | None = None,
                  sigma_max_y_start: float | None = None,
                  reach_target_steps: int = 1) -> ConditionalEstimator:
    """The estimator ``name`` in :data:`ESTIMATORS` (``y_speed`` is needed by CMDE and VS-CMDE;
    ``sigma_max_y_start`` and ``reach_target_steps`` by VS-CMDE, see
    :meth:`ConditionalEstimator.vs_cmde`)."""
    if name == "cde":
        return ConditionalEstimator.cde(x_sde)
    if name == "cdiffe":
        return ConditionalEstimator.cdiffe(x_sde)
    if name in ("cmde", "vs_cmde"):
        if y_speed is None:
            raise ValueError(f"the {name} estimator needs y_speed")
        if name == "cmde":
            return ConditionalEstimator.cmde(x_sde, y_speed)
        return ConditionalEstimator.vs_cmde(x_sde, y_speed, sigma_max_y_start=sigma_max_y_start,
                                            reach_target_steps=reach_target_steps)
    raise ValueError(f"unknown conditional estimator {name!r}; choose one of {ESTIMATORS}")


# ---- score functions ------------------------------------------------------------------------
def joint_to_conditional(joint_score_fn: Callable, x_shape: tuple, y_shape: tuple, *,
                         joint: bool = False) -> CondScoreFn:
    """``cond_score_fn(params, x, t, y)`` from a score of the flat joint state ``[x, y]``.

    ``joint_score_fn(params, xy, t)`` acts on ``(B, Dx + Dy)``; the result is the ``x``-part of its
    output reshaped to ``x_shape`` (the CDiffE / CMDE score, or with the exact mixture score of
    :meth:`ConditionalEstimator.joint_sde`, their exact targets); with ``joint=True`` the pair
    ``(x-part, y-part)`` reshaped to ``x``'s and ``y``'s shapes (the joint loss's score).
    """
    dx, dy = math.prod(x_shape), math.prod(y_shape)

    def cond_score_fn(params, x, t, y, **kwargs):
        b = x.shape[0]
        xy = jnp.concatenate([x.reshape(b, dx), y.reshape(b, dy).astype(x.dtype)], axis=-1)
        out = joint_score_fn(params, xy, t, **kwargs)
        if joint:
            return out[:, :dx].reshape(x.shape), out[:, dx:].reshape(y.shape).astype(y.dtype)
        return out[:, :dx].reshape(x.shape)

    return cond_score_fn


def upsample(y: Array, size: tuple[int, int]) -> Array:
    """Nearest-neighbour resize of ``(B, h, w, C)`` to ``(B, *size, C)`` (integer factors)."""
    b, h, w, c = y.shape
    H, W = size
    if H % h or W % w:
        raise ValueError(f"cannot upsample {(h, w)} to {size} by integer factors")
    return jnp.repeat(jnp.repeat(y, H // h, axis=1), W // w, axis=2)


def concat_conditional(score_fn: Callable, x_channels: int, *, joint: bool = False) -> CondScoreFn:
    """Conditional score from an image network that sees ``x_t`` and ``y_t`` stacked on channels.

    ``score_fn(params, z, t, **kw)`` (e.g. from :func:`jaxdiff.scores.get_score_fn` for the ``x``
    SDE, with a network of ``x_channels + y_channels`` input and output channels) is called on
    ``z = concat([x, upsample(y)], -1)``; its first ``x_channels`` output channels are the score.
    ``y`` of lower resolution (super-resolution) is upsampled (nearest) to ``x``'s size.
    With ``joint=True`` it returns ``(s_x, s_y)``: ``s_y`` is the network's other output channels,
    average-pooled back to ``y``'s resolution when ``y`` was upsampled (the joint loss's
    ``y``-score).
    """

    def cond_score_fn(params, x, t, y, **kwargs):
        if x.shape[-1] != x_channels:
            raise ValueError(f"x has {x.shape[-1]} channels, expected {x_channels}")
        y_low = y
        if y.ndim == 4 and y.shape[1:3] != x.shape[1:3]:
            y = upsample(y, x.shape[1:3])
        z = jnp.concatenate([x, y.astype(x.dtype)], axis=-1)
        out = score_fn(params, z, t, **kwargs)
        if not joint:
            return out[..., :x_channels]
        s_y = out[..., x_channels:]
        if y_low.ndim == 4 and y_low.shape[1:3] != x.shape[1:3]:
            s_y = downsample(s_y, x.shape[1] // y_low.shape[1])
        return out[..., :x_channels], s_y.reshape(y_low.shape).astype(y_low.dtype)

    return cond_score_fn


# ---- observations of the paper's tasks -------------------------------------------------------
def _cubic(d: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel with PyTorch's ``a = -0.75``."""
    d = np.abs(d)
    near = ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
    far = ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
    return np.where(d <= 1.0, near, np.where(d < 2.0, far, 0.0))


def _resize_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    """``(n_out, n_in)`` weights of a 1-D resize with ``align_corners=False`` (PyTorch's
    ``interpolate``): ``'bicubic'`` (4 taps at ``(i + 1/2) n_in / n_out - 1/2``, indices clamped
    to the border, no antialiasing) or ``'nearest'`` (source ``floor(i n_in / n_out)``)."""
    w = np.zeros((n_out, n_in))
    scale = n_in / n_out
    if method == "nearest":
        w[np.arange(n_out), np.minimum((np.arange(n_out) * scale).astype(int), n_in - 1)] = 1.0
        return w
    if method != "bicubic":
        raise ValueError(f"unknown resize method {method!r}; choose 'bicubic' or 'nearest'")
    src = (np.arange(n_out) + 0.5) * scale - 0.5
    base = np.floor(src).astype(int)
    for k in range(-1, 3):
        np.add.at(w, (np.arange(n_out), np.clip(base + k, 0, n_in - 1)), _cubic(src - (base + k)))
    return w


def resize(x: Array, size: tuple[int, int], method: str = "bicubic") -> Array:
    """Resize ``(B, H, W, C)`` to ``(B, *size, C)`` as ``torch.nn.functional.interpolate(x, size,
    mode=method, align_corners=False)`` (``'bicubic'``: ``a = -0.75``, border-clamped, no
    antialiasing, as ``torchvision.transforms.Resize(BICUBIC)`` on tensors in the reference's
    data modules; ``'nearest'``). Separable: two small matrix products, exact for any factor."""
    b, h, w, c = x.shape
    mh = jnp.asarray(_resize_matrix(h, int(size[0]), method), x.dtype)
    mw = jnp.asarray(_resize_matrix(w, int(size[1]), method), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", mh, x, mw, precision=jax.lax.Precision.HIGHEST)


def downsample(x: Array, factor: int, method: str = "average") -> Array:
    """Low-resolution ``(B, H / factor, W / factor, C)`` image of ``(B, H, W, C)``: average
    pooling (``method='average'``) or PyTorch's bicubic resize (``'bicubic'``, the reference's
    super-resolution input)."""
    b, h, w, c = x.shape
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"factor {factor} does not divide the image size {(h, w)}")
    if method == "bicubic":
        return resize(x, (h // factor, w // factor), "bicubic")
    if method != "average":
        raise ValueError(f"unknown downsampling {method!r}; choose one of {SR_DOWNSAMPLE}")
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def inpaint_mask(image_size: int, kind: str = "center") -> Array:
    """Binary ``(H, W, 1)`` mask of the observed pixels: ``'center'`` hides the central square of
    half the side, ``'half'`` hides the right half."""
    m = jnp.ones((image_size, image_size, 1))
    q = image_size // 4
    if kind == "center":
        return m.at[q:image_size - q, q:image_size - q].set(0.0)
    if kind == "half":
        return m.at[:, image_size // 2:].set(0.0)
    raise ValueError(f"unknown inpainting mask {kind!r}; choose 'center' or 'half'")


def random_square_mask(key: Array, batch: int, image_size: int, coverage: float = 0.25) -> Array:
    """``(B, H, H, 1)`` masks of the observed pixels, each hiding one square of side
    ``int(sqrt(coverage H^2))`` at a uniformly random position (the reference's inpainting:
    ``start ~ randint(0, H - side + 1)`` per axis). Image ``i`` uses ``fold_in(key, i)``, so a
    batch's first masks do not depend on its size."""
    side = int(math.sqrt(coverage * image_size * image_size))
    if not 0 < side <= image_size:
        raise ValueError(f"mask coverage {coverage} gives a square of side {side} in a "
                         f"{image_size}x{image_size} image")
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))
    start = jax.vmap(lambda k: jax.random.randint(k, (2,), 0, image_size - side + 1))(keys)
    r = jnp.arange(image_size)
    inside = lambda s: (r[None, :] >= s[:, None]) & (r[None, :] < s[:, None] + side)  # noqa: E731
    hidden = inside(start[:, 0])[:, :, None] & inside(start[:, 1])[:, None, :]
    return (~hidden).astype(jnp.float32)[..., None]


def sobel_edges(x: Array) -> Array:
    """Sobel gradient magnitude of ``(B, H, W, C)`` per channel (same size, zero padding)."""
    kx = jnp.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], x.dtype)
    k = jnp.stack([kx, kx.T], axis=-1)[:, :, None, :]          # (3, 3, 1, 2)  HWIO
    c = x.shape[-1]
    xs = jnp.moveaxis(x, -1, 0).reshape((c * x.shape[0],) + x.shape[1:3] + (1,))
    g = jax.lax.conv_general_dilated(xs, k, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    mag = jnp.sqrt(jnp.sum(g**2, axis=-1) + 1e-12)
    return jnp.moveaxis(mag.reshape((c, x.shape[0]) + x.shape[1:3]), 0, -1)


TASKS = ("super_resolution", "inpainting", "edges")


def _inpaint_mask_for(x: Array, mask, key, coverage: float) -> Array:
    if mask is None:
        if key is None:
            raise ValueError("inpainting with random square masks needs key= (or pass mask=)")
        mask = random_square_mask(key, x.shape[0], x.shape[1], coverage)
    return jnp.broadcast_to(jnp.asarray(mask, x.dtype), x.shape[:-1] + (1,))


def observation_operator(task: str, x: Array, *, key: Array | None = None, factor: int = 2,
                         mask: Array | None = None, sr_downsample: str = "bicubic",
                         mask_coverage: float = 0.25) -> Array:
    """The task's forward operator ``A(x)`` on clean ``(B, H, W, C)`` images (what the
    consistency metric compares): super-resolution: the low-resolution image
    (``downsample(x, factor, sr_downsample)``); inpainting: ``x * mask`` (``mask`` given, else
    random squares from ``key``); edges: the Sobel magnitude."""
    if task == "super_resolution":
        return downsample(x, factor, sr_downsample)
    if task == "inpainting":
        return x * _inpaint_mask_for(x, mask, key, mask_coverage)
    if task == "edges":
        return sobel_edges(x)
    raise ValueError(f"unknown conditional task {task!r}; choose one of {TASKS}")


def observe(task: str, x: Array, *, key: Array | None = None, factor: int = 2,
            mask: Array | None = None, sr_downsample: str = "bicubic", sr_y: str = "nearest",
            mask_channel: bool = False, mask_coverage: float = 0.25) -> Array:
    """The condition ``y`` of a task for clean images ``x`` of shape ``(B, H, W, C)``; the
    defaults are the reference's constructions (GBATZOLIS/MSDiff ``General_PKLDataset``):

    * ``'super_resolution'``: the low-resolution image ``downsample(x, factor, sr_downsample)``
      (default PyTorch bicubic), brought back to full resolution by ``sr_y='nearest'`` (default:
      the reference's ``upscale_lr``, so ``y`` diffuses at full resolution) or ``'bicubic'``, or
      kept at low resolution (``sr_y='low'``, ours before issue 13, with ``sr_downsample='average'``);
    * ``'inpainting'``: ``x * mask`` with the hidden pixels at 0, and no mask channel (default,
      the reference's) or ``concat([x * mask, mask], -1)`` (``mask_channel=True``); ``mask`` of
      the observed pixels given (``(H, W, 1)`` or ``(B, H, W, 1)``), else one random square of
      ``mask_coverage`` of the area per image drawn from ``key`` (:func:`random_square_mask`);
    * ``'edges'``: ``sobel_edges(x)``.
    """
    if task == "super_resolution":
        if sr_y not in SR_Y:
            raise ValueError(f"unknown super-resolution y {sr_y!r}; choose one of {SR_Y}")
        low = downsample(x, factor, sr_downsample)
        return low if sr_y == "low" else resize(low, (x.shape[1], x.shape[2]), sr_y)
    if task == "inpainting":
        m = _inpaint_mask_for(x, mask, key, mask_coverage)
        return jnp.concatenate([x * m, m], axis=-1) if mask_channel else x * m
    return observation_operator(task, x, key=key, factor=factor, mask=mask)


# ---- configs and training plumbing -----------------------------------------------------------
def config_section(*, estimator: str = "cmde", task: str = "super_resolution",
                   y_speed: float = 0.25, factor: int = 2, mask: str = "random",
                   resample_y: bool = True, loss: str = "joint", y_path: str = "fresh",
                   vs_sigma_max_y_start: float = 0.0, vs_reach_target_steps: int = 1,
                   sr_downsample: str = "bicubic", sr_y: str = "nearest",
                   mask_coverage: float = 0.25, mask_channel: bool = False):
    """The ``config.msdiff`` section of a conditional experiment (``configs/msdiff_*.py``).

    Keys: ``mode='conditional'``, ``estimator`` ('cde' | 'cdiffe' | 'cmde' | 'vs_cmde'),
    ``task`` ('super_resolution' | 'inpainting' | 'edges'), ``y_speed`` (CMDE / VS-CMDE: the speed
    of ``y``; under a VE ``x`` SDE it is the CMDE of ``sigma_max_y = sigma_min^(1 - y_speed)
    sigma_max^y_speed``, :func:`jaxdiff.multispeed.speed_for_sigma_max`), ``loss`` ('joint': the
    papers' joint ``(x, y)`` score loss, default; 'x': only the ``x``-part; CDE always trains the
    ``x``-part), ``y_path`` (sampler, one of :data:`Y_PATHS`, default 'fresh'), ``resample_y``
    (legacy, read only when a section has no ``y_path``), ``vs_sigma_max_y_start`` (VS-CMDE:
    ``sigma_max_y`` at step 0; 0 means the ``x`` SDE's ``sigma(T)``, i.e. ``sqrt(D)`` in the
    reference configs) and ``vs_reach_target_steps`` (VS-CMDE: the step where ``sigma_max_y``
    reaches its target, the reference's ``reach_target_steps``).

    Task construction (:func:`observe`; defaults the reference's): super-resolution ``factor``,
    ``sr_downsample`` (:data:`SR_DOWNSAMPLE`), ``sr_y`` (:data:`SR_Y`); inpainting ``mask``
    (:data:`MASKS`), ``mask_coverage`` (the random square's share of the area) and
    ``mask_channel`` (append the mask to ``y``). A section without one of these keys means the
    reference's value.
    """
    import ml_collections
    sec = ml_collections.ConfigDict(dict(
        mode="conditional", estimator=estimator, task=task, y_speed=float(y_speed),
        factor=int(factor), mask=mask, resample_y=bool(resample_y), loss=loss, y_path=y_path,
        vs_sigma_max_y_start=float(vs_sigma_max_y_start),
        vs_reach_target_steps=int(vs_reach_target_steps), sr_downsample=sr_downsample,
        sr_y=sr_y, mask_coverage=float(mask_coverage), mask_channel=bool(mask_channel)))
    validate_section(sec)
    return sec


#: the task-construction keys of a section and their (reference) values when absent
CONSTRUCTION_DEFAULTS = dict(sr_downsample="bicubic", sr_y="nearest", mask="random",
                             mask_coverage=0.25, mask_channel=False)


def _construction(sec) -> dict:
    return {k: sec.get(k, v) for k, v in CONSTRUCTION_DEFAULTS.items()}


def validate_section(sec) -> None:
    """Check a conditional ``config.msdiff`` section; raises ``ValueError`` naming the bad key."""
    allowed = {"mode", "estimator", "task", "y_speed", "factor", "resample_y", "loss",
               "y_path", "vs_sigma_max_y_start", "vs_reach_target_steps"} | set(CONSTRUCTION_DEFAULTS)
    bad = sorted(set(sec.keys()) - allowed)
    if bad:
        raise ValueError(f"config.msdiff: unknown key(s) {bad}; accepted: {sorted(allowed)}")
    if sec.mode != "conditional":
        raise ValueError(f"config.msdiff.mode must be 'conditional', got {sec.mode!r}")
    if sec.estimator not in ESTIMATORS:
        raise ValueError(f"config.msdiff.estimator must be one of {ESTIMATORS}, got {sec.estimator!r}")
    if sec.task not in TASKS:
        raise ValueError(f"config.msdiff.task must be one of {TASKS}, got {sec.task!r}")
    if not 0.0 < float(sec.y_speed) <= 1.0:
        raise ValueError(f"config.msdiff.y_speed must be in (0, 1], got {sec.y_speed!r}")
    if int(sec.factor) < 1:
        raise ValueError(f"config.msdiff.factor must be >= 1, got {sec.factor!r}")
    c = _construction(sec)
    for key, choices in (("mask", MASKS), ("sr_downsample", SR_DOWNSAMPLE), ("sr_y", SR_Y)):
        if c[key] not in choices:
            raise ValueError(f"config.msdiff.{key} must be one of {choices}, got {c[key]!r}")
    if not 0.0 < float(c["mask_coverage"]) < 1.0:
        raise ValueError(f"config.msdiff.mask_coverage must be in (0, 1), got "
                         f"{c['mask_coverage']!r}")
    if not isinstance(c["mask_channel"], bool):
        raise ValueError(f"config.msdiff.mask_channel must be True or False, got "
                         f"{c['mask_channel']!r}")
    if sec.get("loss", "x") not in LOSS_TARGETS:
        raise ValueError(f"config.msdiff.loss must be one of {LOSS_TARGETS}, got {sec.loss!r}")
    if sec.get("y_path", "fresh") not in Y_PATHS:
        raise ValueError(f"config.msdiff.y_path must be one of {Y_PATHS}, got {sec.y_path!r}")
    if float(sec.get("vs_sigma_max_y_start", 0.0)) < 0.0:
        raise ValueError(f"config.msdiff.vs_sigma_max_y_start must be >= 0 (0: the x SDE's "
                         f"sigma(T)), got {sec.vs_sigma_max_y_start!r}")
    if int(sec.get("vs_reach_target_steps", 1)) < 1:
        raise ValueError(f"config.msdiff.vs_reach_target_steps must be >= 1, got "
                         f"{sec.vs_reach_target_steps!r}")


def condition_channels(task: str, channels: int, *, mask_channel: bool = False) -> int:
    """Channels of the observation ``y`` of ``task`` for images with ``channels`` channels
    (inpainting with ``mask_channel``: one more)."""
    if task not in TASKS:
        raise ValueError(f"unknown conditional task {task!r}; choose one of {TASKS}")
    return channels + 1 if task == "inpainting" and mask_channel else channels


def section_condition_channels(sec, channels: int) -> int:
    """:func:`condition_channels` of a ``config.msdiff`` section."""
    return condition_channels(sec.task, channels, mask_channel=bool(_construction(sec)["mask_channel"]))


def _section_mask(sec, image_size: int):
    kind = _construction(sec)["mask"]
    return None if sec.task != "inpainting" or kind == "random" else inpaint_mask(image_size, kind)


def _eval_key(key):
    return jax.random.key(EVAL_OBSERVATION_SEED) if key is None else key


def make_observe(sec, image_size: int) -> Callable[..., Array]:
    """``observe_fn(images, key=None) -> y`` for the task of a ``config.msdiff`` section
    (:func:`observe` with its construction keys). Random inpainting masks come from ``key``; with
    ``key=None`` from a fixed key, per image index (the held-out observations of ``--mode=eval``
    / ``sample`` are the same in every run)."""
    mask, c = _section_mask(sec, image_size), _construction(sec)
    return lambda x, key=None: observe(
        sec.task, x, key=_eval_key(key), factor=int(sec.factor), mask=mask,
        sr_downsample=c["sr_downsample"], sr_y=c["sr_y"], mask_channel=bool(c["mask_channel"]),
        mask_coverage=float(c["mask_coverage"]))


def make_operator(sec, image_size: int) -> Callable[..., Array]:
    """``operator_fn(images, key=None) -> A(images)``: :func:`observation_operator` of a section
    (the same masks as :func:`make_observe` for the same ``key``)."""
    mask, c = _section_mask(sec, image_size), _construction(sec)
    return lambda x, key=None: observation_operator(
        sec.task, x, key=_eval_key(key), factor=int(sec.factor), mask=mask,
        sr_downsample=c["sr_downsample"], mask_coverage=float(c["mask_coverage"]))


def random_observation(sec) -> bool:
    """Whether the section's observation of an image is random (random inpainting masks): the
    training loss then draws it from its key."""
    return sec.task == "inpainting" and _construction(sec)["mask"] == "random"


def get_conditional_loss(sec, x_sde: SDE, score_fn: Callable, *, image_size: int,
                         channels: int, reduce_mean: bool = True,
                         likelihood_weighting: bool = False, eps: float = 1e-5,
                         rng_kwarg: str | None = None):
    """Training loss of a conditional experiment over plain image batches.

    Args:
      sec: the ``config.msdiff`` section (:func:`config_section`).
      x_sde: the SDE of ``x`` (from ``config.training.sde``).
      score_fn: ``score_fn(params, z, t, **kw)`` of a network with
        ``channels + section_condition_channels(sec, channels)`` input and output channels (e.g.
        ``jaxdiff.scores.get_score_fn(x_sde, model, train=True)``).
      image_size, channels: of the clean images.
      reduce_mean, likelihood_weighting, eps, rng_kwarg: as for
        :meth:`ConditionalEstimator.loss`.

    Returns:
      ``(loss_fn(params, key, images, step=None) -> (loss, aux), estimator, cond_score_fn)``:
      the loss makes ``y = observe(images)`` itself (random inpainting masks from a key split off
      the loss's key, fresh every step), so a training loop that feeds image batches runs
      unchanged. The loss is ``sec.loss`` ('joint' or 'x'; CDE: 'x'); ``cond_score_fn`` is
      the ``x``-score (what the sampler uses). VS-CMDE's loss has ``takes_step = True``: the
      train step passes ``step=`` (its ``sigma_max_y`` schedule); without it, the target.
    """
    validate_section(sec)
    est = section_estimator(sec, x_sde)
    target = "x" if est.name == "cde" else sec.get("loss", "x")
    cond_score = concat_conditional(score_fn, channels)
    inner = est.loss(concat_conditional(score_fn, channels, joint=target == "joint"),
                     reduce_mean=reduce_mean, likelihood_weighting=likelihood_weighting,
                     eps=eps, rng_kwarg=rng_kwarg, target=target)
    observe_fn = make_observe(sec, image_size)
    random_obs = random_observation(sec)

    def loss_fn(params, key, images, step=None):
        if random_obs:  # a fresh mask per image and step (the reference's data module)
            key, k_obs = jax.random.split(key)
            return inner(params, key, (images, observe_fn(images, k_obs)), step=step)
        return inner(params, key, (images, observe_fn(images)), step=step)

    loss_fn.takes_step = inner.takes_step  # type: ignore[attr-defined]
    return loss_fn, est, cond_score


def section_estimator(sec, x_sde: SDE) -> ConditionalEstimator:
    """The estimator of a conditional ``config.msdiff`` section (``estimator``, ``y_speed`` and
    VS-CMDE's ``vs_sigma_max_y_start`` / ``vs_reach_target_steps``)."""
    start = float(sec.get("vs_sigma_max_y_start", 0.0)) or None
    return get_estimator(sec.estimator, x_sde, y_speed=float(sec.y_speed),
                         sigma_max_y_start=start,
                         reach_target_steps=int(sec.get("vs_reach_target_steps", 1)))
