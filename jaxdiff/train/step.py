"""Pure train / eval steps and their jitted, sharded versions.

``make_train_step`` returns ``step(state, batch) -> (state, metrics)`` where ``batch`` is
``(n_jitted_steps, B, ...)``: a ``lax.scan`` over the ``n_jitted_steps`` micro-steps, each an
optax update on the full global batch ``B`` followed by the EMA update. ``jit_train_step`` wraps it
in ``jax.jit`` with explicit in/out shardings on a mesh (batch split over ``'data'``, state
replicated or FSDP-sharded) and donates the old state.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxdiff import losses as losses_lib
from jaxdiff import sde as sde_lib
from jaxdiff.eval.evaluators import make_eval_step
from jaxdiff.parallel import data_sharding, replicated
from jaxdiff.scores import get_score_fn
from jaxdiff.train.state import TrainState, ema_update

__all__ = ["get_sde", "get_score_fns", "get_loss_fn", "make_train_step", "jit_train_step",
           "make_eval_step", "all_finite"]


def get_sde(config) -> sde_lib.SDE:
    """The SDE of ``config.training.sde`` with the constants of ``config.model``."""
    m, name = config.model, config.training.sde
    if name == "vpsde":
        return sde_lib.VPSDE(m.beta_min, m.beta_max, N=m.num_scales)
    if name == "subvpsde":
        return sde_lib.SubVPSDE(m.beta_min, m.beta_max, N=m.num_scales)
    if name == "vesde":
        return sde_lib.VESDE(m.sigma_min, m.sigma_max, N=m.num_scales)
    raise ValueError(f"config.training.sde must be 'vpsde', 'subvpsde' or 'vesde', got {name!r}")


def get_score_fns(config, model, sde):
    """``(train_score_fn, eval_score_fn)``: the network as a score function with dropout on
    (called with ``rng=``) and off, per ``config.model`` (parameterization, ``scale_by_sigma``)
    and ``config.training.continuous``."""
    kw = dict(continuous=config.training.continuous,
              parameterization=config.model.get("parameterization", None),
              scale_by_sigma=bool(config.model.get("scale_by_sigma", False)))
    return (get_score_fn(sde, model, train=True, **kw),
            get_score_fn(sde, model, train=False, **kw))


def get_loss_fn(config, sde, score_fn, *, train: bool) -> Callable:
    """The denoising score-matching ``loss_fn(params, key, batch) -> (loss, aux)`` of
    ``config.training`` (``continuous``, ``reduce_mean``, ``likelihood_weighting``, ``loss_eps``);
    ``train=True``: the score function gets ``rng=`` (dropout). A task's own losses (conditional,
    multi-scale ...) are its ``train_loss`` / ``eval_loss`` (:mod:`jaxdiff.tasks`)."""
    t = config.training
    return losses_lib.get_loss(sde, score_fn, continuous=t.continuous, reduce_mean=t.reduce_mean,
                               likelihood_weighting=t.likelihood_weighting, eps=t.loss_eps,
                               rng_kwarg="rng" if train else None)


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                    ema_rate: float, ema_warmup: bool = False) -> Callable:
    """The pure train step.

    Args:
      loss_fn: ``loss_fn(params, key, batch) -> (loss, aux)``; with an attribute
        ``takes_step = True`` it is called as ``loss_fn(params, key, batch, step=state.step)``.
      optimizer: an optax transformation (``config.optim``).
      ema_rate, ema_warmup: the EMA of the parameters.

    Returns:
      ``step(state, batches) -> (state, metrics)`` with ``batches`` of shape
      ``(n, B, ...)``: ``n`` updates in a ``lax.scan``; ``metrics`` holds ``loss`` and
      ``grad_norm`` of shape ``(n,)`` and ``state_finite``, a scalar bool: whether every
      floating value of the new state (params, EMA, optimiser state) is finite (one on-device
      reduction per call, fetched with the losses: the loop never saves a state without it).
      The PRNG key of the state is split once per update.
    """

    # a loss whose schedule depends on the training step (VS-CMDE's sigma_max_y) says so with
    # ``loss_fn.takes_step = True`` and gets the step explicitly: ``loss_fn(..., step=step)``
    step_kw = bool(getattr(loss_fn, "takes_step", False))

    def one(state: TrainState, batch):
        rng, step_key = jax.random.split(state.rng)
        kw = {"step": state.step} if step_kw else {}
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, step_key,
                                                                     batch, **kw)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, ema_rate, state.step, warmup=ema_warmup)
        new = TrainState(step=state.step + 1, params=params, ema_params=ema,
                         opt_state=opt_state, rng=rng)
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    def step(state: TrainState, batches):
        if jax.tree.leaves(batches)[0].shape[0] == 1:
            # One update: call it directly. A length-1 ``lax.scan`` (even unrolled) made the
            # whole step ~11x slower on XLA:CPU (digits U-Net: 690 ms vs 60 ms per step), see
            # docs/bench_train.md; the result is the same.
            state, metrics = one(state, jax.tree.map(lambda b: b[0], batches))
            metrics = jax.tree.map(lambda m: m[None], metrics)
        else:
            state, metrics = jax.lax.scan(one, state, batches)
        return state, {**metrics, "state_finite": all_finite((state.params, state.ema_params,
                                                              state.opt_state))}

    return step


def all_finite(tree) -> jax.Array:
    """A scalar bool: every floating leaf of ``tree`` is free of NaN / Inf (integer and key
    leaves are ignored); a single fused reduction on device."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
             if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def jit_train_step(step: Callable, mesh, state_shardings) -> Callable:
    """``jax.jit`` of a train step on ``mesh``: batches ``(n, B, ...)`` split on ``'data'`` along
    ``B``, the state with ``state_shardings``, metrics replicated; the input state is donated."""
    return jax.jit(step, in_shardings=(state_shardings, data_sharding(mesh, 1)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))
