"""The training loop: read it top to bottom.

``train(task, workdir)``, where ``task`` (:func:`jaxdiff.tasks.get_task`, built once from the
config, with ``jax.distributed`` initialised and the mesh made) owns the SDE, network, score
functions, losses, optimiser, sharded state, evaluators and snapshot sampling; the loop never asks
which task it runs (``jaxdiff.tasks.train(config, workdir)`` builds the task from a config):

1. check the frequencies and batch sizes; open the host-sharded grain stream;
2. build the jitted, donated train step from ``task.train_loss``;
3. resume from the latest checkpoint in ``<workdir>/checkpoints`` (state and data position) or
   initialise;
4. loop: ``n_jitted_steps`` host batches -> one global array -> one jitted, donated step;
   every ``log_freq`` steps the pending losses come to the host (the only host round-trip),
   are checked for NaN / Inf, written to TensorBoard (``<workdir>/tb``) and
   ``<workdir>/metrics.jsonl``, and shown in the progress bar; every ``eval_freq`` steps the
   task's periodic evaluators (the held-out loss) on the EMA params, the same evaluators
   ``--mode=eval`` runs; every ``snapshot_freq`` steps ``task.snapshot`` (a PNG grid, or a
   scatter + sliced Wasserstein distance for toy data);
5. checkpoints (asynchronous) every ``snapshot_freq_for_preemption`` / ``snapshot_freq`` steps, at
   the end, and on SIGTERM / ``reached_preemption`` (then it returns ``status='preempted'``).

Guarantees (docs/training.md, "What survives what"): the train step returns an on-device
all-finite flag of the new state (params, EMA, optimiser state) with its losses; both are
checked before every save, so a NaN / Inf loss or state raises :class:`NonFiniteLoss` naming the
step and the newest checkpoint on disk, which is always a finite one. Every checkpoint records
checksums of its state and data-iterator state; at start-up a damaged newest checkpoint is
reported in one line, moved to ``<workdir>/checkpoints_damaged`` and the previous good one
restored (:func:`jaxdiff.train.checkpoint.restore_newest_good`). A checkpoint saved with another
config is refused naming the keys (``training.resume_with_changes=True`` accepts it); a second
process on the same workdir is refused (a ``flock`` on ``<workdir>/lock``); a full disk raises
:class:`~jaxdiff.train.checkpoint.DiskFull` naming the disk, the earlier checkpoints intact.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from jaxdiff import parallel
from jaxdiff.data import resolve_data_dir, select_fields, train_dataset
from jaxdiff.eval.evaluators import run_evaluators
from jaxdiff.train import checkpoint as ckpt
from jaxdiff.train.config import ConfigError, check_eval_split, config_changes
from jaxdiff.train.evaluate import eval_context
from jaxdiff.train.experiment import check_workdir, workdir_lock
from jaxdiff.train.step import jit_train_step, make_train_step

__all__ = ["train", "NonFiniteLoss"]


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or Inf; the message names the step."""


class _Preemption:
    """SIGTERM sets a flag the loop reads between steps (the handler itself does no I/O)."""

    def __init__(self):
        self.flag = threading.Event()
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, lambda *_: self.flag.set())
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)

    def reached(self, manager, step: int) -> bool:
        if self.flag.is_set():
            return True
        if jax.process_count() > 1:  # JAX's preemption sync point (all hosts agree on the step)
            try:
                return bool(manager.reached_preemption(step))
            except Exception:  # no preemption service in this cluster
                return False
        return False


def _next_batches(it, n: int, fields: tuple = ("x",)):
    """``n`` host batches stacked along a new leading axis, each as the loss sees it
    (:func:`jaxdiff.data.select_fields` of the task's ``batch_fields``)."""
    bs = [select_fields(next(it), fields) for _ in range(n)]
    return jax.tree.map(lambda *a: np.stack(a), *bs)


def _last_good(manager) -> str:
    """The newest complete checkpoint on disk, in words (pending saves finished first)."""
    try:
        manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 (reported by the caller's error already)
        logging.warning("a pending checkpoint save failed: %s", e)
    try:
        manager.reload()
    except Exception:  # noqa: BLE001
        pass
    last = manager.latest_step()
    if last is None:
        return "no checkpoint was saved before it"
    path = os.path.join(str(manager.directory), str(last))
    return (f"the newest checkpoint on disk, step {last} ({path}), "
            f"holds a finite state: restart from it with a smaller config.optim.lr (add "
            f"--config.training.resume_with_changes=True to change the config)")


def _check_finite(pending: list, first_step: int, manager=None) -> list:
    """Fetch pending ``(losses, state_finite, step)`` of the jitted calls (one transfer); raise
    :class:`NonFiniteLoss` on the first non-finite loss or non-finite state."""
    if not pending:
        return []
    fetched = jax.device_get([(p[0], p[1]) for p in pending])
    out, step0 = [], first_step
    for (loss, finite), (_, _, step_after) in zip(fetched, pending):
        loss = np.asarray(loss).reshape(-1)
        bad = np.flatnonzero(~np.isfinite(loss))
        where = _last_good(manager) if manager is not None and (bad.size or not finite) else ""
        if bad.size:
            step = step0 + int(bad[0]) + 1
            raise NonFiniteLoss(f"the training loss is {loss[bad[0]]} at step {step}; nothing "
                                f"after step {step - 1} is saved; {where}")
        if not bool(finite):
            span = f"step {step_after}" if step_after - step0 == 1 else \
                f"steps {step0 + 1}..{step_after}"
            raise NonFiniteLoss(f"the train state (params, EMA or optimiser state) is not finite "
                                f"after the update at {span} (its loss {loss[-1]} was finite); "
                                f"that state is not saved; {where}")
        out.extend(loss.tolist())
        step0 = step_after
    return out


def _validate_freqs(config) -> None:
    t = config.training
    for name in ("log_freq", "eval_freq", "snapshot_freq", "snapshot_freq_for_preemption"):
        if t[name] % t.n_jitted_steps:
            raise ConfigError(f"config.training.{name}={t[name]} must be a multiple of "
                              f"config.training.n_jitted_steps={t.n_jitted_steps}")


def _check_batch(name: str, batch_size: int, mesh) -> None:
    try:
        parallel.check_batch_size(name, batch_size, mesh)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _config_guard(config, workdir: str):
    """``on_meta`` for the restore: refuse a checkpoint saved with another config (keys named)
    unless ``config.training.resume_with_changes``."""

    def check(meta: dict, step: int) -> None:
        if "config" not in meta:
            return
        changes = config_changes(meta["config"], config)
        if not changes:
            return
        if config.training.get("resume_with_changes", False):
            logging.warning("resuming step %d with a changed config: %s", step, "; ".join(changes))
            return
        raise ConfigError(f"workdir {workdir!r} holds a run (checkpoint {step}) with a different "
                          f"config: {'; '.join(changes)}; use another --workdir, or pass "
                          f"--config.training.resume_with_changes=True to resume with these "
                          f"changes")

    return check


def train(task, workdir: str, *, max_steps: int | None = None,
          progress: bool = True) -> dict:
    """Train (or resume) the run of ``task`` in ``workdir``.

    Args:
      task: the run's task (:func:`jaxdiff.tasks.get_task`; its config is validated there).
      workdir: run directory (created; must be writable; one training process at a time: a
        second one is refused naming the first's pid). Checkpoints, TensorBoard events,
        ``metrics.jsonl``, sample grids and ``tfds/`` (the built digits) go there.
      max_steps: stop after this many steps in this call (tests; the checkpoint is written).
      progress: show a tqdm progress bar on process 0.

    Returns:
      ``{'step', 'status' ('done' | 'preempted' | 'max_steps'), 'losses' {step: loss},
      'eval' {step: held-out loss}, 'sw' {step: sliced Wasserstein of a snapshot}}`` of this
      call.

    Raises:
      ConfigError: a frequency / batch size the run cannot use, or a workdir holding a run
        with another config (the keys named).
      WorkdirLocked: another process trains in ``workdir``.
      NonFiniteLoss: a NaN / Inf loss or state; the newest checkpoint on disk stays good.
      ckpt.NoGoodCheckpoint: checkpoints existed, none can be restored.
      ckpt.DiskFull: the disk of ``workdir`` is full (the earlier checkpoints are intact).
    """
    if not hasattr(task, "train_loss"):
        raise TypeError(f"train takes a task (jaxdiff.tasks.get_task(config)), got "
                        f"{type(task).__name__}; jaxdiff.tasks.train(config, workdir) builds it")
    config = task.config
    _validate_freqs(config)
    mesh = task.mesh
    _check_batch("config.training.batch_size", config.training.batch_size, mesh)
    _check_batch("config.eval.batch_size", config.eval.batch_size, mesh)
    workdir = check_workdir(workdir)
    with workdir_lock(workdir):
        return _train(task, workdir, max_steps, progress)


def _train(task, workdir: str, max_steps: int | None, progress: bool) -> dict:
    config = task.config
    main = parallel.is_main_process()
    t = config.training
    mesh, n_jit = task.mesh, t.n_jitted_steps

    data_dir = resolve_data_dir(config, workdir)
    check_eval_split(config, data_dir)
    data_iter = iter(train_dataset(config, data_dir, process_index=jax.process_index(),
                                   process_count=jax.process_count()))

    step_fn = jit_train_step(make_train_step(task.train_loss, task.optimizer,
                                             ema_rate=config.model.ema_rate,
                                             ema_warmup=t.ema_warmup), mesh, task.state_shardings)

    manager = ckpt.make_manager(workdir, keep_latest=t.keep_latest, keep_every=t.snapshot_freq,
                                async_save=t.async_checkpointing)
    try:
        state, meta, start = ckpt.restore_newest_good(manager, workdir, task.abstract_state,
                                                      data_iter,
                                                      on_meta=_config_guard(config, workdir))
    except BaseException:
        manager.close()
        raise
    if state is not None:
        logging.info("resumed from step %d (saved on %s devices)", start,
                     meta.get("device_count"))
    else:
        state = task.init(jax.random.PRNGKey(config.seed))
        start = 0
    step = int(jax.device_get(state.step))

    periodic = task.evaluators(periodic=True)
    writer = _Writer(workdir) if main else None
    bar = None
    if main and progress:
        bar = tqdm(total=t.n_iters, initial=step, dynamic_ncols=True, desc="train")

    result: dict[str, Any] = {"step": step, "status": "done", "losses": {}, "eval": {}, "sw": {}}
    pending, pending_from = [], step
    stop_at = t.n_iters if max_steps is None else min(t.n_iters, step + max_steps)
    t_last, s_last = time.time(), step
    try:
        with _Preemption() as preempt:
            while step < stop_at:
                host = _next_batches(data_iter, n_jit, task.batch_fields)
                batches = parallel.global_batch(host, mesh, leading=1)
                state, metrics = step_fn(state, batches)
                step += n_jit
                pending.append((metrics["loss"], metrics["state_finite"], step))
                preempted = preempt.reached(manager, step)
                must_save = (step % t.snapshot_freq_for_preemption == 0 or
                             step % t.snapshot_freq == 0 or step >= stop_at or preempted)
                if step % t.log_freq == 0 or must_save:
                    # the only host round-trip: losses and the all-finite flags of the states;
                    # a state is saved only after this check passed
                    losses = _check_finite(pending, pending_from, manager)
                    for i, l in enumerate(losses):
                        result["losses"][pending_from + i * 1 + 1] = l
                    pending, pending_from = [], step
                    now = time.time()
                    rate = (step - s_last) / max(now - t_last, 1e-9)
                    t_last, s_last = now, step
                    if writer and losses:
                        writer.scalars(step, {"train/loss": losses[-1], "train/steps_per_s": rate},
                                       {s: l for s, l in result["losses"].items()
                                        if s > step - len(losses)})
                    if bar is not None:
                        bar.update(step - bar.n)
                        bar.set_postfix(loss=f"{losses[-1]:.4f}" if losses else "-",
                                        steps_per_s=f"{rate:.1f}")
                if must_save:
                    ckpt.save(manager, step, state, data_iter, config=config)
                if step % t.eval_freq == 0:
                    ctx = eval_context(task, state.ema_params, step, workdir, data_dir)
                    ev = run_evaluators(periodic, state.ema_params, ctx)
                    if "held_out_loss" in ev:
                        result["eval"][step] = ev["held_out_loss"]
                    if writer and ev:
                        writer.scalars(step, _eval_scalars(ev))
                if t.snapshot_sampling and step % t.snapshot_freq == 0:
                    snap = task.snapshot(state.ema_params, step, workdir=workdir,
                                         data_dir=data_dir) or {}
                    if "sliced_wasserstein" in snap:
                        result["sw"][step] = snap["sliced_wasserstein"]
                    if writer and snap:
                        writer.scalars(step, _eval_scalars(snap))
                if preempted:
                    result["status"] = "preempted"
                    logging.warning("preemption at step %d: checkpoint saved, exiting", step)
                    break
            if result["status"] != "preempted" and step < t.n_iters:
                result["status"] = "max_steps"
        manager.wait_until_finished()  # an asynchronous save's error surfaces here
    except Exception as e:
        if ckpt.is_disk_full(e):
            _quiet(manager.wait_until_finished)
            _quiet(manager.reload)
            raise ckpt.disk_full_error(workdir, f"training step {step} (checkpoint or metrics "
                                       f"write)", manager.latest_step()) from e
        raise
    finally:
        _quiet(manager.wait_until_finished)
        _quiet(manager.close)
        if writer:
            _quiet(writer.close)
        if bar is not None:
            bar.close()
    result["step"] = step
    return result


def _quiet(fn) -> None:
    """Run a clean-up call; log (do not raise) its error, so it never hides the first one."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        logging.warning("%s failed during clean-up: %s", getattr(fn, "__name__", fn), e)


def _eval_scalars(metrics: dict) -> dict:
    """``eval/<name>`` scalars (the held-out loss is ``eval/loss``)."""
    return {"eval/loss" if k == "held_out_loss" else f"eval/{k}": v for k, v in metrics.items()
            if np.isscalar(v) and not isinstance(v, (str, bool))}


class _Writer:
    """TensorBoard scalars (tensorboardX) and ``metrics.jsonl`` (every step's loss)."""

    def __init__(self, workdir: str):
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(os.path.join(workdir, "tb"))
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def scalars(self, step: int, values: dict, per_step_loss: dict | None = None) -> None:
        for k, v in values.items():
            self.tb.add_scalar(k, float(v), step)
        for s, l in (per_step_loss or {}).items():
            self.jsonl.write(json.dumps({"step": int(s), "loss": float(l)}) + "\n")
        if any(k.startswith("eval/") for k in values):
            self.jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in
                                                                values.items()}}) + "\n")
        self.jsonl.flush()
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()
        self.jsonl.close()
