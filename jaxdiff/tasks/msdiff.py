"""MSDiff tasks: conditional (CDE / CDiffE / CMDE) and multi-scale (Haar) runs of
``launch/main.py`` (:class:`ConditionalTask` ``'msdiff_conditional'``, :class:`MultiScaleTask`
``'msdiff_multiscale'``; a config's ``msdiff.mode`` selects one in :func:`jaxdiff.tasks.get_task`).

A config with a ``config.msdiff`` section (``configs/msdiff_*.py``) changes four things of a plain
run; everything else (data pipeline, optimiser, EMA, sharded step, checkpoints, logging) is shared:

* **network**: conditional runs build the network with ``C + section_condition_channels(sec, C)``
  input/output channels (it sees ``[x_t, upsample(y_t)]``); multi-scale runs build it at the
  stage's coefficient-block size ``ms.block_shape(stage)`` (:func:`network_config`);
* **score function**: conditional runs use the plain score function of the ``x`` SDE on the
  stacked channels (:func:`jaxdiff.conditional.concat_conditional` picks the ``x`` channels);
  multi-scale runs wrap the network for the stage's multi-speed SDE ``ms.sde(stage)``
  (:func:`get_score_fns`);
* **loss** (train and held-out): :func:`jaxdiff.conditional.get_conditional_loss` or
  :func:`jaxdiff.multiscale.multiscale_loss`, both over the plain image batches the pipeline
  yields (:func:`get_loss_fn`);
* **sampling**: conditional runs draw ``x | y`` for ``y = observe(held-out images)`` with the
  estimator's PC sampler and save a grid of (condition, sample, truth) triplets with the PSNR of
  the samples (:meth:`ConditionalTask.sample`, :meth:`ConditionalTask.snapshot`); multi-scale
  sampling needs every stage's network: :func:`multiscale_sample` takes the per-stage run
  directories (``--stage_workdirs``); snapshot sampling inside a single-stage run is skipped with
  a log line.

Unconditional metrics (bits/dim, the sample-quality metrics) do not apply to these models: the
tasks skip those evaluators (listed under ``skipped`` in the report) and add their own
(:class:`ConditionalMetrics`: PSNR, SSIM, consistency, diversity, and LPIPS / target FID when
configured).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import conditional, multiscale, parallel
from jaxdiff.data import eval_dataset, resolve_data_dir
from jaxdiff.eval import evaluators as evaluators_lib
from jaxdiff.eval import metrics as metrics_lib
from jaxdiff.tasks.base import Task, register_task
from jaxdiff.train.config import ConfigError
from jaxdiff.train.evaluate import load_params
from jaxdiff.train.experiment import check_workdir
from jaxdiff.train.sampling import save_image_grid, to_uint8, write_grid
from jaxdiff.train.step import get_score_fns as plain_score_fns

__all__ = ["MSDiffSetup", "setup", "network_config", "get_score_fns", "get_loss_fn",
           "conditional_sampler", "condition_image", "psnr", "save_triplet_grid",
           "heldout_images", "draw_conditional", "multiscale_sample", "ConditionalPSNR",
           "ConditionalMetrics", "conditional_metrics",
           "ConditionalTask", "MultiScaleTask"]


@dataclasses.dataclass(frozen=True)
class MSDiffSetup:
    """What a run needs to know about its ``config.msdiff`` section.

    Fields:
      mode: ``'conditional'`` or ``'multiscale'``.
      section: the ``config.msdiff`` ConfigDict.
      image_shape: ``(H, W, C)`` of the data images.
      net_shape: ``(H', W', C')`` of one network input (``C' = C + C_y`` for conditional runs,
        ``ms.block_shape(stage)`` for multi-scale runs).
      net_config: a copy of the config whose ``data`` section describes the network input (what
        :func:`jaxdiff.models.get_model` and :func:`jaxdiff.data.example_shape` read).
      ms: the :class:`jaxdiff.multiscale.HaarMultiScale` (multi-scale runs), else ``None``.
      stage: the trained stage (multi-scale runs), else ``None``.
    """

    mode: str
    section: Any
    image_shape: tuple
    net_shape: tuple
    net_config: Any
    ms: multiscale.HaarMultiScale | None = None
    stage: int | None = None


def _section(config):
    return config.get("msdiff", None) if hasattr(config, "get") else None


def _error(msg: str):
    return ConfigError(msg)


def network_config(config):
    """A copy of ``config`` whose ``data.num_channels`` / ``data.image_size`` are those of the
    network input (conditional: ``C + section_condition_channels(sec, C)`` channels; multi-scale:
    ``image_size / 2**stage``). A config without ``msdiff`` is returned as is."""
    sec = _section(config)
    if sec is None:
        return config
    net = config.copy_and_resolve_references()
    if sec.mode == "conditional":
        c = int(config.data.num_channels)
        net.data.num_channels = c + conditional.section_condition_channels(sec, c)
    elif sec.mode == "multiscale":
        net.data.image_size = int(config.data.image_size) // 2 ** int(sec.stage)
    else:
        raise _error(f"config.msdiff.mode: must be 'conditional' or 'multiscale', got {sec.mode!r}")
    return net


def setup(config, sde) -> MSDiffSetup | None:
    """The :class:`MSDiffSetup` of ``config`` for the base SDE ``sde`` (``None`` without a
    ``config.msdiff`` section).

    Raises:
      ConfigError naming the key when the config asks for something these models cannot do: toy
      data, discrete-time training (``training.continuous=False``), a sampler other than
      ``sampling.method='pc'`` or
      ``sampling.probability_flow=True``.
    """
    sec = _section(config)
    if sec is None:
        return None
    if config.data.dataset == "toy":
        raise _error("config.msdiff needs image data; config.data.dataset='toy'")
    if not config.training.continuous:
        raise _error("config.training.continuous=False: the msdiff losses sample continuous "
                     "times; set config.training.continuous=True")
    s = config.sampling
    if s.method != "pc":
        raise _error(f"config.sampling.method={s.method!r}: msdiff runs sample with their own "
                     "predictor-corrector samplers; set config.sampling.method='pc'")
    if s.probability_flow:
        raise _error("config.sampling.probability_flow=True is not supported by the msdiff "
                     "samplers")
    size, ch = int(config.data.image_size), int(config.data.num_channels)
    image_shape = (size, size, ch)
    net = network_config(config)
    net_shape = (int(net.data.image_size), int(net.data.image_size), int(net.data.num_channels))
    if sec.mode == "conditional":
        return MSDiffSetup("conditional", sec, image_shape, net_shape, net)
    ms = multiscale.from_config(sec, sde, size, ch)
    stage = int(sec.stage)
    if tuple(ms.block_shape(stage)) != net_shape:
        raise AssertionError(f"network shape {net_shape} != block {ms.block_shape(stage)}")
    return MSDiffSetup("multiscale", sec, image_shape, net_shape, net, ms=ms, stage=stage)


def get_score_fns(config, model, sde, ms_setup: MSDiffSetup):
    """``(train_score_fn, eval_score_fn)`` of the network (dropout on / off).

    Conditional runs: the plain score functions of the ``x`` SDE ``sde`` (acting on the stacked
    ``[x, y]`` channels). Multi-scale runs: the network as a score function of the stage's
    multi-speed SDE ``ms.sde(stage)`` (per-coefficient ``alpha``, ``sigma``; time label
    ``t * 999``), on coefficient blocks of ``ms.block_shape(stage)``.
    """
    if ms_setup.mode == "conditional":
        return plain_score_fns(config, model, sde)
    assert ms_setup.ms is not None and ms_setup.stage is not None
    return plain_score_fns(config, model, ms_setup.ms.sde(ms_setup.stage))


def get_loss_fn(config, sde, score_fn, *, train: bool) -> Callable:
    """``loss_fn(params, key, images) -> (loss, aux)`` of an msdiff run over plain image batches
    ``(B, H, W, C)``.

    Args:
      config: a config with a ``msdiff`` section.
      sde: the base SDE (``config.training.sde``): the ``x`` SDE of the conditional estimator, or
        the SDE every Haar band runs at its own speed.
      score_fn: the network's score function (from :func:`get_score_fns`).
      train: dropout on (the score function gets ``rng=``).

    Returns:
      Conditional: :func:`jaxdiff.conditional.get_conditional_loss` (``y = observe(images)``
      inside); multi-scale: :func:`jaxdiff.multiscale.multiscale_loss` of the stage. Both use
      ``training.reduce_mean`` and ``training.loss_eps``; the conditional one also
      ``training.likelihood_weighting``.
    """
    ms_setup = setup(config, sde)
    if ms_setup is None:
        raise ValueError("get_loss_fn: config has no msdiff section")
    return _loss_fn(config, ms_setup, sde, score_fn, train=train)


def _loss_fn(config, ms_setup: MSDiffSetup, sde, score_fn, *, train: bool) -> Callable:
    t = config.training
    rng_kwarg = "rng" if train else None
    if ms_setup.mode == "conditional":
        loss_fn, _, _ = conditional.get_conditional_loss(
            ms_setup.section, sde, score_fn, image_size=ms_setup.image_shape[0],
            channels=ms_setup.image_shape[2], reduce_mean=t.reduce_mean,
            likelihood_weighting=t.likelihood_weighting, eps=t.loss_eps, rng_kwarg=rng_kwarg)
        return loss_fn
    assert ms_setup.ms is not None and ms_setup.stage is not None
    return multiscale.multiscale_loss(ms_setup.ms, ms_setup.stage, score_fn,
                                      reduce_mean=t.reduce_mean,
                                      likelihood_weighting=t.likelihood_weighting,
                                      eps=t.loss_eps, rng_kwarg=rng_kwarg)


# ---- conditional sampling -------------------------------------------------------------------
def conditional_sampler(config, sde, score_fn, num_samples: int):
    """``(sample(params, key, y) -> (x, nfe), estimator)``: the estimator's PC sampler of
    ``x | y`` with ``config.sampling`` (``predictor``, ``corrector``, ``snr``, ``n_steps_each``,
    ``num_steps`` (0: ``sde.N``), ``noise_removal``, ``eps``) and ``config.msdiff.y_path``
    (``resample_y`` for a section without it). VS-CMDE samples with its target ``sigma_max_y``.

    Args:
      config: a conditional msdiff config.
      sde: the ``x`` SDE.
      score_fn: the network's (eval) score function on stacked ``[x, y]`` channels.
      num_samples: the batch ``B`` (one condition per sample: ``y`` is ``(B, *y_shape)``).
    """
    sec = _section(config)
    if sec is None or sec.mode != "conditional":
        raise ValueError("conditional_sampler needs config.msdiff.mode='conditional'")
    est = conditional.section_estimator(sec, sde)
    c = int(config.data.num_channels)
    cond_score = conditional.concat_conditional(score_fn, c)
    s = config.sampling
    size = int(config.data.image_size)
    sampler = est.pc_sampler(cond_score, (int(num_samples), size, size, c),
                             num_steps=s.num_steps or sde.N,
                             resample_y=bool(sec.get("resample_y", True)),
                             y_path=sec.get("y_path", None),
                             **_pc_options(est.pc_sampler, s))
    return sampler, est


def condition_image(sec, y, image_shape: Sequence[int], centered: bool) -> np.ndarray:
    """A viewable model-space image of each condition ``y``, of the images' shape ``(B, H, W, C)``.

    Super-resolution: ``y`` at full resolution (a low-resolution ``y`` upsampled, nearest);
    inpainting: the masked image (with a mask channel: hidden pixels at the lowest value; without,
    as observed: hidden pixels at 0); edges: the Sobel magnitude scaled to the full range per image.
    """
    y = np.asarray(y, np.float32)
    h, w, c = (int(v) for v in image_shape)
    lo = -1.0 if centered else 0.0
    if sec.task == "super_resolution":
        return np.asarray(conditional.upsample(jnp.asarray(y), (h, w)))
    if sec.task == "inpainting":
        if y.shape[-1] == c:
            return y
        img, mask = y[..., :c], y[..., c:c + 1]
        return np.where(mask > 0.5, img, lo).astype(np.float32)
    if sec.task == "edges":
        peak = y.reshape(y.shape[0], -1).max(axis=1).reshape(-1, 1, 1, 1)
        v = y / np.maximum(peak, 1e-12)
        return (2.0 * v - 1.0 if centered else v).astype(np.float32)
    raise ValueError(f"unknown conditional task {sec.task!r}")


def psnr(x, truth, centered: bool) -> np.ndarray:
    """Per-image PSNR (dB) of ``x`` against ``truth`` (both ``(B, ...)`` model-space images,
    clipped to the data range, peak 1 in ``[0, 1]`` units)."""
    x, truth = np.asarray(x, np.float64), np.asarray(truth, np.float64)
    if x.shape != truth.shape:
        raise ValueError(f"psnr: shapes differ, {x.shape} vs {truth.shape}")
    return metrics_lib.psnr_db(metrics_lib.mse(_unit(x, centered), _unit(truth, centered)))


def save_triplet_grid(path: str, cond, x, truth, *, centered: bool, pad: int = 1,
                      scale: int = 0) -> np.ndarray:
    """Write a PNG grid of (condition, sample, truth) triplets; return the uint8 grid.

    Args:
      path: output PNG.
      cond, x, truth: ``(N, H, W, C)`` model-space images (``cond`` from :func:`condition_image`).
      centered: data in ``[-1, 1]`` (else ``[0, 1]``).
      pad: white pixels between images (triplets are separated by ``3 * pad``).
      scale: pixel repetition (0: at least 256 pixels per side).

    Returns:
      The grid ``(rows * (H + pad) + pad, cols * (3 W + 5 pad) + pad [, C])`` before scaling,
      repeated ``scale`` times.
    """
    trip = [to_uint8(a, centered) for a in (cond, x, truth)]
    if not trip[0].shape == trip[1].shape == trip[2].shape:
        raise ValueError(f"condition, sample and truth shapes differ: "
                         f"{[a.shape for a in trip]}")
    n, h, w, c = trip[0].shape
    cols = max(1, int(math.ceil(math.sqrt(n / 3.0))))
    rows = int(math.ceil(n / cols))
    cell_w = 3 * w + 2 * pad + 3 * pad
    grid = np.full((rows * (h + pad) + pad, cols * cell_w + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        y0, x0 = pad + r * (h + pad), pad + col * cell_w
        for j in range(3):
            grid[y0:y0 + h, x0 + j * (w + pad): x0 + j * (w + pad) + w] = trip[j][i]
    return write_grid(path, grid, scale)


def heldout_images(config, data_dir: str, n: int) -> np.ndarray:
    """The first ``n`` model-space images ``(n, H, W, C)`` of the eval split (unshuffled)."""
    ds = eval_dataset(config, data_dir, batch_size=int(n), process_index=0, process_count=1)
    if len(ds) == 0:
        raise ValueError(f"{n} conditional samples need {n} held-out images; the "
                         f"{config.data.eval_split!r} split has fewer (lower --num_samples or "
                         f"config.sampling.num_samples)")
    return np.asarray(ds[0]["x"], np.float32)


def draw_conditional(config, sampler, params, key, images) -> dict:
    """Conditional samples for the held-out ``images``: ``y = observe(images)``,
    ``x = sampler(params, key, y)``.

    Returns:
      ``{'x', 'y', 'cond' (viewable y), 'truth', 'nfe', 'psnr' (per image),
      'psnr_condition' (per image; super-resolution / inpainting: the viewable condition against
      the truth, a baseline)}`` as numpy arrays.
    """
    sec = _section(config)
    images = jnp.asarray(images, jnp.float32)
    y = conditional.make_observe(sec, int(config.data.image_size))(images)
    x_dev, nfe = sampler(params, key, y)
    x, y_np, truth = (np.asarray(jax.device_get(a)) for a in (x_dev, y, images))
    cond = condition_image(sec, y_np, truth.shape[1:], config.data.centered)
    out = {"x": x, "y": y_np, "cond": cond, "truth": truth, "nfe": np.asarray(nfe),
           "psnr": psnr(x, truth, config.data.centered)}
    if sec.task != "edges":
        out["psnr_condition"] = psnr(cond, truth, config.data.centered)
    return out


def _summary(d: dict) -> dict:
    s = {"psnr": float(np.mean(d["psnr"])), "nfe": int(d["nfe"])}
    if "psnr_condition" in d:
        s["psnr_condition"] = float(np.mean(d["psnr_condition"]))
    return s


def _pc_options(fn: Callable, s) -> dict:
    """``config.sampling``'s PC options for ``fn`` (the end-of-sampling option is
    ``noise_removal`` = the noise-free mean of the last update; ``eps`` only when set, else
    the sampler's own end time)."""
    return dict(predictor=None if s.predictor == "none" else s.predictor,
                corrector=None if s.corrector == "none" else s.corrector, snr=s.snr,
                n_corrector_steps=s.n_steps_each, **({} if s.eps is None else {"eps": s.eps}),
                **{_end_kw(fn): s.noise_removal})


def _end_kw(fn: Callable) -> str:
    return "noise_removal" if "noise_removal" in inspect.signature(fn).parameters else "denoise"


def multiscale_sample(config, workdir: str, stage_workdirs: Sequence[str] | None, *,
                      num_samples: int | None = None, mesh=None) -> dict:
    """Coarse-to-fine samples of a multi-scale model from its ``L + 1`` per-stage runs.

    Args:
      config: any stage's validated config (``config.msdiff.stage`` is replaced per run).
      workdir: where ``samples/`` is written (may be one of the stage runs).
      stage_workdirs: the run directories of stages ``0, 1, ..., L`` in that order (each trained
        with ``config.msdiff.stage`` = its index); their newest (or ``config.eval.checkpoint_step``)
        EMA params are used.
      num_samples: default ``config.sampling.num_samples``.
      mesh: the device mesh of the stage tasks.

    Writes ``<workdir>/samples/samples_multiscale.npz`` (``x``, ``images``, ``nfe``,
    ``steps`` (per stage)) and ``.png``. Returns ``{'steps', 'npz', 'png', 'nfe', 'shape'}``.

    Raises:
      ConfigError when ``stage_workdirs`` is missing or has the wrong length.
    """
    sec = _section(config)
    L = len(tuple(sec.end_times))
    dirs = [d for d in (stage_workdirs or []) if d]
    if len(dirs) != L + 1:
        raise _error(f"multi-scale sampling needs the checkpoints of all {L + 1} stages (one "
                     f"training run per config.msdiff.stage = 0..{L}): pass "
                     f"--stage_workdirs=DIR_0,...,DIR_{L} (stage order); got {list(dirs)!r}")
    workdir = check_workdir(workdir)
    params, steps, fns, ms = [], [], [], None
    for s, d in enumerate(dirs):
        cfg = config.copy_and_resolve_references()
        cfg.msdiff.stage = s
        p, st, task = load_params(MultiScaleTask(cfg, mesh), d, step=config.eval.checkpoint_step)
        params.append(p)
        steps.append(st)
        ms = task.msdiff.ms
        fns.append(lambda ps, c, t, s=s, f=task.score_fn: f(ps[s], c, t))
    assert ms is not None  # dirs is not empty (L + 1 >= 1 stages)
    n = int(num_samples or config.sampling.num_samples)
    smp = config.sampling
    sampler = multiscale.multiscale_sampler(
        ms, fns, n, num_steps=smp.num_steps or ms.base.N, handoff=sec.get("handoff", "mean"),
        **_pc_options(multiscale.multiscale_sampler, smp))
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2000 + sum(steps))
    x, nfe = sampler(tuple(params), key)
    x = np.asarray(jax.device_get(x))
    out = os.path.join(workdir, "samples")
    npz = os.path.join(out, "samples_multiscale.npz")
    png = os.path.join(out, "samples_multiscale.png")
    if parallel.is_main_process():
        os.makedirs(out, exist_ok=True)
        save_image_grid(png, x, centered=config.data.centered)
        np.savez(npz, x=x, images=to_uint8(x, config.data.centered), nfe=np.asarray(nfe),
                 steps=np.asarray(steps))
    return {"steps": steps, "npz": npz, "png": png, "nfe": int(nfe), "shape": list(x.shape)}


# ---- the tasks ------------------------------------------------------------------------------
class _MSDiffTask(Task):
    """Shared by both MSDiff tasks: the network / score / loss of :func:`setup`; of the generic
    evaluators only the held-out loss runs (bits/dim and the sample-quality metrics need an
    unconditional full-resolution model: skipped, listed in the report's ``skipped``)."""

    why = ""

    def network_config(self):
        """The setup's copy of the config describing the network input (:func:`setup`, which
        also checks what these models cannot do); ``self.msdiff`` is the :class:`MSDiffSetup`."""
        self.msdiff = setup(self.config, self.sde)
        return self.msdiff.net_config

    def make_score_fns(self) -> tuple:
        """:func:`get_score_fns` of the setup."""
        return get_score_fns(self.config, self.model, self.sde, self.msdiff)

    def check_sampling_config(self) -> None:
        """The estimator's / multi-scale PC sampler reads ``config.sampling``; :func:`setup`
        has already refused what it cannot do (a method other than ``'pc'``, the probability
        flow)."""

    def make_loss(self, score_fn, *, train: bool):
        """:func:`get_loss_fn` (conditional or multi-scale loss over image batches)."""
        return _loss_fn(self.config, self.msdiff, self.sde, score_fn, train=train)

    @property
    def skip(self) -> dict:  # type: ignore[override]
        """Every generic evaluator but the held-out loss."""
        return {e.name: self.why for e in evaluators_lib.from_config(self.config, self)
                if e.name != "held_out_loss"}

    def report_fields(self) -> dict:
        """``msdiff_mode``, ``skipped`` (and ``stage`` for multi-scale runs)."""
        out = {"msdiff_mode": self.msdiff.mode, "skipped": self.skipped()}
        if self.msdiff.stage is not None:
            out["stage"] = self.msdiff.stage
        return out


def _get(section, key: str, default):
    return section.get(key, default) if hasattr(section, "get") else default


def _unit(x, centered: bool) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.clip((x + 1.0) / 2.0 if centered else x, 0.0, 1.0)


def conditional_metrics(config, d: dict, extra_samples: Sequence = (), *,
                        lpips_fn: Callable | None = None,
                        fid_features: Callable | None = None) -> dict:
    """The papers' metrics of conditional samples (:mod:`jaxdiff.eval.metrics`), all on images
    clipped to ``[0, 1]``:

    * ``psnr``, ``ssim`` (Wang et al. 2004: Gaussian window 11, sigma 1.5) of the sample against
      the truth (means over the observations);
    * ``consistency_psnr`` / ``consistency_mse``: the forward operator of the task
      (:func:`jaxdiff.conditional.make_operator`) applied to the sample against the same operator
      applied to the truth (inpainting: the observed pixels of the held-out masks, hidden ones
      zeroed as in the reference's metric; super-resolution: the low-resolution images; edges: the
      Sobel magnitudes; PSNR with peak 1);
    * ``diversity`` (with ``extra_samples``, ``K - 1 >= 1`` more samples for the same
      observations): the mean pairwise root-mean-square distance of the ``K`` samples per
      observation (:func:`jaxdiff.eval.metrics.diversity`), averaged over observations;
    * ``lpips`` (with ``lpips_fn(a, b) -> (B,)`` on ``[0, 1]`` images), and ``lpips_diversity``
      with ``extra_samples``;
    * ``target_fid`` (with ``fid_features(images01) -> (N, D)``): FID between the samples and
      their targets (the truths), ``N >= 2``.

    Args:
      config: a conditional msdiff config.
      d: from :func:`draw_conditional` (``x``, ``truth``, ``y``, ...).
      extra_samples: more ``(B, H, W, C)`` model-space samples for the same observations.
    """
    sec = _section(config)
    c = config.data.centered
    x, truth = _unit(d["x"], c), _unit(d["truth"], c)
    out = {"psnr": float(np.mean(metrics_lib.psnr_db(metrics_lib.mse(x, truth)))),
           "ssim": float(np.mean(metrics_lib.ssim(x, truth)))}
    op = conditional.make_operator(sec, int(config.data.image_size))
    ax, at = (np.asarray(op(jnp.asarray(a, jnp.float32)), np.float64) for a in (x, truth))
    cons = metrics_lib.consistency(ax, at)
    out["consistency_psnr"] = float(np.mean(cons["psnr"]))
    out["consistency_mse"] = float(np.mean(cons["mse"]))
    samples = [x] + [_unit(e, c) for e in extra_samples]
    if len(samples) >= 2:
        out["diversity"] = float(np.mean(metrics_lib.diversity(np.stack(samples))))
    if lpips_fn is not None:
        out["lpips"] = float(np.mean(lpips_fn(x, truth)))
        if len(samples) >= 2:
            out["lpips_diversity"] = float(np.mean(metrics_lib.diversity(np.stack(samples),
                                                               distance=lpips_fn)))
    if fid_features is not None:
        out["target_fid"] = metrics_lib.fid_from_features(fid_features(x), fid_features(truth))
    return out


class ConditionalMetrics(evaluators_lib.Evaluator):
    """``--mode=eval`` of a conditional run (``config.eval.enable_sampling``): samples for
    ``config.sampling.num_samples`` held-out observations and :func:`conditional_metrics`:
    ``conditional_psnr``, ``conditional_psnr_condition``, ``conditional_ssim``,
    ``conditional_consistency_psnr``, ``conditional_consistency_mse``, ``conditional_diversity``,
    ``conditional_nfe``, ``conditional_num_samples``, and, when configured,
    ``conditional_lpips`` / ``conditional_lpips_diversity`` / ``conditional_target_fid``.

    Config keys (defaults when absent): ``eval.conditional_diversity_samples`` (3: samples per
    observation for the diversity; < 2 skips it and draws one), ``eval.lpips_weights`` ('': a
    local file from :mod:`jaxdiff.eval.lpips`), ``eval.inception_weights`` ('': the converted FID
    Inception; target FID needs ``num_samples >= 2``), ``eval.lpips_net`` ('alex')."""

    name = "conditional_psnr"

    def __init__(self, task):
        self.task = task

    def run(self, params, ctx) -> dict:
        """The metrics above."""
        c = ctx.config
        n = c.sampling.num_samples
        sampler, _ = conditional_sampler(c, self.task.sde, self.task.score_fn, n)
        images = heldout_images(c, ctx.data_dir, n)
        key = jax.random.fold_in(ctx.key, 4)
        d = draw_conditional(c, sampler, params, key, images)
        k = int(_get(c.eval, "conditional_diversity_samples", 3))
        extra = [draw_conditional(c, sampler, params, jax.random.fold_in(key, 1 + i),
                                  images)["x"] for i in range(max(k, 1) - 1)]
        lpips_fn = fid_fn = None
        if _get(c.eval, "lpips_weights", ""):
            from jaxdiff.eval import lpips as lpips_lib
            lpips_fn = lpips_lib.lpips_distance_fn(c.eval.lpips_weights,
                                                   net=_get(c.eval, "lpips_net", "alex"))
        if _get(c.eval, "inception_weights", "") and n >= 2:
            from jaxdiff.eval.features import extract_features, inception_feature_fn
            fn, ip = inception_feature_fn(c.eval.inception_weights, self.task.mesh)
            fid_fn = lambda im: extract_features(fn, ip, np.asarray(im, np.float32))[0]
        out = {f"conditional_{k}": v for k, v in _summary(d).items()}
        out.update({f"conditional_{k}": v for k, v in conditional_metrics(
            c, d, extra, lpips_fn=lpips_fn, fid_features=fid_fn).items()})
        out["conditional_num_samples"] = int(n)
        return out


ConditionalPSNR = ConditionalMetrics  # the evaluator's former name


@register_task("msdiff_conditional")
class ConditionalTask(_MSDiffTask):
    """Conditional (CDE / CDiffE / CMDE) training of ``p(x | y)``: the network sees
    ``[x_t, upsample(y_t)]``; snapshots and ``--mode=sample`` draw ``x | y`` for held-out
    observations (triplet grids with PSNR)."""

    why = "p(x | y) has no unconditional likelihood"

    def __init__(self, config, mesh=None):
        super().__init__(config, mesh)
        self._snapshot: tuple | None = None

    def extra_evaluators(self, periodic: bool) -> list:
        """:class:`ConditionalMetrics` in ``--mode=eval`` with ``config.eval.enable_sampling``."""
        return [ConditionalMetrics(self)] if not periodic and self.config.eval.enable_sampling \
            else []

    def snapshot(self, params, step: int, *, workdir: str, data_dir: str) -> dict:
        """``config.sampling.num_samples`` held-out images, their conditions and one sample each:
        ``<workdir>/samples/step_<step>.png`` (triplet grid) and ``step_<step>.json`` (mean
        PSNR); logs the PSNR and returns no scalars."""
        c = self.config
        n = c.sampling.num_samples
        if self._snapshot is None:
            self._snapshot = (conditional_sampler(c, self.sde, self.score_fn, n)[0],
                              heldout_images(c, data_dir, n))
        sampler, images = self._snapshot
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(c.seed), 2), step)
        d = draw_conditional(c, sampler, params, key, images)
        if parallel.is_main_process():
            out = os.path.join(workdir, "samples", f"step_{step:08d}")
            save_triplet_grid(out + ".png", d["cond"], d["x"], d["truth"],
                              centered=c.data.centered)
            with open(out + ".json", "w") as f:
                json.dump({"step": int(step), **_summary(d)}, f)
        logging.info("step %d: conditional samples PSNR %.2f dB", step, float(np.mean(d["psnr"])))
        return {}

    def sample(self, workdir: str, *, num_samples: int | None = None,
               stage_workdirs: Sequence[str] | None = None) -> dict:
        """``--mode=sample``: loads the EMA params of the newest (or
        ``config.eval.checkpoint_step``) checkpoint in ``workdir``, takes the first
        ``num_samples`` (default ``config.sampling.num_samples``) held-out images, observes them
        and draws one sample per condition; writes ``<workdir>/samples/samples_<step>.npz``
        (``x``, ``y``, ``cond``, ``truth``, ``images`` (uint8 samples), ``nfe``, ``psnr``) and
        ``samples_<step>.png`` (rows of (condition, sample, truth) triplets). Returns ``{'step',
        'npz', 'png', 'nfe', 'shape', 'y_shape', 'psnr', ['psnr_condition']}``."""
        config = self.config
        params, step, _ = load_params(self, workdir, step=config.eval.checkpoint_step)
        n = int(num_samples or config.sampling.num_samples)
        sampler, _ = conditional_sampler(config, self.sde, self.score_fn, n)
        images = heldout_images(config, resolve_data_dir(config, workdir), n)
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2000 + step)
        d = draw_conditional(config, sampler, params, key, images)
        out = os.path.join(workdir, "samples")
        npz = os.path.join(out, f"samples_{step}.npz")
        png = os.path.join(out, f"samples_{step}.png")
        if parallel.is_main_process():
            os.makedirs(out, exist_ok=True)
            save_triplet_grid(png, d["cond"], d["x"], d["truth"], centered=config.data.centered)
            np.savez(npz, images=to_uint8(d["x"], config.data.centered), **d)
        return {"step": step, "npz": npz, "png": png, "shape": list(d["x"].shape),
                "y_shape": list(d["y"].shape), **_summary(d)}


@register_task("msdiff_multiscale")
class MultiScaleTask(_MSDiffTask):
    """One stage of a Haar multi-scale model: the network at the stage's coefficient block, the
    score of the stage's multi-speed SDE. Snapshot sampling is skipped (one stage's network
    cannot sample alone, logged once); ``--mode=sample`` needs every stage's run
    (:func:`multiscale_sample`)."""

    why = "one stage's network is not a full-resolution model"

    def __init__(self, config, mesh=None):
        super().__init__(config, mesh)
        self._logged = False

    def make_sde(self):
        """The base SDE of the bands: :func:`jaxdiff.multiscale.base_sde` (the reference's
        log-SNR VP SDE for ``config.msdiff.schedule='log_snr'``, else ``config.training.sde``)."""
        return multiscale.base_sde(_section(self.config), super().make_sde())

    def snapshot(self, params, step: int, *, workdir: str, data_dir: str) -> dict:
        """Skipped (logged once)."""
        if not self._logged:
            logging.info("multiscale stage %d: snapshot sampling skipped (sampling needs the "
                         "networks of all %d stages: --mode=sample --stage_workdirs=...)",
                         self.msdiff.stage, self.msdiff.ms.levels + 1)
            self._logged = True
        return {}

    def sample(self, workdir: str, *, num_samples: int | None = None,
               stage_workdirs: Sequence[str] | None = None) -> dict:
        """:func:`multiscale_sample` from ``stage_workdirs`` (the runs of stages 0..L)."""
        return multiscale_sample(self.config, workdir, stage_workdirs, num_samples=num_samples,
                                 mesh=self.mesh)
