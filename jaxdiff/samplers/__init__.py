"""Samplers: predictor-corrector, probability-flow ODE, and the fast samplers."""

from jaxdiff.samplers.ode import get_solver, ode_sampler, solve_ode
from jaxdiff.samplers.pc import pc_loop, pc_sampler, pc_step
from jaxdiff.samplers.predictors import (
    CORRECTORS, PREDICTORS, Step, ald, ancestral, euler_maruyama, get_corrector, get_predictor,
    langevin, register_corrector, register_predictor, reverse_diffusion)

__all__ = [
    "pc_sampler", "pc_step", "pc_loop", "ode_sampler", "solve_ode", "get_solver", "Step",
    "PREDICTORS", "CORRECTORS", "register_predictor", "register_corrector", "get_predictor",
    "get_corrector", "euler_maruyama", "reverse_diffusion", "ancestral", "langevin", "ald",
]
