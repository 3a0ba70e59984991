"""The train state (a plain pytree), the optimiser and the EMA update."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

__all__ = ["TrainState", "get_optimizer", "lr_schedule", "ema_update", "init_state"]


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue: ``step`` (int32 scalar), ``params``, ``ema_params``,
    ``opt_state`` (optax), ``rng`` (a raw ``uint32[2]`` PRNG key, split once per step)."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array


def lr_schedule(optim_config):
    """``lr * min((count + 1) / warmup, 1)``: linear warm-up over ``warmup`` steps (none if 0)."""
    lr, warmup = float(optim_config.lr), int(optim_config.warmup)

    def schedule(count):
        if warmup <= 0:
            return jnp.asarray(lr, jnp.float32)
        return lr * jnp.minimum((count + 1.0) / warmup, 1.0)

    return schedule


def get_optimizer(optim_config) -> optax.GradientTransformation:
    """Adam / AdamW with linear warm-up and global-norm gradient clipping (``config.optim``).

    ``grad_clip <= 0`` disables clipping. ``weight_decay`` applies to AdamW only (Adam with
    ``weight_decay > 0`` is refused to avoid silently ignoring it).
    """
    name = optim_config.optimizer.lower()
    sched = lr_schedule(optim_config)
    kw = dict(b1=optim_config.beta1, b2=optim_config.beta2, eps=optim_config.eps)
    if name == "adam":
        if optim_config.weight_decay:
            raise ValueError(f"config.optim.weight_decay={optim_config.weight_decay} needs "
                             "config.optim.optimizer='AdamW'")
        opt = optax.adam(sched, **kw)
    elif name == "adamw":
        opt = optax.adamw(sched, weight_decay=optim_config.weight_decay, **kw)
    else:
        raise ValueError(f"config.optim.optimizer must be 'Adam' or 'AdamW', got "
                         f"{optim_config.optimizer!r}")
    if optim_config.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(optim_config.grad_clip), opt)
    return opt


def ema_update(ema_params, params, rate: float, step, *, warmup: bool = False):
    """``ema <- d ema + (1 - d) params`` with ``d = rate``, or ``min(rate, (1 + n) / (10 + n))``
    with ``warmup`` (``n`` the number of updates so far)."""
    d = jnp.asarray(rate, jnp.float32)
    if warmup:
        n = jnp.asarray(step, jnp.float32)
        d = jnp.minimum(d, (1.0 + n) / (10.0 + n))
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema_params, params)


def init_state(params, optimizer: optax.GradientTransformation, rng) -> TrainState:
    """A fresh state: step 0, EMA = params, the optimiser's initial state."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=optimizer.init(params), rng=rng)
