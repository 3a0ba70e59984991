"""Training: configs, the train state, the sharded train step, checkpoints, the loop, evaluation.

The loop (:func:`train`), :func:`jaxdiff.train.evaluate.evaluate` and :func:`sample` take a task
built once from the config (:func:`jaxdiff.tasks.get_task`), which owns the SDE, network, losses,
evaluators and sampling; ``jaxdiff.tasks.train(config, workdir)`` (and ``evaluate``, ``sample``) accept a
config. This package never imports :mod:`jaxdiff.tasks`.
"""

from jaxdiff.train.checkpoint import restore_latest
from jaxdiff.train.config import ConfigError, load_config, validate_config
from jaxdiff.train.defaults import get_default_config
from jaxdiff.train.evaluate import load_params, sample
from jaxdiff.train.experiment import build_state, check_workdir
from jaxdiff.train.loop import NonFiniteLoss, train
from jaxdiff.train.state import TrainState, ema_update, get_optimizer, init_state, lr_schedule
from jaxdiff.train.step import (
                                get_loss_fn,
                                get_score_fns,
                                get_sde,
                                jit_train_step,
                                make_eval_step,
                                make_train_step,
)

__all__ = [
    "train", "sample", "load_params", "NonFiniteLoss", "TrainState",
    "get_optimizer", "lr_schedule", "ema_update", "init_state", "get_sde", "get_score_fns",
    "get_loss_fn", "make_train_step", "jit_train_step", "make_eval_step", "restore_latest",
    "load_config", "validate_config", "ConfigError", "get_default_config", "build_state",
    "check_workdir",
]
