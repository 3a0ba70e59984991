"""jaxdiff: score-based diffusion models through SDEs, as pure JAX functions."""

from jaxdiff import analytic, likelihood, losses, samplers, sde
from jaxdiff.analytic import GaussianMixture
from jaxdiff.likelihood import bits_per_dim, log_likelihood
from jaxdiff.losses import ddpm_loss, score_matching_loss, smld_loss
from jaxdiff.samplers import ode_sampler, pc_sampler
from jaxdiff.sde import SDE, VESDE, VPSDE, SubVPSDE

__version__ = "0.1.0"

__all__ = [
    "sde", "losses", "samplers", "likelihood", "analytic",
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "GaussianMixture",
    "score_matching_loss", "ddpm_loss", "smld_loss",
    "pc_sampler", "ode_sampler", "log_likelihood", "bits_per_dim",
]
