"""Flow matching / rectified flow on the 8x8 digits: configs/digits.py's network, data, optimiser
and budget, ``config.task = 'flow_matching'`` (a velocity network on the linear path,
docs/flow_matching.md), sampled with the adaptive probability-flow ODE."""

import os

from jaxdiff.train.config import load_config

DIGITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.py")


def get_config():
    config = load_config(DIGITS)
    config.task = "flow_matching"
    config.training.loss_eps = 0.0  # flow matching: t ~ U(loss_eps, T), T = 1 - 1e-3
    config.sampling.method = "ode"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.num_steps = 0
    return config
