"""Sampler benchmark against exact ground truth (Gaussian mixtures with exact scores).

Prints, in one run:
  1. quality per NFE: sliced Wasserstein (SW) distance of every sampler's samples to exact samples
     of a 2-D and a 64-D Gaussian mixture under the VP and VE SDEs, for NFE in
     {5, 10, 20, 50, 100, 1000}, with the SW noise floor (exact vs exact samples) and, for the
     deterministic samplers, the RMSE of the sample map against the exact probability-flow map
     (a tight RK45 solve from the same prior noise);
  2. the adaptive samplers (RK45 ODE and the adaptive SDE) at a few tolerances, with their NFE;
  3. the per-step overhead: wall time of an N-step sampler / (N x one jitted score evaluation on
     the same batch) with a small-MLP score, on this machine's backend;
  4. a peer: diffusers' PyTorch DPMSolverMultistepScheduler and EulerDiscreteScheduler driven by the
     same exact mixture score (converted to epsilon), at equal NFE, distance and wall time, next to
     jaxdiff's DPM-Solver++(2M) and EDM/Euler (skipped when torch/diffusers are not installed).

Usage::

    python bench/samplers.py                 # the full benchmark (CPU: ~15-30 min)
    python bench/samplers.py --quick         # smaller sample sizes and NFE set (a smoke run)
    python bench/samplers.py --sections peer # only some sections: overhead,peer,adaptive,quality
    python bench/samplers.py --n2 4000 --n64 1000   # fewer samples

torch and diffusers are benchmark-only (``pip install torch diffusers``), never library deps.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxdiff.analytic import GaussianMixture  # noqa: E402
from jaxdiff.eval.distances import sliced_wasserstein  # noqa: E402
from jaxdiff.samplers.registry import get_sampler, num_steps_for_nfe  # noqa: E402
from jaxdiff.sde import VESDE, VPSDE  # noqa: E402

NFES = (5, 10, 20, 50, 100, 1000)
# (label, registry name, options); the deterministic ones also get the flow-map RMSE
SAMPLERS = [
    ("EM (pc)", "euler_maruyama", {}, False),
    ("DDIM", "ddim", {}, True),
    ("DDIM eta=1", "ddim", {"eta": 1.0}, False),
    ("DPM++ 2M", "dpm_solver++_2m", {}, True),
    ("DPM++ 3M", "dpm_solver++_3m", {}, True),
    ("DPM++ 2S", "dpm_solver++_2s", {}, True),
    ("DPM++ 3S", "dpm_solver++_3s", {}, True),
    ("EDM Heun", "edm", {}, True),
]


def mixture_2d():
    return GaussianMixture.create(
        [0.2, 0.3, 0.5], jnp.array([[-2.0, 0.0], [1.5, 1.5], [1.0, -1.5]]),
        stds=jnp.array([0.3, 0.5, 0.4]))


def mixture_64d(k: int = 4, d: int = 64, seed: int = 0):
    """``k`` components in ``d`` dimensions with random means (norm ~2) and random full
    covariances with eigenvalues in [0.05, 0.5]."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 2.0 / math.sqrt(d) * 1.5
    covs = []
    for _ in range(k):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        lam = rng.uniform(0.05, 0.5, size=d)
        covs.append((q * lam) @ q.T)
    weights = rng.uniform(0.5, 1.5, size=k)
    return GaussianMixture.create(weights, means, np.stack(covs))


def sw(x, y, key=None):
    key = jax.random.key(1234) if key is None else key
    return float(sliced_wasserstein(key, x, y, num_projections=512))


def timed(fn, *args, reps=3):
    """(result, best wall time in s) of an already-compiled call."""
    out = jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return out, best


def fmt_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])


# ---- 1. quality per NFE ---------------------------------------------------------------------
def quality(nfes, n2, n64, seed=0):
    cases = [("2-D", mixture_2d(), n2), ("64-D", mixture_64d(), n64)]
    sdes = [("VP", VPSDE()), ("VE", VESDE(sigma_min=0.01, sigma_max=50.0))]
    for (dname, mix, n), (sname, sde) in [(c, s) for c in cases for s in sdes]:
        score_fn = mix.score_fn(sde)
        shape = (n, mix.dim)
        key = jax.random.key(seed)
        ref = mix.sample(jax.random.fold_in(key, 1), n)
        floors = [sw(mix.sample(jax.random.fold_in(key, 2 + i), n), ref) for i in range(3)]
        # exact flow map from the samplers' common prior draw: a tight RK45 solve
        flow, flow_nfe = get_sampler("ode", sde, score_fn, shape, rtol=1e-7, atol=1e-7)(
            None, key)
        print(f"\n### {dname} mixture, {sname} SDE: n = {n}, SW noise floor (exact vs exact) "
              f"{np.mean(floors):.4f} (min {min(floors):.4f}, max {max(floors):.4f}); "
              f"RK45(1e-7) reference flow: SW {sw(flow, ref):.4f}, {int(flow_nfe)} NFE\n")
        header = ["sampler"] + [f"NFE {k}" for k in nfes]
        rows_sw, rows_map = [], []
        for label, name, opts, deterministic in SAMPLERS:
            r_sw, r_map = [label], [label]
            for nfe in nfes:
                try:
                    steps = num_steps_for_nfe(name, nfe, **opts)
                    if name == "edm" and steps < 2:
                        raise ValueError
                except ValueError:
                    r_sw.append("-")
                    r_map.append("-")
                    continue
                sample = get_sampler(name, sde, score_fn, shape, num_steps=steps, **opts)
                x, used = sample(None, key)
                x = jax.block_until_ready(x)
                tag = "" if int(used) == nfe else f" ({int(used)})"
                r_sw.append(f"{sw(x, ref):.4f}{tag}")
                r_map.append(f"{float(jnp.sqrt(jnp.mean((x - flow) ** 2))):.2e}{tag}"
                             if deterministic else "-")
            rows_sw.append(r_sw)
            if deterministic:
                rows_map.append(r_map)
        print("SW distance to exact samples (NFE actually used in brackets when different):\n")
        print(fmt_table(header, rows_sw))
        print("\nRMSE of the sample map against the exact probability-flow map (same prior "
              "noise):\n")
        print(fmt_table(header, rows_map))
        sys.stdout.flush()


# ---- 2. adaptive samplers ---------------------------------------------------------------------
def adaptive(n2, seed=0):
    mix = mixture_2d()
    print("\n### Adaptive samplers, 2-D mixture (NFE = batched score evaluations)\n")
    rows = []
    for sname, sde in [("VP", VPSDE()), ("VE", VESDE(sigma_min=0.01, sigma_max=50.0))]:
        score_fn = mix.score_fn(sde)
        shape = (n2, 2)
        key = jax.random.key(seed)
        ref = mix.sample(jax.random.fold_in(key, 1), n2)
        for label, name, opts in [
            ("RK45 ODE rtol=atol=1e-3", "ode", dict(rtol=1e-3, atol=1e-3)),
            ("RK45 ODE rtol=atol=1e-5", "ode", dict(rtol=1e-5, atol=1e-5)),
            ("adaptive SDE eps_rel=0.1", "adaptive", dict(eps_rel=0.1, eps_abs=0.01)),
            ("adaptive SDE eps_rel=0.05 (paper)", "adaptive", dict(eps_rel=0.05)),
            ("adaptive SDE eps_rel=0.01", "adaptive", dict(eps_rel=0.01, eps_abs=0.002)),
            ("adaptive SDE eps_rel=0.01, noise='resample'", "adaptive",
             dict(eps_rel=0.01, eps_abs=0.002, noise="resample")),
        ]:
            sample = get_sampler(name, sde, score_fn, shape, **opts)
            (x, nfe), wall = timed(sample, None, key, reps=1)
            rows.append([sname, label, int(nfe), f"{sw(x, ref):.4f}", f"{wall:.2f}"])
    print(fmt_table(["SDE", "sampler", "NFE", "SW", "wall s"], rows))
    sys.stdout.flush()


# ---- 3. overhead ---------------------------------------------------------------------------
def mlp_score(dim: int = 64, width: int = 512, depth: int = 3, seed: int = 0):
    """A small MLP score network ``s(x, t)`` (random weights, time as an input feature): a score
    of realistic, time-independent cost for the overhead measurement."""
    keys = jax.random.split(jax.random.key(seed), depth + 1)
    sizes = [dim + 1] + [width] * depth + [dim]
    params = [(jax.random.normal(k, (a, b)) / math.sqrt(a), jnp.zeros((b,)))
              for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

    def score_fn(params, x, t):
        h = jnp.concatenate([x, jnp.broadcast_to(jnp.asarray(t, x.dtype).reshape(-1, 1),
                                                 (x.shape[0], 1))], axis=-1)
        for w, b in params[:-1]:
            h = jax.nn.silu(h @ w + b)
        w, b = params[-1]
        return 0.1 * (h @ w + b) - x

    return score_fn, params


def overhead(batch, steps):
    sde = VPSDE()
    score_fn, params = mlp_score()
    shape = (batch, 64)
    x = jax.random.normal(jax.random.key(0), shape)
    # one score evaluation as the samplers make it: a scalar time broadcast to the batch
    score = jax.jit(lambda p, x, t: score_fn(p, x, jnp.full((batch,), t)))
    _, t_score = timed(score, params, x, jnp.asarray(0.5), reps=20)
    print(f"\n### Overhead: MLP score (64-D, 3 x 512 SiLU), batch {batch}, backend "
          f"{jax.default_backend()} ({jax.devices()[0].device_kind}); one jitted score "
          f"evaluation {1e3 * t_score:.2f} ms (best of 20)\n")
    rows = []
    for label, name, opts in [("EM (pc)", "euler_maruyama", {}), ("DDIM", "ddim", {}),
                              ("DDIM eta=1", "ddim", {"eta": 1.0}),
                              ("DPM++ 2M", "dpm_solver++_2m", {}),
                              ("DPM++ 3M", "dpm_solver++_3m", {}),
                              ("DPM++ 3S", "dpm_solver++_3s", {}), ("EDM Heun", "edm", {})]:
        n_steps = num_steps_for_nfe(name, steps, **opts)
        sample = get_sampler(name, sde, score_fn, shape, num_steps=n_steps, **opts)
        (_, nfe), wall = timed(sample, params, jax.random.key(1), reps=5)
        rows.append([label, int(nfe), f"{1e3 * wall:.1f}",
                     f"{wall / (int(nfe) * t_score):.3f}"])
    print(fmt_table(["sampler", "NFE", "wall ms (best of 5)", "wall / (NFE x score)"], rows))
    sys.stdout.flush()


# ---- 4. peer: diffusers ------------------------------------------------------------------------
def _torch_mixture_score(mix):
    """Exact score of ``mix`` perturbed by scalar (alpha, sigma), in torch (float32)."""
    import torch

    means = torch.tensor(np.asarray(mix.means))
    eigvals = torch.tensor(np.asarray(mix.eigvals))
    eigvecs = torch.tensor(np.asarray(mix.eigvecs))
    logw = torch.tensor(np.asarray(mix.log_weights))
    d = means.shape[1]

    def score(x, alpha, sigma):
        lam = alpha**2 * eigvals + sigma**2                              # (K, D)
        diff = x[:, None, :] - alpha * means[None]                       # (B, K, D)
        proj = torch.einsum("kdj,bkd->bkj", eigvecs, diff)
        quad = (proj**2 / lam).sum(-1)
        logn = -0.5 * (quad + torch.log(lam).sum(-1) + d * math.log(2 * math.pi))
        resp = torch.softmax(logw + logn, dim=-1)
        comp = -torch.einsum("kdj,bkj->bkd", eigvecs, proj / lam)
        return torch.einsum("bk,bkd->bd", resp, comp)

    return score


def peer(nfes, n2, n64, seed=0):
    try:
        import diffusers
        import torch
        from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler
    except ImportError as e:
        print(f"\n### Peer comparison skipped: {e} (pip install torch diffusers)")
        return
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"\n### Peer: diffusers {diffusers.__version__} (PyTorch {torch.__version__}, CPU) vs "
          f"jaxdiff ({jax.default_backend()}), VP SDE / DDPM linear betas 1e-4..0.02, the same exact "
          "mixture score; wall time of the whole sampling loop (best of 2, after one warm-up run)\n")
    sde = VPSDE()
    rows = []
    for dname, mix, n in [("2-D", mixture_2d(), n2), ("64-D", mixture_64d(), n64)]:
        score_t = _torch_mixture_score(mix)
        key = jax.random.key(seed)
        ref = mix.sample(jax.random.fold_in(key, 1), n)
        score_fn = mix.score_fn(sde)
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn((n, mix.dim), generator=g)

        def run_dpm(nfe, noise=noise, score_t=score_t):
            sch = DPMSolverMultistepScheduler(
                num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2,
                prediction_type="epsilon")
            sch.set_timesteps(nfe)
            x = noise.clone() * sch.init_noise_sigma
            ac = sch.alphas_cumprod
            calls = 0
            with torch.no_grad():
                for t in sch.timesteps:
                    a = float(ac[int(t)]) ** 0.5
                    s = (1.0 - float(ac[int(t)])) ** 0.5
                    eps = -s * score_t(x, a, s)
                    calls += 1
                    x = sch.step(eps, t, x).prev_sample
            return x, calls

        def run_euler(nfe, noise=noise, score_t=score_t):
            sch = EulerDiscreteScheduler(
                num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                prediction_type="epsilon")
            sch.set_timesteps(nfe)
            x = noise.clone() * sch.init_noise_sigma
            calls = 0
            with torch.no_grad():
                for i, t in enumerate(sch.timesteps):
                    sigma = float(sch.sigmas[i])
                    a = 1.0 / math.sqrt(1.0 + sigma**2)
                    xin = sch.scale_model_input(x, t)                     # = a * x (VP state)
                    eps = -(sigma * a) * score_t(xin, a, sigma * a)
                    calls += 1
                    x = sch.step(eps, t, x).prev_sample
            return x, calls

        def torch_timed(fn, nfe):
            fn(nfe)
            best, out = float("inf"), None
            for _ in range(2):
                t0 = time.perf_counter()
                out = fn(nfe)
                best = min(best, time.perf_counter() - t0)
            return out, best

        for nfe in nfes:
            if nfe > 100:
                continue
            (xd, cd), wd = torch_timed(run_dpm, nfe)
            (xe, ce), we = torch_timed(run_euler, nfe)
            s_dpm = get_sampler("dpm_solver++_2m", sde, score_fn, (n, mix.dim), num_steps=nfe)
            (xj, nj), wj = timed(s_dpm, None, key, reps=2)
            s_ddim = get_sampler("ddim", sde, score_fn, (n, mix.dim), num_steps=nfe,
                                 grid="karras")
            (xk, nk), wk = timed(s_ddim, None, key, reps=2)
            rows.append([dname, nfe,
                         f"{sw(jnp.asarray(xd.numpy()), ref):.4f}", cd, f"{1e3 * wd:.1f}",
                         f"{sw(xj, ref):.4f}", int(nj), f"{1e3 * wj:.1f}",
                         f"{sw(jnp.asarray(xe.numpy()), ref):.4f}", ce, f"{1e3 * we:.1f}",
                         f"{sw(xk, ref):.4f}", int(nk), f"{1e3 * wk:.1f}"])
            sys.stdout.flush()
    print(fmt_table(["data", "NFE", "diffusers DPM++2M SW", "calls", "ms",
                     "jaxdiff DPM++2M SW", "NFE", "ms",
                     "diffusers Euler SW", "calls", "ms",
                     "jaxdiff DDIM (karras grid) SW", "NFE", "ms"], rows))
    sys.stdout.flush()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    p.add_argument("--sections", default="overhead,peer,adaptive,quality")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n2", type=int, default=None, help="samples, 2-D mixture (default 8000)")
    p.add_argument("--n64", type=int, default=None, help="samples, 64-D mixture (default 2000)")
    a = p.parse_args(argv)
    sections = set(a.sections.split(","))
    nfes = (5, 10, 20) if a.quick else NFES
    n2, n64 = (1000, 500) if a.quick else (8000, 2000)
    n2, n64 = a.n2 or n2, a.n64 or n64
    print(f"# jaxdiff sampler benchmark: jax {jax.__version__}, backend {jax.default_backend()}, "
          f"{jax.device_count()} device(s), {os.cpu_count()} CPU cores visible; "
          f"command: python bench/samplers.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    t0 = time.time()
    if "overhead" in sections:
        overhead(1024 if not a.quick else 256, 100 if not a.quick else 20)
    if "peer" in sections:
        peer(nfes, n2, n64, a.seed)
    if "adaptive" in sections:
        adaptive(n2, a.seed)
    if "quality" in sections:
        quality(nfes, n2, n64, a.seed)
    print(f"\n(total {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
