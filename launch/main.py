"""jaxdiff entry point: train a score model, evaluate it, or sample from it.

    python launch/main.py --config=configs/digits.py --workdir=runs/digits --mode=train
    python launch/main.py --config=configs/digits.py --workdir=runs/digits --mode=eval
    python launch/main.py --config=configs/digits.py --workdir=runs/digits --mode=sample

Conditional and multi-scale (MSDiff) configs run the same way (docs/msdiff.md); a multi-scale
model samples from its per-stage runs:

    python launch/main.py --config=configs/msdiff_conditional.py:task=sr,estimator=cmde --workdir=runs/sr_cmde
    python launch/main.py --config=configs/msdiff_multiscale.py:size=32,stage=0 --workdir=runs/ms32 \
        --mode=sample --stage_workdirs=runs/ms32_s0,runs/ms32_s1,runs/ms32_s2

Any config key can be overridden: ``--config.training.batch_size=64``. Every bad input stops
start-up with exit status 2 and ONE line (no traceback) naming the key or path and the value: an
unknown key or a value of the wrong type, a missing config file or one with a syntax error, a
batch size the devices do not divide, ``config.parallel.num_devices`` above the device count, a
frequency that is not a multiple of ``n_jitted_steps``, an eval batch larger than the split, a
workdir holding a run with another config (``--config.training.resume_with_changes=True``
accepts it) or in use by another training process. A run that fails later (a NaN / Inf loss or
state, a full disk, no readable checkpoint) exits with status 1 and one line. On several hosts
run the same command on every host (see launch/tpu_pod.sh, launch/gpu.sh); ``jax.distributed`` is initialised
automatically on a Cloud TPU pod / SLURM / Open MPI, or with
``--config.parallel.distributed=yes --config.parallel.coordinator_address=HOST:PORT
--config.parallel.num_processes=N --config.parallel.process_id=I``.
"""

from __future__ import annotations

import json
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from jaxdiff import parallel
from jaxdiff.data import DatasetNotFound, resolve_data_dir
from jaxdiff.tasks import get_task
from jaxdiff.train import ConfigError, NonFiniteLoss, train
from jaxdiff.train.checkpoint import CheckpointMismatch, DiskFull, NoGoodCheckpoint
from jaxdiff.train.config import check_eval_split
from jaxdiff.train.evaluate import evaluate, sample
from jaxdiff.train.experiment import WorkdirLocked

# bad inputs: exit status 2; failures of a run that started: exit status 1 (both one line)
BAD_INPUT = (ConfigError, CheckpointMismatch, DatasetNotFound, PermissionError,
             NotADirectoryError, FileNotFoundError, WorkdirLocked)
RUN_FAILED = (NonFiniteLoss, DiskFull, NoGoodCheckpoint)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "run directory: checkpoints, TensorBoard, samples, reports")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "what to do")
flags.DEFINE_integer("num_samples", 0, "--mode=sample: number of samples (0: config)")
flags.DEFINE_integer("max_steps", 0, "stop after this many steps in this call (0: n_iters)")
flags.DEFINE_list("stage_workdirs", [], "--mode=sample of a multi-scale (config.msdiff) model: "
                  "the run directories of stages 0..L, comma-separated, in stage order")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str, *, num_samples: int = 0, max_steps: int = 0,
        stage_workdirs=None) -> dict:
    """Run ``mode`` ('train' | 'eval' | 'sample') of ``config`` in ``workdir``; return its
    result dict (see :func:`jaxdiff.train.train`, :func:`jaxdiff.train.evaluate.evaluate`,
    :func:`jaxdiff.train.evaluate.sample`). The task is built once from the config
    (:func:`jaxdiff.tasks.get_task`: unconditional score SDE, or the MSDiff task of a config's
    ``msdiff`` section) and run the same way whatever it is; ``stage_workdirs`` (the runs of
    stages 0..L) is read by the multi-scale task's sampling."""
    if mode not in ("train", "eval", "sample"):
        raise ConfigError(f"--mode must be train, eval or sample, got {mode!r}")
    try:  # every ValueError of building the task is a bad input (mesh, model, sampler ...)
        task = get_task(config)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if mode == "eval":
        try:
            parallel.check_batch_size("config.eval.batch_size", config.eval.batch_size,
                                      task.mesh)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        check_eval_split(config, resolve_data_dir(config, workdir))
    if mode == "train":
        r = train(task, workdir, max_steps=max_steps or None)
        r = {k: v for k, v in r.items() if k in ("step", "status")}
        if config.training.get("eval_at_end", False) and r["status"] == "done":
            # the finished run's numbers (bits/dim, sample quality) in the same command
            r["eval"] = evaluate(task, workdir)
        return r
    if mode == "eval":
        return evaluate(task, workdir)
    return sample(task, workdir, num_samples=num_samples or None, stage_workdirs=stage_workdirs)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        result = run(FLAGS.config, FLAGS.workdir, FLAGS.mode, num_samples=FLAGS.num_samples,
                     max_steps=FLAGS.max_steps, stage_workdirs=FLAGS.stage_workdirs)
    except BAD_INPUT as e:
        _fail(e, 2)
    except RUN_FAILED as e:
        _fail(e, 1)
    if jax.process_index() == 0:
        print(json.dumps(result, default=float))


def _fail(e: BaseException, status: int):
    """Print ``error: <message>`` on one line (no traceback) and exit with ``status``."""
    msg = " ".join(str(e).replace("\\n", " ").split())
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(status)


def _config_path(argv) -> str | None:
    """The file of ``--config=FILE[:ARG]`` (or ``--config FILE``) in ``argv``, if any."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            value = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        return value if os.path.exists(value) else value.split(":", 1)[0]
    return None


def check_config_file(path: str) -> None:
    """Exit 2 with one line when the config file is missing, unreadable or not valid Python
    (naming the path, and the line of a syntax error)."""
    if not os.path.isfile(path):
        _fail(FileNotFoundError(f"--config: config file {path!r} does not exist"
                                f"{' (it is a directory)' if os.path.isdir(path) else ''}"), 2)
    try:
        with open(path, encoding="utf-8") as f:
            compile(f.read(), path, "exec")
    except SyntaxError as e:
        _fail(SyntaxError(f"--config: syntax error in {path!r} line {e.lineno}: {e.msg}"), 2)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        _fail(OSError(f"--config: cannot read {path!r}: {e}"), 2)


def parse_flags(argv):
    """Parse flags; a bad config file (missing, syntax error, raising in ``get_config``) or a bad
    override (unknown key, wrong type) exits with status 2 and a one-line message naming the
    path or key instead of a traceback."""
    path = _config_path(argv[1:])
    if path is not None:
        check_config_file(path)
    try:
        return FLAGS(argv)
    except Exception as e:  # noqa: BLE001 (flags, and whatever the config file's code raises)
        msg = " ".join(str(e).replace("\\n", " ").split())
        print(f"error: bad command line ({type(e).__name__}): {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
