"""``--mode=eval`` and ``--mode=sample``: load a checkpoint, compute metrics, write reports.

:func:`evaluate` computes, from the EMA parameters of the newest (or ``config.eval.checkpoint_step``)
checkpoint:

* ``held_out_loss``: the training loss on ``config.eval.num_loss_batches`` batches of the eval split;
* ``bits_per_dim`` (images): :func:`jaxdiff.likelihood.bits_per_dim` of
  ``config.eval.bpd_num_examples`` held-out uint8 images (probability-flow ODE, uniform
  dequantisation), and ``bits_per_dim_bound``: :func:`jaxdiff.likelihood.bound_bits_per_dim` of the
  same images (the variational bound, at least 16 draws per image);
* ``sliced_wasserstein`` (toy data): to fresh samples of the true distribution, plus
  ``sliced_wasserstein_floor`` (two independent true samples: the estimator's noise level);

and writes ``<workdir>/eval/report_<step>.json``. More metrics plug in through
:func:`register_eval_hook`: a hook ``hook(ctx: EvalContext) -> dict`` is called after the
built-in metrics and its items are merged into the report (``ctx.samples()`` draws, once, the
samples every hook shares).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import parallel
from jaxdiff.data import eval_dataset, resolve_data_dir
from jaxdiff.train import checkpoint as ckpt
from jaxdiff.train.config import validate_config
from jaxdiff.train.experiment import build_experiment, check_workdir
from jaxdiff.train.sampling import build_sampler, save_image_grid, save_scatter
from jaxdiff.train.step import get_loss_fn, make_eval_step

__all__ = ["evaluate", "sample", "EvalContext", "register_eval_hook", "EVAL_HOOKS",
           "load_params"]

EVAL_HOOKS: list = []


def register_eval_hook(hook: Callable[["EvalContext"], dict]) -> Callable:
    """Add ``hook(ctx) -> dict`` to every evaluation (usable as a decorator). Returns ``hook``."""
    if hook not in EVAL_HOOKS:
        EVAL_HOOKS.append(hook)
    return hook


@dataclasses.dataclass
class EvalContext:
    """What a metric needs: the config, the experiment (SDE, network, score function, mesh), the
    EMA (or raw) params, the checkpoint step, the data directory, the workdir and a PRNG key."""

    config: Any
    exp: Any
    params: Any
    step: int
    data_dir: str
    workdir: str
    key: jax.Array
    _samples: Optional[np.ndarray] = None

    def samples(self) -> np.ndarray:
        """``config.eval.num_samples`` samples (model space, numpy), drawn once and shared."""
        if self._samples is None:
            n = self.config.eval.num_samples
            chunk = min(n, self.config.sampling.num_samples)
            sampler = build_sampler(self.config, self.exp.sde, self.exp.score_fn,
                                    (chunk,) + self.exp.example_shape)
            keys = jax.random.split(jax.random.fold_in(self.key, 11), -(-n // chunk))
            xs = [np.asarray(jax.device_get(sampler(self.params, k)[0])) for k in keys]
            self._samples = np.concatenate(xs)[:n]
        return self._samples


def load_params(config, workdir: str, exp=None, *, step: Optional[int] = None,
                use_ema: bool = True):
    """``(params, step, exp)`` from a run's checkpoint (restored onto this process's mesh)."""
    exp = exp or build_experiment(config)
    state, meta = ckpt.restore_latest(workdir, exp.abstract_state, step=step)
    return (state.ema_params if use_ema else state.params), int(meta["step"]), exp


def _held_out_loss(ctx: EvalContext) -> float:
    c = ctx.config
    parallel.check_batch_size("config.eval.batch_size", c.eval.batch_size, ctx.exp.mesh)
    step_fn = make_eval_step(get_loss_fn(c, ctx.exp.sde, ctx.exp.score_fn, train=False),
                             ctx.exp.mesh)
    ds = eval_dataset(c, ctx.data_dir, process_index=jax.process_index(),
                      process_count=jax.process_count())
    n = min(len(ds), c.eval.num_loss_batches)
    if n == 0:
        raise ValueError(f"config.eval.batch_size={c.eval.batch_size} exceeds the "
                         f"{c.data.eval_split!r} split")
    keys = jax.random.split(jax.random.fold_in(ctx.key, 1), n)
    vals = [step_fn(ctx.params, keys[i], parallel.global_batch(ds[i]["x"], ctx.exp.mesh))
            for i in range(n)]
    return float(np.mean(jax.device_get(vals)))


def _bits_per_dim(ctx: EvalContext) -> dict:
    from jaxdiff.likelihood import bits_per_dim, bound_bits_per_dim
    c = ctx.config
    n = c.eval.bpd_num_examples
    ds = eval_dataset(c, ctx.data_dir, batch_size=n, process_index=0, process_count=1)
    if len(ds) == 0:
        raise ValueError(f"config.eval.bpd_num_examples={n} exceeds the eval split")
    images = jnp.asarray(ds[0]["image"])
    fn = bits_per_dim(ctx.exp.sde, ctx.exp.score_fn, centered=c.data.centered,
                      repeats=c.eval.bpd_repeats, rtol=c.eval.bpd_rtol, atol=c.eval.bpd_atol)
    bpd, nfe = fn(ctx.params, jax.random.fold_in(ctx.key, 2), images)
    bpd = np.asarray(jax.device_get(bpd))
    # The variational bound of the same images (one score evaluation per draw): the likelihood a
    # likelihood-weighted training loss implies; the probability-flow value is usually below it.
    bound = bound_bits_per_dim(ctx.exp.sde, ctx.exp.score_fn, centered=c.data.centered,
                               repeats=max(16, c.eval.bpd_repeats))
    bnd = np.asarray(jax.device_get(bound(ctx.params, jax.random.fold_in(ctx.key, 4), images)))
    se = lambda v: float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0  # noqa: E731
    return {"bits_per_dim": float(bpd.mean()), "bits_per_dim_stderr": se(bpd),
            "bits_per_dim_bound": float(bnd.mean()), "bits_per_dim_bound_stderr": se(bnd),
            "bpd_num_examples": int(len(bpd)), "bpd_nfe": int(nfe)}


def _toy_metrics(ctx: EvalContext) -> dict:
    from jaxdiff.data.toy import sample_toy
    from jaxdiff.eval.distances import sliced_wasserstein
    c = ctx.config
    x = ctx.samples()
    n = x.shape[0]
    rng = np.random.default_rng(c.seed + 12345)
    ref = sample_toy(c.data.toy, rng, n, c.data.dim)
    ref2 = sample_toy(c.data.toy, rng, n, c.data.dim)
    k = jax.random.fold_in(ctx.key, 3)
    sw = float(sliced_wasserstein(k, jnp.asarray(x), jnp.asarray(ref), c.eval.sw_projections))
    floor = float(sliced_wasserstein(k, jnp.asarray(ref2), jnp.asarray(ref),
                                     c.eval.sw_projections))
    return {"sliced_wasserstein": sw, "sliced_wasserstein_floor": floor, "num_samples": n}


def evaluate(config, workdir: str) -> dict:
    """Evaluate the run in ``workdir``; write and return the JSON report.

    Returns:
      A dict with ``step``, ``held_out_loss``, ``bits_per_dim`` (images, when
      ``config.eval.enable_bpd``), ``sliced_wasserstein`` (toy data, when
      ``config.eval.enable_sampling``) and every hook's metrics; written to
      ``<workdir>/eval/report_<step>.json`` by process 0.
    """
    validate_config(config)
    parallel.maybe_initialize_distributed(config.parallel)
    workdir = check_workdir(workdir)
    e = config.eval
    params, step, exp = load_params(config, workdir, step=e.checkpoint_step, use_ema=e.use_ema)
    ctx = EvalContext(config=config, exp=exp, params=params, step=step,
                      data_dir=resolve_data_dir(config, workdir), workdir=workdir,
                      key=jax.random.fold_in(jax.random.PRNGKey(config.seed), 1000 + step))
    report = {"step": step, "dataset": config.data.dataset, "sde": config.training.sde,
              "ema": bool(e.use_ema)}
    if e.enable_loss:
        report["held_out_loss"] = _held_out_loss(ctx)
    toy = config.data.dataset == "toy"
    if e.enable_bpd and not toy:
        report.update(_bits_per_dim(ctx))
    if e.enable_sampling and toy:
        report.update(_toy_metrics(ctx))
    for hook in EVAL_HOOKS:
        report.update(hook(ctx) or {})
    if parallel.is_main_process():
        out = os.path.join(workdir, "eval", f"report_{step}.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)
        logging.info("eval report: %s", out)
    return report


def sample(config, workdir: str, *, num_samples: Optional[int] = None) -> dict:
    """Draw samples from the EMA params of the newest checkpoint with ``config.sampling``.

    Writes ``<workdir>/samples/samples_<step>.npz`` (``x``: model-space float samples,
    ``images``: uint8 for image data, ``nfe``) and ``samples_<step>.png`` (grid, or scatter for
    toy data). Returns ``{'step', 'npz', 'png', 'nfe', 'shape'}``.
    """
    from jaxdiff.train.sampling import to_uint8
    validate_config(config)
    parallel.maybe_initialize_distributed(config.parallel)
    workdir = check_workdir(workdir)
    params, step, exp = load_params(config, workdir, step=config.eval.checkpoint_step)
    n = num_samples or config.sampling.num_samples
    sampler = build_sampler(config, exp.sde, exp.score_fn, (n,) + exp.example_shape)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2000 + step)
    x, nfe = sampler(params, key)
    x = np.asarray(jax.device_get(x))
    out = os.path.join(workdir, "samples")
    npz, png = os.path.join(out, f"samples_{step}.npz"), os.path.join(out, f"samples_{step}.png")
    if parallel.is_main_process():
        os.makedirs(out, exist_ok=True)
        arrays = {"x": x, "nfe": np.asarray(nfe)}
        if config.data.dataset == "toy":
            save_scatter(png, x)
        else:
            arrays["images"] = to_uint8(x, config.data.centered)
            save_image_grid(png, x, centered=config.data.centered)
        np.savez(npz, **arrays)
    return {"step": step, "npz": npz, "png": png, "nfe": int(nfe), "shape": list(x.shape)}


# Sample-quality metrics from jaxdiff.eval (digits classifier metrics; FID / IS / KID when
# config.eval.inception_weights is set), merged into every report through the hook above.
from jaxdiff.eval.quality import quality_metrics as _quality_metrics  # noqa: E402

register_eval_hook(_quality_metrics)
