"""Orbax checkpoints of a run: train state + grain iterator state + JSON metadata, each one
verified when it is read back.

One ``ocp.CheckpointManager`` under ``<workdir>/checkpoints`` saves asynchronously every
``snapshot_freq_for_preemption`` steps (the frequent "preemption" checkpoints), at every
``snapshot_freq`` step, on preemption and at the end. Its preservation policy keeps the
``keep_latest`` most recent checkpoints plus every ``snapshot_freq``-th one, so frequent
checkpoints cost no disk beyond ``keep_latest``. Items:

* ``state``: the :class:`~jaxdiff.train.state.TrainState` (``StandardSave``; restored with the
  shardings of the current mesh, so a run saved on 8 devices resumes on 1 and vice versa);
* ``data``: the grain ``DatasetIterator`` state of every host (``grain.checkpoint``);
* ``meta``: JSON (step, config, device / process counts, time, library versions) and the
  integrity record: for every state leaf its path, shape, dtype and :func:`state_checksums`
  (computed on device, independent of the sharding), and the sha256 of the data-iterator state.

Integrity and fallback: :func:`restore` verifies the restored state against the recorded
checksums and the iterator state against its sha256 (:class:`CheckpointDamaged` otherwise);
:func:`restore_newest_good` walks the checkpoints from the newest down, reports each one that
cannot be read or fails verification in ONE line naming its directory and the reason, moves it
aside to ``<workdir>/checkpoints_damaged/<step>-<unix time>`` (training; never deleted) or just
skips it (read-only eval / sample), and restores the newest good one.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as cm

__all__ = ["make_manager", "save", "restore", "latest_step", "abstract_like", "restore_latest",
           "checkpoint_dir", "damaged_dir", "state_checksums", "data_state_sha256",
           "restore_newest_good", "CheckpointDamaged", "CheckpointMismatch", "NoGoodCheckpoint",
           "DiskFull", "is_disk_full", "disk_full_error"]


class CheckpointDamaged(Exception):
    """A checkpoint cannot be read, or its contents fail the recorded checksums."""


class CheckpointMismatch(ValueError):
    """A readable checkpoint holds a state of another structure than the current config builds
    (a changed model / optimiser): not damage, nothing is moved."""


class NoGoodCheckpoint(RuntimeError):
    """Checkpoints existed but none of them could be restored; the message lists what was tried."""


class DiskFull(OSError):
    """No space left on the device of the workdir; the message names the path and the free space."""


def checkpoint_dir(workdir: str) -> str:
    """``<workdir>/checkpoints`` (absolute)."""
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def damaged_dir(workdir: str) -> str:
    """``<workdir>/checkpoints_damaged``: where unreadable checkpoints are moved (never deleted)."""
    return os.path.join(os.path.abspath(workdir), "checkpoints_damaged")


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


# -- integrity -----------------------------------------------------------------------------------

def _leaf_words(x) -> jax.Array:
    """The bits of ``x`` as a flat uint32 vector (16- and 8-bit values widened, 64-bit split)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32).reshape(-1)
    size = jnp.dtype(x.dtype).itemsize
    word = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, word).astype(jnp.uint32).reshape(-1)


def _leaf_sum(x) -> jax.Array:
    # sum_i (2 i + 1) * word_i  mod 2**32: associative (identical on 1 or 8 devices, any
    # sharding); a single flipped bit b of word i changes it by (2 i + 1) 2**b != 0 mod 2**32.
    w = _leaf_words(x)
    i = jnp.arange(w.shape[0], dtype=jnp.uint32)
    return jnp.sum(w * (jnp.uint32(2) * i + jnp.uint32(1)), dtype=jnp.uint32)


@jax.jit
def _checksums(leaves):
    if not leaves:
        return jnp.zeros((0,), jnp.uint32)
    return jnp.stack([_leaf_sum(x) for x in leaves])


def _leaf_record(state: Any) -> list:
    """``[[path, shape, dtype], ...]`` of the leaves of ``state`` (arrays or abstract)."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    return [[jax.tree_util.keystr(p), list(np.shape(x)), str(np.dtype(x.dtype))]
            for p, x in flat]


def state_checksums(state: Any) -> list:
    """One uint32 checksum per leaf of ``state`` (one jitted on-device reduction, fetched as a
    small array): ``sum_i (2 i + 1) * bits_i mod 2**32`` over the leaf's flattened 32-bit words.
    Independent of the sharding; any single flipped bit changes it."""
    return [int(v) for v in np.asarray(jax.device_get(_checksums(jax.tree.leaves(state))))]


def data_state_sha256(data_iter) -> str:
    """sha256 of the iterator's state (canonical JSON) as grain saves it."""
    return hashlib.sha256(json.dumps(data_iter.get_state(), sort_keys=True).encode()).hexdigest()


def _meta(step: int, config=None, extra: dict | None = None) -> dict:
    m = {"step": int(step), "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
         "unix_time": time.time(), "device_count": jax.device_count(),
         "process_count": jax.process_count(), "jax": jax.__version__,
         "flax": flax.__version__, "optax": optax.__version__}
    if config is not None:
        m["config"] = json.loads(config.to_json_best_effort())
    m.update(extra or {})
    return m


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter=None, *, config=None,
         extra: dict | None = None) -> bool:
    """Save ``state`` (and the data iterator's position) at ``step`` (asynchronously when the
    manager is async), with the integrity record in ``meta``. Returns whether a save was
    started."""
    leaves = zip(_leaf_record(state), state_checksums(state))
    record: dict[str, Any] = {"leaves": [r + [c] for r, c in leaves]}
    if data_iter is not None:
        record["data_sha256"] = {str(jax.process_index()): data_state_sha256(data_iter)}
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave(_meta(step, config, {"integrity": record, **(extra or {})}))}
    if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    return manager.save(step, args=ocp.args.Composite(**items), force=True)


def latest_step(manager: ocp.CheckpointManager) -> int | None:
    """The newest complete checkpoint step, or None."""
    return manager.latest_step()


def abstract_like(state: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` pytree of ``state`` (arrays or abstract) with the given shardings."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)


def _check_structure(meta: dict, abstract_state: Any, step: int) -> None:
    """Raise :class:`CheckpointMismatch` when the recorded leaves differ from the target's."""
    rec = (meta.get("integrity") or {}).get("leaves")
    if rec is None:
        return
    want = _leaf_record(abstract_state)
    got = [r[:3] for r in rec]
    if got == want:
        return
    gd, wd = {r[0]: r[1:] for r in got}, {r[0]: r[1:] for r in want}
    diff = [f"{k}: saved {gd.get(k)} vs now {wd.get(k)}" for k in sorted(set(gd) | set(wd))
            if gd.get(k) != wd.get(k)]
    raise CheckpointMismatch(f"checkpoint {step} holds a train state of another structure than "
                             f"the current config builds ({len(diff)} leaves differ, e.g. "
                             f"{diff[0]}): the model / optimiser config changed")


def verify(state: Any, meta: dict, step: int, data_iter=None) -> None:
    """Check a restored ``state`` (and ``data_iter``) against the integrity record of ``meta``.

    Raises:
      CheckpointDamaged: naming the first leaf (or the iterator state) whose checksum differs.
    """
    rec = meta.get("integrity")
    if rec is None:  # written before checksums were recorded
        logging.warning("checkpoint %d has no integrity record; not verified", step)
        return
    got = state_checksums(state)
    for (path, _, _, want), c in zip(rec["leaves"], got):
        if int(want) != c:
            raise CheckpointDamaged(f"checksum mismatch in state leaf {path} "
                                    f"(saved {want}, read {c})")
    sha = (rec.get("data_sha256") or {}).get(str(jax.process_index()))
    if data_iter is not None and sha is not None and data_state_sha256(data_iter) != sha:
        raise CheckpointDamaged("sha256 mismatch in the data-iterator state")


def _read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iter=None, *,
            check: bool = True, check_structure: bool = True):
    """Restore ``(state, meta)`` at ``step``; the state takes the shardings of
    ``abstract_state`` (see :func:`abstract_like`); ``data_iter`` is set to its saved position.

    Raises:
      CheckpointMismatch: the recorded state structure is not the target's (a config change).
      CheckpointDamaged: (``check``) the state or iterator fails its recorded checksum.
      Orbax / grain / JSON errors of an unreadable checkpoint.
    """
    if check and check_structure:
        _check_structure(_read_meta(manager, step), abstract_state, step)
    items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    out = manager.restore(step, args=ocp.args.Composite(**items))
    state, meta = out["state"], out["meta"]
    if check:
        if not isinstance(meta, dict) or int(meta.get("step", -1)) != int(step):
            raise CheckpointDamaged(f"meta item holds {meta!r:.80}, not step {step}")
        verify(state, meta, step, data_iter)
        if int(jax.device_get(state.step if hasattr(state, "step") else step)) != int(step):
            raise CheckpointDamaged(f"state.step is {int(jax.device_get(state.step))}")
    return state, meta


def _one_line(e: BaseException, limit: int = 240) -> str:
    msg = " ".join(str(e).split()) or "(no message)"
    return f"{type(e).__name__}: {msg[:limit]}{'...' if len(msg) > limit else ''}"


def _fatal(e: BaseException) -> bool:
    """Errors that say nothing about the checkpoint (memory, interrupts): never 'damage'."""
    text = str(e)
    return (isinstance(e, (MemoryError, KeyboardInterrupt, CheckpointMismatch)) or
            "RESOURCE_EXHAUSTED" in text or "Out of memory" in text)


def _candidate_steps(manager: ocp.CheckpointManager) -> list:
    """Steps of the manager plus any stray numeric step directory (an empty or foreign one that
    Orbax lists or not), newest first."""
    steps = set(manager.all_steps())
    d = str(manager.directory)
    if os.path.isdir(d):
        steps |= {int(n) for n in os.listdir(d) if n.isdigit() and os.path.isdir(os.path.join(d, n))}
    return sorted(steps, reverse=True)


def _agree(ok: bool) -> bool:
    """All processes agree a checkpoint is good (they fall back together)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def restore_newest_good(manager: ocp.CheckpointManager, workdir: str, abstract_state: Any,
                        data_iter=None, *, move_aside: bool = True, step: int | None = None,
                        on_meta: Callable[[dict, int], None] | None = None,
                        report: Callable[[str], None] | None = None):
    """Restore the newest checkpoint that reads back and passes its checksums.

    Every checkpoint that cannot be read (any Orbax / grain / JSON error: a missing or truncated
    file, an empty metadata file, a half-written iterator state, an empty stray step directory)
    or fails its checksums is reported in ONE line naming its directory and the reason, then
    moved to ``<workdir>/checkpoints_damaged/<step>-<unix time>`` (``move_aside``; never deleted)
    or skipped (read-only), and the next newest is tried.

    Args:
      manager: the run's manager.
      workdir: the run directory.
      abstract_state: the target structure with shardings.
      data_iter: the grain iterator to set (training) or None.
      move_aside: move damaged checkpoints (training) instead of skipping them (eval / sample).
      step: restore exactly this step (no fallback).
      on_meta: called as ``on_meta(meta, step)`` with a readable checkpoint's metadata before
        its state is read (the config comparison); what it raises propagates.
      report: where the one-line messages go (default: stderr and the log).

    Returns:
      ``(state, meta, step)``, or ``(None, None, None)`` when the run has no checkpoint and never
      had one (no ``checkpoints_damaged`` either).

    Raises:
      NoGoodCheckpoint: checkpoints exist or existed, none is good; lists what was tried.
      CheckpointMismatch: a readable checkpoint of another structure (a config change).
    """
    if report is None:
        def report(line):
            logging.warning("%s", line)
            if jax.process_index() == 0:
                print(line, file=sys.stderr, flush=True)
    d = str(manager.directory)
    if step is not None:
        if not os.path.isdir(os.path.join(d, str(step))):
            raise FileNotFoundError(f"no checkpoint for step {step} in {d!r}; available: "
                                    f"{sorted(_candidate_steps(manager))}")
        meta = _read_meta(manager, step)
        if on_meta is not None:
            on_meta(meta, step)
        state, meta = restore(manager, step, abstract_state, data_iter)
        return state, meta, step
    tried = []
    for s in _candidate_steps(manager):
        path = os.path.join(d, str(s))
        reason = None
        try:
            meta = _read_meta(manager, s)
        except Exception as e:  # noqa: BLE001 (any read error is damage; _fatal ones re-raised)
            if _fatal(e):
                raise
            reason = _one_line(e)
        if reason is None:
            if not isinstance(meta, dict):
                reason = f"meta item holds {meta!r:.60}"
            else:
                if on_meta is not None:
                    on_meta(meta, s)
                _check_structure(meta, abstract_state, s)
                try:
                    state, meta = restore(manager, s, abstract_state, data_iter,
                                          check_structure=False)
                except Exception as e:  # noqa: BLE001
                    if _fatal(e):
                        raise
                    reason = _one_line(e)
        if not _agree(reason is None):
            reason = reason or "damaged on another process"
        if reason is None:
            return state, meta, s
        if move_aside:
            dest = os.path.join(damaged_dir(workdir), f"{s}-{int(time.time())}")
            if jax.process_index() == 0:
                os.makedirs(damaged_dir(workdir), exist_ok=True)
                shutil.move(path, dest)
            report(f"checkpoint {path} is damaged ({reason}); moved to {dest}, trying the "
                   f"previous one")
            manager.reload()
        else:
            report(f"checkpoint {path} is damaged ({reason}); skipped (not moved: read-only)")
        tried.append(f"{s} ({reason})")
    gone = os.path.isdir(damaged_dir(workdir)) and os.listdir(damaged_dir(workdir))
    if tried or gone:
        raise NoGoodCheckpoint(
            f"no good checkpoint in {d!r}: tried {'; '.join(tried) or 'none left'}"
            + (f"; damaged ones are in {damaged_dir(workdir)!r}" if gone else "")
            + ". Put a good copy back there, or use a new --workdir to start from scratch")
    return None, None, None


def restore_latest(workdir: str, abstract_state: Any, *, step: int | None = None):
    """Load the newest good (or the given) checkpoint of a run for evaluation or sampling.

    Damaged checkpoints are reported in one line each and skipped (nothing is moved).

    Args:
      workdir: the training run's directory.
      abstract_state: the target structure with shardings (:func:`abstract_like`).
      step: a specific step (None or negative: the newest good one).

    Returns:
      ``(state, meta)``.

    Raises:
      FileNotFoundError: when the run has no checkpoint (or not the given step).
      NoGoodCheckpoint: when none of its checkpoints can be restored.
    """
    if not os.path.isdir(checkpoint_dir(workdir)):
        raise FileNotFoundError(f"no checkpoints in {checkpoint_dir(workdir)!r}: train first "
                                f"(--mode=train --workdir={workdir})")
    manager = make_manager(workdir, read_only=True, with_data=False, async_save=False)
    try:
        s = None if step is None or step < 0 else int(step)
        state, meta, _ = restore_newest_good(manager, workdir, abstract_state, move_aside=False,
                                             step=s)
        if state is None:
            raise FileNotFoundError(f"no complete checkpoint in {checkpoint_dir(workdir)!r}")
        return state, meta
    finally:
        manager.close()


# -- full disk -----------------------------------------------------------------------------------

def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is ENOSPC, as an errno or in a wrapped message."""
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(cur) or "ENOSPC" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _mount_point(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.ismount(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def disk_full_error(workdir: str, what: str, last_good: int | None) -> DiskFull:
    """The :class:`DiskFull` naming the disk of ``workdir``, its free space and what is intact."""
    try:
        st = os.statvfs(workdir)
        free = f"{st.f_bavail * st.f_frsize / 2**20:.1f} MiB free of " \
               f"{st.f_blocks * st.f_frsize / 2**20:.1f} MiB"
    except OSError:
        free = "free space unknown"
    kept = (f"the checkpoints up to step {last_good} in {checkpoint_dir(workdir)} are intact"
            if last_good is not None else "no checkpoint was complete yet")
    return DiskFull(errno.ENOSPC, f"no space left on device {_mount_point(workdir)!r} "
                    f"({free}) while {what} in {workdir!r}; {kept}: free space and run the same "
                    f"command to resume")
