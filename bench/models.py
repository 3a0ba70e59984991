"""Time one forward and one forward+backward of DDPM++ and NCSN++ (CIFAR-10 configs, 32x32).

Prints images/s, the FLOPs of each compiled step (XLA cost analysis) and the achieved FLOP/s as a
fraction of the device's measured float32 matmul peak. Example::

    python bench/models.py --batch 128            # accelerator
    python bench/models.py --batch 8 --iters 2    # shared CPU

Compilation is excluded from the timings (one warm-up call first); each timing is the median of
``--iters`` calls, ``block_until_ready`` included.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff.models import configs, get_model, init_params
from jaxdiff.scores import get_score_fn
from jaxdiff.sde import VESDE, VPSDE


def _time(fn, *args, iters: int) -> float:
    jax.block_until_ready(fn(*args))  # warm-up (compile excluded)
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _compile(jitted, *args):
    """Compile once (ahead of time); return the executable and its XLA-counted FLOPs."""
    compiled = jitted.lower(*args).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    return compiled, flops


def matmul_peak(n: int, iters: int, dtype=jnp.float32) -> float:
    """Measured FLOP/s of an ``n x n`` matmul (the device's practical peak)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / _time(f, a, iters=iters)


def bench(name: str, model_cfg, sde, batch: int, iters: int, dtype: str) -> dict:
    model_cfg.dtype = dtype
    cfg = ml_collections.ConfigDict({"model": model_cfg,
                                     "data": {"image_size": 32, "num_channels": 3}})
    model = get_model(cfg)
    # random params drawn with numpy from the abstract init (timings do not depend on values;
    # this skips compiling ~100 PRNG kernels of distinct shapes)
    shapes = jax.eval_shape(lambda k: init_params(k, model, (1, 32, 32, 3)), jax.random.key(0))
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape) / np.sqrt(max(1, np.prod(s.shape[:-1]))),
                              jnp.float32), shapes)
    score_fn = get_score_fn(sde, model, scale_by_sigma=bool(model_cfg.scale_by_sigma),
                            train=True)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((batch, 32, 32, 3)), jnp.float32)
    t = jnp.linspace(0.01, 1.0, batch)
    key = jax.random.key(2)

    fwd = jax.jit(lambda p, x, t, k: score_fn(p, x, t, rng=k))

    def loss(p, x, t, k):
        return jnp.mean(jnp.square(score_fn(p, x, t, rng=k)))

    fwd_bwd = jax.jit(jax.value_and_grad(loss))
    out = {"name": name, "params": sum(int(np.size(a)) for a in jax.tree.leaves(params))}
    for label, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        compiled, flops = _compile(fn, params, x, t, key)
        sec = _time(compiled, params, x, t, key, iters=iters)
        out[label] = dict(sec=sec, img_s=batch / sec, flops=flops, flop_s=flops / sec)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--models", default="ddpmpp,ncsnpp_ve")
    ap.add_argument("--peak-n", type=int, default=2048)
    args = ap.parse_args()
    dev = jax.devices()[0]
    peak = matmul_peak(args.peak_n, max(args.iters, 3),
                       jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
    print(f"device: {dev.platform} {dev.device_kind} x{jax.device_count()}  batch={args.batch} "
          f"dtype={args.dtype}  measured {args.dtype} matmul peak ({args.peak_n}^3): "
          f"{peak / 1e9:.1f} GFLOP/s")
    sdes = {"ddpmpp": VPSDE(), "ncsnpp": VPSDE(), "ncsnpp_ve": VESDE(), "ddpm": VPSDE()}
    print("| model | params | pass | s/step | images/s | GFLOP/step | GFLOP/s | % of matmul peak |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        r = bench(name, getattr(configs, name)(), sdes[name], args.batch, args.iters, args.dtype)
        for label in ("fwd", "fwd+bwd"):
            m = r[label]
            print(f"| {name} | {r['params']:,} | {label} | {m['sec']:.3f} | {m['img_s']:.1f} | "
                  f"{m['flops'] / 1e9:.1f} | {m['flop_s'] / 1e9:.1f} | "
                  f"{100 * m['flop_s'] / peak:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
