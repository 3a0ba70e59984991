"""Train-step overhead: the full jitted, sharded train step (loss + grad + clip + Adam + EMA,
donated state) against a bare ``jax.jit(jax.value_and_grad(loss))`` of the same loss on the same
batch. Prints the overhead ratio and examples (images) per second.

    python bench/train.py --config=configs/digits.py --steps=20
    python bench/train.py --config=configs/toy_2d.py --steps=50 --n_jitted_steps=10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxdiff import parallel  # noqa: E402
from jaxdiff.tasks import get_task  # noqa: E402
from jaxdiff.train import load_config  # noqa: E402
from jaxdiff.train.step import jit_train_step, make_train_step  # noqa: E402


def _time(fn, steps):
    out = fn()
    jax.block_until_ready(out)
    t = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="configs/digits.py")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--n_jitted_steps", type=int, default=1)
    p.add_argument("--override", nargs="*", default=[], help="key=value config overrides")
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    c = load_config(a.config, a.override)
    exp = get_task(c)
    n = a.n_jitted_steps
    loss_fn = exp.train_loss
    step = jit_train_step(make_train_step(loss_fn, exp.optimizer, ema_rate=c.model.ema_rate),
                          exp.mesh, exp.state_shardings)
    state = exp.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    local = rng.standard_normal((n, c.training.batch_size) + exp.example_shape).astype(np.float32)
    batches = parallel.global_batch(local, exp.mesh, leading=1)
    bare = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    key = jax.random.PRNGKey(1)
    params = jax.tree.map(lambda x: x.copy(), state.params)  # the train step donates state
    b0 = jax.block_until_ready(batches[0])

    holder = {"s": state}

    def full():
        holder["s"], m = step(holder["s"], batches)
        return m

    t_full = _time(full, a.steps) / n
    t_bare = _time(lambda: bare(params, key, b0), a.steps)
    res = {"config": a.config, "overrides": a.override, "batch": c.training.batch_size,
           "n_jitted_steps": n, "devices": exp.mesh.shape["data"],
           "backend": jax.default_backend(), "train_step_ms": 1e3 * t_full,
           "bare_value_and_grad_ms": 1e3 * t_bare, "overhead_ratio": t_full / t_bare,
           "examples_per_s": c.training.batch_size / t_full,
           "load_avg_1min": os.getloadavg()[0], "cpu_count": os.cpu_count()}
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
