"""Orbax checkpoints of a run: train state + grain iterator state + JSON metadata.

One ``ocp.CheckpointManager`` under ``<workdir>/checkpoints`` saves asynchronously every
``snapshot_freq_for_preemption`` steps (the frequent "preemption" checkpoints), at every
``snapshot_freq`` step, on preemption and at the end. Its preservation policy keeps the
``keep_latest`` most recent checkpoints plus every ``snapshot_freq``-th one, so frequent
checkpoints cost no disk beyond ``keep_latest``. Items:

* ``state``: the :class:`~jaxdiff.train.state.TrainState` (``StandardSave``; restored with the
  shardings of the current mesh, so a run saved on 8 devices resumes on 1 and vice versa);
* ``data``: the grain ``DatasetIterator`` state of every host (``grain.checkpoint``);
* ``meta``: JSON (step, config, device / process counts, time, library versions).
"""

from __future__ import annotations

import datetime
import json
import os
import time
from typing import Any, Optional

import flax
import grain
import jax
import optax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

__all__ = ["make_manager", "save", "restore", "latest_step", "abstract_like", "restore_latest",
           "checkpoint_dir"]


def checkpoint_dir(workdir: str) -> str:
    """``<workdir>/checkpoints`` (absolute)."""
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, *, keep_latest: int = 2, keep_every: int = 0,
                 async_save: bool = True, read_only: bool = False,
                 with_data: bool = True) -> ocp.CheckpointManager:
    """The run's ``CheckpointManager``.

    Args:
      workdir: run directory; checkpoints go to ``<workdir>/checkpoints``.
      keep_latest: most recent checkpoints kept.
      keep_every: also keep every step divisible by this (0: none).
      async_save: save in a background thread (``wait`` / ``close`` to finish).
      read_only: for eval / sample modes.
      with_data: register the grain iterator item (training); eval / sample skip it.
    """
    policies = [cm.LatestN(n=max(1, keep_latest))]
    if keep_every > 0:
        policies.append(cm.EveryNSteps(interval_steps=keep_every))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, read_only=read_only, create=not read_only,
        cleanup_tmp_directories=not read_only)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    if with_data:
        handlers["data"] = grain.checkpoint.CheckpointHandler()
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                 item_handlers=handlers)


def _meta(step: int, config=None, extra: Optional[dict] = None) -> dict:
    m = {"step": int(step), "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
         "unix_time": time.time(), "device_count": jax.device_count(),
         "process_count": jax.process_count(), "jax": jax.__version__,
         "flax": flax.__version__, "optax": optax.__version__}
    if config is not None:
        m["config"] = json.loads(config.to_json_best_effort())
    m.update(extra or {})
    return m


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter=None, *, config=None,
         extra: Optional[dict] = None) -> bool:
    """Save ``state`` (and the data iterator's position) at ``step`` (asynchronously when the
    manager is async). Returns whether a save was started."""
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave(_meta(step, config, extra))}
    if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    return manager.save(step, args=ocp.args.Composite(**items), force=True)


def latest_step(manager: ocp.CheckpointManager) -> Optional[int]:
    """The newest complete checkpoint step, or None."""
    return manager.latest_step()


def abstract_like(state: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` pytree of ``state`` (arrays or abstract) with the given shardings."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iter=None):
    """Restore ``(state, meta)`` at ``step``; the state takes the shardings of
    ``abstract_state`` (see :func:`abstract_like`); ``data_iter`` is set to its saved position."""
    items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    out = manager.restore(step, args=ocp.args.Composite(**items))
    return out["state"], out["meta"]


def restore_latest(workdir: str, abstract_state: Any, *, step: Optional[int] = None):
    """Load the newest (or the given) checkpoint of a run for evaluation or sampling.

    Args:
      workdir: the training run's directory.
      abstract_state: the target structure with shardings (:func:`abstract_like`).
      step: a specific step (None or negative: the latest).

    Returns:
      ``(state, meta)``.

    Raises:
      FileNotFoundError: when the run has no checkpoint.
    """
    if not os.path.isdir(checkpoint_dir(workdir)):
        raise FileNotFoundError(f"no checkpoints in {checkpoint_dir(workdir)!r}: train first "
                                f"(--mode=train --workdir={workdir})")
    manager = make_manager(workdir, read_only=True, with_data=False, async_save=False)
    try:
        s = manager.latest_step() if step is None or step < 0 else step
        if s is None:
            raise FileNotFoundError(f"no complete checkpoint in {checkpoint_dir(workdir)!r}")
        if s not in manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {s} in {checkpoint_dir(workdir)!r}; "
                                    f"available: {sorted(manager.all_steps())}")
        return restore(manager, s, abstract_state)
    finally:
        manager.close()
