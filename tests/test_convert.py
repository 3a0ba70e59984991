"""score_sde_pytorch -> jaxdiff converter on the nine reference state-dict layouts."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxdiff.convert import config_from_reference, convert_state_dict
from jaxdiff.convert.score_sde_pytorch import _requires_grad_keys, apply_ema
from jaxdiff.models import get_model

REF_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference",
                       "score_sde_pytorch_state_dicts")
REF_DIR = os.environ.get("JAXDIFF_SD_REFERENCE", REF_DIR)
if not os.path.isdir(REF_DIR):
    REF_DIR = "/work/shared/reference/score_sde_pytorch_state_dicts"
FILES = sorted(glob.glob(os.path.join(REF_DIR, "*.json")))


def _sigmas(m):
    return np.exp(np.linspace(np.log(m.sigma_max), np.log(m.sigma_min), m.num_scales))


def _tagged_state_dict(ref):
    """Every tensor filled with its own id (a broadcast view: no memory), ``sigmas`` real."""
    sd = {}
    for i, (k, shape) in enumerate(ref["state_dict"]):
        sd["module." + k] = np.broadcast_to(np.float32(i + 1), tuple(shape))
    return sd


@pytest.mark.skipif(not FILES, reason="reference state-dict listings not found")
@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f)[:-5] for f in FILES])
def test_every_key_consumed_every_param_filled(path):
    with open(path) as f:
        ref = json.load(f)
    cfg = config_from_reference(ref)
    model = get_model(cfg)
    s, c = cfg.data.image_size, cfg.data.num_channels
    sd = _tagged_state_dict(ref)
    sd["module.sigmas"] = _sigmas(cfg.model).astype(np.float32)
    params = convert_state_dict(sd, model, (1, s, s, c), model_config=cfg.model)
    leaves = jax.tree.leaves(params)
    assert sum(int(np.size(x)) for x in leaves) == ref["num_parameters"]
    # each checkpoint tensor lands in exactly one param: the ids are all there, once each
    ids = sorted(int(np.ravel(x)[0]) for x in leaves)
    assert all(np.min(x) == np.max(x) for x in leaves)
    assert ids == [i + 1 for i, (k, _) in enumerate(ref["state_dict"]) if k != "sigmas"]


def _nchw_conv(x, w, pad):
    """PyTorch ``F.conv2d`` (cross-correlation, OIHW) by its definition."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    O, I, kh, kw = w.shape
    H, W = x.shape[2] + 2 * pad - kh + 1, x.shape[3] + 2 * pad - kw + 1
    out = np.zeros((x.shape[0], O, H, W), np.float32)
    for i in range(H):
        for j in range(W):
            out[:, :, i, j] = np.einsum("ncab,ocab->no", xp[:, :, i:i + kh, j:j + kw], w)
    return out


@pytest.mark.skipif(not FILES, reason="reference state-dict listings not found")
def test_converted_layers_compute_what_pytorch_computes():
    """Random tensors for the DDPM++ checkpoint; the first conv, the time MLP and a GroupNorm of
    the converted params reproduce PyTorch's NCHW / (out, in) semantics."""
    path = [f for f in FILES if "vp_cifar10_ddpmpp_continuous" in f][0]
    with open(path) as f:
        ref = json.load(f)
    cfg = config_from_reference(ref)
    model = get_model(cfg)
    rng = np.random.default_rng(0)
    sd = _tagged_state_dict(ref)
    for k in ["all_modules.0.weight", "all_modules.0.bias", "all_modules.2.weight",
              "all_modules.2.bias", "all_modules.3.GroupNorm_0.weight",
              "all_modules.3.Conv_0.weight"]:
        sd["module." + k] = rng.standard_normal(dict(ref["state_dict"])[k]).astype(np.float32)
    sd["module.sigmas"] = _sigmas(cfg.model).astype(np.float32)
    params = convert_state_dict(sd, model, (1, 32, 32, 3), model_config=cfg.model)
    g = lambda k: sd["module." + k]  # noqa: E731
    # Linear: y = x W^T + b
    x = rng.standard_normal((2, 128)).astype(np.float32)
    y = x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
    np.testing.assert_allclose(y, x @ g("all_modules.0.weight").T + g("all_modules.0.bias"),
                               rtol=1e-5, atol=1e-5)
    # 3x3 conv (non-symmetric random kernel: catches an H/W swap or a flip)
    img = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    want = _nchw_conv(img, g("all_modules.2.weight"), 1) + g("all_modules.2.bias")[None, :, None, None]
    got = lax.conv_general_dilated(jnp.asarray(img.transpose(0, 2, 3, 1)),
                                   jnp.asarray(params["Conv_0"]["kernel"]), (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = np.asarray(got) + params["Conv_0"]["bias"]
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, rtol=1e-4, atol=1e-4)
    blk = params["ResnetBlockBigGANpp_0"]
    np.testing.assert_array_equal(blk["GroupNorm_0"]["scale"], g("all_modules.3.GroupNorm_0.weight"))
    np.testing.assert_array_equal(blk["Conv_0"]["kernel"][0, 2, 5, 7],
                                  g("all_modules.3.Conv_0.weight")[7, 5, 0, 2])
    # the converted net runs
    out = jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((1, 32, 32, 3)),
                                               jnp.ones(1)), params)
    assert out.shape == (1, 32, 32, 3)


def test_missing_keys_wrong_sigmas_and_unknown_keys_are_named():
    path = [f for f in FILES if "vp_ddpm_cifar10" in f]
    if not path:
        pytest.skip("reference listing not found")
    with open(path[0]) as f:
        ref = json.load(f)
    cfg = config_from_reference(ref)
    model = get_model(cfg)
    sd = _tagged_state_dict(ref)
    sd["module.sigmas"] = _sigmas(cfg.model)
    broken = dict(sd)
    del broken["module.all_modules.3.Conv_1.bias"]
    with pytest.raises(ValueError, match="ResnetBlockDDPM_0/Conv_1/bias"):
        convert_state_dict(broken, model, (1, 32, 32, 3), model_config=cfg.model)
    sd["module.sigmas"] = _sigmas(cfg.model)[::-1].copy()
    with pytest.raises(ValueError, match="sigmas"):
        convert_state_dict(sd, model, (1, 32, 32, 3), model_config=cfg.model)
    sd["module.sigmas"] = _sigmas(cfg.model)
    sd["module.extra_buffer"] = np.zeros(3)
    with pytest.raises(ValueError, match="extra_buffer"):
        convert_state_dict(sd, model, (1, 32, 32, 3), model_config=cfg.model)


def test_ema_shadow_params_skip_buffers_and_fixed_fourier_weights():
    sd = {"module.sigmas": np.zeros(4), "module.all_modules.0.W": np.zeros(8),
          "module.all_modules.1.weight": np.zeros((2, 3)), "module.all_modules.1.bias": np.zeros(2),
          "module.all_modules.5.NIN_0.W": np.zeros((3, 3))}
    assert _requires_grad_keys(sd) == ["module.all_modules.1.weight", "module.all_modules.1.bias",
                                       "module.all_modules.5.NIN_0.W"]
    out = apply_ema(sd, [np.ones((2, 3)), np.full(2, 2.0), np.full((3, 3), 3.0)])
    np.testing.assert_array_equal(out["module.all_modules.0.W"], 0.0)
    np.testing.assert_array_equal(out["module.all_modules.1.bias"], 2.0)
    np.testing.assert_array_equal(out["module.all_modules.5.NIN_0.W"], 3.0)
    with pytest.raises(ValueError, match="EMA has 2"):
        apply_ema(sd, [np.ones((2, 3)), np.ones(2)])
