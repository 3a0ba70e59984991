"""Flow matching / rectified flow on the 8x8 digits: configs/digits.py's network, data, optimiser
and budget, ``config.task = 'flow_matching'`` (a velocity network on the linear path,
docs/flow_matching.md), sampled with the adaptive probability-flow ODE."""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_digits_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.py"))
digits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(digits)  # type: ignore[union-attr]


def get_config():
    config = digits.get_config()
    config.task = "flow_matching"
    config.training.loss_eps = 0.0  # flow matching: t ~ U(loss_eps, T), T = 1 - 1e-3
    config.sampling.method = "ode"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.num_steps = 0
    return config
