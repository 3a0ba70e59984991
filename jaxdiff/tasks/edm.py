"""The EDM task (``config.task = 'edm'``): Karras et al. 2022 preconditioning and loss
(:mod:`jaxdiff.objectives.edm`) on ``config.model``'s network, served to every sampler and to
bits/dim as the score of a VE SDE (``config.training.sde = 'vesde'``, noise range
``config.model.sigma_min`` .. ``sigma_max``).

EDM's constants are class attributes of :class:`EDMTask` (``sigma_data``, ``p_mean``,
``p_std``): the config schema (``jaxdiff.train.defaults`` / the model's key list) has no keys for
them yet; a variant is a subclass registered under its own name. ``config.training.reduce_mean``
picks the per-pixel mean or sum of the squared error. The network gets
``c_noise = ln(sigma) / 4`` as its noise label.
"""

from __future__ import annotations

from jaxdiff.objectives import edm as edm_lib
from jaxdiff.scores import get_model_fn
from jaxdiff.tasks.base import register_task
from jaxdiff.tasks.score_sde import ScoreSDETask
from jaxdiff.train.config import ConfigError

__all__ = ["EDMTask"]


@register_task("edm")
class EDMTask(ScoreSDETask):
    """EDM-preconditioned denoiser training; the score ``(D - x) / sigma(t)^2`` on a VE SDE."""

    #: RMS of the training data in model space: digits in [-1, 1] (std 0.75 around -0.39)
    sigma_data: float = 0.85
    #: log-normal training noise levels, ``ln sigma ~ N(p_mean, p_std^2)`` (EDM's values)
    p_mean: float = edm_lib.P_MEAN
    p_std: float = edm_lib.P_STD

    def make_sde(self):
        c = self.config
        if c.training.sde != "vesde":
            raise ConfigError("config.training.sde: the 'edm' task runs on a VE SDE "
                              f"(sigma(t) is EDM's noise level), got {c.training.sde!r}")
        if not c.training.continuous:
            raise ConfigError("config.training.continuous: the 'edm' task trains in continuous "
                              "noise levels, got False")
        return super().make_sde()

    def _denoiser(self, train: bool):
        model_fn = get_model_fn(self.model, train=train)

        def net_fn(params, x_in, c_noise, *, rng=None, y=None):
            return model_fn(params, x_in, c_noise, rng=rng, y=y)

        return edm_lib.edm_denoiser(net_fn, self.sigma_data)

    def make_score_fns(self) -> tuple:
        self.train_denoiser = self._denoiser(True)
        self.denoiser = self._denoiser(False)
        return (edm_lib.denoiser_to_score(self.train_denoiser, self.sde),
                edm_lib.denoiser_to_score(self.denoiser, self.sde))

    def make_loss(self, score_fn, *, train: bool):
        return edm_lib.edm_loss(self.train_denoiser if train else self.denoiser,
                                sigma_data=self.sigma_data, p_mean=self.p_mean,
                                p_std=self.p_std,
                                reduce_mean=bool(self.config.training.reduce_mean),
                                rng_kwarg="rng" if train else None)
