"""The flow-matching / rectified-flow task (``config.task = 'flow_matching'``): a network
predicting the velocity of the linear path ``x_t = (1 - t) x_0 + t eps``, trained with
:func:`jaxdiff.objectives.flow.flow_matching_loss`, sampled and evaluated (bits/dim through the
probability-flow ODE) as a score on :class:`jaxdiff.objectives.flow.RectifiedFlowSDE`.

Training times are ``t ~ U(config.training.loss_eps, T)`` with ``T = 1 - 1e-3``
(:data:`jaxdiff.objectives.flow.DEFAULT_T_END`); ``config.model.num_scales`` is the SDE's ``N``.
The config schema has no flow section, so the end time and logit-normal time sampling are
class attributes (:attr:`FlowMatchingTask.t_end`, ``time_sampling``, ``logit_mean``,
``logit_std``): subclass to change them. ``config.training.sde`` is ignored;
``config.training.reduce_mean`` applies; ``likelihood_weighting`` and ``continuous=False`` are
refused by name.
"""

from __future__ import annotations

from jaxdiff.objectives import flow
from jaxdiff.tasks.base import register_task
from jaxdiff.tasks.score_sde import ScoreSDETask
from jaxdiff.train.config import ConfigError

__all__ = ["FlowMatchingTask"]


@register_task("flow_matching")
class FlowMatchingTask(ScoreSDETask):
    """Flow matching of ``config.model`` (a velocity network) on ``config.data``."""

    t_end: float = flow.DEFAULT_T_END
    time_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def make_sde(self):
        return flow.RectifiedFlowSDE(t_end=float(self.t_end),
                                     N=int(self.config.model.num_scales))

    def make_score_fns(self) -> tuple:
        """Velocity networks (dropout on / off) kept as ``train_velocity_fn`` /
        ``velocity_fn``; their scores (:func:`jaxdiff.objectives.flow.velocity_score_fn`) are
        what samplers and the likelihood get."""
        t = self.config.training
        if t.likelihood_weighting:
            raise ConfigError("config.training.likelihood_weighting: not defined for "
                              "flow matching")
        if not t.continuous:
            raise ConfigError("config.training.continuous: flow matching is continuous-time")
        self.train_velocity_fn = flow.model_velocity_fn(self.model, train=True)
        self.velocity_fn = flow.model_velocity_fn(self.model, train=False)
        return (flow.velocity_score_fn(self.sde, self.train_velocity_fn),
                flow.velocity_score_fn(self.sde, self.velocity_fn))

    def make_loss(self, score_fn, *, train: bool):
        t_min = float(self.config.training.loss_eps)
        if not 0.0 <= t_min < self.sde.T:
            raise ConfigError(f"config.training.loss_eps: must lie in [0, {self.sde.T}) for flow "
                              f"matching, got {t_min!r}")
        return flow.flow_matching_loss(
            self.train_velocity_fn if train else self.velocity_fn, sde=self.sde,
            t_min=t_min, time_sampling=self.time_sampling,
            logit_mean=float(self.logit_mean), logit_std=float(self.logit_std),
            reduce_mean=self.config.training.reduce_mean, rng_kwarg="rng" if train else None)
