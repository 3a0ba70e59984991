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
from jaxdiff.samplers.schedule import log_alpha_sigma, marginal_lambda, time_grid  # noqa: E402
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


# ---- 5. --peer diffusers: every sampler with a diffusers counterpart, error vs the exact flow map --
PEER_NFES = (5, 8, 10, 15, 20, 30, 50)
GRID_CANDIDATES = ("logsnr", "time_uniform", "time_quadratic", "karras", "trailing")


class Problem:
    """A Gaussian mixture (full eigen-form, or diagonal when ``eigvecs is None``) with its exact
    perturbed score in jax and torch, exact samples and the exact probability-flow map.

    The probability-flow ODE in the scaled state ``x~ = x / alpha`` and noise level ``s = sigma /
    alpha`` is the same for every schedule (``dx~/ds = -s score_s(x~)``), so the exact map from a
    start level ``s0`` to ``s = 0`` is one function of ``(x~, s0)``: computed here by 600 steps of
    DPM-Solver++(3M) in float64 (log-SNR grid down to ``s = 1e-5``, then the Tweedie denoise; its
    own error is below 1e-6, checked against 1200 steps).
    """

    def __init__(self, name, log_w, means, eigvals, eigvecs=None, event_shape=None, n=256,
                 n_sw=1000):
        self.name, self.n, self.n_sw = name, n, n_sw
        self.log_w = np.asarray(log_w, np.float64)
        self.means = np.asarray(means, np.float64)
        self.eigvals = np.asarray(eigvals, np.float64)
        self.eigvecs = None if eigvecs is None else np.asarray(eigvecs, np.float64)
        self.dim = self.means.shape[1]
        self.event_shape = tuple(event_shape or (self.dim,))

    # score of alpha x0 + sigma z at x (flat (B, D)), alpha / sigma scalars
    def score_jax(self, x, alpha, sigma):
        dt = x.dtype
        means, lam = jnp.asarray(self.means, dt), jnp.asarray(self.eigvals, dt)
        lam = alpha**2 * lam + sigma**2
        diff = x[:, None, :] - alpha * means[None]
        if self.eigvecs is None:
            proj = diff
        else:
            proj = jnp.einsum("kdj,bkd->bkj", jnp.asarray(self.eigvecs, dt), diff)
        logn = -0.5 * (jnp.sum(proj**2 / lam, -1) + jnp.sum(jnp.log(lam), -1))
        resp = jax.nn.softmax(jnp.asarray(self.log_w, dt) + logn, axis=-1)
        comp = proj / lam
        if self.eigvecs is not None:
            comp = jnp.einsum("kdj,bkj->bkd", jnp.asarray(self.eigvecs, dt), comp)
        return -jnp.einsum("bk,bkd->bd", resp, comp)

    def score_fn(self, sde):
        def score_fn(params, x, t):
            del params
            alpha, sigma = sde.marginal_coeffs(jnp.asarray(t).reshape(-1)[0])
            flat = x.reshape(x.shape[0], -1)
            return self.score_jax(flat, alpha.astype(x.dtype), sigma.astype(x.dtype)).reshape(x.shape)
        return score_fn

    def torch_score(self):
        import torch

        means = torch.tensor(self.means, dtype=torch.float32)
        eigvals = torch.tensor(self.eigvals, dtype=torch.float32)
        eigvecs = None if self.eigvecs is None else torch.tensor(self.eigvecs, dtype=torch.float32)
        logw = torch.tensor(self.log_w, dtype=torch.float32)

        def score(x, alpha, sigma):  # x: (B, *event) float32 torch, alpha / sigma floats
            shape = x.shape
            x = x.reshape(shape[0], -1)
            lam = alpha**2 * eigvals + sigma**2
            diff = x[:, None, :] - alpha * means[None]
            proj = diff if eigvecs is None else torch.einsum("kdj,bkd->bkj", eigvecs, diff)
            logn = -0.5 * ((proj**2 / lam).sum(-1) + torch.log(lam).sum(-1))
            resp = torch.softmax(logw + logn, dim=-1)
            comp = proj / lam
            if eigvecs is not None:
                comp = torch.einsum("kdj,bkj->bkd", eigvecs, comp)
            return (-torch.einsum("bk,bkd->bd", resp, comp)).reshape(shape)

        return score

    def component(self, x):
        """Index of the most likely mixture component of each (clean) sample ``x``."""
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        diff = x[:, None, :] - self.means[None]
        proj = diff if self.eigvecs is None else np.einsum("kdj,bkd->bkj", self.eigvecs, diff)
        logn = -0.5 * (np.sum(proj**2 / self.eigvals, -1) + np.sum(np.log(self.eigvals), -1))
        return np.argmax(self.log_w + logn, -1)

    def sample(self, key, n):
        kc, kz = jax.random.split(key)
        comp = jax.random.categorical(kc, jnp.asarray(self.log_w), shape=(n,))
        z = jax.random.normal(kz, (n, self.dim)) * jnp.sqrt(jnp.asarray(self.eigvals, jnp.float32))[comp]
        if self.eigvecs is not None:
            z = jnp.einsum("bdj,bj->bd", jnp.asarray(self.eigvecs, jnp.float32)[comp], z)
        return (jnp.asarray(self.means, jnp.float32)[comp] + z).reshape((n,) + self.event_shape)

    def flow_map(self, xs, s0, steps=600):
        """Exact flow map ``x~ at s0 -> x0`` (float64) of flat ``xs`` (B, D)."""
        from jaxdiff.samplers.dpm_solver import dpm_solver_pp_integrate

        with jax.enable_x64(True):
            sde = VESDE(sigma_min=1e-5, sigma_max=float(s0))
            xs = jnp.asarray(np.asarray(xs, np.float64))
            score_fn = self.score_fn(sde)
            ts = time_grid(sde, steps, grid="logsnr", eps=1e-9, dtype=jnp.float64)
            y, _ = jax.jit(lambda x: dpm_solver_pp_integrate(sde, score_fn, None, x, ts, order=3))(xs)
            s_end = float(sde.marginal_coeffs(ts[-1])[1])
            y = y + s_end**2 * score_fn(None, y, ts[-1])
            return np.asarray(y)


def peer_problems(scale=1.0):
    """2-D and 64-D mixtures (full covariances) and 3x8x8 / 3x32x32 mixture images (diagonal)."""
    m2, m64 = mixture_2d(), mixture_64d()
    probs = [Problem("2-D", m2.log_weights, m2.means, m2.eigvals, m2.eigvecs,
                     n=int(512 * scale), n_sw=int(4000 * scale)),
             Problem("64-D", m64.log_weights, m64.means, m64.eigvals, m64.eigvecs,
                     n=int(256 * scale), n_sw=int(1000 * scale))]
    rng = np.random.default_rng(3)
    for hw, n, n_sw in ((8, 512, 500), (32, 256, 200)):
        k, d = 4, 3 * hw * hw
        # smooth random "images" in [-1, 1] as means, per-pixel stds 0.05 .. 0.3
        yy, xx = np.meshgrid(np.linspace(0, 1, hw), np.linspace(0, 1, hw), indexing="ij")
        means = []
        for _ in range(k):
            c = [np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy
                                     + rng.uniform())) for _ in range(3)]
            means.append(0.8 * np.stack(c, -1).reshape(-1))
        stds = rng.uniform(0.05, 0.3, size=(k, d))
        probs.append(Problem(f"3x{hw}x{hw}", np.log(rng.uniform(0.5, 1.5, k) / 4.0),
                             np.stack(means), stds**2, None, (hw, hw, 3),
                             n=max(4, int(n * scale)), n_sw=max(8, int(n_sw * scale))))
    return probs


# (label, jaxdiff registry name, jaxdiff options, diffusers scheduler, its options, kind)
# kind: 'vp' (timesteps on alphas_cumprod), 'sigma' (Euler / Heun on Karras sigmas); the
# diffusers options are its defaults but for clip_sample=False (DDIM's default clips to [-1, 1])
PEER_SAMPLERS = [
    ("DDIM", "ddim", {}, "DDIMScheduler", {"clip_sample": False}, "vp"),
    ("Euler (Karras) vs DDIM", "ddim", {}, "EulerDiscreteScheduler",
     {"use_karras_sigmas": True}, "sigma"),
    ("DPM++ 2M", "dpm_solver++_2m", {}, "DPMSolverMultistepScheduler", {}, "vp"),
    ("DPM++ 3M", "dpm_solver++_3m", {}, "DPMSolverMultistepScheduler", {"solver_order": 3}, "vp"),
    ("Heun (Karras) / EDM", "edm", {}, "HeunDiscreteScheduler", {"use_karras_sigmas": True},
     "sigma"),
    ("UniPC (bh2, 2)", "unipc", {}, "UniPCMultistepScheduler", {}, "vp"),
    ("2M SDE", "dpm_solver++_2m_sde", {}, "DPMSolverMultistepScheduler",
     {"algorithm_type": "sde-dpmsolver++"}, "vp"),
]
# VE (sigma 0.01 .. 50): diffusers has no VE DDPM-style scheduler; its counterparts are the EDM
# schedulers (Karras sigmas, rho = 7, final sigma 0) given the same sigma range, driven with the
# exact denoiser (kind 'edm'). EDM-Euler on sigma is DDIM for the VE SDE.
VE_SIGMAS = {"sigma_min": 0.01, "sigma_max": 50.0}
PEER_SAMPLERS_VE = [
    ("DDIM vs EDM-Euler", "ddim", {}, "EDMEulerScheduler", dict(VE_SIGMAS), "edm"),
    ("DPM++ 2M vs EDM-2M", "dpm_solver++_2m", {}, "EDMDPMSolverMultistepScheduler",
     dict(VE_SIGMAS), "edm"),
    ("DPM++ 3M vs EDM-3M", "dpm_solver++_3m", {}, "EDMDPMSolverMultistepScheduler",
     {**VE_SIGMAS, "solver_order": 3}, "edm"),
    ("2M SDE vs EDM-2M SDE", "dpm_solver++_2m_sde", {}, "EDMDPMSolverMultistepScheduler",
     {**VE_SIGMAS, "algorithm_type": "sde-dpmsolver++"}, "edm"),
]
STOCHASTIC = {"2M SDE", "2M SDE vs EDM-2M SDE"}
SDE_REPS = 4  # independent seeds per side for the stochastic rows (mean +- standard error)


def _diffusers_run(cls_name, opts, kind, nfe, x_T, score_t, seed=0):
    """Run a diffusers scheduler (default config but ``opts``) with the exact score for ``nfe``
    score calls from the prior draw ``x_T`` (numpy; VP state, or VE state for kind 'edm').
    Returns (x0, calls, wall s)."""
    import diffusers
    import torch

    cls = getattr(diffusers, cls_name)
    sch = cls(**opts)
    steps = (nfe + 1) // 2 if cls_name == "HeunDiscreteScheduler" else nfe
    sch.set_timesteps(steps)
    ac = sch.alphas_cumprod.to(torch.float64) if kind != "edm" else None
    g = torch.Generator().manual_seed(seed)
    x = torch.tensor(np.asarray(x_T, np.float32))
    step_kw = {"generator": g} if "sde" in str(opts.get("algorithm_type", "")) else {}
    calls = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        if kind == "sigma":
            x = x * float(torch.sqrt(1.0 / ac[-1]))  # x~ = x_T / alpha_T, alpha_T of step 999
        for t in sch.timesteps:
            if kind == "edm":  # VE state; the model output that the EDM preconditioning maps to
                sch.scale_model_input(x, t)  # (sets the step index; the scaled input is unused)
                sig = float(sch.sigmas[sch.step_index])
                sd = sch.config.sigma_data
                denoised = x + sig**2 * score_t(x, 1.0, sig)
                c_skip = sd**2 / (sig**2 + sd**2)
                c_out = sig * sd / (sig**2 + sd**2) ** 0.5
                calls += 1
                x = sch.step((denoised - c_skip * x) / c_out, t, x, **step_kw).prev_sample
                continue
            if kind == "vp":
                a = float(ac[int(t)]) ** 0.5
                s = (1.0 - float(ac[int(t)])) ** 0.5
                xin = x
            else:
                xin = sch.scale_model_input(x, t)
                sig = float(sch.sigmas[sch.step_index])
                a = 1.0 / math.sqrt(1.0 + sig**2)
                s = sig * a
            eps = -s * score_t(xin, a, s)
            calls += 1
            x = sch.step(eps, t, x, **step_kw).prev_sample
    return x.numpy(), calls, time.perf_counter() - t0


_COMPILED = {}


def _jax_run(name, opts, prob, sde, nfe, key, n=None):
    """jaxdiff sampler ``name`` (its defaults but ``opts``, ``denoise=True``: output at t = 0) at
    ``nfe`` score calls for ``n`` samples (default: ``prob.n``, ``prob.n_sw`` for the SDE sampler):
    (x0, nfe used, wall s of a second, compiled call)."""
    opts = dict(opts)
    opts.setdefault("denoise", True)
    steps = num_steps_for_nfe(name, nfe, **opts)
    if n is None:
        n = prob.n_sw if name == "dpm_solver++_2m_sde" else prob.n
    ck = (name, repr(sorted(opts.items())), prob.name, type(sde).__name__, nfe, n)
    if ck not in _COMPILED:  # the stochastic rows reuse one compiled sampler over their seeds
        _COMPILED.clear()
        _COMPILED[ck] = get_sampler(name, sde, prob.score_fn(sde), (n,) + prob.event_shape,
                                    num_steps=steps, **opts)
    sample = _COMPILED[ck]
    jax.block_until_ready(sample(None, key))
    (x, used), wall = timed(sample, None, key, reps=1)
    return np.asarray(x), int(used), wall


def _rmse(x, y):
    return float(np.sqrt(np.mean((np.asarray(x, np.float64).reshape(len(x), -1)
                                  - np.asarray(y, np.float64).reshape(len(y), -1)) ** 2)))


def _mean_se(v):
    v = np.asarray(v, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


FLOOR_REPS = 6  # repetitions of the noise-floor check


def _floor_check(prob, sde, sname, alpha_T, s0, best10, key):
    """The noise-floor check row of ``best10 = (label, rmse, name, opts)`` (``alpha_T``, ``s0``:
    alpha and sigma / alpha of ``sde`` at ``T``, as the caller computed them): mean +- SE over
    :data:`FLOOR_REPS` repetitions of SW(sampler, exact), SW(exact', exact) and SW(exact flow map
    of the sampler's prior draw, exact), each repetition with fresh sets and projections (a
    single SW at these n varies by up to 2x between draws, measured)."""
    vals = {"sampler": [], "floor": [], "flow": []}
    for r in range(FLOOR_REPS):
        kr = jax.random.fold_in(key, 1000 + r)
        ke, kf, kp = jax.random.split(kr, 3)
        exact = prob.sample(ke, prob.n_sw).reshape(prob.n_sw, -1)
        other = prob.sample(kf, prob.n_sw).reshape(prob.n_sw, -1)
        xb, _, _ = _jax_run(best10[2], best10[3], prob, sde, 10, kp, n=prob.n_sw)
        # the sampler's own prior draw (make_sampler draws it from split(key)[0])
        x_T = np.asarray(sde.prior_sampling(jax.random.split(kp)[0],
                                            (prob.n_sw,) + prob.event_shape))
        flow = prob.flow_map(x_T.reshape(prob.n_sw, -1) / alpha_T, s0)
        gap = _rmse(xb, flow)  # the same prior draw: the sampler's 10-NFE error, not a mismatch
        assert gap < 5 * best10[1] + 1e-3, (best10[0], gap, best10[1])
        kproj = jax.random.fold_in(kr, 7)
        vals["sampler"].append(sw(jnp.asarray(xb.reshape(prob.n_sw, -1)), exact, kproj))
        vals["floor"].append(sw(other, exact, kproj))
        vals["flow"].append(sw(jnp.asarray(flow, jnp.float32), exact, kproj))
    (ms, ss), (mf, sf), (mx, sx) = (_mean_se(vals[k]) for k in ("sampler", "floor", "flow"))
    return [f"{sname} {prob.name}", best10[0], f"{best10[1]:.3e}", prob.n_sw,
            f"{ms:.4f} +- {ss:.4f}", f"{mf:.4f} +- {sf:.4f}", f"{mx:.4f} +- {sx:.4f}",
            f"{ms / mf:.2f}", f"{mx / mf:.2f}", "yes" if ms <= 1.5 * mf else "no"]


def peer_diffusers(nfes=PEER_NFES, scale=1.0, seed=0, grids=None, only=None, problems=None,
                   sdes=("VP", "VE")):
    """The ``--peer diffusers`` table; with ``grids`` (names) print jaxdiff's error per grid
    instead (how the default grids were chosen)."""
    try:
        import diffusers
        import torch
    except ImportError as e:
        print(f"\n### Peer comparison skipped: {e} (pip install -e '.[bench]')")
        return
    torch.set_num_threads(1)
    ac = diffusers.DDPMScheduler().alphas_cumprod.to(torch.float64)
    vp = VPSDE()
    s0_vp_diff = float(torch.sqrt(1.0 / ac[-1] - 1.0))
    print(f"\n### Peer: diffusers {diffusers.__version__} (PyTorch {torch.__version__}, CPU, 1 "
          f"thread) vs jaxdiff ({jax.default_backend()}). VP: SDE beta 0.1..20 (diffusers: DDPM "
          f"linear betas 1e-4..0.02, its defaults); VE: sigma 0.01..50 (diffusers: its EDM "
          f"schedulers with that sigma range). Both start from the same prior draw at their top "
          f"noise level (VP sigma/alpha = "
          f"{float(jnp.exp(-marginal_lambda(vp, jnp.asarray(1.0)))):.1f} jaxdiff, "
          f"{s0_vp_diff:.1f} diffusers; VE sigma 50 both) and integrate to t = 0. Error: RMSE "
          f"against the exact flow map from that level, with the number of samples whose mixture "
          f"component differs from the exact map's ('sw'); 2M SDE: sliced Wasserstein to exact "
          f"samples, mean +- standard error over {SDE_REPS} seeds per side. jaxdiff: its default "
          f"grid, denoise=True (the last of the NFE is the Tweedie step). ratio = jaxdiff / "
          f"diffusers error; wall = jaxdiff / diffusers loop time (jit excluded).\n")
    rows, floor_rows = [], []
    for prob, sname in [(p, s) for p in peer_problems(scale) for s in sdes]:  # 3x32x32 last
        if problems and prob.name not in problems:
            continue
        sde = vp if sname == "VP" else VESDE(**VE_SIGMAS)
        table = PEER_SAMPLERS if sname == "VP" else PEER_SAMPLERS_VE
        s0_jax = float(jnp.exp(-marginal_lambda(sde, jnp.asarray(sde.T, jnp.float32))))
        alpha_T = float(jnp.exp(log_alpha_sigma(sde, jnp.asarray(sde.T))[0]))
        t_prob = time.time()
        key = jax.random.key(seed)
        score_t = prob.torch_score()
        x_T = np.asarray(sde.prior_sampling(jax.random.split(key)[0],
                                            (prob.n,) + prob.event_shape))
        flat = x_T.reshape(prob.n, -1)
        ref_jax = prob.flow_map(flat / alpha_T, s0_jax)
        ref_diff = (prob.flow_map(flat / float(torch.sqrt(ac[-1])), s0_vp_diff)
                    if sname == "VP" else ref_jax)
        comp_jax, comp_diff = prob.component(ref_jax), prob.component(ref_diff)
        exact = prob.sample(jax.random.fold_in(key, 1), prob.n_sw).reshape(prob.n_sw, -1)
        floor = float(np.mean([sw(prob.sample(jax.random.fold_in(key, 2 + i), prob.n_sw)
                                  .reshape(prob.n_sw, -1), exact) for i in range(3)]))
        print(f"- {sname} {prob.name}: n = {prob.n} (flow map), {prob.n_sw} (SW); SW noise "
              f"floor {floor:.4f}", flush=True)
        best10 = None
        for label, name, jopts, cls_name, dopts, kind in table:
            if only and not any(o.strip() in label for o in only):
                continue
            if grids and (label.startswith("Euler") or label in STOCHASTIC):
                continue
            stoch = label in STOCHASTIC
            for nfe in nfes:
                if grids:
                    cells = []
                    for g in grids:
                        try:
                            x, used, _ = _jax_run(name, {**jopts, "grid": g}, prob, sde, nfe,
                                                  key)
                        except ValueError as e:
                            cells.append(f"{g}: -({e})"[:40])
                            continue
                        cells.append(f"{g}: {_rmse(x, ref_jax):.3e}")
                    print(f"  {sname} {label} NFE {nfe}: " + ", ".join(cells), flush=True)
                    continue
                if stoch:
                    ejs, eds, wjs, wds = [], [], [], []
                    for r in range(SDE_REPS):
                        kr = jax.random.fold_in(key, 100 + r)
                        x_sw = np.asarray(sde.prior_sampling(
                            jax.random.split(kr)[0], (prob.n_sw,) + prob.event_shape))
                        xj, nj, wj = _jax_run(name, jopts, prob, sde, nfe, kr)
                        xd, nd, wd = _diffusers_run(cls_name, dopts, kind, nfe, x_sw, score_t,
                                                    seed + r)
                        ejs.append(sw(jnp.asarray(xj.reshape(len(xj), -1)), exact))
                        eds.append(sw(jnp.asarray(xd.reshape(len(xd), -1)), exact))
                        wjs.append(wj)
                        wds.append(wd)
                    (ej, sj), (ed, sd_) = _mean_se(ejs), _mean_se(eds)
                    cj, cd = f"{ej:.3e} +- {sj:.1e}", f"{ed:.3e} +- {sd_:.1e}"
                    wj, wd = min(wjs), min(wds)
                else:
                    xj, nj, wj = _jax_run(name, jopts, prob, sde, nfe, key)
                    xd, nd, wd = _diffusers_run(cls_name, dopts, kind, nfe, x_T, score_t,
                                                seed)
                    ej, ed = _rmse(xj, ref_jax), _rmse(xd, ref_diff)
                    swj = int(np.sum(prob.component(xj) != comp_jax))
                    swd = int(np.sum(prob.component(xd) != comp_diff))
                    cj = f"{ej:.3e}" + (f" sw{swj}" if swj else "")
                    cd = f"{ed:.3e}" + (f" sw{swd}" if swd else "")
                    if nfe == 10 and nj == 10 and (best10 is None or ej < best10[1]):
                        best10 = (label, ej, name, jopts)
                rows.append([f"{sname} {prob.name}", label, nfe,
                             cj + ("" if nj == nfe else f" ({nj})"),
                             cd + ("" if nd == nfe else f" ({nd})"), f"{ej / ed:.2f}",
                             f"{wj / wd:.2f}"])
                print("  " + " | ".join(str(c) for c in rows[-1]), flush=True)
        if best10 is not None:
            floor_rows.append(_floor_check(prob, sde, sname, alpha_T, s0_jax, best10, key))
            print("  noise floor: " + " | ".join(str(c) for c in floor_rows[-1]), flush=True)
        print(f"  ({sname} {prob.name}: {time.time() - t_prob:.0f} s)", flush=True)
    if rows:
        print()
        print(fmt_table(["problem", "sampler", "NFE", "jaxdiff error", "diffusers error",
                         "ratio", "wall ratio"], rows))
    if floor_rows:
        print(f"\nNoise-floor check: the best jaxdiff sampler at 10 NFE (lowest flow-map RMSE); "
              f"over {FLOOR_REPS} repetitions, each with fresh exact sets, prior draw and SW "
              f"projections: SW of n_sw of its samples to n_sw exact samples, the exact-vs-exact "
              f"SW floor at the same n, and the SW of the exact flow map of the same prior draw "
              f"(what an exact solver started from N(0, I) at T reaches); mean +- standard error "
              f"(goal: sampler <= 1.5 x floor)\n")
        print(fmt_table(["problem", "best sampler at 10 NFE", "RMSE", "n_sw", "sampler SW",
                         "floor SW", "exact-flow SW", "sampler / floor", "exact flow / floor",
                         "<= 1.5"], floor_rows))
    sys.stdout.flush()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    p.add_argument("--sections", default="overhead,peer,adaptive,quality")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n2", type=int, default=None, help="samples, 2-D mixture (default 8000)")
    p.add_argument("--n64", type=int, default=None, help="samples, 64-D mixture (default 2000)")
    p.add_argument("--peer", choices=["diffusers"], default=None,
                   help="only the comparison with diffusers at NFE 5..50 on four problems")
    p.add_argument("--scale", type=float, default=1.0, help="--peer: sample-count factor")
    p.add_argument("--grids", default=None,
                   help="--peer: comma-separated grids: print jaxdiff's error per grid instead")
    p.add_argument("--only", default=None, help="--peer: comma-separated sampler labels")
    p.add_argument("--problems", default=None, help="--peer: comma-separated problem names")
    p.add_argument("--nfes", default=None, help="--peer: comma-separated NFEs")
    p.add_argument("--sdes", default="VP,VE", help="--peer: VP, VE or both")
    a = p.parse_args(argv)
    if a.peer == "diffusers":
        print(f"# jaxdiff vs diffusers: command: python bench/samplers.py "
              f"{' '.join(sys.argv[1:] if argv is None else argv)}")
        t0 = time.time()
        split = lambda v: v.split(",") if v else None  # noqa: E731
        peer_diffusers(tuple(int(k) for k in a.nfes.split(",")) if a.nfes else PEER_NFES,
                       a.scale, a.seed, split(a.grids), split(a.only), split(a.problems),
                       tuple(split(a.sdes)))
        print(f"\n(total {time.time() - t0:.0f} s)")
        return
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
