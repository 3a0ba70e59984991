"""Config validation and loading.

:func:`validate_config` checks a config against the schema of
:func:`jaxdiff.train.defaults.get_default_config`: every key must exist there, every value must
have the schema's type (ints are accepted for floats, lists for tuples), and enumerated values
(the SDE, the sampler, the optimiser, the dataset) must be known. The ``model`` section is
validated by building the network with :func:`jaxdiff.models.get_model`. Errors are
``ValueError`` whose message starts with the offending key's full name, e.g.
``config.training.batch_size``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from jaxdiff.conditional import validate_section
from jaxdiff.data import get_source
from jaxdiff.models import get_model
from jaxdiff.samplers import CORRECTORS, PREDICTORS
from jaxdiff.samplers.registry import available_samplers
from jaxdiff.train.defaults import get_default_config

__all__ = ["validate_config", "load_config", "ConfigError", "config_changes",
           "check_eval_split", "RESUME_IGNORED"]

SDES = ("vpsde", "subvpsde", "vesde")
METHODS = ("pc", "ode")
OPTIMIZERS = ("adam", "adamw")
TOYS = ("mixture", "checkerboard", "rings")


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type or an invalid value."""


def _type_ok(value: Any, ref: Any) -> bool:
    if ref is None or value is None:
        return True
    if isinstance(ref, bool):
        return isinstance(value, bool)
    if isinstance(ref, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(ref, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(ref, str):
        return isinstance(value, str)
    if isinstance(ref, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(ref))


def _as_dict(section) -> dict:
    return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def _check_section(name: str, section: dict, schema: dict) -> None:
    for key, value in section.items():
        full = f"config.{name}.{key}"
        if key not in schema:
            raise ConfigError(f"{full}: unknown key; accepted keys of config.{name}: "
                              f"{sorted(schema)}")
        if not _type_ok(value, schema[key]):
            raise ConfigError(f"{full}: expected {type(schema[key]).__name__}, got "
                              f"{type(value).__name__} {value!r}")


def _positive(config, *names: str) -> None:
    for name in names:
        sec, key = name.split(".")
        v = config[sec][key]
        if v <= 0:
            raise ConfigError(f"config.{name}: must be > 0, got {v!r}")


def _check_msdiff(sec, config) -> None:
    """The optional ``config.msdiff`` section (see :mod:`jaxdiff.conditional` and
    :mod:`jaxdiff.multiscale`): ``mode='conditional'`` or ``mode='multiscale'``."""
    if not hasattr(sec, "get"):
        raise ConfigError(f"config.msdiff: expected a section (ConfigDict), got {sec!r}")
    mode = sec.get("mode", None)
    try:
        if mode == "conditional":
            validate_section(sec)
        elif mode == "multiscale":
            allowed = {"mode", "end_times", "stage", "schedule", "handoff", "log_snr_max",
                       "log_snr_min"}
            bad = sorted(set(sec.keys()) - allowed)
            if bad:
                raise ValueError(f"config.msdiff: unknown key(s) {bad}; accepted: {sorted(allowed)}")
            ends = tuple(float(t) for t in sec.end_times)
            if not ends or any(not a < b for a, b in zip((0.0,) + ends, ends + (1.0,))):
                raise ValueError(f"config.msdiff.end_times must increase strictly inside (0, 1), "
                                 f"got {tuple(sec.end_times)!r}")
            if not 0 <= int(sec.stage) <= len(ends):
                raise ValueError(f"config.msdiff.stage must be in [0, {len(ends)}], got "
                                 f"{sec.stage!r}")
            size = config.data.image_size
            if size % 2 ** len(ends):
                raise ValueError(f"config.data.image_size={size} must be divisible by "
                                 f"2**{len(ends)} for {len(ends)} Haar levels (config.msdiff.end_times)")
        else:
            raise ValueError(f"config.msdiff.mode: must be 'conditional' or 'multiscale', got {mode!r}")
    except ValueError as e:
        raise ConfigError(str(e)) from e


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check every key, type and enumerated value of ``config``; return it unchanged.

    Args:
      config: an experiment config (``configs/*.py:get_config()`` after command-line overrides).

    Returns:
      ``config``.

    Raises:
      ConfigError (a ``ValueError``): naming the first offending key, e.g.
      ``config.training.batch_size: expected int, got str 'abc'``.
    """
    schema = _as_dict(get_default_config())
    top = _as_dict(config)
    for key, value in top.items():
        if key == "msdiff":  # optional: conditional (CDE/CDiffE/CMDE) or multi-scale experiments
            _check_msdiff(config["msdiff"], config)
            continue
        if key not in schema:
            raise ConfigError(f"config.{key}: unknown key; accepted top-level keys: {sorted(schema)}")
        if key == "model":
            continue
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config.{key}: expected a section (ConfigDict), got {value!r}")
            _check_section(key, value, schema[key])
        elif not _type_ok(value, schema[key]):
            raise ConfigError(f"config.{key}: expected {type(schema[key]).__name__}, got "
                              f"{type(value).__name__} {value!r}")
    for key in schema:
        if key not in top:
            raise ConfigError(f"config.{key}: missing section; start from "
                              "jaxdiff.train.defaults.get_default_config()")
    tr, sa, da, op = config.training, config.sampling, config.data, config.optim
    if tr.sde not in SDES:
        raise ConfigError(f"config.training.sde: must be one of {SDES}, got {tr.sde!r}")
    methods = available_samplers()
    if sa.method not in methods:
        raise ConfigError(f"config.sampling.method: must be one of {methods}, got {sa.method!r}")
    if op.optimizer.lower() not in OPTIMIZERS:
        raise ConfigError(f"config.optim.optimizer: must be 'Adam' or 'AdamW', got {op.optimizer!r}")
    if sa.predictor != "none" and sa.predictor not in PREDICTORS:
        raise ConfigError(f"config.sampling.predictor: must be 'none' or one of "
                          f"{sorted(PREDICTORS)}, got {sa.predictor!r}")
    if sa.corrector != "none" and sa.corrector not in CORRECTORS:
        raise ConfigError(f"config.sampling.corrector: must be 'none' or one of "
                          f"{sorted(CORRECTORS)}, got {sa.corrector!r}")
    if da.dataset == "toy" and da.toy not in TOYS:
        raise ConfigError(f"config.data.toy: must be one of {TOYS}, got {da.toy!r}")
    _positive(config, "training.batch_size", "training.n_iters", "training.n_jitted_steps",
              "training.log_freq", "training.eval_freq", "training.snapshot_freq",
              "training.snapshot_freq_for_preemption", "training.keep_latest",
              "data.image_size", "data.num_channels", "data.dim", "optim.lr",
              "eval.batch_size", "sampling.num_samples")
    if op.warmup < 0:
        raise ConfigError(f"config.optim.warmup: must be >= 0, got {op.warmup!r}")
    if config.parallel.distributed not in ("auto", "yes", "no"):
        raise ConfigError(f"config.parallel.distributed: must be 'auto', 'yes' or 'no', got "
                          f"{config.parallel.distributed!r}")
    ema = config.model.get("ema_rate", 0.999)
    if not 0.0 <= ema < 1.0:
        raise ConfigError(f"config.model.ema_rate: must be in [0, 1), got {ema!r}")
    try:
        get_model(config)
    except ValueError as e:  # name the section in the message
        raise ConfigError(str(e)) from e
    return config


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load ``get_config()`` from a config file and apply ``key=value`` overrides.

    Args:
      path: a ``configs/*.py`` file.
      overrides: strings like ``'training.batch_size=64'`` (values parsed as Python literals,
        falling back to strings), applied with the schema's type checks.

    Returns:
      The validated ``ConfigDict``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location("_jaxdiff_config", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"config file {path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"config file {path!r}: syntax error at line {e.lineno}: {e.msg}") from e
    config = module.get_config()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected key=value")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        sec, _, leaf = key.rpartition(".")
        target = config
        for part in filter(None, sec.split(".")):
            if part not in target:
                raise ConfigError(f"config.{key}: unknown key")
            target = target[part]
        if leaf not in target:
            raise ConfigError(f"config.{key}: unknown key")
        if isinstance(target[leaf], float) and isinstance(value, int):
            value = float(value)
        try:
            target[leaf] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config.{key}: expected {type(target[leaf]).__name__}, got "
                              f"{type(value).__name__} {value!r}") from e
    return validate_config(config)


# Keys that may change between a run and its resumption without changing what is trained:
# the length of the run, logging / evaluation / checkpoint cadence, sampling and evaluation
# settings, the devices and hosts (a checkpoint restores onto any mesh), where data lives.
RESUME_IGNORED = ("training.n_iters", "training.log_freq", "training.eval_freq",
                  "training.snapshot_freq", "training.snapshot_freq_for_preemption",
                  "training.keep_latest", "training.snapshot_sampling",
                  "training.async_checkpointing", "training.eval_at_end",
                  "training.resume_with_changes", "training.n_jitted_steps", "sampling.", "eval.",
                  "parallel.", "data.data_dir", "data.worker_count")


def _flat(d: Any, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(d) if isinstance(d, tuple) else d}


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> list:
    """``['config.KEY: SAVED -> NOW', ...]``: the keys (outside :data:`RESUME_IGNORED`) whose
    value in ``config`` differs from the ``saved`` config dict (a checkpoint's ``meta``)."""
    now = _flat(json.loads(config.to_json_best_effort()))
    old = _flat(saved)
    missing = object()
    out = []
    for key in sorted(set(now) | set(old)):
        if any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUME_IGNORED):
            continue
        a, b = old.get(key, missing), now.get(key, missing)
        if a != b:
            out.append(f"config.{key}: {'(absent)' if a is missing else repr(a)} -> "
                       f"{'(absent)' if b is missing else repr(b)}")
    return out


def check_eval_split(config, data_dir: str) -> None:
    """Raise :class:`ConfigError` when ``config.eval.batch_size`` exceeds the held-out split
    (the held-out loss would average over zero batches)."""
    n = len(get_source(config, config.data.eval_split, data_dir))
    if config.eval.batch_size > n:
        raise ConfigError(f"config.eval.batch_size={config.eval.batch_size} is larger than the "
                          f"{n} examples of the eval split config.data.eval_split="
                          f"{config.data.eval_split!r}")
