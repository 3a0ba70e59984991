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
from flax import struct

from jaxdiff.losses import dsm_per_example, perturb
from jaxdiff.multispeed import MultiSpeedSDE
from jaxdiff.samplers.base import keep_dtype
from jaxdiff.samplers.pc import constrain, pc_loop, pc_step
from jaxdiff.samplers.predictors import Step
from jaxdiff.sde import SDE, batch_broadcast

Array = jax.Array
CondScoreFn = Callable[..., Array]

__all__ = [
    "ConditionalEstimator", "get_estimator", "ESTIMATORS", "joint_to_conditional",
    "concat_conditional", "observe", "TASKS", "downsample", "upsample", "inpaint_mask",
    "sobel_edges", "split_batch", "config_section", "validate_section", "condition_channels",
    "make_observe", "get_conditional_loss",
]

ESTIMATORS = ("cde", "cdiffe", "cmde")


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
      name: ``'cde' | 'cdiffe' | 'cmde'`` (static).

    Build with :meth:`cde`, :meth:`cdiffe`, :meth:`cmde` or :func:`get_estimator`.
    """

    x_sde: SDE
    y_sde: SDE | None
    name: str = struct.field(pytree_node=False, default="cde")

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
             rng_kwarg: str | None = None):
        """Denoising score matching for the estimator's target.

        ``t ~ U(eps, T)``, ``x_t = alpha_x x + sigma_x z_x``, ``y_t`` from :meth:`diffuse_y`; the
        per-example loss is ``reduce(|s sigma_x + z_x|^2)`` with ``s = cond_score_fn(params, x_t,
        t, y_t)`` (:func:`jaxdiff.losses.dsm_per_example`), or with ``likelihood_weighting``
        ``reduce(|s + z_x / sigma_x|^2) g_x(t)^2``. Its
        minimiser is ``E[-z_x / sigma_x | x_t, y_t] = grad_x log p_t(x_t, y_t)`` (the ``x``-part of
        the joint score; for CDE, ``grad_x log p_t(x_t | y)``).

        Args:
          cond_score_fn: ``cond_score_fn(params, x, t, y)``.
          reduce_mean: mean (else sum) over data dimensions.
          likelihood_weighting: weight by ``g(t)^2 / sigma(t)^2`` instead of 1 (in ``sigma``-units).
          eps: smallest time.
          rng_kwarg: if given, ``cond_score_fn`` is called with ``**{rng_kwarg: key}`` (dropout).

        Returns:
          ``loss_fn(params, key, batch) -> (loss, aux)`` with ``batch = (x, y)`` or
          ``{'x': x, 'y': y}`` and ``aux = {'losses': (B,), 't': (B,)}``.
        """
        x_sde = self.x_sde

        def loss_fn(params, key, batch):
            x, y = split_batch(batch)
            if x.ndim < 2 or y.ndim < 2 or x.shape[0] != y.shape[0]:
                raise ValueError(f"x and y must be (B, ...) with the same B, got {x.shape} and {y.shape}")
            k_t, k_x, k_y, k_net = jax.random.split(key, 4)
            t = jax.random.uniform(k_t, (x.shape[0],), x.dtype, eps, x_sde.T)
            z = jax.random.normal(k_x, x.shape, x.dtype)
            x_t, std = perturb(x_sde, x, t, z)
            y_t = self.diffuse_y(k_y, y, t)
            kwargs = {} if rng_kwarg is None else {rng_kwarg: k_net}
            score = cond_score_fn(params, x_t, t, y_t, **kwargs)
            g2 = x_sde.sde(jnp.zeros_like(x), t)[1] ** 2 if likelihood_weighting else None
            losses = dsm_per_example(score, z, std, g2=g2, reduce_mean=reduce_mean)
            return jnp.mean(losses), {"losses": losses, "t": t}

        return loss_fn

    # ---- sampling ---------------------------------------------------------------------------
    def pc_sampler(self, cond_score_fn: CondScoreFn, shape: tuple[int, ...], *,
                   predictor="euler_maruyama", corrector=None, snr: float = 0.16,
                   n_corrector_steps: int = 1, num_steps: int | None = None,
                   noise_removal: bool = True, eps: float = 1e-3, resample_y: bool = True,
                   dtype=jnp.float32, sharding=None):
        """Predictor-corrector sampler of ``x ~ p(x | y)``.

        The reverse SDE of ``x_sde`` runs in the library's one predictor-corrector loop
        (:func:`jaxdiff.samplers.pc_loop`); at each step the score is
        ``cond_score_fn(params, x, t, y_t)`` with ``y_t`` from :meth:`diffuse_y` (a fresh draw per
        step, as in the paper, or one fixed noise path with ``resample_y=False``; CDE uses ``y``).

        Args:
          cond_score_fn: ``cond_score_fn(params, x, t, y)``.
          shape: ``(B, *x_shape)``.
          predictor, corrector, snr, n_corrector_steps: as for :func:`jaxdiff.samplers.pc_sampler`.
          num_steps: time steps (default ``x_sde.N``).
          noise_removal: return the noise-free mean of the last update (score_sde's noise
            removal, no extra evaluation) instead of the noisy state.
          eps: last time.
          resample_y: fresh ``y_t`` each step (else one noise draw for the whole path).
          sharding: optional sharding of the ``(B, ...)`` state.

        Returns:
          ``sample(params, key, cond) -> (x, nfe)``, jitted; ``cond`` is ``y``, of shape
          ``(B, *y_shape)`` (one condition per sample; broadcast a single one to draw many samples
          of the same posterior).
        """
        x_sde = self.x_sde if num_steps is None else self.x_sde.with_steps(num_steps)
        n_steps = x_sde.N  # type: ignore[attr-defined]  # every concrete SDE declares N
        est = self
        score = keep_dtype(cond_score_fn)
        # the inner step's "params" are (params, y_t): the condition of the current step.
        inner = pc_step(x_sde, lambda py, x, t: score(py[0], x, t, py[1]), predictor=predictor,
                        corrector=corrector, snr=snr, n_corrector_steps=n_corrector_steps)
        nfe = inner.nfe * n_steps

        @jax.jit
        def sample(params, key, cond=None):
            y = cond
            if y is None or y.shape[0] != shape[0]:
                raise ValueError(f"y has batch {None if y is None else y.shape[0]}, the samples "
                                 f"{shape[0]}: give one y per sample")
            k_prior, k_path, k_loop = jax.random.split(key, 3)
            x = constrain(x_sde.prior_sampling(k_prior, shape, dtype), sharding)
            y = y.astype(dtype)
            z_path = jax.random.normal(k_path, y.shape, dtype)
            timesteps = jnp.linspace(x_sde.T, eps, n_steps, dtype=dtype)

            def update(params, k, x, t):
                k_y, k_step = jax.random.split(k)
                y_t = est.diffuse_y(k_y, y, t, z=None if resample_y else z_path)
                return inner.update((params, y_t), k_step, x, t)

            x, x_mean = pc_loop(Step(update, inner.nfe), params, k_loop, x, timesteps,
                                sharding=sharding)
            return (x_mean if noise_removal else x), jnp.asarray(nfe, jnp.int32)

        return sample


def get_estimator(name: str, x_sde: SDE, *, y_speed: float | None = None) -> ConditionalEstimator:
    """The estimator ``name`` in ``'cde' | 'cdiffe' | 'cmde'`` (``y_speed`` is needed by CMDE only)."""
    if name == "cde":
        return ConditionalEstimator.cde(x_sde)
    if name == "cdiffe":
        return ConditionalEstimator.cdiffe(x_sde)
    if name == "cmde":
        if y_speed is None:
            raise ValueError("the CMDE estimator needs y_speed")
        return ConditionalEstimator.cmde(x_sde, y_speed)
    raise ValueError(f"unknown conditional estimator {name!r}; choose one of {ESTIMATORS}")


# ---- score functions ------------------------------------------------------------------------
def joint_to_conditional(joint_score_fn: Callable, x_shape: tuple, y_shape: tuple) -> CondScoreFn:
    """``cond_score_fn(params, x, t, y)`` from a score of the flat joint state ``[x, y]``.

    ``joint_score_fn(params, xy, t)`` acts on ``(B, Dx + Dy)``; the result is the ``x``-part of its
    output reshaped to ``x_shape`` (the CDiffE / CMDE score, or with the exact mixture score of
    :meth:`ConditionalEstimator.joint_sde`, their exact targets).
    """
    dx, dy = math.prod(x_shape), math.prod(y_shape)

    def cond_score_fn(params, x, t, y, **kwargs):
        b = x.shape[0]
        xy = jnp.concatenate([x.reshape(b, dx), y.reshape(b, dy).astype(x.dtype)], axis=-1)
        return joint_score_fn(params, xy, t, **kwargs)[:, :dx].reshape(x.shape)

    return cond_score_fn


def upsample(y: Array, size: tuple[int, int]) -> Array:
    """Nearest-neighbour resize of ``(B, h, w, C)`` to ``(B, *size, C)`` (integer factors)."""
    b, h, w, c = y.shape
    H, W = size
    if H % h or W % w:
        raise ValueError(f"cannot upsample {(h, w)} to {size} by integer factors")
    return jnp.repeat(jnp.repeat(y, H // h, axis=1), W // w, axis=2)


def concat_conditional(score_fn: Callable, x_channels: int) -> CondScoreFn:
    """Conditional score from an image network that sees ``x_t`` and ``y_t`` stacked on channels.

    ``score_fn(params, z, t, **kw)`` (e.g. from :func:`jaxdiff.scores.get_score_fn` for the ``x``
    SDE, with a network of ``x_channels + y_channels`` input and output channels) is called on
    ``z = concat([x, upsample(y)], -1)``; its first ``x_channels`` output channels are the score.
    ``y`` of lower resolution (super-resolution) is upsampled (nearest) to ``x``'s size.
    """

    def cond_score_fn(params, x, t, y, **kwargs):
        if x.shape[-1] != x_channels:
            raise ValueError(f"x has {x.shape[-1]} channels, expected {x_channels}")
        if y.ndim == 4 and y.shape[1:3] != x.shape[1:3]:
            y = upsample(y, x.shape[1:3])
        z = jnp.concatenate([x, y.astype(x.dtype)], axis=-1)
        return score_fn(params, z, t, **kwargs)[..., :x_channels]

    return cond_score_fn


# ---- observations of the paper's tasks -------------------------------------------------------
def downsample(x: Array, factor: int) -> Array:
    """Average pooling of ``(B, H, W, C)`` by ``factor`` (super-resolution's low-res input)."""
    b, h, w, c = x.shape
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"factor {factor} does not divide the image size {(h, w)}")
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


def observe(task: str, x: Array, *, factor: int = 2, mask: Array | None = None) -> Array:
    """The condition ``y`` of a task for clean images ``x`` of shape ``(B, H, W, C)``.

    * ``'super_resolution'``: ``downsample(x, factor)``;
    * ``'inpainting'``: ``concat([x * mask, mask], -1)`` (the mask as an extra channel; default
      central square);
    * ``'edges'``: ``sobel_edges(x)``.
    """
    if task == "super_resolution":
        return downsample(x, factor)
    if task == "inpainting":
        m = inpaint_mask(x.shape[1]) if mask is None else jnp.asarray(mask, x.dtype)
        m = jnp.broadcast_to(m, x.shape[:-1] + (1,)).astype(x.dtype)
        return jnp.concatenate([x * m, m], axis=-1)
    if task == "edges":
        return sobel_edges(x)
    raise ValueError(f"unknown conditional task {task!r}; choose one of {TASKS}")


# ---- configs and training plumbing -----------------------------------------------------------
def config_section(*, estimator: str = "cmde", task: str = "super_resolution",
                   y_speed: float = 0.25, factor: int = 2, mask: str = "center",
                   resample_y: bool = True):
    """The ``config.msdiff`` section of a conditional experiment (``configs/msdiff_*.py``).

    Keys: ``mode='conditional'``, ``estimator`` ('cde' | 'cdiffe' | 'cmde'), ``task``
    ('super_resolution' | 'inpainting' | 'edges'), ``y_speed`` (CMDE), ``factor``
    (super-resolution), ``mask`` ('center' | 'half', inpainting), ``resample_y`` (sampler).
    """
    import ml_collections
    sec = ml_collections.ConfigDict(dict(
        mode="conditional", estimator=estimator, task=task, y_speed=float(y_speed),
        factor=int(factor), mask=mask, resample_y=bool(resample_y)))
    validate_section(sec)
    return sec


def validate_section(sec) -> None:
    """Check a conditional ``config.msdiff`` section; raises ``ValueError`` naming the bad key."""
    allowed = {"mode", "estimator", "task", "y_speed", "factor", "mask", "resample_y"}
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
    if sec.mask not in ("center", "half"):
        raise ValueError(f"config.msdiff.mask must be 'center' or 'half', got {sec.mask!r}")


def condition_channels(task: str, channels: int) -> int:
    """Channels of the observation ``y`` of ``task`` for images with ``channels`` channels."""
    if task not in TASKS:
        raise ValueError(f"unknown conditional task {task!r}; choose one of {TASKS}")
    return channels + 1 if task == "inpainting" else channels


def make_observe(sec, image_size: int) -> Callable[[Array], Array]:
    """``observe_fn(images) -> y`` for the task of a ``config.msdiff`` section."""
    mask = inpaint_mask(image_size, sec.mask) if sec.task == "inpainting" else None
    return lambda x: observe(sec.task, x, factor=int(sec.factor), mask=mask)


def get_conditional_loss(sec, x_sde: SDE, score_fn: Callable, *, image_size: int,
                         channels: int, reduce_mean: bool = True,
                         likelihood_weighting: bool = False, eps: float = 1e-5,
                         rng_kwarg: str | None = None):
    """Training loss of a conditional experiment over plain image batches.

    Args:
      sec: the ``config.msdiff`` section (:func:`config_section`).
      x_sde: the SDE of ``x`` (from ``config.training.sde``).
      score_fn: ``score_fn(params, z, t, **kw)`` of a network with
        ``channels + condition_channels(task, channels)`` input and output channels (e.g.
        ``jaxdiff.scores.get_score_fn(x_sde, model, train=True)``).
      image_size, channels: of the clean images.
      reduce_mean, likelihood_weighting, eps, rng_kwarg: as for
        :meth:`ConditionalEstimator.loss`.

    Returns:
      ``(loss_fn(params, key, images) -> (loss, aux), estimator, cond_score_fn)``: the loss makes
      ``y = observe(images)`` itself, so a training loop that feeds image batches runs unchanged.
    """
    validate_section(sec)
    est = get_estimator(sec.estimator, x_sde, y_speed=float(sec.y_speed))
    cond_score = concat_conditional(score_fn, channels)
    inner = est.loss(cond_score, reduce_mean=reduce_mean, likelihood_weighting=likelihood_weighting,
                     eps=eps, rng_kwarg=rng_kwarg)
    observe_fn = make_observe(sec, image_size)

    def loss_fn(params, key, images):
        return inner(params, key, (images, observe_fn(images)))

    return loss_fn, est, cond_score
