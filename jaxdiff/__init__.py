"""jaxdiff: score-based diffusion models through SDEs, as pure JAX functions.

The top level re-exports the core (SDEs, losses, samplers, likelihood, exact ground truth) and the
light subpackages (networks and score wrappers, inverse problems, multi-speed / multi-scale
diffusion, conditional estimators). The training system (``jaxdiff.train``, ``jaxdiff.data``) and
evaluation (``jaxdiff.eval``) are imported explicitly, since they bring tfds, grain and Orbax.
"""

from jaxdiff import (
                     analytic,
                     conditional,
                     inverse,
                     likelihood,
                     losses,
                     models,
                     multiscale,
                     multispeed,
                     samplers,
                     scores,
                     sde,
)
from jaxdiff.analytic import GaussianMixture
from jaxdiff.likelihood import bits_per_dim, bound_bits_per_dim, log_likelihood, variational_bound
from jaxdiff.losses import ddpm_loss, get_loss, score_matching_loss, smld_loss
from jaxdiff.models import get_model, init_params
from jaxdiff.multispeed import MultiSpeedSDE
from jaxdiff.samplers import get_sampler, ode_sampler, pc_sampler
from jaxdiff.scores import get_score_fn
from jaxdiff.sde import SDE, VESDE, VPSDE, ReverseSDE, SubVPSDE

__version__ = "0.1.0"

__all__ = [
    # modules
    "sde", "losses", "samplers", "likelihood", "analytic", "scores", "models", "inverse",
    "multispeed", "multiscale", "conditional",
    # SDEs
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "ReverseSDE", "MultiSpeedSDE",
    # ground truth
    "GaussianMixture",
    # losses
    "score_matching_loss", "ddpm_loss", "smld_loss", "get_loss",
    # samplers and likelihood
    "pc_sampler", "ode_sampler", "get_sampler", "log_likelihood", "bits_per_dim", "variational_bound",
    "bound_bits_per_dim",
    # networks
    "get_model", "init_params", "get_score_fn",
]
