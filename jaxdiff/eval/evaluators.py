"""Evaluators: the one evaluation path of a run (periodic evaluation during training and
``--mode=eval``), in the shape of big_vision's ``evaluators/common.py``.

An evaluator is an object with a ``name``, a ``periodic`` flag and ``run(params, ctx) -> dict``
(metric name -> number). :func:`from_config` builds the generic list from a config and a task
(anything with ``eval_loss``, ``score_fn``, ``sde`` and ``mesh``; see :mod:`jaxdiff.tasks`):

* :class:`HeldOutLoss` (``held_out_loss``; ``periodic``): the task's eval loss on
  ``config.eval.num_loss_batches`` sharded batches of the eval split, with one fixed key per run,
  so the value logged during training at step ``s`` equals ``--mode=eval``'s at ``s``;
* :class:`BitsPerDim` (``bits_per_dim``, images): :func:`jaxdiff.eval.bpd.dataset_bits_per_dim`
  (batches sharded over the mesh) of the probability-flow bits/dim and of the variational bound;
* :class:`ToySlicedWasserstein` (``sliced_wasserstein``, toy data);
* :class:`QualityMetrics` (``quality_metrics``): :func:`jaxdiff.eval.quality.quality_metrics`;
* every hook of :func:`register_eval_hook`.

:func:`run_evaluators` merges their dicts; :func:`write_report` is the one place that writes
``<workdir>/eval/report_<step>.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import parallel
from jaxdiff.data import eval_dataset, select_fields
from jaxdiff.data.toy import sample_toy
from jaxdiff.eval.bpd import dataset_bits_per_dim
from jaxdiff.eval.distances import sliced_wasserstein
from jaxdiff.eval.quality import quality_metrics
from jaxdiff.likelihood import bits_per_dim, bound_bits_per_dim

__all__ = ["Evaluator", "EvalContext", "HeldOutLoss", "BitsPerDim", "ToySlicedWasserstein",
           "QualityMetrics", "HookEvaluator", "from_config", "run_evaluators", "write_report",
           "make_eval_step", "register_eval_hook", "EVAL_HOOKS"]

EVAL_HOOKS: list = []


def register_eval_hook(hook: Callable[[EvalContext], dict]) -> Callable:
    """Add ``hook(ctx) -> dict`` to every ``--mode=eval`` (usable as a decorator); it becomes a
    :class:`HookEvaluator` named ``hook.__name__``. Returns ``hook``."""
    if hook not in EVAL_HOOKS:
        EVAL_HOOKS.append(hook)
    return hook


@dataclasses.dataclass
class EvalContext:
    """What an evaluator needs besides the params: the config, the task (its ``mesh`` and
    ``draw_samples(params, key, n) -> np.ndarray``), the checkpoint step, the data directory,
    the workdir and a PRNG key (``fold_in(PRNGKey(seed), 1000 + step)``)."""

    config: Any
    task: Any
    params: Any
    step: int
    data_dir: str
    workdir: str
    key: jax.Array
    _samples: np.ndarray | None = None

    @property
    def mesh(self):
        """The task's device mesh."""
        return self.task.mesh

    @property
    def exp(self):
        """The task (the name of earlier releases)."""
        return self.task

    def samples(self) -> np.ndarray:
        """``config.eval.num_samples`` samples (model space, numpy), drawn once and shared."""
        if self._samples is None:
            self._samples = self.task.draw_samples(self.params, jax.random.fold_in(self.key, 11),
                                                   int(self.config.eval.num_samples))
        return self._samples


class Evaluator:
    """Base class: ``name`` (the report's ``skipped`` list uses it), ``periodic`` (also run
    every ``config.training.eval_freq`` steps of training), ``run(params, ctx) -> dict``."""

    name: str = "evaluator"
    periodic: bool = False

    def run(self, params, ctx: EvalContext) -> dict:  # pragma: no cover - interface
        """The metrics of ``params``."""
        raise NotImplementedError


def make_eval_step(loss_fn: Callable, mesh) -> Callable:
    """Jitted ``eval_step(params, key, batch) -> mean loss`` (no gradient, no dropout), the batch
    split over the mesh's ``'data'`` axis."""

    def eval_step(params, key, batch):
        return loss_fn(params, key, batch)[0]

    return jax.jit(eval_step, in_shardings=(None, None, parallel.data_sharding(mesh)),
                   out_shardings=parallel.replicated(mesh))


class HeldOutLoss(Evaluator):
    """The mean eval loss of the task on the first ``config.eval.num_loss_batches`` batches of the
    eval split (each process reads its part; batches are global arrays on the mesh). The key is
    ``fold_in(PRNGKey(config.seed), 1)`` split per batch, the same at every step."""

    name = "held_out_loss"
    periodic = True

    def __init__(self, loss_fn: Callable, mesh, fields: tuple = ("x",)):
        self.mesh, self.fields = mesh, tuple(fields)
        self.eval_step = make_eval_step(loss_fn, mesh)
        self._batches: list | None = None

    def batches(self, config, data_dir: str) -> list:
        """The (cached) global eval batches."""
        if self._batches is None:
            parallel.check_batch_size("config.eval.batch_size", config.eval.batch_size, self.mesh)
            ds = eval_dataset(config, data_dir, process_index=jax.process_index(),
                              process_count=jax.process_count())
            n = min(len(ds), config.eval.num_loss_batches)
            if n == 0:
                raise ValueError(f"config.eval.batch_size={config.eval.batch_size} is larger "
                                 f"than the {config.data.eval_split!r} split")
            self._batches = [parallel.global_batch(select_fields(ds[i], self.fields), self.mesh)
                             for i in range(n)]
        return self._batches

    def run(self, params, ctx: EvalContext) -> dict:
        """``{'held_out_loss': float}``."""
        batches = self.batches(ctx.config, ctx.data_dir)
        key = jax.random.fold_in(jax.random.PRNGKey(ctx.config.seed), 1)
        keys = jax.random.split(key, len(batches))
        vals = [self.eval_step(params, k, b) for k, b in zip(keys, batches)]
        return {"held_out_loss": float(np.mean(jax.device_get(vals)))}


class BitsPerDim(Evaluator):
    """Bits/dim of ``config.eval.bpd_num_examples`` held-out uint8 images (every process reads the
    same ones; batches of at most ``config.eval.batch_size``, sharded over the mesh):
    the probability-flow value (:func:`jaxdiff.likelihood.bits_per_dim`, uniform dequantisation,
    ``eval.bpd_repeats``, ``eval.bpd_rtol`` / ``bpd_atol``) and the variational bound
    (:func:`jaxdiff.likelihood.bound_bits_per_dim`, at least 16 draws per image), both through
    :func:`jaxdiff.eval.bpd.dataset_bits_per_dim`."""

    name = "bits_per_dim"

    def __init__(self, sde, score_fn):
        self.sde, self.score_fn = sde, score_fn

    def run(self, params, ctx: EvalContext) -> dict:
        """``bits_per_dim``, ``bits_per_dim_stderr``, ``bits_per_dim_bound``,
        ``bits_per_dim_bound_stderr``, ``bpd_num_examples``, ``bpd_nfe``."""
        c = ctx.config
        n = int(c.eval.bpd_num_examples)
        bs = min(n, int(c.eval.batch_size))
        ds = eval_dataset(c, ctx.data_dir, batch_size=bs, process_index=0, process_count=1)
        if len(ds) == 0:
            raise ValueError(f"config.eval.bpd_num_examples={n} exceeds the eval split")
        batches = [ds[i]["image"] for i in range(min(len(ds), -(-n // bs)))]
        exact = bits_per_dim(self.sde, self.score_fn, centered=c.data.centered,
                             repeats=c.eval.bpd_repeats, rtol=c.eval.bpd_rtol,
                             atol=c.eval.bpd_atol)
        out = dataset_bits_per_dim(exact, params, jax.random.fold_in(ctx.key, 2), batches,
                                   mesh=ctx.mesh, max_examples=n)
        # The variational bound of the same images (one score evaluation per draw): the
        # likelihood a likelihood-weighted training loss implies; the probability-flow value is
        # usually below it.
        bound = bound_bits_per_dim(self.sde, self.score_fn, centered=c.data.centered,
                                   repeats=max(16, c.eval.bpd_repeats))
        bnd = dataset_bits_per_dim(lambda p, k, x: (bound(p, k, x), 0), params,
                                   jax.random.fold_in(ctx.key, 4), batches, mesh=ctx.mesh,
                                   max_examples=n)
        out["bits_per_dim_bound"] = bnd["bits_per_dim"]
        out["bits_per_dim_bound_stderr"] = bnd["bits_per_dim_stderr"]
        return out


class ToySlicedWasserstein(Evaluator):
    """Toy data: the sliced Wasserstein distance of ``ctx.samples()`` to fresh samples of the true
    distribution, and ``sliced_wasserstein_floor`` (two independent true samples: the estimator's
    noise level)."""

    name = "sliced_wasserstein"

    def run(self, params, ctx: EvalContext) -> dict:
        """``sliced_wasserstein``, ``sliced_wasserstein_floor``, ``num_samples``."""
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


class QualityMetrics(Evaluator):
    """Sample quality: :func:`jaxdiff.eval.quality.quality_metrics` (digits classifier metrics;
    FID / IS / KID with ``config.eval.inception_weights``)."""

    name = "quality_metrics"

    def run(self, params, ctx: EvalContext) -> dict:
        """The metrics of :func:`jaxdiff.eval.quality.quality_metrics` (may be empty)."""
        return quality_metrics(ctx)


class HookEvaluator(Evaluator):
    """A registered ``hook(ctx) -> dict`` as an evaluator."""

    def __init__(self, hook: Callable):
        self.hook = hook
        self.name = getattr(hook, "__name__", repr(hook))

    def run(self, params, ctx: EvalContext) -> dict:
        """``hook(ctx)`` (``None`` -> ``{}``)."""
        return self.hook(ctx) or {}


def from_config(config, task, *, periodic: bool = False) -> list:
    """The generic evaluators of ``config`` for ``task``.

    Args:
      config: a validated config (``config.eval.enable_loss`` / ``enable_bpd`` /
        ``enable_sampling``, ``config.data.dataset``).
      task: has ``eval_loss``, ``score_fn``, ``sde`` and ``mesh``.
      periodic: the evaluators of the periodic evaluation during training (the held-out loss,
        whatever ``enable_loss`` says); else those of ``--mode=eval``.

    Returns:
      A list of :class:`Evaluator`, in report order.
    """
    loss = HeldOutLoss(task.eval_loss, task.mesh, task.batch_fields)
    if periodic:
        return [loss]
    e, toy = config.eval, config.data.dataset == "toy"
    out: list = [loss] if e.enable_loss else []
    if e.enable_bpd and not toy:
        out.append(BitsPerDim(task.sde, task.score_fn))
    if e.enable_sampling and toy:
        out.append(ToySlicedWasserstein())
    out.append(QualityMetrics())
    out.extend(HookEvaluator(h) for h in EVAL_HOOKS)
    return out


def run_evaluators(evaluators: Sequence[Evaluator], params, ctx: EvalContext) -> dict:
    """Run each evaluator in order; return the merged metrics."""
    out: dict = {}
    for ev in evaluators:
        out.update(ev.run(params, ctx) or {})
    return out


def write_report(workdir: str, step: int, report: dict) -> str | None:
    """Write ``report`` to ``<workdir>/eval/report_<step>.json`` (process 0 only; sorted keys);
    return the path (``None`` on other processes)."""
    if not parallel.is_main_process():
        return None
    out = os.path.join(workdir, "eval", f"report_{step}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True, default=float)
    logging.info("eval report: %s", out)
    return out
