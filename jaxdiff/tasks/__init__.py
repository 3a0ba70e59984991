"""Tasks: what a run trains, evaluates and samples, as one object built once from the config.

:func:`get_task` picks the task class from ``config.task`` (registry: :data:`TASKS`); the
training loop, :func:`jaxdiff.train.evaluate.evaluate`, ``--mode=sample`` and ``launch/main.py``
run any task the same way. Built in: :class:`ScoreSDETask` (``'score_sde'``, unconditional score
SDEs), :class:`ConditionalTask` and :class:`MultiScaleTask` (MSDiff, selected by a config's
``msdiff.mode``). :func:`train`, :func:`evaluate`, :func:`sample` and :func:`load_params` accept a
config (the task is built here) or a task. docs/tasks.md shows how to add a task.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxdiff.tasks import class_conditional as class_conditional  # registers 'class_conditional'
from jaxdiff.tasks import edm as edm  # registers the 'edm' task (EDMTask)
from jaxdiff.tasks import flow, msdiff, score_sde  # noqa: F401  (flow: registers flow_matching)
from jaxdiff.tasks.base import TASKS, Task, available_tasks, get_task, register_task, task_name
from jaxdiff.tasks.msdiff import ConditionalTask, MultiScaleTask
from jaxdiff.tasks.score_sde import ScoreSDETask
from jaxdiff.train import load_params as _load_params
from jaxdiff.train import sample as _sample
from jaxdiff.train import train as _train
from jaxdiff.train.evaluate import evaluate as _evaluate_fn

__all__ = ["Task", "TASKS", "register_task", "get_task", "available_tasks", "task_name",
           "ScoreSDETask", "ConditionalTask", "MultiScaleTask", "msdiff", "score_sde",
           "as_task", "train", "evaluate", "sample", "load_params"]


def as_task(config_or_task, mesh=None) -> Task:
    """``config_or_task`` if it is a :class:`Task`, else :func:`get_task` of the config."""
    return config_or_task if isinstance(config_or_task, Task) else get_task(config_or_task, mesh)


def train(config_or_task, workdir: str, *, max_steps: int | None = None,
          progress: bool = True) -> dict:
    """:func:`jaxdiff.train.loop.train` of the task of a config (or of a task)."""
    return _train(as_task(config_or_task), workdir, max_steps=max_steps, progress=progress)


def evaluate(config_or_task, workdir: str) -> dict:
    """:func:`jaxdiff.train.evaluate.evaluate` of the task of a config (or of a task)."""
    return _evaluate_fn(as_task(config_or_task), workdir)


def sample(config_or_task, workdir: str, *, num_samples: int | None = None,
           stage_workdirs: Sequence[str] | None = None) -> dict:
    """:func:`jaxdiff.train.evaluate.sample` of the task of a config (or of a task)."""
    return _sample(as_task(config_or_task), workdir, num_samples=num_samples,
                            stage_workdirs=stage_workdirs)


def load_params(config_or_task, workdir: str, *, step: int | None = None,
                use_ema: bool = True):
    """``(params, step, task)``: :func:`jaxdiff.train.evaluate.load_params` of the task of a
    config (or of a task)."""
    return _load_params(as_task(config_or_task), workdir, step=step, use_ema=use_ema)
