"""What every mode needs from a config: the SDE, the network, score functions, the optimiser,
and the (abstract) train state with its shardings on the mesh."""

from __future__ import annotations

import dataclasses
import errno
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxdiff import parallel
from jaxdiff.data import example_shape
from jaxdiff.train.state import TrainState, get_optimizer, init_state
from jaxdiff.train.step import get_score_fns, get_sde

__all__ = ["Experiment", "build_experiment", "check_workdir"]


@dataclasses.dataclass
class Experiment:
    """Built once per run. ``init(key) -> TrainState`` is jitted with ``state_shardings``;
    ``abstract_state`` carries those shardings (for checkpoint restores)."""

    config: Any
    mesh: Any
    sde: Any
    model: Any
    train_score_fn: Callable
    score_fn: Callable
    optimizer: Any
    example_shape: tuple
    state_shardings: Any
    abstract_state: Any
    init: Callable
    msdiff: Any = None  # jaxdiff.train.msdiff.MSDiffSetup of a config.msdiff run, else None


def check_workdir(workdir: str) -> str:
    """Create ``workdir`` and check that it is writable; return its absolute path.

    Raises:
      PermissionError / NotADirectoryError naming the directory otherwise.
    """
    if not workdir:
        raise ValueError("--workdir is required")
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"workdir {path!r} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(errno.EACCES, f"workdir {path!r} is not writable "
                              f"({e.strerror or e}); choose another --workdir") from e
    return path


def build_experiment(config, mesh=None) -> Experiment:
    """Build the pieces of a run from a validated config on ``mesh`` (default: all devices).

    With a ``config.msdiff`` section the network, its score functions and ``example_shape`` are
    those of :mod:`jaxdiff.train.msdiff` (conditional: ``C + C_y`` channels; multi-scale: the
    stage's coefficient block and multi-speed SDE); ``exp.sde`` stays the base SDE."""
    from jaxdiff.models import get_model, init_compiler_options, init_params
    mesh = mesh or parallel.make_mesh(config.parallel.num_devices)
    sde = get_sde(config)
    ms_setup = None
    if config.get("msdiff", None) is not None:
        from jaxdiff.train import msdiff
        ms_setup = msdiff.setup(config, sde)
    if ms_setup is None:
        model = get_model(config)
        train_score_fn, score_fn = get_score_fns(config, model, sde)
        shape = example_shape(config)
    else:
        model = get_model(ms_setup.net_config)
        train_score_fn, score_fn = msdiff.get_score_fns(config, model, sde, ms_setup)
        shape = example_shape(ms_setup.net_config)
    optimizer = get_optimizer(config.optim)

    def init(key):
        k_params, k_state = jax.random.split(key)
        params = init_params(k_params, model, (1,) + shape)
        return init_state(params, optimizer, k_state)

    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    t = config.training
    pshard = parallel.param_shardings(abstract.params, mesh, fsdp=t.fsdp, min_size=t.fsdp_min_size)
    rep = parallel.replicated(mesh)
    opt_shard = jax.tree.map(lambda _: rep, abstract.opt_state)
    if t.fsdp:  # optimizer moments mirror the params' sharding
        opt_shard = _mirror_param_shardings(abstract.opt_state, abstract.params, pshard, rep)
    shardings = TrainState(step=rep, params=pshard, ema_params=pshard, opt_state=opt_shard,
                           rng=rep)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    return Experiment(config=config, mesh=mesh, sde=sde, model=model,
                      train_score_fn=train_score_fn, score_fn=score_fn, optimizer=optimizer,
                      example_shape=shape, state_shardings=shardings,
                      abstract_state=abstract_state,
                      init=jax.jit(init, out_shardings=shardings,
                                   compiler_options=init_compiler_options()), msdiff=ms_setup)


def _mirror_param_shardings(opt_state, params, pshard, rep):
    """Give every optimiser leaf that has a params-shaped subtree the params' shardings."""
    pstruct = jax.tree.structure(params)

    def visit(node):
        try:
            if jax.tree.structure(node) == pstruct:
                return pshard
        except Exception:
            pass
        return None

    def rec(node):
        m = visit(node)
        if m is not None:
            return m
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*[rec(c) for c in node])
        if isinstance(node, (tuple, list)):
            return type(node)(rec(c) for c in node)
        if isinstance(node, dict):
            return {k: rec(v) for k, v in node.items()}
        return jax.tree.map(lambda _: rep, node)

    return rec(opt_state)
