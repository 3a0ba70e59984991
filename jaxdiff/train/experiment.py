"""The run directory check and the (abstract) train state with its shardings on the mesh: what
every task (:mod:`jaxdiff.tasks`) builds its state with."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

import jax

from jaxdiff import parallel
from jaxdiff.models import init_compiler_options, init_params
from jaxdiff.train.state import TrainState, init_state

__all__ = ["build_state", "check_workdir", "workdir_lock", "WorkdirLocked"]


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


class WorkdirLocked(RuntimeError):
    """Another process trains in the same workdir; the message names its pid."""


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Hold ``<workdir>/lock`` (``fcntl.flock``, exclusive, non-blocking) while training.

    The lock file holds the owner's pid; the kernel drops the lock when the owner exits (however
    it dies), so a stale file of a dead process never blocks. Only process 0 of a multi-host run
    takes it (the hosts share the workdir).

    Raises:
      WorkdirLocked: naming the pid of the process that holds it.
    """
    if jax.process_index() != 0:
        yield
        return
    path = os.path.join(workdir, "lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise WorkdirLocked(f"workdir {workdir!r} is in use by process {owner} (lock file "
                                f"{path!r}): wait for it to finish or stop it; two runs must not "
                                f"share a workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def build_state(config, model, shape: tuple, optimizer, mesh):
    """The train state of ``model`` (inputs of ``shape``) with ``optimizer`` on ``mesh``.

    Returns:
      ``(init, state_shardings, abstract_state)``: ``init(key) -> TrainState`` jitted with
      ``out_shardings=state_shardings`` (params replicated, or FSDP-sharded over ``'data'`` per
      ``config.training.fsdp`` / ``fsdp_min_size``, optimiser moments mirroring them);
      ``abstract_state`` carries those shardings (for checkpoint restores).
    """

    def init(key):
        k_params, k_state = jax.random.split(key)
        params = init_params(k_params, model, (1,) + tuple(shape))
        return init_state(params, optimizer, k_state)

    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    t = config.training
    pshard = parallel.param_shardings(abstract.params, mesh, fsdp=t.fsdp, min_size=t.fsdp_min_size)
    rep = parallel.replicated(mesh)
    opt_shard = jax.tree.map(lambda _: rep, abstract.opt_state)
    if t.fsdp:  # optimizer moments mirror the params' sharding
        opt_shard = _mirror_param_shardings(abstract.opt_state, abstract.params, pshard, rep)
    # the TrainState pytree holding each leaf's sharding (not arrays: hence the type ignores)
    shardings = TrainState(step=rep, params=pshard, ema_params=pshard,  # type: ignore[arg-type]
                           opt_state=opt_shard, rng=rep)  # type: ignore[arg-type]
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    return (jax.jit(init, out_shardings=shardings, compiler_options=init_compiler_options()),
            shardings, abstract_state)


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
