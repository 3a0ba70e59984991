"""MSDiff configs through the training system: conditional (CDE / CMDE super-resolution on the
digits) and multi-scale (one Haar stage per run) train, resume, use the library losses, and
sample through ``launch/main.py``'s ``run``."""

import importlib.util
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import conditional, multiscale
from jaxdiff.data import resolve_data_dir, train_dataset
from jaxdiff.scores import get_score_fn
from jaxdiff.tasks import get_task, load_params, train
from jaxdiff.tasks import msdiff as msdiff_lib
from jaxdiff.train import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(path, name, *args):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(*args)


def _tiny(config, n_iters=4):
    config.model.nf = 8
    config.model.ch_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.ema_rate = 0.9
    t = config.training
    t.batch_size, t.n_iters = 8, n_iters
    t.log_freq, t.eval_freq, t.snapshot_freq, t.snapshot_freq_for_preemption = 1, 2, 4, 2
    t.async_checkpointing = False
    config.eval.batch_size, config.eval.num_loss_batches = 8, 1
    config.sampling.num_steps, config.sampling.num_samples = 4, 6
    config.parallel.num_devices = 1
    return config


def sr_config(estimator, **kw):
    return _tiny(_load(ROOT / "configs" / "msdiff_conditional.py", "msdiff_conditional", estimator),
                 **kw)


def ms_config(stage, **kw):
    c = _load(ROOT / "configs" / "digits.py", "digits")
    c.data.image_size = 16
    c.msdiff = multiscale.config_section(end_times=(0.5,), stage=stage)
    return _tiny(c, **kw)


def _batch(config, workdir):
    it = iter(train_dataset(config, resolve_data_dir(config, str(workdir))))
    return jnp.asarray(next(it)["x"])


def _perturbed(params, scale=0.05, seed=11):
    """``params`` plus Gaussian noise (numpy: no per-shape compiles). The U-Net's last conv
    starts at zero, which would hide the condition from the loss."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(np.asarray(p) + scale * rng.standard_normal(
        p.shape), p.dtype), params)


def _random_params(exp, scale=0.05, seed=11):
    """Random parameters of the experiment's network from its abstract state (no init compile)."""
    return _perturbed(jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), exp.abstract_state.params),
                      scale, seed)


# one-off test computations: XLA:CPU's backend optimisations off (compiles several times faster)
_FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _fjit(f):
    return jax.jit(f, compiler_options=_FAST if jax.default_backend() == "cpu" else {})


def _run():
    import sys
    sys.path.insert(0, str(ROOT / "launch"))
    try:
        from main import run
    finally:
        sys.path.pop(0)
    return run


def _check_conditional_wiring(config, exp, params, images):
    """The wired loss equals the library's conditional loss for this estimator, and differs from
    the other estimator's on the same key (so a plain DSM loss or a wrong estimator fails)."""
    key = jax.random.PRNGKey(7)
    sec = config.msdiff
    wired_fn = exp.eval_loss

    def lib_fn(estimator, loss=None):
        s = sec.copy_and_resolve_references()
        s.estimator = estimator
        if loss is not None:
            s.loss = loss
        return conditional.get_conditional_loss(
            s, exp.sde, exp.score_fn, image_size=16, channels=1,
            likelihood_weighting=config.training.likelihood_weighting)[0]

    other_name = "cmde" if sec.estimator == "cde" else "cde"
    # the joint (x, y) loss (the reference's default) differs from its x-only option (CDE: same)
    x_only = "x" if sec.get("loss", "x") == "joint" else "joint"
    x_only = "x" if sec.estimator == "cde" else x_only
    both = _fjit(lambda p, k, x: (wired_fn(p, k, x)[0], lib_fn(sec.estimator)(p, k, x)[0],
                                  lib_fn(other_name)(p, k, x)[0],
                                  lib_fn(sec.estimator, x_only)(p, k, x)[0]))
    wired, lib, other, xpart = (float(v) for v in both(params, key, images))
    np.testing.assert_allclose(wired, lib, rtol=1e-6)
    if sec.estimator != "cde":
        assert abs(xpart - wired) > 1e-3 * wired, (xpart, wired)
    # the other estimator's y_t moves the network output, but a mean over 4 x 256 squared errors
    # barely changes (~1e-4 relative): still 20x the tolerance above
    assert abs(other - wired) > 2e-5 * wired, (other, wired)


def _conv_kernels(params):
    return [leaf for _, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
            if getattr(leaf, "ndim", 0) == 4]


def _check_conditional_network(exp, params):
    """The network sees [x_t, upsample(y_t)]: 1 + 1 channels in and out, at 16 x 16."""
    assert exp.example_shape == (16, 16, 2) and exp.msdiff.mode == "conditional"
    out = jax.eval_shape(lambda p: exp.model.apply({"params": p}, jnp.zeros((1, 16, 16, 2)),
                                                   jnp.zeros((1,))), params)
    assert out.shape == (1, 16, 16, 2)
    ins = sorted({k.shape[2] for k in _conv_kernels(params)})
    outs = sorted({k.shape[3] for k in _conv_kernels(params)})
    assert ins[0] == 2 and outs[0] == 2, (ins, outs)   # nf = 8: only the ends have 2 channels


@pytest.mark.parametrize("estimator", ["cmde", pytest.param("cde", marks=pytest.mark.slow)])
def test_conditional_network_and_loss_wiring(tmp_path, estimator):
    """No training: the experiment of a conditional config has the x + y channel network, and
    get_loss_fn is the library's conditional loss of the configured estimator."""
    config = sr_config(estimator)
    exp = get_task(config)
    assert exp.msdiff.image_shape == (16, 16, 1) and exp.msdiff.net_shape == (16, 16, 2)
    params = _random_params(exp, scale=0.3)   # large enough that y moves the output
    _check_conditional_network(exp, params)
    images = jax.random.uniform(jax.random.PRNGKey(4), (4, 16, 16, 1), minval=-1, maxval=1)
    _check_conditional_wiring(config, exp, params, images)


@pytest.mark.slow
def test_conditional_cmde_trains_resumes_and_samples(tmp_path):
    """CMDE super-resolution: 2 steps, resume for 2 more (held-out conditional loss logged),
    the wired loss is the library's, and --mode=sample / --mode=eval write their outputs."""
    config = sr_config("cmde")
    config.training.snapshot_sampling = False
    wd = tmp_path / "sr"
    r1 = train(config, str(wd), max_steps=2, progress=False)
    assert r1["step"] == 2 and r1["status"] == "max_steps"
    assert len(r1["losses"]) == 2 and all(np.isfinite(v) for v in r1["losses"].values())
    assert np.isfinite(r1["eval"][2])
    r2 = train(config, str(wd), max_steps=2, progress=False)   # resumes at step 2
    assert r2["step"] == 4 and r2["status"] == "done" and sorted(r2["losses"]) == [3, 4]
    assert np.isfinite(r2["eval"][4])
    rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/loss" in r] == [2, 4]

    run = _run()
    r = run(config, str(wd), "sample", num_samples=5)
    # the reference's sampler: reverse diffusion + Langevin, 2 score calls per step
    assert r["step"] == 4 and r["nfe"] == 8
    assert r["shape"] == [5, 16, 16, 1] and r["y_shape"] == [5, 16, 16, 1]
    d = np.load(r["npz"])
    assert d["x"].shape == d["truth"].shape == d["cond"].shape == (5, 16, 16, 1)
    assert d["y"].shape == (5, 16, 16, 1) and d["images"].dtype == np.uint8
    assert np.all(np.isfinite(d["x"]))
    # the truth is the held-out split, y (what the sampler conditioned on) the reference's
    # construction: its PyTorch-bicubic 8x8 image, nearest-upsampled back to 16x16
    truth = msdiff_lib.heldout_images(config, resolve_data_dir(config, str(wd)), 5)
    np.testing.assert_allclose(d["truth"], truth)
    low = conditional.resize(jnp.asarray(truth), (8, 8), "bicubic")
    np.testing.assert_allclose(d["y"], np.asarray(low).repeat(2, 1).repeat(2, 2), atol=1e-6)
    np.testing.assert_allclose(d["cond"], d["y"], atol=1e-6)
    np.testing.assert_allclose(r["psnr"], msdiff_lib.psnr(d["x"], truth, config.data.centered).mean(),
                               rtol=1e-6)
    from PIL import Image
    grid = np.asarray(Image.open(r["png"]))
    # 5 triplets, 2 per row (ceil(sqrt(5/3))), 3 rows; a triplet is 3 * 16 + 5 pixels wide
    scale = int(np.ceil(256 / (3 * 17 + 1)))
    assert grid.shape == ((3 * 17 + 1) * scale, (2 * (3 * 16 + 5) + 1) * scale)

    params, step, exp = load_params(config, str(wd))
    _check_conditional_network(exp, params)
    _check_conditional_wiring(config, exp, _perturbed(params), _batch(config, wd))


@pytest.mark.slow
def test_conditional_cde_run_with_snapshot_and_eval(tmp_path):
    """CDE: 4 steps with a snapshot grid at step 4 (PSNR json), the wiring, and --mode=eval
    (held-out loss; bits/dim and the unconditional hooks skipped)."""
    config = sr_config("cde")
    wd = tmp_path / "cde"
    r = train(config, str(wd), max_steps=4, progress=False)
    assert r["step"] == 4 and all(np.isfinite(v) for v in r["losses"].values())
    snap = json.loads((wd / "samples" / "step_00000004.json").read_text())
    assert snap["nfe"] == 8 and np.isfinite(snap["psnr"]) and np.isfinite(snap["psnr_condition"])
    assert (wd / "samples" / "step_00000004.png").exists()
    config.eval.enable_bpd = True
    rep = _run()(config, str(wd), "eval")
    assert np.isfinite(rep["held_out_loss"]) and "bits_per_dim" in rep["skipped"]
    assert "quality_metrics" in rep["skipped"] and "bits_per_dim" not in rep
    assert np.isfinite(rep["conditional_psnr"]) and rep["msdiff_mode"] == "conditional"
    exp = get_task(config)
    params = _perturbed(exp.init(jax.random.PRNGKey(0)).params)
    _check_conditional_network(exp, params)
    _check_conditional_wiring(config, exp, params, _batch(config, wd))


def test_psnr_and_condition_images():
    rng = np.random.default_rng(0)
    truth = rng.uniform(-1, 1, (3, 4, 4, 1))
    t = np.clip(truth, -0.8, 0.8)
    np.testing.assert_allclose(msdiff_lib.psnr(t + 0.1, t, True), 20 * np.log10(1 / 0.05),
                               rtol=1e-9)
    np.testing.assert_allclose(msdiff_lib.psnr(t / 2 + 0.5 + 0.1, t / 2 + 0.5, False),
                               20 * np.log10(1 / 0.1), rtol=1e-9)
    sec = conditional.config_section(task="inpainting", mask="center", mask_channel=True)
    y = conditional.observe("inpainting", jnp.asarray(truth), mask=conditional.inpaint_mask(4),
                            mask_channel=True)
    v = msdiff_lib.condition_image(sec, y, (4, 4, 1), True)
    np.testing.assert_allclose(v[:, 1:3, 1:3], -1.0)
    np.testing.assert_allclose(v[:, 0], truth[:, 0])
    # the reference's construction (no mask channel): the condition is y as observed
    y = conditional.make_observe(conditional.config_section(task="inpainting"), 4)(
        jnp.asarray(truth))
    v = msdiff_lib.condition_image(sec, y, (4, 4, 1), True)
    np.testing.assert_array_equal(v, y)
    assert np.sum(v == 0.0) == 3 * 4                     # a 2 x 2 square per image


@pytest.mark.parametrize("stage", [0, 1])
def test_multiscale_stage_network_score_and_loss(stage):
    """Stage s: the network at (16 / 2^s)^2, the score of ms.sde(s) and the library's
    multiscale_loss (a plain DSM loss, or the base SDE's score, would differ)."""
    config = ms_config(stage)
    exp = get_task(config)
    size = 16 // 2**stage
    assert exp.example_shape == (size, size, 1) and exp.msdiff.stage == stage
    ms = exp.msdiff.ms
    assert ms.end_times == (0.5,) and ms.image_shape == (16, 16, 1)
    params = _random_params(exp, scale=0.3)
    out = jax.eval_shape(lambda p: exp.model.apply({"params": p}, jnp.zeros((1, size, size, 1)),
                                                   jnp.zeros((1,))), params)
    assert out.shape == (1, size, size, 1)
    images = jax.random.uniform(jax.random.PRNGKey(4), (4, 16, 16, 1), minval=-1, maxval=1)
    key = jax.random.PRNGKey(5)
    c = jax.random.normal(key, (2, size, size, 1))
    t = jnp.array([0.2, 0.3]) if stage == 0 else jnp.array([0.6, 0.7])
    wired_fn = exp.eval_loss
    lib_fn = multiscale.multiscale_loss(ms, stage, get_score_fn(ms.sde(stage), exp.model))

    def all_(p):
        return (wired_fn(p, key, images), lib_fn(p, key, images), exp.score_fn(p, c, t),
                get_score_fn(ms.sde(stage), exp.model)(p, c, t),
                get_score_fn(exp.sde, exp.model)(p, c, t))

    (wired, aux), (lib, lib_aux), s_wired, s_ms, s_base = _fjit(all_)(params)
    np.testing.assert_allclose(float(wired), float(lib), rtol=1e-6)
    np.testing.assert_allclose(aux["losses"], lib_aux["losses"], rtol=1e-6)
    lo, hi = multiscale.stage_time_range(ms, stage, config.training.loss_eps)
    assert (lo, hi) == ((1e-5, 0.5) if stage == 0 else (0.5, 1.0))
    assert np.all((aux["t"] >= lo) & (aux["t"] <= hi))   # the stage's own time range
    np.testing.assert_allclose(s_wired, s_ms, rtol=1e-6)
    if stage == 0:   # the details run at speed 1 / T_1 = 2: sigma differs from the base SDE's
        assert float(jnp.max(jnp.abs(s_wired - s_base))) > 0.1 * float(jnp.max(jnp.abs(s_base)))
    else:            # the coarsest block holds only the approximation, at speed 1
        np.testing.assert_allclose(s_wired, s_base, rtol=1e-6)


@pytest.fixture(scope="module")
def ms_runs(tmp_path_factory):
    """Stage 0 and stage 1 runs: 2 steps, then resumed for 2 more."""
    out = {}
    for stage in (0, 1):
        wd = tmp_path_factory.mktemp(f"ms_stage{stage}")
        config = ms_config(stage)
        r1 = train(config, str(wd), max_steps=2, progress=False)
        r2 = train(config, str(wd), max_steps=2, progress=False)
        out[stage] = (config, wd, r1, r2)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1])
def test_multiscale_stage_trains_and_resumes(ms_runs, stage):
    config, wd, r1, r2 = ms_runs[stage]
    assert r1["step"] == 2 and r2["step"] == 4 and r2["status"] == "done"
    assert sorted(r1["losses"]) == [1, 2] and sorted(r2["losses"]) == [3, 4]
    assert all(np.isfinite(v) for v in {**r1["losses"], **r2["losses"]}.values())
    assert np.isfinite(r1["eval"][2]) and np.isfinite(r2["eval"][4])
    assert not (wd / "samples").exists()   # single-stage snapshot sampling is skipped (logged)
    params, step, exp = load_params(config, str(wd))
    size = 16 // 2**stage
    assert step == 4 and exp.model.apply({"params": params}, jnp.zeros((1, size, size, 1)),
                                         jnp.zeros((1,))).shape == (1, size, size, 1)
    rep = _run()(config, str(wd), "eval")
    assert rep["stage"] == stage and np.isfinite(rep["held_out_loss"])


@pytest.mark.slow
def test_multiscale_sample_from_the_stage_runs(ms_runs, tmp_path):
    config = ms_runs[1][0]
    run = _run()
    r = run(config, str(tmp_path / "out"), "sample", num_samples=3,
            stage_workdirs=[str(ms_runs[0][1]), str(ms_runs[1][1])])
    assert r["shape"] == [3, 16, 16, 1] and r["steps"] == [4, 4] and r["nfe"] == 4
    x = np.load(r["npz"])["x"]
    assert x.shape == (3, 16, 16, 1) and np.all(np.isfinite(x))
    assert os.path.exists(r["png"])


def test_multiscale_sample_needs_all_stages(tmp_path):
    config = ms_config(0)
    with pytest.raises(ConfigError, match="stage_workdirs=DIR_0,...,DIR_1"):
        _run()(config, str(tmp_path / "out"), "sample")
    with pytest.raises(ConfigError, match="all 2 stages"):
        _run()(config, str(tmp_path / "out"), "sample", stage_workdirs=[str(tmp_path)])


def test_conditional_metrics_closed_forms():
    """The --mode=eval metrics on hand-made samples: SSIM / PSNR of the sample, consistency is
    the observation operator applied to the sample (a detail invisible at low resolution is
    perfectly consistent but not perfectly accurate), diversity of the extra samples."""
    config = sr_config("cmde")
    centered = config.data.centered
    rng = np.random.default_rng(0)
    t01 = rng.uniform(0.2, 0.8, (3, 16, 16, 1))
    # +-0.1 checkerboard: zero mean over each 2x2 block (invisible to the 2x2 average pooling,
    # option sr_downsample='average'); the reference's bicubic sees it only at the 4 corners (its
    # interior taps -3/32, 19/32, 19/32, -3/32 cancel on it; a clamped border leaves 3/16 per
    # axis): consistency mse = 4 (0.1 (3/16)^2)^2 / 64
    checker = 0.1 * (-1.0) ** (np.arange(16)[:, None] + np.arange(16)[None, :])[None, :, :, None]
    to_model = (lambda a: 2 * a - 1) if centered else (lambda a: a)
    d = {"x": to_model(t01 + checker), "truth": to_model(t01)}
    config.msdiff.sr_downsample = "average"
    m = msdiff_lib.conditional_metrics(config, d)
    assert m["psnr"] == pytest.approx(20.0, rel=1e-6)               # mse 0.01
    assert m["consistency_psnr"] == pytest.approx(120.0, rel=1e-4)  # A(x) == A(truth)
    assert m["consistency_mse"] < 1e-12 and "diversity" not in m
    config.msdiff.sr_downsample = "bicubic"
    mb = msdiff_lib.conditional_metrics(config, d)
    a_x = conditional.downsample(jnp.asarray(t01 + checker, jnp.float32), 2, "bicubic")
    a_t = conditional.downsample(jnp.asarray(t01, jnp.float32), 2, "bicubic")
    assert mb["consistency_mse"] == pytest.approx(float(jnp.mean((a_x - a_t) ** 2)), rel=1e-4)
    assert mb["consistency_mse"] == pytest.approx(4 * (0.1 * 0.1875**2) ** 2 / 64, rel=1e-3)
    from jaxdiff.eval import metrics as M
    assert m["ssim"] == pytest.approx(float(np.mean(M.ssim(t01 + checker, t01))), rel=1e-9)
    assert m["ssim"] < 0.99
    # a constant shift is seen by the operator: consistency mse = shift^2; diversity: the extra
    # samples (K = 3: x, x, x + 0.05) -> pairs (0, 0.05, 0.05) -> 0.1 / 3
    d2 = {"x": to_model(t01 + 0.1), "truth": to_model(t01)}
    m2 = msdiff_lib.conditional_metrics(config, d2, [d2["x"], to_model(t01 + 0.15)])
    assert m2["consistency_mse"] == pytest.approx(0.01, rel=1e-5)
    assert m2["diversity"] == pytest.approx(0.1 / 3.0, rel=1e-5)
    # inpainting: only the observed pixels count (mask channel dropped), hidden pixels are free
    config.msdiff = conditional.config_section(task="inpainting", mask="center", mask_channel=True)
    mask = np.asarray(conditional.inpaint_mask(16))[None]
    d3 = {"x": to_model(np.where(mask > 0.5, t01, 0.0)), "truth": to_model(t01)}
    m3 = msdiff_lib.conditional_metrics(config, d3, lpips_fn=lambda a, b: np.full(len(a), 0.5),
                                        fid_features=lambda im: im.reshape(len(im), -1)[:, :4])
    assert m3["consistency_psnr"] == pytest.approx(120.0, rel=1e-4) and m3["psnr"] < 30
    assert m3["lpips"] == 0.5 and m3["target_fid"] >= 0.0
    # a shift of 0.1 is seen on the observed 3/4 of the pixels: mse 0.75 * 0.01
    m4 = msdiff_lib.conditional_metrics(config, {"x": to_model(t01 + 0.1), "truth": to_model(t01)})
    assert m4["consistency_mse"] == pytest.approx(0.0075, rel=1e-5)
    # the reference's random squares: the held-out masks of make_observe, hidden pixels free
    config.msdiff = conditional.config_section(task="inpainting")
    held = np.asarray(conditional.make_observe(config.msdiff, 16)(jnp.ones((3, 16, 16, 1))))
    assert np.all((held == 0).sum((1, 2, 3)) == 64)
    d5 = {"x": to_model(np.where(held > 0.5, t01, 0.9)), "truth": to_model(t01)}
    m5 = msdiff_lib.conditional_metrics(config, d5)
    assert m5["consistency_psnr"] == pytest.approx(120.0, rel=1e-4) and m5["psnr"] < 30
    m6 = msdiff_lib.conditional_metrics(config, {"x": to_model(t01 + 0.1), "truth": to_model(t01)})
    assert m6["consistency_mse"] == pytest.approx(0.0075, rel=1e-5)
