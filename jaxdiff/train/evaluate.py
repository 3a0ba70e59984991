"""``--mode=eval`` and ``--mode=sample`` of a task: load a checkpoint, run the task's evaluators,
write the report; or let the task draw and save samples.

:func:`evaluate` runs, on the EMA parameters of the newest (or ``config.eval.checkpoint_step``)
checkpoint, the evaluators of ``task.evaluators()`` (:mod:`jaxdiff.eval.evaluators`: held-out
loss, sharded bits/dim and its variational bound, toy sliced Wasserstein, sample quality,
registered hooks, and the task's own), and writes ``<workdir>/eval/report_<step>.json`` through
:func:`jaxdiff.eval.evaluators.write_report`. The periodic evaluation during training runs the
same evaluators (those marked ``periodic``) from :mod:`jaxdiff.train.loop`.

A task is any object built once from a config (:func:`jaxdiff.tasks.get_task`); these functions
only read its ``config``, ``abstract_state``, ``evaluators()``, ``report_fields()`` and
``sample(...)``, and never ask which task it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from jaxdiff.data import resolve_data_dir
from jaxdiff.eval.evaluators import EVAL_HOOKS, EvalContext, register_eval_hook, run_evaluators, write_report
from jaxdiff.train import checkpoint as ckpt
from jaxdiff.train.experiment import check_workdir

__all__ = ["evaluate", "sample", "EvalContext", "register_eval_hook", "EVAL_HOOKS",
           "load_params", "eval_context"]


def _check_task(task, fn: str) -> None:
    if not hasattr(task, "abstract_state"):
        raise TypeError(f"{fn} takes a task (jaxdiff.tasks.get_task(config)), got "
                        f"{type(task).__name__}; jaxdiff.tasks.{fn}(config, workdir) builds it")


def load_params(task, workdir: str, *, step: int | None = None, use_ema: bool = True):
    """``(params, step, task)`` from a run's checkpoint (restored onto the task's mesh).

    Args:
      task: the run's task (:func:`jaxdiff.tasks.get_task`; ``jaxdiff.tasks.load_params`` takes
        a config).
      workdir: the run directory.
      step: a checkpoint step (``None`` / -1: the newest).
      use_ema: the EMA params (else the raw ones).
    """
    _check_task(task, "load_params")
    state, meta = ckpt.restore_latest(workdir, task.abstract_state, step=step)
    return (state.ema_params if use_ema else state.params), int(meta["step"]), task


def eval_context(task, params, step: int, workdir: str, data_dir: str | None = None
                 ) -> EvalContext:
    """The :class:`EvalContext` of ``params`` at ``step`` (key ``fold_in(PRNGKey(seed),
    1000 + step)``), as both evaluation paths build it."""
    c = task.config
    return EvalContext(config=c, task=task, params=params, step=int(step),
                       data_dir=data_dir or resolve_data_dir(c, workdir), workdir=workdir,
                       key=jax.random.fold_in(jax.random.PRNGKey(c.seed), 1000 + int(step)))


def evaluate(task, workdir: str) -> dict:
    """Evaluate the run of ``task`` in ``workdir``; write and return the JSON report.

    Returns:
      ``step``, ``dataset``, ``sde``, ``ema``, the task's ``report_fields()`` and every
      evaluator's metrics (``held_out_loss``; images: ``bits_per_dim``,
      ``bits_per_dim_stderr``, ``bits_per_dim_bound``, ``bits_per_dim_bound_stderr``,
      ``bpd_num_examples``, ``bpd_nfe``; toy: ``sliced_wasserstein`` ...); written to
      ``<workdir>/eval/report_<step>.json`` by process 0.
    """
    _check_task(task, "evaluate")
    config = task.config
    workdir = check_workdir(workdir)
    e = config.eval
    params, step, _ = load_params(task, workdir, step=e.checkpoint_step, use_ema=e.use_ema)
    ctx = eval_context(task, params, step, workdir)
    report = {"step": step, "dataset": config.data.dataset, "sde": config.training.sde,
              "ema": bool(e.use_ema), **task.report_fields()}
    report.update(run_evaluators(task.evaluators(), params, ctx))
    write_report(workdir, step, report)
    return report


def sample(task, workdir: str, *, num_samples: int | None = None,
           stage_workdirs: Sequence[str] | None = None) -> dict:
    """``--mode=sample``: ``task.sample(workdir, num_samples=..., stage_workdirs=...)`` (see the
    task's docs for what it writes and returns; ``stage_workdirs`` is read by multi-stage tasks
    only)."""
    _check_task(task, "sample")
    workdir = check_workdir(workdir)
    return task.sample(workdir, num_samples=num_samples, stage_workdirs=stage_workdirs)
