"""Multi-scale (non-uniform) diffusion in the Haar-wavelet domain, sampled coarse to fine.

Batzolis, Stanczuk, Schönlieb, Etmann, "Non-Uniform Diffusion Models" (2022).

An image ``x`` of shape ``(H, W, C)`` is mapped by an ``L``-level orthonormal Haar transform to
coefficients of the same shape in the packed (Mallat) layout: the top-left ``(H/2^L, W/2^L)`` block
holds the approximation, and the detail bands of level ``l`` (``l = 1`` finest) fill the rest of
the top-left ``(H/2^(l-1), W/2^(l-1))`` block. The layout nests: the top-left ``(H/2^s, W/2^s)``
block of the coefficients is the ``(L - s)``-level transform of the level-``s`` approximation image.

The diffusion is a :class:`jaxdiff.multispeed.MultiSpeedSDE` on the coefficients: the details of
level ``l`` run the base SDE at speed ``1 / T_l`` and reach its end (the prior) at time ``T_l``
(``T_1 < T_2 < ... < T_L <= 1``); the approximation runs at speed 1. After ``T_l`` the level-``l``
details are frozen at prior noise, so for ``t`` in ``(T_s, T_{s+1}]`` only the top-left
``(H/2^s, W/2^s)`` block moves. :func:`multiscale_sampler` exploits it: it starts at the coarsest
resolution, runs the reverse SDE there, and each time ``t`` crosses a ``T_l`` it appends fresh prior
noise as the level-``l`` details and continues at twice the resolution. Most steps run at low
resolution, which is where the speed-up comes from.

Because the orthonormal transform keeps isotropic noise isotropic, an orthonormal Haar domain
changes nothing in the model of the data; only the non-uniform speeds do.

Reference settings (GBATZOLIS/MSDiff, ``lightning_modules/MultiScaleSdeGenerativeModel.py``,
``sde_lib.SNR_VP_SDE``, ``losses.get_general_sde_loss_fn(multiscale=True)``,
``sampling/unconditional.py``), the defaults of :func:`config_section`:

- end times ``T_k = k / (L + 1)`` (:func:`reference_end_times`; the approximation ends at 1);
- a VP SDE with a log-SNR linear in time, 10 at ``t = 0`` to -10 at ``T``
  (:class:`LogSNRVPSDE`), each band at its own speed, so band ``k`` has log-SNR
  ``10 - 20 t / T_k`` and reaches -10 exactly at its ``T_k``;
- the likelihood weighting ``g_band(t)^2`` per coefficient in the loss
  (:func:`multiscale_loss` ``likelihood_weighting=True``);
- between scales the sampler hands on the noise-free mean of the last update of the coarser
  stage (``handoff='mean'``: the reference's per-scale ``x_mean if denoise``), not its noisy state.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxdiff.losses import dsm_per_example, perturb
from jaxdiff.multispeed import MultiSpeedSDE
from jaxdiff.samplers.base import keep_dtype
from jaxdiff.samplers.pc import constrain, pc_loop, pc_step
from jaxdiff.sde import SDE, batch_broadcast

Array = jax.Array

__all__ = ["haar_forward", "haar_inverse", "haar_step", "haar_step_inverse", "HaarMultiScale",
           "LogSNRVPSDE", "reference_end_times", "multiscale_sampler", "multiscale_loss",
           "stage_time_range", "ideal_speedup", "config_section", "base_sde", "from_config",
           "HANDOFFS", "SCHEDULES"]

HANDOFFS = ("mean", "noisy")
SCHEDULES = ("log_snr", "base")


# ---- Haar wavelets -------------------------------------------------------------------------
def _check_image(x: Array, levels: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"images must have shape (B, H, W, C), got {x.shape}")
    if levels < 0:
        raise ValueError(f"levels must be >= 0, got {levels}")
    h, w = x.shape[1:3]
    if h % (2**levels) or w % (2**levels):
        raise ValueError(f"image size {(h, w)} is not divisible by 2^levels = {2**levels}")


def haar_step(x: Array) -> Array:
    """One level of the orthonormal 2-D Haar transform of ``(B, H, W, C)``, packed as
    ``[[a, h], [v, d]]`` (approximation, horizontal, vertical, diagonal details; each
    ``(B, H/2, W/2, C)``). The approximation is ``2 x`` the 2x2 average."""
    _check_image(x, 1)
    x00, x01 = x[:, 0::2, 0::2], x[:, 0::2, 1::2]
    x10, x11 = x[:, 1::2, 0::2], x[:, 1::2, 1::2]
    a = (x00 + x01 + x10 + x11) / 2
    h = (x00 - x01 + x10 - x11) / 2
    v = (x00 + x01 - x10 - x11) / 2
    d = (x00 - x01 - x10 + x11) / 2
    return jnp.concatenate([jnp.concatenate([a, h], axis=2), jnp.concatenate([v, d], axis=2)], axis=1)


def haar_step_inverse(c: Array) -> Array:
    """Inverse of :func:`haar_step` (the transform is orthonormal: its own transpose)."""
    _check_image(c, 1)
    H, W = c.shape[1] // 2, c.shape[2] // 2
    a, h = c[:, :H, :W], c[:, :H, W:]
    v, d = c[:, H:, :W], c[:, H:, W:]
    x00 = (a + h + v + d) / 2
    x01 = (a - h + v - d) / 2
    x10 = (a + h - v - d) / 2
    x11 = (a - h - v + d) / 2
    top = jnp.stack([x00, x01], axis=3).reshape(c.shape[0], H, 2 * W, c.shape[3])
    bot = jnp.stack([x10, x11], axis=3).reshape(c.shape[0], H, 2 * W, c.shape[3])
    return jnp.stack([top, bot], axis=2).reshape(c.shape)


def haar_forward(x: Array, levels: int) -> Array:
    """``levels``-level orthonormal Haar transform of ``(B, H, W, C)`` in the packed layout (same
    shape); ``H`` and ``W`` must be divisible by ``2^levels``."""
    _check_image(x, levels)
    h, w = x.shape[1:3]
    for _ in range(levels):
        x = x.at[:, :h, :w].set(haar_step(x[:, :h, :w]))
        h, w = h // 2, w // 2
    return x


def haar_inverse(c: Array, levels: int) -> Array:
    """Inverse of :func:`haar_forward`."""
    _check_image(c, levels)
    if levels == 0:
        return c
    h, w = c.shape[1] // 2 ** (levels - 1), c.shape[2] // 2 ** (levels - 1)
    for _ in range(levels):
        c = c.at[:, :h, :w].set(haar_step_inverse(c[:, :h, :w]))
        h, w = 2 * h, 2 * w
    return c


# ---- the reference's per-scale SDE ---------------------------------------------------------
class LogSNRVPSDE(SDE):
    """VP SDE whose log-SNR ``lambda(t) = log(alpha^2 / sigma^2)`` is linear in time, from
    ``log_snr_max`` at ``t = 0`` to ``log_snr_min`` at ``t = 1`` (MSDiff's ``SNR_VP_SDE`` with
    ``gamma(t) = 2 t``): ``alpha^2 = sigmoid(lambda)``, ``sigma^2 = sigmoid(-lambda)``,
    ``beta(t) = -lambda'(t) sigma(t)^2``, ``dx = -beta x / 2 dt + sqrt(beta) dw``.

    Run at speed ``1 / T_k`` inside :class:`HaarMultiScale` it is the reference's per-band SDE
    with end time ``T_k`` (log-SNR ``log_snr_max`` -> ``log_snr_min`` over ``[0, T_k]``; the
    reference pins ``log_snr_max`` at ``t = eps = 1e-3`` instead of 0, a log-SNR shift of at most
    ``20 eps / T_k``).
    """

    log_snr_max: float = 10.0
    log_snr_min: float = -10.0
    N: int = struct.field(pytree_node=False, default=1000)

    def log_snr(self, t: Array) -> Array:
        return self.log_snr_max + (self.log_snr_min - self.log_snr_max) * jnp.asarray(t)

    def beta(self, t: Array) -> Array:
        """``-lambda'(t) sigma(t)^2`` (``g(t)^2``)."""
        return (self.log_snr_max - self.log_snr_min) * jax.nn.sigmoid(-self.log_snr(t))

    def sde(self, x, t):
        beta = batch_broadcast(self.beta(t), x)
        return -0.5 * beta * x, jnp.sqrt(self.beta(t))

    def marginal_prob(self, x, t):
        lam = batch_broadcast(self.log_snr(t), x)
        return jnp.sqrt(jax.nn.sigmoid(lam)) * x, jnp.sqrt(jax.nn.sigmoid(-self.log_snr(t)))


def reference_end_times(levels: int) -> tuple:
    """The reference's end times ``T_k = k / (L + 1)``, ``k = 1..L`` (MSDiff's
    ``T_scale = scale_index / num_scales`` with ``num_scales = L + 1``: ``d1 .. dL`` end at
    ``k / (L + 1)``, the approximation ``aL`` at 1)."""
    if int(levels) < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    return tuple((k + 1) / (int(levels) + 1) for k in range(int(levels)))


# ---- the multi-scale SDE -------------------------------------------------------------------
class HaarMultiScale(struct.PyTreeNode):
    """Multi-scale diffusion of ``(H, W, C)`` images through their ``L``-level Haar coefficients.

    Fields:
      base: the uniform SDE (VP, sub-VP or VE) each band runs at its own speed.
      image_shape: ``(H, W, C)`` (static).
      end_times: ``(T_1, ..., T_L)`` (static), strictly increasing in ``(0, T]``: the level-``l``
        details finish diffusing at ``T_l``; ``L = len(end_times)``.

    Build with :meth:`create`.
    """

    base: SDE
    image_shape: tuple = struct.field(pytree_node=False, default=(32, 32, 3))
    end_times: tuple = struct.field(pytree_node=False, default=(0.5,))

    @classmethod
    def create(cls, base: SDE, image_shape: Sequence[int], end_times: Sequence[float]) -> HaarMultiScale:
        """Validated constructor (see the class fields)."""
        image_shape = tuple(int(s) for s in image_shape)
        end_times = tuple(float(t) for t in end_times)
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
        if not end_times:
            raise ValueError("end_times must hold at least one level")
        if any(not (0.0 < t <= base.T) for t in end_times) or any(
                a >= b for a, b in zip(end_times, end_times[1:])):
            raise ValueError(f"end_times must increase strictly within (0, {base.T}], got {end_times}")
        L = len(end_times)
        if image_shape[0] % 2**L or image_shape[1] % 2**L:
            raise ValueError(f"image size {image_shape[:2]} is not divisible by 2^{L}")
        return cls(base=base, image_shape=image_shape, end_times=end_times)

    @property
    def levels(self) -> int:
        return len(self.end_times)

    def block_shape(self, stage: int) -> tuple:
        """Shape ``(H/2^s, W/2^s, C)`` of the coefficients that move at stage ``s``."""
        H, W, C = self.image_shape
        return (H // 2**stage, W // 2**stage, C)

    def speed_map(self, stage: int = 0) -> Array:
        """Speeds ``(H/2^s, W/2^s, C)`` of the stage-``s`` coefficient block: ``1 / T_l`` on the
        level-``l`` details (``l > s``), 1 on the approximation. (Full shape, so that
        ``marginal_coeffs`` has the shape of a batch and :func:`jaxdiff.scores.get_score_fn` works
        on the stage SDE.)"""
        if not 0 <= stage <= self.levels:
            raise ValueError(f"stage must be in [0, {self.levels}], got {stage}")
        h, w, c = self.block_shape(stage)
        out = np.ones((h, w, c))
        for l in range(self.levels, stage, -1):          # coarse to fine: finer bands overwrite
            size_h, size_w = self.image_shape[0] // 2 ** (l - 1), self.image_shape[1] // 2 ** (l - 1)
            band = np.zeros((h, w, c), bool)
            band[:size_h, :size_w] = True
            band[:size_h // 2, :size_w // 2] = False
            out[band] = self.base.T / self.end_times[l - 1]
        return jnp.asarray(out, jnp.result_type(float))

    def sde(self, stage: int = 0) -> MultiSpeedSDE:
        """The multi-speed SDE of the stage-``s`` coefficient block (``s = 0``: all coefficients)."""
        return MultiSpeedSDE.create(self.base, self.speed_map(stage))

    def stage_at(self, t: float) -> int:
        """Number of detail levels frozen at time ``t``: ``#{l : T_l < t}``."""
        return int(sum(te < t for te in self.end_times))

    def schedule(self, num_steps: int, eps: float = 1e-3) -> list[tuple[int, int, int]]:
        """Static partition of the grid ``linspace(T, eps, num_steps)`` into stages:
        ``[(stage, first_index, last_index_exclusive), ...]`` from the coarsest stage down to 0
        (stages may be empty)."""
        grid = np.linspace(self.base.T, eps, num_steps)
        stages = np.array([self.stage_at(t) for t in grid])
        if stages[-1] != 0:
            raise ValueError(f"the last time eps={eps} must lie below T_1={self.end_times[0]}")
        out, start = [], 0
        for s in range(int(stages[0]), -1, -1):
            stop = start + int(np.sum(stages == s))
            out.append((s, start, stop))
            start = stop
        return out

    def to_coeffs(self, x: Array) -> Array:
        """Images ``(B, H, W, C)`` to packed Haar coefficients."""
        return haar_forward(x, self.levels)

    def to_image(self, c: Array) -> Array:
        """Packed Haar coefficients ``(B, H, W, C)`` to images."""
        return haar_inverse(c, self.levels)


def stage_time_range(ms: HaarMultiScale, stage: int, eps: float = 1e-5) -> tuple[float, float]:
    """Times ``(T_s, T_{s+1}]`` in which the stage-``s`` block is the moving state (``T_0 = eps``,
    ``T_{L+1} = T``): the range the stage's score network is used in, and trained on."""
    lo = eps if stage == 0 else ms.end_times[stage - 1]
    hi = ms.base.T if stage == ms.levels else ms.end_times[stage]
    return lo, hi


def multiscale_loss(ms: HaarMultiScale, stage: int, score_fn, *, reduce_mean: bool = True,
                    likelihood_weighting: bool = False, eps: float = 1e-5,
                    rng_kwarg: str | None = None):
    """Denoising score matching of the stage-``s`` network of a multi-scale model.

    Images ``(B, H, W, C)`` are Haar-transformed; the top-left ``ms.block_shape(s)`` coefficients
    are diffused by ``ms.sde(s)`` (per-band speeds) to ``t ~ U(T_s, T_{s+1})``
    (:func:`stage_time_range`), and the loss is ``reduce(|score * sigma + z|^2)`` with the
    per-coefficient ``sigma`` (:func:`jaxdiff.losses.dsm_per_example`), or, with
    ``likelihood_weighting`` (the reference's choice), ``reduce(|score + z / sigma|^2 g^2)`` with
    each coefficient's own squared diffusion ``g_band(t)^2 = g(tau)^2 / T_l`` of the multi-speed SDE
    (MSDiff ``get_general_sde_loss_fn(multiscale=True, likelihood_weighting=True)``).

    Args:
      ms: the multi-scale diffusion.
      stage: ``0..L`` (0 is full resolution).
      score_fn: ``score_fn(params, c, t)`` on coefficients of ``ms.block_shape(stage)``.
      reduce_mean: mean (else sum) over dimensions.
      likelihood_weighting: weight every coefficient by its own ``g(t)^2`` (see above).
      eps: the smallest time of stage 0.
      rng_kwarg: if given, ``score_fn`` also gets ``**{rng_kwarg: key}`` (dropout).

    Returns:
      ``loss_fn(params, key, images) -> (loss, {'losses': (B,), 't': (B,)})``.
    """
    sde = ms.sde(stage)
    lo, hi = stage_time_range(ms, stage, eps)
    h, w, _ = ms.block_shape(stage)

    def loss_fn(params, key, images):
        if images.shape[1:] != ms.image_shape:
            raise ValueError(f"images must be (B, *{ms.image_shape}), got {images.shape}")
        k_t, k_z, k_net = jax.random.split(key, 3)
        c = ms.to_coeffs(images)[:, :h, :w]
        t = jax.random.uniform(k_t, (c.shape[0],), c.dtype, lo, hi)
        z = jax.random.normal(k_z, c.shape, c.dtype)
        c_t, std = perturb(sde, c, t, z)
        kwargs = {} if rng_kwarg is None else {rng_kwarg: k_net}
        score = score_fn(params, c_t, t, **kwargs)
        if likelihood_weighting:
            g2 = sde.sde(jnp.zeros_like(c), t)[1] ** 2             # per coefficient
            flat = (jnp.square(score + z / std) * g2).reshape(c.shape[0], -1)
            losses = jnp.mean(flat, -1) if reduce_mean else jnp.sum(flat, -1)
        else:
            losses = dsm_per_example(score, z, std, reduce_mean=reduce_mean)
        return jnp.mean(losses), {"losses": losses, "t": t}

    return loss_fn


def ideal_speedup(ms: HaarMultiScale, num_steps: int, eps: float = 1e-3) -> float:
    """Speed-up over uniform sampling if a step's cost is proportional to its number of pixels."""
    sched = ms.schedule(num_steps, eps)
    cost = sum((stop - start) / 4**s for s, start, stop in sched)
    return num_steps / cost


def multiscale_sampler(ms: HaarMultiScale, score_fns, batch_size: int, *,
                       predictor="euler_maruyama", corrector=None, snr: float = 0.16,
                       n_corrector_steps: int = 1, num_steps: int = 1000,
                       noise_removal: bool = True, handoff: str = "mean", eps: float = 1e-3,
                       dtype=jnp.float32, sharding=None, return_coeffs: bool = False):
    """Coarse-to-fine predictor-corrector sampler of a :class:`HaarMultiScale` diffusion.

    Stage ``s`` (``L`` down to 0) runs the reverse SDE of ``ms.sde(s)`` on the top-left
    ``(H/2^s, W/2^s, C)`` coefficient block in the library's one predictor-corrector loop
    (:func:`jaxdiff.samplers.pc_loop`, one per stage) for the steps of the grid
    ``linspace(T, eps, num_steps)`` with ``T_s < t <= T_{s+1}``; between stages the block doubles,
    the new level-``s`` details being fresh prior noise (where they sit in a full-resolution run),
    the coarser coefficients being the noise-free mean of the last update (``handoff='mean'``, the
    reference's) or its noisy state (``handoff='noisy'``).

    Args:
      ms: the multi-scale diffusion.
      score_fns: one ``score_fn(params, c, t)`` for every stage (a sequence of ``L + 1``, index =
        stage, acting on packed coefficients of ``ms.block_shape(s)``), or one callable for all
        (e.g. an exact score or a fully convolutional network). All get the same ``params``; with
        one network per scale pass e.g. a dict of parameters and let each function pick its own.
      batch_size: number of samples.
      predictor, corrector, snr, n_corrector_steps: as for :func:`jaxdiff.samplers.pc_sampler`.
      num_steps: steps of the time grid (the same grid a uniform sampler would use).
      noise_removal: return the noise-free mean of the last update (score_sde's noise removal, no
        extra evaluation) instead of the noisy state.
      handoff: what a coarser stage hands to the next one: ``'mean'`` (the noise-free mean of its
        last update, MSDiff's ``x_mean if denoise`` at the end of every scale) or ``'noisy'`` (the
        state itself, the exact continuation of one full-resolution reverse SDE).
      eps: last time (below ``T_1``).
      sharding: optional sharding of the ``(B, ...)`` state (applies at every resolution).
      return_coeffs: return Haar coefficients instead of images.

    Returns:
      ``sample(params, key, cond=None) -> (x, nfe)``, jitted: images ``(B, H, W, C)`` and the
      number of score evaluations (at any resolution). ``cond`` must be ``None`` (the stages'
      parameters all travel in ``params``, e.g. the tuple of per-stage parameters).
    """
    L = ms.levels
    if callable(score_fns):
        score_fns = [score_fns] * (L + 1)
    score_fns = list(score_fns)
    if len(score_fns) != L + 1:
        raise ValueError(f"need {L + 1} score functions (one per stage 0..{L}), got {len(score_fns)}")
    if handoff not in HANDOFFS:
        raise ValueError(f"handoff must be one of {HANDOFFS}, got {handoff!r}")
    sched = ms.schedule(num_steps, eps)
    stage_sdes = {s: ms.sde(s).with_steps(num_steps) for s, _, _ in sched}
    steps = {s: pc_step(stage_sdes[s], keep_dtype(score_fns[s]), predictor=predictor,
                        corrector=corrector, snr=snr, n_corrector_steps=n_corrector_steps)
             for s, _, _ in sched}
    nfe = sum(steps[s].nfe * (stop - start) for s, start, stop in sched)

    @jax.jit
    def sample(params, key, cond=None):
        if cond is not None:
            raise ValueError("multiscale_sampler takes no cond (pass every stage's parameters in "
                             "params)")
        k_prior, k_loop, k_details = jax.random.split(key, 3)
        timesteps = jnp.linspace(ms.base.T, eps, num_steps, dtype=dtype)
        s0 = sched[0][0]
        sde0 = stage_sdes[s0]
        c = constrain(sde0.prior_sampling(k_prior, (batch_size,) + ms.block_shape(s0), dtype), sharding)
        c_mean = c
        for s, start, stop in sched:
            if c.shape[1:] != ms.block_shape(s):
                # grow: the level-(s+1) details join as prior noise of the stage-s SDE
                sde_s = stage_sdes[s]
                noise = sde_s.prior_sampling(jax.random.fold_in(k_details, s),
                                             (batch_size,) + ms.block_shape(s), dtype)
                h, w = c.shape[1:3]
                coarse = c_mean if handoff == "mean" else c
                c = constrain(noise.at[:, :h, :w].set(coarse), sharding)
                c_mean = c
            if stop == start:
                continue
            c, c_mean = pc_loop(steps[s], params, k_loop, c, timesteps[start:stop],
                                sharding=sharding, first_index=start)
        out = c_mean if noise_removal else c
        return (out if return_coeffs else ms.to_image(out)), jnp.asarray(nfe, jnp.int32)

    return sample


def config_section(*, end_times: Sequence[float] | None = None, levels: int | None = None,
                   stage: int = 0, schedule: str = "log_snr", log_snr_max: float = 10.0,
                   log_snr_min: float = -10.0, handoff: str = "mean"):
    """The ``config.msdiff`` section of a multi-scale experiment (``configs/msdiff_multiscale.py``).

    Keys (defaults = the reference, GBATZOLIS/MSDiff):
      mode: ``'multiscale'``.
      end_times: ``T_1 < ... < T_L``; default ``k / (L + 1)`` (:func:`reference_end_times`, give
        ``levels``); ours were hand-picked (e.g. ``(0.3, 0.6)``).
      stage: the scale whose network a training run fits (one run per stage ``0..L``, as in the
        paper's independent per-scale networks).
      schedule: ``'log_snr'`` (the reference: :class:`LogSNRVPSDE` from ``log_snr_max`` to
        ``log_snr_min`` replaces ``config.training.sde`` as the base every band runs at its speed)
        or ``'base'`` (ours: ``config.training.sde`` itself, e.g. the linear-beta VP SDE).
      log_snr_max, log_snr_min: the log-SNR end points (10, -10).
      handoff: ``'mean'`` (reference) or ``'noisy'`` (ours), see :func:`multiscale_sampler`.

    The likelihood weighting is ``config.training.likelihood_weighting`` (True in the reference).
    A key left out means the reference's value, and only keys that differ from it are written
    (``mode``, ``end_times`` and ``stage`` always are).
    """
    import ml_collections
    if end_times is None:
        if levels is None:
            raise ValueError("config_section: give end_times or levels (reference T_k = k/(L+1))")
        end_times = reference_end_times(levels)
    end_times = tuple(float(t) for t in end_times)
    if levels is not None and int(levels) != len(end_times):
        raise ValueError(f"config.msdiff.end_times={end_times} has {len(end_times)} levels, "
                         f"not levels={levels}")
    if not 0 <= int(stage) <= len(end_times):
        raise ValueError(f"config.msdiff.stage must be in [0, {len(end_times)}], got {stage}")
    if schedule not in SCHEDULES:
        raise ValueError(f"config.msdiff.schedule must be one of {SCHEDULES}, got {schedule!r}")
    if handoff not in HANDOFFS:
        raise ValueError(f"config.msdiff.handoff must be one of {HANDOFFS}, got {handoff!r}")
    if not float(log_snr_max) > float(log_snr_min):
        raise ValueError(f"config.msdiff.log_snr_max={log_snr_max} must exceed "
                         f"log_snr_min={log_snr_min}")
    out = dict(mode="multiscale", end_times=end_times, stage=int(stage))
    # the reference's values are what an absent key means: only other choices are written
    for key, value, default in [("schedule", schedule, "log_snr"), ("handoff", handoff, "mean"),
                                ("log_snr_max", float(log_snr_max), 10.0),
                                ("log_snr_min", float(log_snr_min), -10.0)]:
        if value != default:
            out[key] = value
    return ml_collections.ConfigDict(out)


def base_sde(sec, sde: SDE) -> SDE:
    """The SDE every band runs at its speed: :class:`LogSNRVPSDE` for ``schedule='log_snr'``
    (with ``sde.N`` steps; ``sde`` is returned if it already is one), else ``sde``. A section
    without a ``schedule`` key means the reference's ``'log_snr'``."""
    schedule = sec.get("schedule", "log_snr")
    if schedule not in SCHEDULES:
        raise ValueError(f"config.msdiff.schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "base" or isinstance(sde, LogSNRVPSDE):
        return sde
    return LogSNRVPSDE(float(sec.get("log_snr_max", 10.0)), float(sec.get("log_snr_min", -10.0)),
                       N=int(getattr(sde, "N", 1000)))


def from_config(sec, base: SDE, image_size: int, channels: int) -> HaarMultiScale:
    """The :class:`HaarMultiScale` of a ``config.msdiff`` section (``mode='multiscale'``), on
    :func:`base_sde` of ``base``."""
    if sec.mode != "multiscale":
        raise ValueError(f"config.msdiff.mode must be 'multiscale', got {sec.mode!r}")
    handoff = sec.get("handoff", "mean")
    if handoff not in HANDOFFS:
        raise ValueError(f"config.msdiff.handoff must be one of {HANDOFFS}, got {handoff!r}")
    return HaarMultiScale.create(base_sde(sec, base), (image_size, image_size, channels),
                                 tuple(sec.end_times))
