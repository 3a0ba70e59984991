"""Training: configs, the train state, the sharded train step, checkpoints, the loop, evaluation."""

from jaxdiff.train.checkpoint import restore_latest
from jaxdiff.train.config import ConfigError, load_config, validate_config
from jaxdiff.train.defaults import get_default_config
from jaxdiff.train.experiment import Experiment, build_experiment, check_workdir
from jaxdiff.train.loop import NonFiniteLoss, train
from jaxdiff.train.state import TrainState, ema_update, get_optimizer, init_state, lr_schedule
from jaxdiff.train.step import (get_loss_fn, get_score_fns, get_sde, jit_train_step,
                                make_eval_step, make_train_step)

__all__ = [
    "train", "NonFiniteLoss", "TrainState", "get_optimizer", "lr_schedule", "ema_update",
    "init_state", "get_sde", "get_score_fns", "get_loss_fn", "make_train_step", "jit_train_step",
    "make_eval_step", "restore_latest", "load_config", "validate_config", "ConfigError",
    "get_default_config", "Experiment", "build_experiment", "check_workdir",
]
