"""The training loop: read it top to bottom.

``train(config, workdir)``:

1. validate the config, initialise ``jax.distributed`` on several hosts, build the mesh;
2. build the experiment (SDE, network, score functions, optimiser, sharded state) and the
   host-sharded grain stream;
3. resume from the latest checkpoint in ``<workdir>/checkpoints`` (state and data position) or
   initialise;
4. loop: ``n_jitted_steps`` host batches -> one global array -> one jitted, donated step;
   every ``log_freq`` steps the pending losses come to the host (the only host round-trip),
   are checked for NaN / Inf, written to TensorBoard (``<workdir>/tb``) and
   ``<workdir>/metrics.jsonl``, and shown in the progress bar; every ``eval_freq`` steps the
   held-out loss of the EMA params; every ``snapshot_freq`` steps samples from the EMA params
   (PNG grid, or scatter + sliced Wasserstein distance for toy data);
5. checkpoints (asynchronous) every ``snapshot_freq_for_preemption`` / ``snapshot_freq`` steps, at
   the end, and on SIGTERM / ``reached_preemption`` (then it returns ``status='preempted'``).

A non-finite loss raises :class:`NonFiniteLoss` naming the first bad step; losses are checked
before every save, so the newest checkpoint on disk is always a good one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import parallel
from jaxdiff.data import eval_dataset, resolve_data_dir, train_dataset
from jaxdiff.train import checkpoint as ckpt
from jaxdiff.train.config import validate_config
from jaxdiff.train.experiment import build_experiment, check_workdir
from jaxdiff.train.step import get_loss_fn, jit_train_step, make_eval_step, make_train_step

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


def _next_batches(it, n: int) -> dict:
    bs = [next(it) for _ in range(n)]
    return np.stack([b["x"] for b in bs])


def _check_finite(pending: list, first_step: int) -> list:
    """Fetch pending per-step losses; raise on the first non-finite one."""
    if not pending:
        return []
    losses = np.concatenate([np.asarray(jax.device_get(p)).reshape(-1) for p in pending])
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        step = first_step + int(bad[0]) + 1
        raise NonFiniteLoss(f"the training loss is {losses[bad[0]]} at step {step}; the last "
                            f"checkpoint (before step {step}) is kept")
    return losses.tolist()


def _validate_freqs(config) -> None:
    t = config.training
    for name in ("log_freq", "eval_freq", "snapshot_freq", "snapshot_freq_for_preemption"):
        if t[name] % t.n_jitted_steps:
            raise ValueError(f"config.training.{name}={t[name]} must be a multiple of "
                             f"config.training.n_jitted_steps={t.n_jitted_steps}")


def train(config, workdir: str, *, max_steps: Optional[int] = None,
          progress: bool = True) -> dict:
    """Train (or resume) the run in ``workdir``.

    Args:
      config: an experiment config (validated here).
      workdir: run directory (created; must be writable). Checkpoints, TensorBoard events,
        ``metrics.jsonl``, sample grids and ``tfds/`` (the built digits) go there.
      max_steps: stop after this many steps in this call (tests; the checkpoint is written).
      progress: show a tqdm progress bar on process 0.

    Returns:
      ``{'step', 'status' ('done' | 'preempted' | 'max_steps'), 'losses' {step: loss},
      'eval' {step: held-out loss}, 'sw' {step: sliced Wasserstein}}`` of this call.
    """
    validate_config(config)
    _validate_freqs(config)
    parallel.maybe_initialize_distributed(config.parallel)
    workdir = check_workdir(workdir)
    main = parallel.is_main_process()
    t = config.training
    exp = build_experiment(config)
    mesh, n_jit = exp.mesh, t.n_jitted_steps
    parallel.check_batch_size("config.training.batch_size", t.batch_size, mesh)
    parallel.check_batch_size("config.eval.batch_size", config.eval.batch_size, mesh)

    data_dir = resolve_data_dir(config, workdir)
    data_iter = iter(train_dataset(config, data_dir, process_index=jax.process_index(),
                                   process_count=jax.process_count()))

    loss_fn = get_loss_fn(config, exp.sde, exp.train_score_fn, train=True)
    step_fn = jit_train_step(make_train_step(loss_fn, exp.optimizer,
                                             ema_rate=config.model.ema_rate,
                                             ema_warmup=t.ema_warmup), mesh, exp.state_shardings)

    manager = ckpt.make_manager(workdir, keep_latest=t.keep_latest, keep_every=t.snapshot_freq,
                                async_save=t.async_checkpointing)
    start = manager.latest_step()
    if start is not None:
        state, meta = ckpt.restore(manager, start, exp.abstract_state, data_iter)
        logging.info("resumed from step %d (saved on %s devices)", start,
                     meta.get("device_count"))
    else:
        state = exp.init(jax.random.PRNGKey(config.seed))
        start = 0
    step = int(jax.device_get(state.step))
    if step != start:
        raise RuntimeError(f"checkpoint {start} holds state.step={step}")

    evaluator = _PeriodicEval(config, exp, data_dir, workdir) if main or jax.process_count() > 1 \
        else None
    writer = _Writer(workdir) if main else None
    bar = None
    if main and progress:
        from tqdm import tqdm
        bar = tqdm(total=t.n_iters, initial=step, dynamic_ncols=True, desc="train")

    result = {"step": step, "status": "done", "losses": {}, "eval": {}, "sw": {}}
    pending, pending_from = [], step
    stop_at = t.n_iters if max_steps is None else min(t.n_iters, step + max_steps)
    t_last, s_last = time.time(), step
    try:
        with _Preemption() as preempt:
            while step < stop_at:
                batches = parallel.global_batch(_next_batches(data_iter, n_jit), mesh, leading=1)
                state, metrics = step_fn(state, batches)
                step += n_jit
                pending.append(metrics["loss"])
                preempted = preempt.reached(manager, step)
                must_save = (step % t.snapshot_freq_for_preemption == 0 or
                             step % t.snapshot_freq == 0 or step >= stop_at or preempted)
                if step % t.log_freq == 0 or must_save:
                    losses = _check_finite(pending, pending_from)
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
                if evaluator is not None and step % t.eval_freq == 0:
                    ev = evaluator.held_out_loss(state, step)
                    result["eval"][step] = ev
                    if writer:
                        writer.scalars(step, {"eval/loss": ev})
                if evaluator is not None and t.snapshot_sampling and step % t.snapshot_freq == 0:
                    sw = evaluator.snapshot(state, step)
                    if sw is not None:
                        result["sw"][step] = sw
                        if writer:
                            writer.scalars(step, {"eval/sliced_wasserstein": sw})
                if preempted:
                    result["status"] = "preempted"
                    logging.warning("preemption at step %d: checkpoint saved, exiting", step)
                    break
            if result["status"] != "preempted" and step < t.n_iters:
                result["status"] = "max_steps"
    finally:
        manager.wait_until_finished()
        manager.close()
        if writer:
            writer.close()
        if bar is not None:
            bar.close()
    result["step"] = step
    return result


class _Writer:
    """TensorBoard scalars (tensorboardX) and ``metrics.jsonl`` (every step's loss)."""

    def __init__(self, workdir: str):
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(os.path.join(workdir, "tb"))
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def scalars(self, step: int, values: dict, per_step_loss: Optional[dict] = None) -> None:
        for k, v in values.items():
            self.tb.add_scalar(k, float(v), step)
        for s, l in (per_step_loss or {}).items():
            self.jsonl.write(json.dumps({"step": int(s), "loss": float(l)}) + "\n")
        if "eval/loss" in values or "eval/sliced_wasserstein" in values:
            self.jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in
                                                                values.items()}}) + "\n")
        self.jsonl.flush()
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()
        self.jsonl.close()


class _PeriodicEval:
    """Held-out loss on a fixed set of eval batches and snapshot samples, from EMA params."""

    def __init__(self, config, exp, data_dir: str, workdir: str):
        self.config, self.exp, self.workdir = config, exp, workdir
        self.eval_step = make_eval_step(get_loss_fn(config, exp.sde, exp.score_fn, train=False),
                                        exp.mesh)
        ds = eval_dataset(config, data_dir, process_index=jax.process_index(),
                          process_count=jax.process_count())
        n = min(len(ds), config.eval.num_loss_batches)
        if n == 0:
            raise ValueError(f"config.eval.batch_size={config.eval.batch_size} is larger than the "
                             f"{config.data.eval_split!r} split")
        self.batches = [parallel.global_batch(ds[i]["x"], exp.mesh) for i in range(n)]
        self.key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
        self._sampler = None
        if getattr(exp, "msdiff", None) is not None:  # conditional: x | y grids; multi-scale: skipped (logged)
            from jaxdiff.train.msdiff import SnapshotSampler
            self._sampler = SnapshotSampler(config, exp, data_dir, workdir)

    def held_out_loss(self, state, step: int) -> float:
        keys = jax.random.split(self.key, len(self.batches))
        vals = [self.eval_step(state.ema_params, k, b) for k, b in zip(keys, self.batches)]
        return float(np.mean(jax.device_get(vals)))

    def snapshot(self, state, step: int) -> Optional[float]:
        from jaxdiff.train.sampling import build_sampler, save_image_grid, save_scatter
        if getattr(self.exp, "msdiff", None) is not None:
            return self._sampler(state, step)
        c = self.config
        n = c.sampling.num_samples
        if self._sampler is None:
            self._sampler = build_sampler(c, self.exp.sde, self.exp.score_fn,
                                          (n,) + self.exp.example_shape)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(c.seed), 2), step)
        x, _ = self._sampler(state.ema_params, key)
        x = np.asarray(jax.device_get(x))
        out = os.path.join(self.workdir, "samples", f"step_{step:08d}.png")
        if c.data.dataset != "toy":
            if parallel.is_main_process():
                save_image_grid(out, x, centered=c.data.centered)
            return None
        from jaxdiff.data.toy import sample_toy
        from jaxdiff.eval.distances import sliced_wasserstein
        ref = sample_toy(c.data.toy, np.random.default_rng(c.seed + 7), n, c.data.dim)
        sw = float(sliced_wasserstein(jax.random.PRNGKey(3), jnp.asarray(x), jnp.asarray(ref),
                                      c.eval.sw_projections))
        if parallel.is_main_process():
            save_scatter(out, x, reference=ref)
        return sw
