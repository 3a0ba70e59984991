"""Score networks: exact parameter counts, shapes, every config option, jit/vmap/sharding, bf16."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff.models import configs, count_params, get_classifier, get_model, init_params  # noqa: F401
from jaxdiff.scores import get_score_fn
from jaxdiff.sde import VPSDE


@pytest.mark.parametrize("name", sorted(configs.REFERENCE))
def test_reference_parameter_counts(name):
    fn, size, want = configs.REFERENCE[name]
    cfg = ml_collections.ConfigDict({"model": fn(), "data": {"image_size": size, "num_channels": 3}})
    assert count_params(get_model(cfg), (1, size, size, 3)) == want


def _tiny(**overrides):
    """A tiny DDPM++ (fir off, no progressive branches) whose options all matter;
    init_scale=1 so the output is not ~0."""
    m = configs.ddpmpp()
    m.update(dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), init_scale=1.0,
                  dropout=0.1))
    m.update(overrides)
    return ml_collections.ConfigDict({"model": m, "data": {"num_channels": 3, "centered": True}})


# Tiny networks compile faster without XLA's backend optimisations (same numbers).
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _random_params(model, shape, seed=1, y=None):
    """Params with every leaf random (no zero-init layers, so every path affects the output),
    drawn with numpy from the abstract init: no PRNG kernels to compile."""
    kw = {} if y is None else {"y": y}
    shapes = jax.eval_shape(lambda k: model.init({"params": k}, jnp.zeros(shape),
                                                 jnp.ones(shape[0]), **kw)["params"],
                            jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), jnp.float32),
                        shapes)


def _out(cfg, shape=(2, 8, 8, 3), train=False, labels=None, y=None):
    """Output of the config's network with random params (one compile per call)."""
    model = get_model(cfg)
    labels = jnp.array([0.3, 7.0]) if labels is None else labels
    kw = {} if y is None else {"y": y}
    params = _random_params(model, shape, y=y)
    x = jnp.asarray(np.random.default_rng(2).standard_normal(shape), jnp.float32)

    def run(params, x, labels, kw):
        if train:
            return model.apply({"params": params}, x, labels, train=True,
                               rngs={"dropout": jax.random.key(3)}, **kw)
        return model.apply({"params": params}, x, labels, train=False, **kw)

    return jax.jit(run, compiler_options=FAST)(params, x, labels, kw)


@pytest.mark.parametrize("arch", ["ncsnpp", "ddpmpp", "ddpm", "small_unet"])
@pytest.mark.parametrize("size,channels", [(8, 1), (16, 3), (32, 1), (64, 3)])
def test_output_shape_equals_input_shape(arch, size, channels):
    m = {"ncsnpp": configs.ncsnpp, "ddpmpp": configs.ddpmpp, "ddpm": configs.ddpm,
         "small_unet": configs.small_unet}[arch]()
    m.update(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
    if arch == "ncsnpp":
        m.update(progressive="output_skip", progressive_input="input_skip")
    cfg = ml_collections.ConfigDict({"model": m, "data": {"num_channels": channels}})
    model = get_model(cfg)
    shape = (2, size, size, channels)
    params = jax.eval_shape(lambda k: init_params(k, model, shape), jax.random.key(0))
    out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, jnp.ones(2)), params,
                         jax.ShapeDtypeStruct(shape, jnp.float32))
    assert out.shape == shape and out.dtype == jnp.float32


def test_tiny_forward_shape_and_finite():
    out = _out(_tiny(progressive="output_skip", progressive_input="input_skip"), (2, 16, 16, 3))
    assert out.shape == (2, 16, 16, 3) and bool(jnp.isfinite(out).all())


# option -> (base overrides, changed overrides); each must change the network's output
OPTIONS = {
    "nf": ({}, {"nf": 16}),
    "ch_mult": ({}, {"ch_mult": (1, 1)}),
    "num_res_blocks": ({}, {"num_res_blocks": 2}),
    "attn_resolutions": ({}, {"attn_resolutions": ()}),
    "resamp_with_conv": ({"resblock_type": "ddpm"}, {"resblock_type": "ddpm", "resamp_with_conv": False}),
    "fir": ({}, {"fir": True}),
    "fir_kernel": ({"fir": True}, {"fir": True, "fir_kernel": (1, 1)}),
    "skip_rescale": ({}, {"skip_rescale": False}),
    "resblock_type": ({}, {"resblock_type": "ddpm"}),
    "progressive": ({}, {"progressive": "output_skip"}),
    "progressive_residual": ({}, {"progressive": "residual"}),
    "progressive_input": ({}, {"progressive_input": "input_skip"}),
    "progressive_input_residual": ({}, {"progressive_input": "residual"}),
    "progressive_combine": ({"progressive_input": "input_skip"},
                            {"progressive_input": "input_skip", "progressive_combine": "cat"}),
    "embedding_type": ({}, {"embedding_type": "fourier"}),
    "conditional": ({}, {"conditional": False}),
    "nonlinearity": ({}, {"nonlinearity": "elu"}),
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_option_changes_the_output(option):
    base, changed = OPTIONS[option]
    a = _out(_tiny(**base))
    b = _out(_tiny(**changed))
    assert a.shape == b.shape
    assert float(jnp.abs(a - b).max()) > 1e-3 * float(jnp.abs(a).max())


# Options that act at initialisation only (given params they cannot change the function).
INIT_OPTIONS = {
    "fourier_scale": ({"embedding_type": "fourier"},
                      {"embedding_type": "fourier", "fourier_scale": 1.0}),
    "init_scale": ({}, {"init_scale": 0.0}),
}


def test_init_only_options_reach_the_initialisers():
    """fourier_scale sets the std of the Fourier weights W; init_scale the scale of the output
    convs and the last NIN of attention. Checked on the submodules the model builds."""
    from jaxdiff.models import layers

    for value in (16.0, 1.0):
        model = get_model(_tiny(embedding_type="fourier", fourier_scale=value, nf=512))
        assert model.fourier_scale == value
        w = layers.GaussianFourierProjection(model.nf, model.fourier_scale).init(
            jax.random.key(0), jnp.ones(2))["params"]["W"]
        assert abs(float(jnp.std(w)) / value - 1.0) < 0.1
    for value in (1.0, 0.0):
        model = get_model(_tiny(init_scale=value))
        assert model.init_scale == value
        k = layers.ddpm_conv3x3(3, init_scale=model.init_scale).init(
            jax.random.key(0), jnp.ones((1, 4, 4, 64)))["params"]["kernel"]
        assert (float(jnp.abs(k).max()) > 1e-2) == (value > 0)


@pytest.mark.slow
@pytest.mark.parametrize("option", sorted(INIT_OPTIONS))
def test_init_only_options_change_the_initial_output(option):
    base, changed = INIT_OPTIONS[option]
    outs = []
    for over in (base, changed):
        model = get_model(_tiny(**over))
        params = init_params(jax.random.key(0), model, (2, 8, 8, 3))
        outs.append(jax.jit(model.apply, compiler_options=FAST)(
            {"params": params}, jnp.ones((2, 8, 8, 3)), jnp.array([0.3, 7.0])))
    assert float(jnp.abs(outs[0] - outs[1]).max()) > 1e-3 * float(jnp.abs(outs[0]).max())


def test_dropout_option_changes_the_training_output():
    a = _out(_tiny(dropout=0.1), train=True)
    b = _out(_tiny(dropout=0.5), train=True)
    assert float(jnp.abs(a - b).max()) > 1e-3
    e1 = _out(_tiny(dropout=0.1))
    e2 = _out(_tiny(dropout=0.5))
    np.testing.assert_array_equal(e1, e2)  # no dropout at evaluation


def test_num_scales_changes_the_discrete_score():
    cfg = _tiny()
    model = get_model(cfg)
    params = _random_params(model, (2, 8, 8, 3))
    x = jnp.ones((2, 8, 8, 3))
    f1 = jax.jit(get_score_fn(VPSDE(N=cfg.model.num_scales), model, continuous=False),
                 compiler_options=FAST)
    f2 = jax.jit(get_score_fn(VPSDE(N=10), model, continuous=False), compiler_options=FAST)
    assert not np.allclose(f1(params, x, 0.5), f2(params, x, 0.5))


def test_class_conditional_and_centered():
    y = jnp.array([0, 3])
    a = _out(_tiny(num_classes=4), y=y)
    b = _out(_tiny(num_classes=4), y=jnp.array([1, 3]))
    assert float(jnp.abs(a[0] - b[0]).max()) > 1e-3
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)
    cfg = _tiny()
    cfg.data.centered = False
    assert not np.allclose(_out(cfg), _out(_tiny()))


def test_bad_config_is_named():
    cfg = _tiny()
    cfg.model.not_a_key = 1
    with pytest.raises(ValueError, match="not_a_key"):
        get_model(cfg)
    with pytest.raises(ValueError, match="'sideways'"):
        _out(_tiny(progressive="sideways"))
    with pytest.raises(ValueError, match="'gelu2'"):
        get_model(_tiny(nonlinearity="gelu2"))
    with pytest.raises(ValueError, match="divisible"):
        _out(_tiny(ch_mult=(1, 2, 2, 2)), shape=(2, 4, 4, 3))


def _sharded_check(fn, params, x, t, mesh8, plain):
    jitted = jax.jit(fn, compiler_options=FAST)(params, x, t)
    ref = fn(params, x, t) if plain else jitted
    vm = jax.jit(jax.vmap(lambda xi, ti: fn(params, xi[None], ti[None])[0]),
                 compiler_options=FAST)(x, t)
    xs = jax.device_put(x, NamedSharding(mesh8, P("data")))
    ts = jax.device_put(t, NamedSharding(mesh8, P("data")))
    sharded = jax.jit(fn, compiler_options=FAST)(params, xs, ts)
    assert len(sharded.sharding.device_set) == 8
    for other in (jitted, vm, sharded):
        np.testing.assert_allclose(other, ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(ref).max()))


def test_jit_vmap_and_sharded_batch_match_plain_call(mesh8):
    """Plain (op-by-op) call vs jit, vmap and a batch sharded over 8 devices: the MLP; the tiny
    NCSN++ against its jitted call (op-by-op would compile hundreds of kernels)."""
    rng = np.random.default_rng(2)
    t = jnp.linspace(0.1, 0.9, 8)
    mlp = get_model(ml_collections.ConfigDict({"model": configs.mlp()}))
    _sharded_check(get_score_fn(VPSDE(), mlp), _random_params(mlp, (8, 2)),
                   jnp.asarray(rng.standard_normal((8, 2)), jnp.float32), t, mesh8, plain=True)
    model = get_model(_tiny(fir=True, progressive_input="residual"))
    _sharded_check(get_score_fn(VPSDE(), model), _random_params(model, (8, 8, 8, 3)),
                   jnp.asarray(rng.standard_normal((8, 8, 8, 3)), jnp.float32), t, mesh8,
                   plain=False)


def test_bfloat16_activations_within_1e_2_of_float32():
    cfg32 = _tiny(fir=True, progressive_input="residual")
    cfg16 = _tiny(fir=True, progressive_input="residual", dtype="bfloat16")
    model32, model16 = get_model(cfg32), get_model(cfg16)
    params = _random_params(model32, (2, 8, 8, 3))
    # fan-in scaled weights give realistic (O(1)) activations through the whole network
    params = jax.tree.map(lambda a: a / np.sqrt(np.prod(a.shape[:-1])) if a.ndim > 1 else a,
                          params)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 8, 8, 3)), jnp.float32)
    labels = jnp.array([10.0, 500.0])
    a = jax.jit(model32.apply, compiler_options=FAST)({"params": params}, x, labels)
    b = jax.jit(model16.apply, compiler_options=FAST)({"params": params}, x, labels)
    assert b.dtype == jnp.float32
    assert jax.tree.leaves(params)[0].dtype == jnp.float32
    rel = float(jnp.linalg.norm(b - a) / jnp.linalg.norm(a))
    assert rel < 1e-2, rel
    assert rel > 1e-5  # bf16 really was used


def test_mlp_and_small_unet_forward():
    for name, shape in [("mlp", (3, 2)), ("small_unet", (3, 16, 16, 1))]:
        cfg = ml_collections.ConfigDict({"model": getattr(configs, name)()})
        model = get_model(cfg)
        params = _random_params(model, shape)
        out = jax.jit(model.apply, compiler_options=FAST)(
            {"params": params}, jnp.ones(shape), jnp.array([1.0, 2.0, 3.0]))
        assert out.shape == shape and bool(jnp.isfinite(out).all())


def test_noise_conditional_classifier():
    cfg = ml_collections.ConfigDict({"classifier": configs.classifier()})
    cfg.classifier.update(depth=10, widen_factor=1, num_classes=5)
    clf = get_classifier(cfg)
    params = _random_params(clf, (2, 8, 8, 3))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 8, 3)), jnp.float32)
    apply = jax.jit(clf.apply, compiler_options=FAST)
    logits = apply({"params": params}, x, jnp.array([10.0, 10.0]))
    assert logits.shape == (2, 5)
    other = apply({"params": params}, x, jnp.array([900.0, 900.0]))
    assert float(jnp.abs(logits - other).max()) > 1e-4  # conditioned on t
    g = jax.jit(jax.grad(lambda xx: jax.nn.log_softmax(
        clf.apply({"params": params}, xx, jnp.ones(2)))[:, 1].sum()), compiler_options=FAST)(x)
    assert g.shape == x.shape and float(jnp.abs(g).max()) > 0
