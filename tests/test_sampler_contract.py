"""The sampler contract (docs/sampler_interface.md), checked for every sampler.

Every case builds ``sample(params, key, cond=None) -> (x, nfe)`` and must: be jitted and
re-callable (same key, same result); keep the shape and dtype (float32, also when the score returns
float64 under ``jax_enable_x64``); give the same samples under ``vmap`` over keys and with the batch
sharded over 8 devices as in plain calls; report as ``nfe`` exactly the number of score calls; and,
for the registry samplers, pass a non-None ``cond`` to the score as its fourth argument.

To add samplers (inverse, conditional, multi-scale, warm start ...), append :class:`Case` entries
to ``CASES`` in the clearly marked block at the end of the case list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdiff as jd
from jaxdiff.samplers import available_samplers, get_sampler, num_steps_for_nfe

SDE = jd.VESDE(sigma_max=5.0)
MIX = jd.GaussianMixture.create([0.5, 0.5], np.array([[-1.0, 0.0], [1.0, 0.0]]), stds=0.3)
SHAPE = (8, 2)


@dataclasses.dataclass(frozen=True)
class Case:
    """One sampler under contract.

    Attributes:
      name: test id.
      build: ``build(score_fn, shape, *, dtype, sharding) -> sample(params, key, cond=None)``.
      cond: the ``cond`` every call passes (``None``: none).
      cond_score: the score takes ``cond`` as its 4th argument (``score_fn(params, x, t, cond)``).
      score_fn: the (unconditional) score ``(params, x, t)``; default the 2-D mixture's on ``SDE``.
        With ``cond_score`` the test calls it as ``score_fn(params, x, t)`` and ignores ``cond``.
      params: the params passed to ``sample``.
      shape: ``(B, ...)`` of the samples (``B`` divisible by 8 for the sharded check).
      exact: vmapped / sharded results must equal plain ones (``False`` where accept/reject
        decisions may flip on float32 rounding, e.g. the adaptive SDE solver).
      steps: ``num_steps`` given to a registry sampler with a declared NFE (checked against
        ``num_steps_for_nfe``), else ``None``.
      full: also run the vmap / sharded and float64-score checks (``False`` for registry aliases
        that only fix options of a factory checked under another name, to keep the suite fast).
    """

    name: str
    build: Callable[..., Callable]
    cond: Any = None
    cond_score: bool = False
    score_fn: Callable | None = None
    params: Any = None
    shape: tuple = SHAPE
    exact: bool = True
    steps: int | None = None
    full: bool = True


# small, fast options for every registered name (a new registered name must be added here)
REGISTRY_OPTIONS = {
    "pc": dict(num_steps=4, predictor="reverse_diffusion", corrector="langevin"),
    "euler_maruyama": dict(num_steps=4),
    "ode": dict(rtol=1e-2, atol=1e-2),
    "ddim": dict(num_steps=4, eta=0.5, denoise=True),
    "dpm_solver++": dict(num_steps=4, denoise=True),
    "dpm_solver++_2m": dict(num_steps=4),
    "dpm_solver++_3m": dict(num_steps=5),
    "dpm_solver++_2s": dict(num_steps=3),
    "dpm_solver++_3s": dict(num_steps=2, denoise=True),
    "edm": dict(num_steps=4),
    "edm_heun": dict(num_steps=3, s_churn=1.0, denoise=False),
    "unipc": dict(num_steps=5, variant="bh1", denoise=True),
    "unipc_3": dict(num_steps=5, grid="karras"),
    "dpm_solver++_sde": dict(num_steps=4, denoise=True),
    "dpm_solver++_2m_sde": dict(num_steps=4, grid="trailing"),
    "adaptive": dict(eps_rel=0.5),
    "gotta_go_fast": dict(eps_rel=0.5, noise="resample", denoise=False),
}
ADAPTIVE = {"ode", "adaptive", "gotta_go_fast"}
# names whose factory (with other fixed options) is fully checked under another name
ALIASES = {"euler_maruyama", "dpm_solver++_2m", "dpm_solver++_3m", "dpm_solver++_3s", "edm",
           "gotta_go_fast", "unipc_3", "dpm_solver++_2m_sde"}


def _registry_case(name: str) -> Case:
    opts = REGISTRY_OPTIONS[name]

    def build(score_fn, shape, *, dtype=jnp.float32, sharding=None):
        return get_sampler(name, SDE, score_fn, shape, dtype=dtype, sharding=sharding, **opts)

    exact = name not in ("adaptive", "gotta_go_fast")
    return Case(name, build, exact=exact, full=name not in ALIASES,
                steps=None if name in ADAPTIVE else opts["num_steps"])


CASES: list[Case] = [_registry_case(n) for n in sorted(REGISTRY_OPTIONS)]

# ---- cases of the inverse-problem, conditional, multi-scale and warm-start samplers: append ----
# ---- below this line (CASES.append(Case(...))) -------------------------------------------------

# ---- end of the appended cases ------------------------------------------------------------------

IDS = [c.name for c in CASES]
FULL = [c for c in CASES if c.full]
FULL_IDS = [c.name for c in FULL]
# CI's budget: the vmap / sharding / float64 tier runs for one sampler of each integrate kind
# (PC loop, diffrax ODE, exponential integrator); ``pytest -m slow`` runs it for all of FULL.
FAST_FULL = {"pc", "ode", "dpm_solver++"}
FULL_TIER = [pytest.param(c, id=c.name, marks=() if c.name in FAST_FULL else pytest.mark.slow)
             for c in FULL]


def _score(case: Case, counter: list | None = None, x64: bool = False):
    """The case's score in its convention, optionally counting its calls on the host and computing
    in float64."""
    base = case.score_fn or MIX.score_fn(SDE)

    def score(params, x, t, *cond):
        if counter is not None:
            jax.debug.callback(lambda: counter.__setitem__(0, counter[0] + 1))
        if x64:
            x, t = x.astype(jnp.float64), jnp.asarray(t).astype(jnp.float64)
        return base(params, x, t)

    if case.cond_score:
        return lambda params, x, t, cond: score(params, x, t, cond)
    return lambda params, x, t: score(params, x, t)


def _call(case, sample, key):
    return sample(case.params, key, case.cond)


def test_every_registered_sampler_is_under_contract():
    assert set(available_samplers()) <= set(REGISTRY_OPTIONS), (
        set(available_samplers()) - set(REGISTRY_OPTIONS))
    # every factory behind an alias is fully checked under some name
    assert set(available_samplers()) - ALIASES == {c.name for c in FULL if c.name in
                                                   REGISTRY_OPTIONS}


# CI's budget: an alias (a name that fixes options of a factory checked under its own name) runs
# this tier only under ``pytest -m slow``.
CHEAP_TIER = [pytest.param(c, id=c.name, marks=pytest.mark.slow if c.name in ALIASES else ())
              for c in CASES]


@pytest.mark.parametrize("case", CHEAP_TIER)
def test_jit_shape_dtype_nfe_and_cond(case):
    """Jitted and re-callable, shape and dtype kept, ``nfe`` = the counted score calls, and (for
    the registry samplers) ``cond`` reaches the score as its 4th argument: a score scaled by
    ``cond`` gives the unconditional samples for ``cond = 1`` and others for ``cond = 0.5``."""
    counter = [0]
    registry = case.name in REGISTRY_OPTIONS
    score = _score(case, counter)
    if registry:  # run the contract through the conditional path
        sample = case.build(lambda params, x, t, c: score(params, x, t) * c, case.shape)
        call = lambda k, c=1.0: sample(None, k, jnp.float32(c))  # noqa: E731
    else:
        sample = case.build(score, case.shape)
        call = lambda k: _call(case, sample, k)  # noqa: E731
    assert hasattr(sample, "lower"), "the returned sampler must be jitted"
    key = jax.random.key(0)
    x, nfe = call(key)
    jax.block_until_ready(x)
    jax.effects_barrier()
    chex.assert_shape(x, case.shape)
    chex.assert_type(x, jnp.float32)
    chex.assert_type(nfe, jnp.int32)
    chex.assert_tree_all_finite(x)
    assert int(nfe) == counter[0] > 0, (int(nfe), counter[0])
    if case.steps is not None:  # the registry's declared NFE is the measured one
        opts = {k: v for k, v in REGISTRY_OPTIONS[case.name].items() if k != "num_steps"}
        assert num_steps_for_nfe(case.name, int(nfe), **opts) == case.steps
    # re-callable: same key, same result; another key, another sample
    x2, nfe2 = call(key)
    chex.assert_trees_all_close(x2, x, rtol=0, atol=0)
    assert int(nfe2) == int(nfe)
    x3, _ = call(jax.random.key(1))
    assert float(jnp.max(jnp.abs(x3 - x))) > 1e-3
    if registry:
        x_uncond, nfe_uncond = case.build(MIX.score_fn(SDE), case.shape)(None, key)
        chex.assert_trees_all_close(x, x_uncond, rtol=1e-5, atol=1e-5)
        assert int(nfe_uncond) == int(nfe)
        x_half, _ = call(key, 0.5)
        assert float(jnp.max(jnp.abs(x_half - x))) > 1e-2


@pytest.mark.parametrize("case", FULL_TIER)
def test_vmap_over_keys_and_sharded_batch(case, mesh8):
    score = _score(case)
    sample = case.build(score, case.shape)
    keys = jax.random.split(jax.random.key(7), 2)
    xs, nfes = jax.vmap(lambda k: _call(case, sample, k))(keys)
    sharding = NamedSharding(mesh8, P("data"))
    y, _ = _call(case, case.build(score, case.shape, sharding=sharding), keys[0])
    assert y.sharding.is_equivalent_to(sharding, y.ndim)
    chex.assert_tree_all_finite((xs, y))
    if case.exact:
        for i in range(2):
            x, nfe = _call(case, sample, keys[i])
            chex.assert_trees_all_close(xs[i], x, atol=1e-4, rtol=0)
            assert int(nfes[i]) == int(nfe)
        chex.assert_trees_all_close(y, xs[0], atol=1e-4, rtol=0)
    else:
        assert float(jnp.max(jnp.abs(xs[0] - xs[1]))) > 1e-3


@pytest.mark.parametrize("case", FULL_TIER)
def test_float64_score_with_float32_samples(case, x64):
    sample = case.build(_score(case, x64=True), case.shape, dtype=jnp.float32)
    x, nfe = _call(case, sample, jax.random.key(0))
    chex.assert_type(x, jnp.float32)
    chex.assert_shape(x, case.shape)
    chex.assert_tree_all_finite(x)
    assert int(nfe) > 0


# ---- build_sampler: config.sampling -> exactly the options the sampler takes --------------------
def test_build_sampler_forwards_exactly_the_options_the_sampler_takes():
    from jaxdiff.train.defaults import get_default_config
    from jaxdiff.train.sampling import build_sampler, sampler_kwargs

    config = get_default_config()
    sde = jd.VPSDE(N=10)
    config.sampling.eps = 2e-3
    assert sampler_kwargs(config, sde) == dict(
        predictor="euler_maruyama", corrector=None, snr=0.16, n_corrector_steps=1,
        probability_flow=False, num_steps=10, eps=2e-3, noise_removal=True)
    config.sampling.method = "ode"
    assert sampler_kwargs(config, sde) == dict(rtol=1e-5, atol=1e-5, eps=2e-3, noise_removal=True)
    config.sampling.method = "ddim"
    config.sampling.noise_removal = False
    assert sampler_kwargs(config, sde) == dict(num_steps=10, eps=2e-3, denoise=False)
    # 'adaptive' takes no num_steps (it used to be passed and fail)
    config.sampling.method = "adaptive"
    config.sampling.noise_removal = True
    assert sampler_kwargs(config, sde) == dict(eps=2e-3, denoise=True)
    x, nfe = build_sampler(config, SDE, MIX.score_fn(SDE), SHAPE)(None, jax.random.key(0))
    chex.assert_shape(x, SHAPE)
    assert int(nfe) % 2 == 1  # 2 per iteration + the Tweedie step that noise_removal asked for


def test_default_config_leaves_the_end_time_to_the_sampler():
    # sampling.eps defaults to None: the fast samplers keep their N-dependent end time with
    # denoise (it used to be overridden by a config default of 1e-3), PC / ODE their 1e-3
    from jaxdiff.samplers.schedule import end_time
    from jaxdiff.train.defaults import get_default_config
    from jaxdiff.train.sampling import build_sampler, sampler_kwargs

    config = get_default_config()
    assert config.sampling.eps is None
    config.sampling.method, config.sampling.num_steps = "dpm_solver++_2m", 4
    assert "eps" not in sampler_kwargs(config, jd.VPSDE())
    seen = []

    def score_fn(params, x, t):
        seen.append(float(jnp.reshape(t, -1)[0]))
        return MIX.score_fn(jd.VPSDE())(params, x, t)

    with jax.disable_jit():
        build_sampler(config, jd.VPSDE(), score_fn, SHAPE)(None, jax.random.key(0))
    # DPM-Solver++(2M) on VP: time_quadratic, 4 steps + the Tweedie step at t = T / 25
    assert seen[-1] == pytest.approx(end_time(None, 4, "time_quadratic", denoise=True, T=1.0))
    assert seen[-1] == pytest.approx(1 / 25)
    config.sampling.eps = 1e-3  # asked for: passed on
    assert sampler_kwargs(config, jd.VPSDE())["eps"] == 1e-3
    config.sampling.method = "pc"
    config.sampling.eps = None
    assert "eps" not in sampler_kwargs(config, jd.VPSDE())


@pytest.mark.parametrize("method,key,value", [
    ("ddim", "corrector", "langevin"), ("adaptive", "num_steps", 20), ("pc", "rtol", 1e-3),
    ("ode", "predictor", "reverse_diffusion"), ("edm", "snr", 0.2)])
def test_check_sampling_config_names_the_refused_option(method, key, value):
    from jaxdiff.train.defaults import get_default_config
    from jaxdiff.train.sampling import check_sampling_config

    config = get_default_config()
    config.sampling.method = method
    check_sampling_config(config)  # the defaults are never refused
    config.sampling[key] = value
    with pytest.raises(ValueError, match=rf"config\.sampling\.{key}={value!r}: sampler '{method}'"):
        check_sampling_config(config)
    config.sampling.method = "dpm"
    with pytest.raises(ValueError, match=r"config\.sampling\.method='dpm': unknown sampler"):
        check_sampling_config(config)


# ---- docs/sampler_interface.md: the worked example of a new sampler runs as written -------------
def test_the_documented_new_sampler_runs(capsys):
    import pathlib
    import re

    from jaxdiff.samplers import registry

    doc = (pathlib.Path(__file__).parents[1] / "docs" / "sampler_interface.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(code.strip().splitlines()) < 50
    try:
        exec(compile(code, "sampler_interface.md", "exec"), {})
    finally:
        registry._SAMPLERS.pop("heun_t", None)
    nfe, mean, std = re.match(r"(\d+) \[(.*)\] \[(.*)\]", capsys.readouterr().out).groups()
    assert int(nfe) == 101
    np.testing.assert_allclose(np.array(mean.split(), float), [2.0, -1.0], atol=0.03)
    np.testing.assert_allclose(np.array(std.split(), float), [0.5, 0.5], atol=0.03)
