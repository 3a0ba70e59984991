"""Controllable generation and inverse problems with any ``score_fn(params, x, t)``.

Every sampler here returns a jitted ``sample(params, key, cond=None) -> (x, nfe)`` whose ``cond`` is
one pytree (:mod:`~jaxdiff.inverse.observation`): an :class:`Observation` ``(op, y, lam)`` for the
PC / ODE / SMC / inpainting samplers, an :class:`Estimate` ``(x_init, obs)`` for CCDF, the gray
image for colorization, a :class:`GaussianStats` for the warm start.

* :mod:`~jaxdiff.inverse.observation`: the ``cond`` pytrees :class:`Observation` and
  :class:`Estimate`.
* :mod:`~jaxdiff.inverse.linear`: measurement operators (mask, average pool, channel mean,
  subsampled FFT for MRI, dense matrix) with ``A``, ``A^T``, ``A^+``.
* :mod:`~jaxdiff.inverse.consistency`: PC and probability-flow ODE samplers with data consistency.
* :mod:`~jaxdiff.inverse.inpainting`, :mod:`~jaxdiff.inverse.colorization`: the image tasks.
* :mod:`~jaxdiff.inverse.guidance`: classifier and classifier-free guidance.
* :mod:`~jaxdiff.inverse.smc`: particle (SMC) posterior sampler, asymptotically exact.
* :mod:`~jaxdiff.inverse.ccdf`: Come-Closer-Diffuse-Faster.
* :mod:`~jaxdiff.inverse.tweedie`: Tweedie / Noise2Score denoising (Gaussian, Poisson, Gamma).
* :mod:`~jaxdiff.inverse.warm_start`: exact Gaussian jump from the prior ("teleportation").
"""

from jaxdiff.inverse.ccdf import ccdf_num_steps, ccdf_sampler
from jaxdiff.inverse.colorization import colorize_sampler, couple, decouple
from jaxdiff.inverse.consistency import ode_inverse_sampler, pc_inverse_sampler
from jaxdiff.inverse.guidance import (
                                      GuidanceParams,
                                      classifier_free_score_fn,
                                      classifier_guided_score_fn,
                                      mixture_classifier,
)
from jaxdiff.inverse.inpainting import inpaint_sampler, linear_inverse_sampler
from jaxdiff.inverse.linear import (
                                      AvgPool,
                                      ChannelMean,
                                      LinearOperator,
                                      Mask,
                                      Matrix,
                                      SubsampledFFT,
                                      cartesian_kspace_mask,
                                      hermitian_symmetrize,
)
from jaxdiff.inverse.observation import Estimate, Observation
from jaxdiff.inverse.smc import orthonormalize, smc_inverse_sampler, systematic_resample
from jaxdiff.inverse.tweedie import (
                                      gamma_tweedie,
                                      gaussian_denoiser,
                                      gaussian_tweedie,
                                      poisson_tweedie,
                                      robbins_poisson,
                                      time_for_noise_level,
                                      tweedie_denoiser,
)
from jaxdiff.inverse.warm_start import GaussianStats, teleport, warm_start_sampler

__all__ = [
    "Observation", "Estimate",
    "LinearOperator", "Mask", "AvgPool", "ChannelMean", "SubsampledFFT", "Matrix",
    "hermitian_symmetrize", "cartesian_kspace_mask",
    "pc_inverse_sampler", "ode_inverse_sampler", "linear_inverse_sampler", "inpaint_sampler",
    "colorize_sampler", "decouple", "couple",
    "GuidanceParams", "classifier_guided_score_fn", "classifier_free_score_fn",
    "mixture_classifier",
    "ccdf_sampler", "ccdf_num_steps",
    "smc_inverse_sampler", "orthonormalize", "systematic_resample",
    "gaussian_tweedie", "poisson_tweedie", "gamma_tweedie", "robbins_poisson",
    "tweedie_denoiser", "time_for_noise_level", "gaussian_denoiser",
    "GaussianStats", "teleport", "warm_start_sampler",
]
