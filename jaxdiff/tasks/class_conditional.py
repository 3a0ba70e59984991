"""Class-conditional training with label dropout and classifier-free guided sampling
(Ho & Salimans 2022) as a task: ``config.task = 'class_conditional'``.

* The network has ``config.model.num_classes = K + 1`` label rows: labels ``0..K-1`` of the data,
  ``K`` the null label (:mod:`jaxdiff.objectives.cfg`).
* Training: :func:`jaxdiff.objectives.cfg.cfg_loss` with ``config.training.cond_drop_prob`` (the
  loss sees ``{'x', 'label'}`` batches: ``batch_fields``).
* Sampling (snapshots, ``--mode=sample``, the sample-quality evaluators): every registry sampler
  of ``config.sampling`` on :func:`jaxdiff.objectives.cfg.guided_score` with
  ``config.sampling.guidance_scale`` ``w`` (one network call per step on a ``2B`` batch), labels
  ``config.sampling.class_label`` (``-1``: cycling ``0..K-1``, so a grid row shows each class).
* Bits/dim and any evaluator that takes an unconditional score use the null label: the
  unconditional model ``s(x, t, K)`` the dropout trains.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxdiff.objectives.cfg import cfg_loss, guided_score, network_cond_score
from jaxdiff.tasks.base import register_task
from jaxdiff.tasks.score_sde import ScoreSDETask
from jaxdiff.train.config import ConfigError
from jaxdiff.train.sampling import build_sampler
from jaxdiff.train.step import get_score_fns

__all__ = ["ClassConditionalTask"]


@register_task("class_conditional")
class ClassConditionalTask(ScoreSDETask):
    """Class-conditional score SDE with label dropout; guided sampling through ``cond``."""

    batch_fields = ("x", "label")

    def __init__(self, config, mesh=None):
        k = int(config.model.get("num_classes", 0))
        if k < 2:
            raise ConfigError(f"config.model.num_classes={k}: the class_conditional task needs "
                              "K + 1 >= 2 label rows (K data classes and the null label K)")
        if not config.training.continuous:
            raise ConfigError("config.training.continuous=False: the class_conditional task "
                              "trains the continuous-time loss only")
        p = float(config.training.cond_drop_prob)
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"config.training.cond_drop_prob={p} must be in [0, 1]")
        lab = int(config.sampling.class_label)
        if not -1 <= lab < k - 1:
            raise ConfigError(f"config.sampling.class_label={lab} must be -1 (cycle the classes) "
                              f"or a class in 0..{k - 2}")
        self.num_data_classes = k - 1
        self.null_label = k - 1
        super().__init__(config, mesh)

    def make_score_fns(self) -> tuple:
        """The unconditional scores ``s(x, t, null)`` (for bits/dim); the conditional network
        scores are kept as ``cond_train_score_fn`` / ``cond_score_fn``."""
        train_fn, eval_fn = get_score_fns(self.config, self.model, self.sde)
        self.cond_train_score_fn = network_cond_score(train_fn)
        self.cond_score_fn = network_cond_score(eval_fn)
        null = self.null_label

        def unconditional(cond_fn):
            def score(params, x, t, **kw):
                return cond_fn(params, x, t, jnp.full((x.shape[0],), null, jnp.int32), **kw)
            return score

        return unconditional(self.cond_train_score_fn), unconditional(self.cond_score_fn)

    def make_loss(self, score_fn, *, train: bool):
        t = self.config.training
        return cfg_loss(self.sde, self.cond_train_score_fn if train else self.cond_score_fn,
                        cond_drop_prob=float(t.cond_drop_prob), null_cond=self.null_label,
                        reduce_mean=t.reduce_mean, likelihood_weighting=t.likelihood_weighting,
                        eps=t.loss_eps, rng_kwarg="rng" if train else None)

    def labels(self, n: int) -> np.ndarray:
        """The sampled classes: ``config.sampling.class_label``, or ``0..K-1`` cycled."""
        lab = int(self.config.sampling.class_label)
        if lab >= 0:
            return np.full((n,), lab, np.int32)
        return (np.arange(n) % self.num_data_classes).astype(np.int32)

    def sampler(self, n: int):
        """``sample(params, key, cond=None) -> (x, nfe)``: ``config.sampling`` on the guided score;
        ``cond=None`` samples :meth:`labels`."""
        if n not in self._samplers:
            w = float(self.config.sampling.guidance_scale)
            inner = build_sampler(self.config, self.sde,
                                  guided_score(self.cond_score_fn, w, self.null_label),
                                  (int(n),) + self.example_shape)
            default = jnp.asarray(self.labels(int(n)))

            def sample(params, key, cond=None):
                return inner(params, key, default if cond is None else cond)

            self._samplers[n] = sample
        return self._samplers[n]
