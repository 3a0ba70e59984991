"""jaxdiff entry point: train a score model, evaluate it, or sample from it.

    python launch/main.py --config=configs/digits.py --workdir=runs/digits --mode=train
    python launch/main.py --config=configs/digits.py --workdir=runs/digits --mode=eval
    python launch/main.py --config=configs/digits.py --workdir=runs/digits --mode=sample

Conditional and multi-scale (MSDiff) configs run the same way (docs/msdiff.md); a multi-scale
model samples from its per-stage runs:

    python launch/main.py --config=configs/msdiff_conditional.py:task=sr,estimator=cmde --workdir=runs/sr_cmde
    python launch/main.py --config=configs/msdiff_multiscale.py:size=32,stage=0 --workdir=runs/ms32 \
        --mode=sample --stage_workdirs=runs/ms32_s0,runs/ms32_s1,runs/ms32_s2

Any config key can be overridden: ``--config.training.batch_size=64``; an unknown key or a value
of the wrong type stops start-up with the key's name. On several hosts run the same command on
every host (see launch/tpu_pod.sh, launch/gpu.sh); ``jax.distributed`` is initialised
automatically on a Cloud TPU pod / SLURM / Open MPI, or with
``--config.parallel.distributed=yes --config.parallel.coordinator_address=HOST:PORT
--config.parallel.num_processes=N --config.parallel.process_id=I``.
"""

from __future__ import annotations

import json
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from jaxdiff.data import DatasetNotFound
from jaxdiff.tasks import get_task
from jaxdiff.train import ConfigError, train
from jaxdiff.train.evaluate import evaluate, sample

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
        raise ValueError(f"--mode must be train, eval or sample, got {mode!r}")
    task = get_task(config)
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
    except (ConfigError, DatasetNotFound, PermissionError, NotADirectoryError,
            FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if jax.process_index() == 0:
        print(json.dumps(result, default=float))


def parse_flags(argv):
    """Parse flags; a bad config override (unknown key, wrong type) exits with status 2 and a
    one-line message naming the key instead of a traceback."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        msg = " ".join(str(e).replace("\\n", " ").split())
        print(f"error: bad command line ({type(e).__name__}): {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
