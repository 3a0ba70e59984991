"""The task protocol: one object, built once from the config, that the training loop,
``--mode=eval`` and ``--mode=sample`` run without asking which task it is.

A :class:`Task` owns

* ``sde``, ``model``, ``train_score_fn`` / ``score_fn`` (dropout on / off), ``example_shape``;
* ``train_loss`` and ``eval_loss``: ``loss_fn(params, key, batch) -> (loss, aux)``, built once;
* ``optimizer``, ``init(key) -> TrainState`` (jitted, sharded), ``state_shardings``,
  ``abstract_state`` (for checkpoint restores), ``mesh``;
* ``evaluators(periodic=False)``: the generic evaluators of the config
  (:func:`jaxdiff.eval.evaluators.from_config`) minus the ones the task ``skip``s, plus its own
  (:meth:`extra_evaluators`); ``report_fields()`` (extra keys of the eval report);
* ``snapshot(params, step, *, workdir, data_dir) -> dict``: the samples written during training;
* ``draw_samples(params, key, n) -> np.ndarray``: the samples every sample-based metric shares;
* ``sample(workdir, *, num_samples, stage_workdirs) -> dict``: ``--mode=sample``.

Subclasses override the ``make_*`` builders (see :mod:`jaxdiff.tasks.score_sde` and
:mod:`jaxdiff.tasks.msdiff`) and register with :func:`register_task`; :func:`get_task` picks the
class from ``config.task`` (default ``'score_sde'``; a config with an ``msdiff`` section maps to
``'msdiff_<mode>'``). docs/tasks.md has a worked example.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from jaxdiff import parallel
from jaxdiff.data import example_shape
from jaxdiff.eval import evaluators as evaluators_lib
from jaxdiff.models import get_model
from jaxdiff.train.config import ConfigError, validate_config
from jaxdiff.train.experiment import build_state
from jaxdiff.train.sampling import check_sampling_config
from jaxdiff.train.state import get_optimizer
from jaxdiff.train.step import get_sde

__all__ = ["Task", "TASKS", "register_task", "get_task", "available_tasks", "task_name"]

TASKS: dict = {}


def register_task(name: str) -> Callable:
    """Class decorator: register a :class:`Task` subclass as ``config.task = name``."""

    def deco(cls):
        TASKS[name] = cls
        cls.name = name
        return cls

    return deco


def available_tasks() -> list:
    """Sorted registered task names."""
    return sorted(TASKS)


def task_name(config) -> str:
    """The registry name of ``config``: ``config.task``, except that the default ``'score_sde'``
    with a ``config.msdiff`` section is ``'msdiff_' + config.msdiff.mode``."""
    name = config.get("task", "score_sde") if hasattr(config, "get") else "score_sde"
    sec = config.get("msdiff", None) if hasattr(config, "get") else None
    if name == "score_sde" and sec is not None:
        return f"msdiff_{sec.get('mode', None)}"
    return name


def get_task(config, mesh=None) -> Task:
    """Validate ``config``, initialise ``jax.distributed`` on several hosts and build its task on
    ``mesh`` (default: ``config.parallel.num_devices`` devices).

    Raises:
      ConfigError naming ``config.task`` (or ``config.msdiff.mode``) for an unknown task.
    """
    validate_config(config)
    parallel.maybe_initialize_distributed(config.parallel)
    name = task_name(config)
    if name not in TASKS:
        key = "config.msdiff.mode" if name.startswith("msdiff_") and \
            config.get("task", "score_sde") == "score_sde" else "config.task"
        raise ConfigError(f"{key}: no task {name!r}; registered tasks: {available_tasks()}")
    task = TASKS[name](config, mesh)
    task.check_sampling_config()
    return task


class Task:
    """Base class of a task: builds everything in ``__init__`` from ``make_*`` hooks.

    Args:
      config: a validated config.
      mesh: the device mesh (default: ``config.parallel.num_devices`` devices).
    """

    name = "task"
    #: generic evaluator name -> why this task skips it (listed in the report's ``skipped``)
    skip: dict = {}
    #: the fields of a data example the losses see: ``('x',)`` gives them the array of ``'x'``,
    #: more fields a dict of them (``('x', 'label')`` for a class-conditional task)
    batch_fields: tuple = ("x",)

    def __init__(self, config, mesh=None):
        self.config = config
        self.mesh = mesh or parallel.make_mesh(config.parallel.num_devices)
        self.sde = self.make_sde()
        net_config = self.network_config()
        self.model = get_model(net_config)
        self.example_shape = tuple(example_shape(net_config))
        self.train_score_fn, self.score_fn = self.make_score_fns()
        self.train_loss = self.make_loss(self.train_score_fn, train=True)
        self.eval_loss = self.make_loss(self.score_fn, train=False)
        self.optimizer = get_optimizer(config.optim)
        self.init, self.state_shardings, self.abstract_state = build_state(
            config, self.model, self.example_shape, self.optimizer, self.mesh)

    # -- builders (override in subclasses) ---------------------------------------------------
    def make_sde(self):
        """The SDE (default: ``config.training.sde`` with the ``config.model`` constants)."""
        return get_sde(self.config)

    def network_config(self):
        """The config the network (and ``example_shape``) is built from (default: the config)."""
        return self.config

    def make_score_fns(self) -> tuple:
        """``(train_score_fn, eval_score_fn)`` of ``self.model``."""
        raise NotImplementedError

    def make_loss(self, score_fn, *, train: bool) -> Callable:
        """``loss_fn(params, key, batch) -> (loss, aux)`` over the pipeline's ``batch['x']``;
        ``train``: dropout on (``score_fn`` takes ``rng=``)."""
        raise NotImplementedError

    def extra_evaluators(self, periodic: bool) -> list:
        """The task's own evaluators (default: none)."""
        return []

    # -- evaluation --------------------------------------------------------------------------
    def evaluators(self, periodic: bool = False) -> list:
        """The evaluators of this task: the generic ones of the config minus ``skip``, then
        :meth:`extra_evaluators`. ``periodic``: those run every ``training.eval_freq`` steps."""
        generic = evaluators_lib.from_config(self.config, self, periodic=periodic)
        kept = [e for e in generic if e.name not in self.skip]
        for e in generic:
            if e.name in self.skip and not periodic:
                logging.info("task %s: evaluator %s skipped (%s)", self.name, e.name,
                             self.skip[e.name])
        return kept + list(self.extra_evaluators(periodic))

    def skipped(self) -> list:
        """Names of the generic ``--mode=eval`` evaluators this task skips."""
        return [e.name for e in evaluators_lib.from_config(self.config, self)
                if e.name in self.skip]

    def report_fields(self) -> dict:
        """Extra keys of the eval report (default: ``skipped`` when the task skips any)."""
        return {"skipped": self.skipped()} if self.skip else {}

    # -- sampling ----------------------------------------------------------------------------
    def check_sampling_config(self) -> None:
        """Refuse ``config.sampling`` options the task's sampler does not take (a ``ValueError``
        naming the key; default: :func:`jaxdiff.train.sampling.check_sampling_config` of the
        registry sampler ``config.sampling.method``)."""
        check_sampling_config(self.config)

    def draw_samples(self, params, key, n: int) -> np.ndarray:
        """``n`` samples (numpy) for the sample-based metrics."""
        raise NotImplementedError(f"task {self.name!r} draws no unconditional samples")

    def snapshot(self, params, step: int, *, workdir: str, data_dir: str) -> dict:
        """Snapshot sampling during training; returns scalars to log (default: nothing)."""
        return {}

    def sample(self, workdir: str, *, num_samples: int | None = None,
               stage_workdirs: Sequence[str] | None = None) -> dict:
        """``--mode=sample`` in ``workdir``; returns a summary dict."""
        raise NotImplementedError(f"task {self.name!r} has no --mode=sample")
