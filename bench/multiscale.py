"""Wall-clock per sample: coarse-to-fine multi-scale sampling vs uniform sampling.

Same resolution, same number of steps, same predictor, same score network (a fully convolutional
U-Net from ``jaxdiff.models``, randomly initialised: only the cost matters here). The uniform run is
:func:`jaxdiff.samplers.pc_sampler` on the pixels; the multi-scale run is
:func:`jaxdiff.multiscale.multiscale_sampler` with the settings of ``configs/msdiff_multiscale.py``.
Prints one line per resolution with the measured and the pixel-proportional ("ideal") speed-up,
next to the paper's 4.4x at 128x128 (Batzolis et al. 2022, measured on a GPU with per-scale
NCSN++ networks).

``--setting reference`` (default) uses the reference's partition ``T_k = k / (L + 1)``, the
log-SNR VP SDE and the reverse-diffusion predictor; ``--setting ours`` the earlier hand-picked end
times, the linear-beta VP SDE and Euler-Maruyama.

Usage::

    python bench/multiscale.py --sizes 32 64 128 --steps 100 --batch 4 --repeats 3

``--cdiffe-bias`` instead prints the CDE / CMDE / CDiffE table of docs/msdiff.md (exact scores of a
Gaussian-mixture joint, sliced W2 to the exact posterior against the noise floor).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

from jaxdiff import models, scores  # noqa: E402
from jaxdiff.multiscale import (  # noqa: E402
    HaarMultiScale,
    LogSNRVPSDE,
    ideal_speedup,
    multiscale_sampler,
    reference_end_times,
)
from jaxdiff.samplers import pc_sampler  # noqa: E402
from jaxdiff.sde import VPSDE  # noqa: E402

# Haar levels per size, and the end times (T_1, ..., T_L) of configs/msdiff_multiscale.py:
# setting=reference (T_k = k / (L + 1), the default) and setting=ours (hand-picked)
LEVELS = {32: 2, 64: 3, 128: 3}
END_TIMES = {"reference": {s: reference_end_times(L) for s, L in LEVELS.items()},
             "ours": {32: (0.3, 0.6), 64: (0.2, 0.45, 0.7), 128: (0.15, 0.35, 0.6)}}
PAPER_SPEEDUP_128 = 4.4


def _time(fn, params, repeats):
    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, key))               # compile + first run
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, jax.random.fold_in(key, i + 1)))
        best = min(best, time.perf_counter() - t0)
    return best, compile_s


def run(size: int, steps: int, batch: int, repeats: int, channels: int, nf: int,
        setting: str = "reference") -> dict:
    cfg = ml_collections.ConfigDict({
        "model": dict(models.configs.small_unet().to_dict(), nf=nf),
        "data": {"image_size": size, "num_channels": channels, "centered": True},
    })
    model = models.get_model(cfg)
    reference = setting == "reference"
    sde = LogSNRVPSDE() if reference else VPSDE()
    predictor = "reverse_diffusion" if reference else "euler_maruyama"
    end_times = END_TIMES[setting][size]
    params = models.init_params(jax.random.PRNGKey(1), model, (1, size, size, channels))
    shape = (batch, size, size, channels)
    # eps-parameterisation, labels t*999; the multi-scale stages divide by their per-band sigma
    uniform = pc_sampler(sde, scores.get_score_fn(sde, model), shape, num_steps=steps,
                         predictor=predictor)
    ms = HaarMultiScale.create(sde, (size, size, channels), end_times)
    stage_scores = [scores.get_score_fn(ms.sde(s), model) for s in range(ms.levels + 1)]
    multi = multiscale_sampler(ms, stage_scores, batch, num_steps=steps, predictor=predictor,
                               handoff="mean" if reference else "noisy")
    t_uni, c_uni = _time(uniform, params, repeats)
    t_ms, c_ms = _time(multi, params, repeats)
    return {
        "size": size, "steps": steps, "batch": batch, "setting": setting,
        "end_times": end_times, "predictor": predictor,
        "uniform_s_per_sample": t_uni / batch, "multiscale_s_per_sample": t_ms / batch,
        "speedup": t_uni / t_ms, "ideal_speedup": ideal_speedup(ms, steps),
        "schedule": ms.schedule(steps), "compile_s": {"uniform": c_uni, "multiscale": c_ms},
        "device": str(jax.devices()[0].platform),
        "num_params": models.count_params(model, (1, size, size, channels)),
    }


def cdiffe_bias(sde_name: str = "vp", n: int = 2000, steps: int = 100) -> None:
    """Print the bias of CDiffE / CMDE (exact scores) against CDE and the noise floor."""
    from jaxdiff.analytic import GaussianMixture
    from jaxdiff.conditional import ConditionalEstimator, joint_to_conditional
    from jaxdiff.eval.distances import component_fractions, sliced_wasserstein
    from jaxdiff.sde import VESDE
    base = VPSDE() if sde_name == "vp" else VESDE(sigma_max=20.0)
    covs = jnp.stack([jnp.array([[0.3, 0.1, 0.2], [0.1, 0.3, 0.0], [0.2, 0.0, 0.3]]),
                      jnp.array([[0.3, -0.1, 0.2], [-0.1, 0.3, 0.0], [0.2, 0.0, 0.3]])])
    joint = GaussianMixture.create([0.5, 0.5], jnp.array([[-2.0, 0.0, -1.0], [2.0, 0.0, 1.0]]), covs)
    y0 = 0.3
    post = joint.condition(jnp.array([[0.0, 0.0, 1.0]]), jnp.array([y0]), 0.0).marginal([0, 1])

    def shared(mix, sde):
        return lambda p, x, t: mix.at(sde, jnp.reshape(t, (-1,))[0]).score(x).astype(x.dtype)

    kp = jax.random.PRNGKey(9)
    ref = post.sample(jax.random.PRNGKey(1), n)
    floor = float(sliced_wasserstein(kp, ref, post.sample(jax.random.PRNGKey(2), n)))
    print(f"{sde_name.upper()} SDE, {steps} Euler-Maruyama steps, {n} samples, y = {y0}; "
          f"exact p(minority | y) = {float(post.weights[0]):.3f}; noise floor W2 = {floor:.3f}")
    print("| estimator | y speed | sliced W2 | minority fraction |")
    print("|---|---|---|---|")
    y = jnp.full((n, 1), y0)
    for name, speed in [("CDE", 0.0), ("CMDE", 0.05), ("CMDE", 0.1), ("CMDE", 0.25),
                        ("CMDE", 0.5), ("CDiffE", 1.0)]:
        if name == "CDE":
            est = ConditionalEstimator.cde(base)
            score = lambda p, x, t, yy: shared(post, base)(p, x, t)
        else:
            est = (ConditionalEstimator.cdiffe(base) if speed == 1.0
                   else ConditionalEstimator.cmde(base, speed))
            score = joint_to_conditional(shared(joint, est.joint_sde(2, 1)), (2,), (1,))
        x, _ = est.pc_sampler(score, (n, 2), num_steps=steps)(None, jax.random.PRNGKey(0), y)
        sw = float(sliced_wasserstein(kp, x, ref))
        frac = float(component_fractions(post, x)[0])
        print(f"| {name} | {speed:g} | {sw:.3f} | {frac:.3f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--nf", type=int, default=32)
    ap.add_argument("--setting", choices=sorted(END_TIMES), default="reference",
                    help="partition / SDE / predictor of configs/msdiff_multiscale.py")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--cdiffe-bias", choices=["vp", "ve"], default=None,
                    help="print the CDiffE/CMDE bias table for this SDE instead")
    args = ap.parse_args()
    if args.cdiffe_bias:
        cdiffe_bias(args.cdiffe_bias)
        return
    results = []
    for size in args.sizes:
        if size not in LEVELS:
            raise SystemExit(f"--sizes: no multi-scale setting for {size}; choose from {sorted(LEVELS)}")
        r = run(size, args.steps, args.batch, args.repeats, args.channels, args.nf, args.setting)
        results.append(r)
        paper = f"  (paper: {PAPER_SPEEDUP_128}x)" if size == 128 else ""
        print(f"{size}x{size} ({args.setting}, T = {tuple(round(t, 3) for t in r['end_times'])}): "
              f"uniform {r['uniform_s_per_sample'] * 1e3:8.1f} ms/sample, "
              f"multi-scale {r['multiscale_s_per_sample'] * 1e3:8.1f} ms/sample, "
              f"speed-up {r['speedup']:.2f}x (pixel-proportional {r['ideal_speedup']:.2f}x){paper}",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
