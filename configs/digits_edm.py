"""EDM training (Karras et al. 2022; task ``'edm'``, docs/edm.md) on the embedded 8x8 digits,
with the network, batch, optimiser and budget of configs/digits.py (the VP default).

The noise range is EDM's (sigma 0.002 .. 80) as a VE SDE; ``EDMTask.sigma_data`` is the RMS of the
digits in ``[-1, 1]`` (0.85: std 0.75 around a mean of -0.39; EDM's 0.5 is CIFAR-10's);
with ``p_mean`` -1.2 and ``p_std`` 1.2 it is a class attribute of
:class:`jaxdiff.tasks.edm.EDMTask`, not a config key).
Samples use EDM's Heun sampler (18 levels, 35 evaluations)."""

import os

from jaxdiff.tasks import edm  # noqa: F401  (registers the 'edm' task)
from jaxdiff.train.config import load_config

DIGITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.py")


def get_config():
    config = load_config(DIGITS)
    config.task = "edm"
    config.training.sde = "vesde"
    m = config.model
    m.sigma_min = 0.002
    m.sigma_max = 80.0
    s = config.sampling
    s.method = "edm"
    s.num_steps = 18
    return config
