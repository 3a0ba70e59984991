"""Samplers: predictor-corrector, probability-flow ODE, and the fast samplers.

Every sampler factory returns a jitted ``sample(params, key, cond=None) -> (x, nfe)``, built by
the one builder :func:`make_sampler` from a :class:`Solver` (the integrate contract);
:func:`get_sampler` picks any of them by name. See ``docs/sampler_interface.md``.
"""

from jaxdiff.samplers.adaptive import (
    AdaptiveInfo,
    adaptive_sde_integrate,
    adaptive_sde_sampler,
    adaptive_sde_solve,
)
from jaxdiff.samplers.base import Solver, bind_cond, keep_dtype, make_sampler
from jaxdiff.samplers.ddim import ddim_integrate, ddim_sampler, ddim_step
from jaxdiff.samplers.dpm_solver import dpm_solver_pp_integrate, dpm_solver_pp_sampler
from jaxdiff.samplers.dpm_solver_sde import dpm_solver_pp_sde_integrate, dpm_solver_pp_sde_sampler
from jaxdiff.samplers.edm import edm_integrate, edm_sampler, karras_sigmas
from jaxdiff.samplers.ode import get_solver, ode_integrate, ode_sampler, solve_ode
from jaxdiff.samplers.pc import constrain, pc_integrate, pc_loop, pc_sampler, pc_step
from jaxdiff.samplers.predictors import (
    CORRECTORS,
    PREDICTORS,
    Step,
    ald,
    ancestral,
    euler_maruyama,
    get_corrector,
    get_predictor,
    langevin,
    register_corrector,
    register_predictor,
    reverse_diffusion,
)
from jaxdiff.samplers.registry import (
    available_samplers,
    get_sampler,
    num_steps_for_nfe,
    register_sampler,
    sampler_options,
)
from jaxdiff.samplers.schedule import (
    GRIDS,
    data_prediction,
    inverse_lambda,
    log_alpha_sigma,
    marginal_lambda,
    time_grid,
)
from jaxdiff.samplers.unipc import unipc_integrate, unipc_sampler

__all__ = [
    "Solver", "make_sampler", "bind_cond", "keep_dtype",
    "pc_sampler", "pc_step", "pc_loop", "pc_integrate", "constrain",
    "ode_sampler", "ode_integrate", "solve_ode", "get_solver",
    "Step", "PREDICTORS", "CORRECTORS", "register_predictor", "register_corrector",
    "get_predictor", "get_corrector", "euler_maruyama", "reverse_diffusion", "ancestral",
    "langevin", "ald",
    "ddim_sampler", "ddim_step", "ddim_integrate", "dpm_solver_pp_sampler",
    "dpm_solver_pp_integrate", "dpm_solver_pp_sde_sampler", "dpm_solver_pp_sde_integrate",
    "unipc_sampler", "unipc_integrate", "edm_sampler", "edm_integrate", "karras_sigmas",
    "adaptive_sde_sampler", "adaptive_sde_integrate", "adaptive_sde_solve", "AdaptiveInfo",
    "get_sampler", "register_sampler", "available_samplers", "num_steps_for_nfe",
    "sampler_options",
    "GRIDS", "time_grid", "marginal_lambda", "inverse_lambda", "log_alpha_sigma", "data_prediction",
]
