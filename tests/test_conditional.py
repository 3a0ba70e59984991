"""CDE, CDiffE and CMDE against the exact conditional of a Gaussian-mixture joint p(x, y)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import conditional as cond
from jaxdiff.analytic import GaussianMixture
from jaxdiff.conditional import ConditionalEstimator, joint_to_conditional
from jaxdiff.eval.distances import component_fractions, sliced_wasserstein
from jaxdiff.multispeed import MultiSpeedSDE
from jaxdiff.sde import VPSDE

Y0 = 0.3
N = 1500
STEPS = 100


def shared_t_score_fn(mix, sde):
    """Exact score when the whole batch shares one time (what the samplers pass)."""
    def score_fn(params, x, t):
        return mix.at(sde, jnp.reshape(t, (-1,))[0]).score(x).astype(x.dtype)
    return score_fn


@pytest.fixture(scope="module")
def problem():
    """Joint of x in R^2 and y in R: two components, y is informative about the component."""
    covs = jnp.stack([
        jnp.array([[0.3, 0.1, 0.2], [0.1, 0.3, 0.0], [0.2, 0.0, 0.3]]),
        jnp.array([[0.3, -0.1, 0.2], [-0.1, 0.3, 0.0], [0.2, 0.0, 0.3]])])
    joint = GaussianMixture.create([0.5, 0.5], jnp.array([[-2.0, 0.0, -1.0], [2.0, 0.0, 1.0]]), covs)
    post = joint.condition(jnp.array([[0.0, 0.0, 1.0]]), jnp.array([Y0]), 0.0).marginal([0, 1])
    kp = jax.random.PRNGKey(9)
    ref = post.sample(jax.random.PRNGKey(1), N)
    # noise floor: the distance between independent exact sample sets of the same size
    floor = float(np.mean([sliced_wasserstein(kp, ref, post.sample(jax.random.PRNGKey(i), N))
                           for i in (2, 3, 4)]))
    return joint, post, ref, floor, kp


def _sample(est, joint, post):
    base = est.x_sde
    if est.name == "cde":
        score = lambda p, x, t, y: shared_t_score_fn(post, base)(p, x, t)
    else:
        score = joint_to_conditional(shared_t_score_fn(joint, est.joint_sde(2, 1)), (2,), (1,))
    sample = est.pc_sampler(score, (N, 2), num_steps=STEPS)
    x, nfe = sample(None, jax.random.PRNGKey(0), jnp.full((N, 1), Y0))
    return x, nfe


def test_estimators_with_exact_scores(problem):
    """CDE and CMDE (slow y) sample p(x | y) at the noise floor; CDiffE is biased, and the bias
    shrinks monotonically as y's speed is lowered (the papers' claim)."""
    joint, post, ref, floor, kp = problem
    base = VPSDE()
    assert post.weights[1] == pytest.approx(0.8808, abs=1e-3)   # p(component 2 | y = 0.3)

    x, nfe = _sample(ConditionalEstimator.cde(base), joint, post)
    assert int(nfe) == STEPS
    assert float(sliced_wasserstein(kp, x, ref)) < 1.5 * floor
    np.testing.assert_allclose(component_fractions(post, x), post.weights, atol=0.025)

    # CDiffE (speed 1) and CMDE at lower speeds, in one vmapped, jitted sampler (speed is a leaf)
    speeds = jnp.array([1.0, 0.5, 0.25, 0.1, 0.05])

    def run(speed):
        est = ConditionalEstimator(base, MultiSpeedSDE(base, speed, base.N), "cmde")
        return _sample(est, joint, post)[0]

    xs = jax.jit(jax.vmap(run))(speeds)
    sw = [float(sliced_wasserstein(kp, x, ref)) for x in xs]
    minority = [float(component_fractions(post, x)[0]) for x in xs]
    bias = dict(zip(speeds.tolist(), zip(sw, minority)))
    assert all(a > b for a, b in zip(sw, sw[1:])), bias
    assert all(a > b for a, b in zip(minority, minority[1:])), bias
    assert sw[0] > 6 * floor, (bias, floor)                  # CDiffE: far off
    assert minority[0] > 0.35                                 # ... near the prior weights 0.5
    assert sw[-1] < 2.0 * floor, (bias, floor)               # CMDE at speed 0.05: at the floor
    assert abs(minority[-1] - float(post.weights[0])) < 0.025


def test_losses_are_minimised_by_their_own_targets(problem):
    """Each estimator's DSM loss is lower at its own exact target than at another's: the loss
    diffuses y exactly as the estimator says (none, same speed, slower)."""
    joint, _, _, _, _ = problem
    base = VPSDE()
    ests = {"cdiffe": ConditionalEstimator.cdiffe(base),
            "cmde": ConditionalEstimator.cmde(base, 0.2)}
    # per-example times: the exact mixture score with one perturbation per example
    targets = {k: joint_to_conditional(joint.score_fn(e.joint_sde(2, 1)), (2,), (1,))
               for k, e in ests.items()}
    data = joint.sample(jax.random.PRNGKey(5), 20000)
    batch = {"x": data[:, :2], "y": data[:, 2:]}
    key = jax.random.PRNGKey(7)
    for own, other in [("cdiffe", "cmde"), ("cmde", "cdiffe")]:
        l_own = float(ests[own].loss(targets[own])(None, key, batch)[0])
        l_other = float(ests[own].loss(targets[other])(None, key, batch)[0])
        assert l_own < l_other - 0.01, (own, l_own, l_other)


def test_loss_aux_and_batch_forms():
    base = VPSDE()
    est = ConditionalEstimator.cde(base)
    x = jnp.ones((4, 2))
    y = jnp.zeros((4, 1))
    score = lambda p, x, t, y: -x * p
    a = est.loss(score)(1.0, jax.random.PRNGKey(0), (x, y))
    b = est.loss(score)(1.0, jax.random.PRNGKey(0), {"x": x, "y": y})
    np.testing.assert_allclose(a[0], b[0])
    assert a[1]["losses"].shape == (4,) and a[1]["t"].shape == (4,)
    with pytest.raises(ValueError, match="same B"):
        est.loss(score)(1.0, jax.random.PRNGKey(0), (x, y[:3]))
    with pytest.raises(ValueError, match="'x' and 'y'"):
        est.loss(score)(1.0, jax.random.PRNGKey(0), {"x": x})


def test_diffuse_y_moments():
    base = VPSDE()
    y = jnp.full((40000, 1), 2.0)
    t = 0.6
    assert ConditionalEstimator.cde(base).diffuse_y(jax.random.PRNGKey(0), y, t) is y
    for est, tau in [(ConditionalEstimator.cdiffe(base), 0.6),
                     (ConditionalEstimator.cmde(base, 0.25), 0.15)]:
        yt = est.diffuse_y(jax.random.PRNGKey(0), y, t)
        lmc = -0.25 * tau**2 * 19.9 - 0.5 * tau * 0.1
        assert float(yt.mean()) == pytest.approx(2.0 * np.exp(lmc), abs=0.015)
        assert float(yt.std()) == pytest.approx(np.sqrt(1 - np.exp(2 * lmc)), rel=0.02)


def test_observations_and_concat_plumbing():
    ramp = jnp.broadcast_to(jnp.arange(8.0)[None, None, :, None], (2, 8, 8, 1))
    e = cond.observe("edges", ramp)
    np.testing.assert_allclose(e[:, 1:-1, 1:-1, 0], 8.0, rtol=1e-5)    # Sobel of slope 1 is 8
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
    # ours (options): average pooling kept at low resolution, centre mask + mask channel
    lo = cond.observe("super_resolution", x, factor=4, sr_downsample="average", sr_y="low")
    np.testing.assert_allclose(lo[0, 1, 0, 0], x[0, 4:8, 0:4, 0].mean(), rtol=1e-5)
    inp = cond.observe("inpainting", x, mask=cond.inpaint_mask(8), mask_channel=True)
    assert inp.shape == (2, 8, 8, 2) and float(inp[..., 1].mean()) == 0.75
    np.testing.assert_allclose(inp[0, 0, 0, 0], x[0, 0, 0, 0])
    assert float(inp[0, 4, 4, 0]) == 0.0
    assert cond.condition_channels("inpainting", 3, mask_channel=True) == 4
    assert cond.condition_channels("inpainting", 3) == 3
    # a "network" that swaps the channels: the x-score is then the (upsampled) y channel.
    swap = lambda p, z, t: z[..., ::-1]
    s = cond.concat_conditional(swap, 1)(None, x, 0.5, lo)
    np.testing.assert_allclose(s, cond.upsample(lo, (8, 8)))
    with pytest.raises(ValueError, match="unknown conditional task"):
        cond.observe("colour", x)
    with pytest.raises(ValueError, match="factor 3"):
        cond.downsample(x, 3)
    with pytest.raises(ValueError, match="key="):
        cond.observe("inpainting", x)
    for key, bad in [("sr_y", "x"), ("sr_downsample", "area"), ("mask", "square"),
                     ("mask_coverage", 1.5)]:
        sec = cond.config_section()
        sec[key] = bad
        with pytest.raises(ValueError, match=f"config.msdiff.{key}"):
            cond.validate_section(sec)


# PyTorch's bicubic weights (a = -0.75, align_corners=False): downsampling by 2 samples at half
# pixels, upsampling by 2 at quarter pixels (torch.nn.functional.interpolate(mode='bicubic'))
TORCH_DOWN2 = [-0.09375, 0.59375, 0.59375, -0.09375]
TORCH_UP2 = [-0.03515625, 0.26171875, 0.87890625, -0.10546875]


def test_bicubic_resize_is_pytorchs():
    """The reference's bicubic (torchvision Resize(BICUBIC) on tensors = torch interpolate):
    the interior weights are PyTorch's, borders clamp, constants are kept and an upsampled ramp
    stays a ramp; equal to torch itself where torch is installed."""
    down = cond._resize_matrix(16, 8, "bicubic")
    np.testing.assert_allclose(down[3, 5:9], TORCH_DOWN2, rtol=0, atol=1e-15)
    np.testing.assert_allclose(down[0, :3], [0.5, 0.59375, -0.09375], atol=1e-15)  # index -1 -> 0
    up = cond._resize_matrix(8, 16, "bicubic")
    np.testing.assert_allclose(up[4, 0:4], TORCH_UP2, atol=1e-15)   # src 1.75: taps 0..3
    np.testing.assert_allclose(up.sum(1), 1.0, atol=1e-14)
    ramp = jnp.broadcast_to(jnp.arange(8.0)[None, :, None, None], (1, 8, 8, 1))
    big = cond.resize(ramp, (16, 16))
    # interior: a = -0.75 does not keep a ramp (a = -0.5 would): at source offset 3/4 PyTorch
    # gives f + 0.703125 instead of f + 0.75, at 1/4 f + 0.296875
    i = np.arange(4, 12)
    src = (i + 0.5) / 2 - 0.5                      # 1.75, 2.25, ...: offsets 3/4, 1/4, ...
    np.testing.assert_allclose(np.asarray(big[0, 4:12, 3, 0]), src + 0.046875 * (-1.0) ** (i + 1),
                               atol=1e-5)
    np.testing.assert_allclose(cond.resize(jnp.full((1, 6, 6, 2), 0.3), (3, 3)), 0.3, atol=1e-6)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3))
    np.testing.assert_allclose(cond.downsample(x, 2, "bicubic"), cond.resize(x, (8, 8)))
    near = cond.resize(x[:, ::2, ::2], (16, 16), "nearest")
    np.testing.assert_array_equal(near, cond.upsample(x[:, ::2, ::2], (16, 16)))


def test_bicubic_resize_equals_torch():
    torch = pytest.importorskip("torch")
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3))
    for size in [(8, 8), (32, 32), (5, 11)]:
        ref = torch.nn.functional.interpolate(torch.tensor(np.asarray(x)).permute(0, 3, 1, 2),
                                              size=size, mode="bicubic", align_corners=False)
        np.testing.assert_allclose(cond.resize(x, size), ref.permute(0, 2, 3, 1).numpy(),
                                   atol=2e-6)


def test_reference_task_constructions():
    """Super-resolution: y = bicubic low-res nearest-upsampled to full resolution (or
    bicubic-upsampled); inpainting: one square of 25 % of the area per image at a uniformly
    random position, hidden pixels 0, no mask channel; masks per image index, fresh per key."""
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 16, 16, 1), minval=0.1, maxval=1.0)
    y = cond.observe("super_resolution", x)
    low = cond.downsample(x, 2, "bicubic")
    assert y.shape == x.shape
    np.testing.assert_array_equal(y[:, ::2, ::2], low)
    np.testing.assert_array_equal(y[:, 1::2, 1::2], low)
    yb = cond.observe("super_resolution", x, sr_y="bicubic")
    np.testing.assert_allclose(yb, cond.resize(low, (16, 16)), atol=1e-6)
    assert float(jnp.abs(yb - y).max()) > 0.01
    np.testing.assert_allclose(cond.observation_operator("super_resolution", x), low)
    # random squares: side int(sqrt(0.25 * 256)) = 8; start uniform on {0, ..., 8} per axis
    n = 9000
    m = np.asarray(cond.random_square_mask(jax.random.PRNGKey(1), n, 16))
    hidden = 1.0 - m[..., 0]
    assert np.all(hidden.sum((1, 2)) == 64)
    rows, cols = hidden.any(2), hidden.any(1)
    assert np.all(rows.sum(1) == 8) and np.all(cols.sum(1) == 8)      # one 8 x 8 square
    for start in (rows.argmax(1), cols.argmax(1)):
        freq = np.bincount(start, minlength=9) / n
        assert freq.shape == (9,)
        np.testing.assert_allclose(freq, 1 / 9, atol=4 * np.sqrt((1 / 9) * (8 / 9) / n))
    assert abs(np.corrcoef(rows.argmax(1), cols.argmax(1))[0, 1]) < 4 / np.sqrt(n)
    few = np.asarray(cond.random_square_mask(jax.random.PRNGKey(1), 4, 16))
    np.testing.assert_array_equal(few, m[:4])                            # per image index
    other = np.asarray(cond.random_square_mask(jax.random.PRNGKey(2), 4, 16))
    assert np.any(other != few)
    y = cond.observe("inpainting", x, key=jax.random.PRNGKey(1))
    assert y.shape == x.shape
    np.testing.assert_allclose(y, x * m[:3])
    # a section: fixed held-out masks (key None), the operator uses the same masks
    sec = cond.config_section(task="inpainting")
    obs, op = cond.make_observe(sec, 16), cond.make_operator(sec, 16)
    np.testing.assert_array_equal(obs(x), obs(x))
    np.testing.assert_array_equal(op(x), obs(x))
    assert np.any(np.asarray(obs(x)) != np.asarray(obs(x, jax.random.PRNGKey(5))))
    assert cond.random_observation(sec) and not cond.random_observation(cond.config_section())


def test_loss_draws_a_fresh_mask_per_key():
    """With random masks the training loss observes the batch with a key split off its own key:
    it equals the estimator's loss on that observation, and not on another mask."""
    sec = cond.config_section(task="inpainting", estimator="cdiffe")
    sde = VPSDE()
    # a "network" whose output depends on y (the second channel): the loss sees the mask
    net = lambda p, z, t: jnp.concatenate([z[..., 1:] * p, z[..., :1]], -1)
    loss_fn, est, _ = cond.get_conditional_loss(sec, sde, net, image_size=8, channels=1)
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1), minval=0.2, maxval=1.0)
    key = jax.random.PRNGKey(3)
    k_loss, k_obs = jax.random.split(key)
    inner = est.loss(cond.concat_conditional(net, 1, joint=True), target="joint")
    want = inner(2.0, k_loss, (x, cond.observe("inpainting", x, key=k_obs)))[0]
    wrong = inner(2.0, k_loss, (x, cond.observe("inpainting", x, key=key)))[0]
    got = loss_fn(2.0, key, x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert abs(float(wrong) - float(want)) > 1e-3 * float(want)


def test_fresh_y_path_feeds_independent_diffused_y():
    """y_path='fresh' (the reference's): the score sees y_t ~ p_t(y_t | y) at the step's own t,
    a new draw for the corrector and for the predictor (recorded: moments of every call at 4
    standard errors, corrector-predictor correlation ~ 0); 'per_step' shares one draw."""
    est = ConditionalEstimator.cdiffe(VPSDE())
    n, steps = 4000, 3
    calls = []

    def record(t, y):
        calls.append((float(np.asarray(t).reshape(-1)[0]), np.asarray(y)[:, 0].copy()))

    def score(p, x, t, y):
        jax.debug.callback(record, t, y, ordered=True)
        return -x

    y0 = jnp.full((n, 1), 1.5)
    for y_path in ("fresh", "per_step"):
        calls.clear()
        est.pc_sampler(score, (n, 1), num_steps=steps, predictor="reverse_diffusion",
                       corrector="langevin", y_path=y_path)(None, jax.random.PRNGKey(0), y0)
        jax.effects_barrier()
        assert len(calls) == 2 * steps
        ts = np.linspace(1.0, 1e-3, steps)
        for i in range(steps):
            (tc, yc), (tp, yp) = calls[2 * i], calls[2 * i + 1]   # corrector first, then predictor
            assert tc == tp == pytest.approx(ts[i], rel=1e-6)
            mean, std = (float(np.asarray(v).reshape(-1)[0])
                         for v in est.y_sde.marginal_prob(jnp.ones((1, 1)), jnp.asarray([ts[i]])))
            for yy in (yc, yp):
                assert abs(yy.mean() - 1.5 * mean) < 4 * std / np.sqrt(n)
                assert yy.std() == pytest.approx(std, rel=4 * np.sqrt(0.5 / n))
            corr = np.corrcoef(yc, yp)[0, 1]
            if y_path == "fresh":
                assert abs(corr) < 4 / np.sqrt(n)
            else:
                np.testing.assert_array_equal(yc, yp)


def test_estimator_errors():
    with pytest.raises(ValueError, match="y_speed"):
        ConditionalEstimator.cmde(VPSDE(), 1.5)
    with pytest.raises(ValueError, match="y_speed"):
        cond.get_estimator("cmde", VPSDE())
    with pytest.raises(ValueError, match="unknown conditional estimator"):
        cond.get_estimator("cfg", VPSDE())
    est = ConditionalEstimator.cde(VPSDE())
    sample = est.pc_sampler(lambda p, x, t, y: -x, (4, 2), num_steps=3)
    with pytest.raises(ValueError, match="one y per sample"):
        sample(None, jax.random.PRNGKey(0), jnp.zeros((3, 1)))


def _load_config(name, arg=None):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config() if arg is None else mod.get_config(arg)


@pytest.mark.parametrize("name, arg", [
    ("msdiff_conditional", f"dataset={d},task={t}") for d in ("digits", "celeba")
    for t in ("sr", "inpaint", "edges")] + [
    ("msdiff_multiscale", f"size={s}") for s in (32, 64, 128)])
def test_configs_validate(name, arg):
    """Every msdiff config is a valid training config plus its ``msdiff`` section."""
    from jaxdiff import models
    from jaxdiff.train.config import validate_config
    config = _load_config(name, arg)
    sec = config.msdiff
    core = config.copy_and_resolve_references()
    del core["msdiff"]
    validate_config(core)
    models.get_model(core)
    if sec.mode == "conditional":
        cond.validate_section(sec)
        for est in cond.ESTIMATORS:
            assert _load_config(name, f"{arg},estimator={est}").msdiff.estimator == est
    else:
        from jaxdiff import multiscale
        ms = multiscale.from_config(sec, VPSDE(), core.data.image_size, core.data.num_channels)
        assert ms.levels == len(sec.end_times)
    with pytest.raises(ValueError, match="estimator"):
        cond.config_section(estimator="cfg")


@pytest.mark.slow
def test_digits_sr_training_loss_runs_on_the_network():
    """The plumbing a training loop needs: network with x+y channels, loss over image batches,
    gradients finite; the conditional sampler runs on the same network."""
    from jaxdiff import models, scores
    config = _load_config("msdiff_conditional", "dataset=digits,task=sr,estimator=cmde")
    sec = config.msdiff
    size, ch = config.data.image_size, config.data.num_channels
    core = config.copy_and_resolve_references()
    del core["msdiff"]
    core.model.nf = 8
    core.data.num_channels = ch + cond.section_condition_channels(sec, ch)
    model = models.get_model(core)
    params = models.init_params(jax.random.PRNGKey(0), model, (1, size, size, core.data.num_channels))
    sde = VPSDE()
    loss_fn, est, cond_score = cond.get_conditional_loss(
        sec, sde, scores.get_score_fn(sde, model), image_size=size, channels=ch)
    images = jax.random.uniform(jax.random.PRNGKey(1), (2, size, size, ch), minval=-1, maxval=1)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, jax.random.PRNGKey(2),
                                                                   images)
    assert np.isfinite(float(loss)) and aux["losses"].shape == (2,)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    y = cond.make_observe(sec, size)(images)
    assert y.shape == (2, 16, 16, 1)      # the reference's y: at full resolution
    x, nfe = est.pc_sampler(cond_score, (2, size, size, ch), num_steps=3)(params, jax.random.PRNGKey(3), y)
    assert x.shape == images.shape and int(nfe) == 3


# ---- issue 13: the joint (x, y) loss, VS-CMDE, the y paths of the sampler ------------------------
def _gaussian_joint():
    """One correlated Gaussian over (x in R^2, y in R): its perturbed joint score is exact."""
    cov = jnp.array([[0.5, 0.2, 0.3], [0.2, 0.4, -0.1], [0.3, -0.1, 0.6]])
    return GaussianMixture.create([1.0], jnp.array([[0.5, -0.3, 0.2]]), cov[None]), cov


def _expected_loss(est, cov, *, target, likelihood, eps, n_quad=400):
    """E_{t ~ U(eps, T), x_t, y_t}[per-example loss] at the exact joint score, in closed form:
    at time t, E|s_i + z_i / sigma_i|^2 = 1 / sigma_i^2 - (Sigma_t^{-1})_ii for the exact score
    (Sigma_t = A Sigma A + diag(sigma^2)), times w_i = g_i^2 (likelihood weighting) or
    sigma_i^2; mean over the trained coordinates (x only, or x and y); t by Gauss-Legendre."""
    sde = est.joint_sde(2, 1)
    nodes, wts = np.polynomial.legendre.leggauss(n_quad)
    T = sde.T
    ts = 0.5 * (T - eps) * nodes + 0.5 * (T + eps)
    ones = jnp.ones((len(ts), 3))
    alpha, sigma = (np.asarray(v) for v in sde.marginal_prob(ones, jnp.asarray(ts)))
    g = np.asarray(sde.sde(jnp.zeros((len(ts), 3)), jnp.asarray(ts))[1])
    c = np.asarray(cov)
    vals = []
    for a, s, gg in zip(alpha, sigma, g):
        st = np.diag(a) @ c @ np.diag(a) + np.diag(s**2)
        per = 1.0 / s**2 - np.diag(np.linalg.inv(st))
        per = per * (gg**2 if likelihood else s**2)
        vals.append(per[:2].mean() if target == "x" else per.mean())
    return 0.5 * float(np.dot(wts, vals))   # (T - eps) / 2 * sum / (T - eps)


@pytest.mark.parametrize("likelihood", [True, False])
def test_joint_and_x_losses_match_closed_form(x64, likelihood):
    """At the exact perturbed joint score of a Gaussian (x, y), the Monte-Carlo joint loss (x- and
    y-parts, each with its own g^2) and the x-only loss equal their closed forms within 4 standard
    errors, for CDiffE and CMDE under a VE x SDE (the reference's)."""
    from jaxdiff.sde import VESDE
    if True:
        joint, cov = _gaussian_joint()
        base = VESDE(0.01, 3.0)
        data = joint.sample(jax.random.PRNGKey(5), 10000).astype(jnp.float64)
        batch = {"x": data[:, :2], "y": data[:, 2:]}
        for est in (ConditionalEstimator.cdiffe(base), ConditionalEstimator.cmde(base, 0.4)):
            exact = joint.score_fn(est.joint_sde(2, 1))
            for target in ("joint", "x"):
                score = joint_to_conditional(exact, (2,), (1,), joint=target == "joint")
                loss_fn = est.loss(score, likelihood_weighting=likelihood, target=target,
                                   eps=1e-3)
                loss, aux = loss_fn(None, jax.random.PRNGKey(7), batch)
                se = float(np.std(aux["losses"]) / np.sqrt(aux["losses"].shape[0]))
                want = _expected_loss(est, cov, target=target, likelihood=likelihood, eps=1e-3)
                assert abs(float(loss) - want) < 4 * se, (est.name, target, float(loss), want, se)


def test_joint_loss_errors_and_y_part_matters():
    base = VPSDE()
    x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
    only_x = lambda p, x, t, y: -x
    pair = lambda p, x, t, y: (-x, -y)
    with pytest.raises(ValueError, match="CDE does not diffuse y"):
        ConditionalEstimator.cde(base).loss(only_x, target="joint")
    with pytest.raises(ValueError, match="loss target"):
        ConditionalEstimator.cdiffe(base).loss(only_x, target="xy")
    est = ConditionalEstimator.cdiffe(base)
    with pytest.raises(ValueError, match=r"\(s_x, s_y\)"):
        est.loss(only_x, target="joint")(None, jax.random.PRNGKey(0), (x, y))
    with pytest.raises(ValueError, match="x-score only"):
        est.loss(pair, target="x")(None, jax.random.PRNGKey(0), (x, y))
    # the joint loss sees the y-part, the x loss does not
    k = jax.random.PRNGKey(1)
    a = est.loss(pair, target="joint")(None, k, (x, y))[0]
    b = est.loss(lambda p, x, t, y: (-x, 0.0 * y), target="joint")(None, k, (x, y))[0]
    c = est.loss(only_x, target="x")(None, k, (x, y))[0]
    assert float(a) != float(b) and np.isfinite(float(c))


def test_vs_cmde_schedule_and_train_step():
    """VS-CMDE: sigma_max_y decays by the reference's inverse-multiplicative rule from sigma(T) of
    x (CDiffE) to the CMDE target; its loss at step 0 is CDiffE's, at the last step CMDE's; the
    train step passes the step to such a loss."""
    from jaxdiff.multispeed import sigma_y_max, speed_for_sigma_max
    from jaxdiff.sde import VESDE
    base = VESDE(5e-3, 16.0)
    speed = float(speed_for_sigma_max(base, 0.5))
    assert speed == pytest.approx(np.log(0.5 / 5e-3) / np.log(16.0 / 5e-3), rel=1e-6)
    assert float(sigma_y_max(base, speed)) == pytest.approx(0.5, rel=1e-6)
    est = cond.get_estimator("vs_cmde", base, y_speed=speed, reach_target_steps=100)
    f = lambda k: 100 * 0.5 * 16.0 / (k * (16.0 - 0.5) + 100 * 0.5)   # callbacks.get_reduction_fn
    for k in (0, 1, 37, 100):
        assert float(est.sigma_max_y_at(k)) == pytest.approx(f(k), rel=1e-5)
    assert float(est.sigma_max_y_at(500)) == pytest.approx(0.5, rel=1e-5)   # held after K
    assert float(est.at_step(0).y_speed) == pytest.approx(1.0, abs=1e-6)
    assert float(est.at_step(100).y_speed) == pytest.approx(speed, rel=1e-6)
    x, y = jax.random.normal(jax.random.PRNGKey(0), (8, 2)), jax.random.normal(jax.random.PRNGKey(1), (8, 1))
    pair = lambda p, x, t, y: (-x * p, -y * p)
    kw = dict(target="joint", likelihood_weighting=True)
    loss = est.loss(pair, **kw)
    assert loss.takes_step and not ConditionalEstimator.cmde(base, speed).loss(pair, **kw).takes_step
    k = jax.random.PRNGKey(3)
    at = lambda step: float(jax.jit(loss)(1.0, k, (x, y), step=step)[0])
    cdiffe = float(ConditionalEstimator.cdiffe(base).loss(pair, **kw)(1.0, k, (x, y))[0])
    cmde = float(ConditionalEstimator.cmde(base, speed).loss(pair, **kw)(1.0, k, (x, y))[0])
    assert at(0) == pytest.approx(cdiffe, rel=1e-5) and at(100) == pytest.approx(cmde, rel=1e-5)
    assert float(loss(1.0, k, (x, y))[0]) == pytest.approx(cmde, rel=1e-5)   # no step: target
    assert abs(at(50) - cmde) > 1e-3 * abs(cmde)
    # the train step hands state.step to a loss with takes_step
    import optax

    from jaxdiff.train.state import TrainState
    from jaxdiff.train.step import make_train_step

    def step_loss(params, key, batch, step=None):
        return params["w"] * jnp.asarray(step, jnp.float32), {}
    step_loss.takes_step = True
    opt = optax.sgd(1.0)
    p = {"w": jnp.asarray(0.0)}
    st = TrainState(step=jnp.asarray(7), params=p, ema_params=p, opt_state=opt.init(p),
                    rng=jax.random.PRNGKey(0))
    new, _ = make_train_step(step_loss, opt, ema_rate=0.9)(st, jnp.zeros((1, 2)))
    assert float(new.params["w"]) == pytest.approx(-7.0)   # gradient = step


def test_backward_y_bridge():
    """The backward kernel p(y_t | y_0, y_{t+tau}): the reference's VE formula, and for a VP
    multi-speed y (our generalisation) it maps p_{t+tau}(. | y_0) to p_t(. | y_0)."""
    from jaxdiff.sde import VESDE
    n = 200000
    ve = ConditionalEstimator.cdiffe(VESDE(0.01, 5.0))
    y0 = jnp.full((n, 1), 0.7)
    y_next = jnp.full((n, 1), -1.3)
    t, t2 = jnp.full((n,), 0.4), jnp.full((n,), 0.45)
    yt = ve.backward_y(jax.random.PRNGKey(0), y0, y_next, t, t2)
    s2t, s2n = (0.01 * 500.0**0.4) ** 2, (0.01 * 500.0**0.45) ** 2      # sde_lib.compute_backward_kernel
    mean = 0.7 * (s2n - s2t) / s2n + -1.3 * s2t / s2n
    std = np.sqrt(s2t * (s2n - s2t) / s2n)
    assert abs(float(yt.mean()) - mean) < 4 * std / np.sqrt(n)
    assert float(yt.std()) == pytest.approx(std, rel=4 * np.sqrt(0.5 / n))
    vp = ConditionalEstimator.cmde(VPSDE(), 0.5)
    y_next = vp.diffuse_y(jax.random.PRNGKey(1), y0, t2)
    yt = vp.backward_y(jax.random.PRNGKey(2), y0, y_next, t, t2)
    m, s = vp.y_sde.marginal_prob(y0[:1], t[:1])
    m, s = float(m[0, 0]), float(s[0, 0])
    assert abs(float(yt.mean()) - m) < 4 * s / np.sqrt(n)
    assert float(yt.std()) == pytest.approx(s, rel=4 * np.sqrt(0.5 / n))
    assert ConditionalEstimator.cde(VPSDE()).backward_y(None, y0, y_next, t, t2) is y0


@pytest.mark.parametrize("y_path", ["fresh", "backward"])
def test_y_paths_sample_the_posterior_with_slow_y(problem, y_path):
    """CMDE at speed 0.05 with the exact joint score and a Langevin corrector samples p(x | y) at
    the noise floor with the reference's fresh y_t (before corrector and predictor) and with its
    backward-kernel y path; CDiffE with the clean y instead of y_t would be another estimator
    (checked: the sampler's CDE with the joint score is far off)."""
    joint, post, ref, floor, kp = problem
    base = VPSDE()
    est = ConditionalEstimator.cmde(base, 0.05)
    score = joint_to_conditional(shared_t_score_fn(joint, est.joint_sde(2, 1)), (2,), (1,))
    sample = est.pc_sampler(score, (N, 2), num_steps=STEPS, predictor="reverse_diffusion",
                            corrector="langevin", snr=0.05, y_path=y_path)
    x, nfe = sample(None, jax.random.PRNGKey(0), jnp.full((N, 1), Y0))
    assert int(nfe) == 2 * STEPS
    assert float(sliced_wasserstein(kp, x, ref)) < 2.0 * floor
    with pytest.raises(ValueError, match="y_path"):
        est.pc_sampler(score, (N, 2), y_path="clean")
