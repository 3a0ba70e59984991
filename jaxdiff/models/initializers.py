"""Parameter initialisers shared by the layers and the FIR resampling convolutions (a leaf module:
``layers`` and ``up_or_down_sampling`` both import it, neither imports the other's users)."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

__all__ = ["default_init"]


def default_init(scale: float = 1.0) -> Callable:
    """DDPM initialiser: variance scaling, ``fan_avg``, uniform; ``scale=0`` becomes ``1e-10``."""
    scale = 1e-10 if scale == 0 else scale
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")
