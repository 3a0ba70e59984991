"""FIR up/down-sampling in plain JAX: constants, ramps (closed forms), the fused convolutions
against their unfused definitions and against a direct implementation of the PyTorch ops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxdiff.models import up_or_down_sampling as uds

K = (1, 3, 3, 1)


def _ramp(n, axis, c=2):
    r = jnp.arange(n, dtype=jnp.float32)
    x = r[:, None] * jnp.ones((1, n)) if axis == 1 else jnp.ones((n, 1)) * r[None, :]
    return jnp.broadcast_to(x[None, :, :, None], (2, n, n, c))


@pytest.mark.parametrize("fn,factor", [(uds.upsample_2d, 2), (uds.downsample_2d, 0.5)])
def test_constant_image_stays_constant(fn, factor):
    x = jnp.full((2, 8, 8, 3), 1.7)
    y = fn(x, K)
    n = int(8 * factor)
    assert y.shape == (2, n, n, 3)
    # zero padding only touches the outermost pixel ring
    np.testing.assert_allclose(y[:, 1:-1, 1:-1], 1.7, rtol=1e-6)
    np.testing.assert_allclose(fn(x, None), 1.7, rtol=1e-6)  # box filter: exact everywhere


@pytest.mark.parametrize("axis", [1, 2])
def test_ramp_matches_closed_form(axis):
    n = 8
    x = _ramp(n, axis)
    up = uds.upsample_2d(x, K)
    down = uds.downsample_2d(x, K)
    j_up = jnp.arange(2 * n, dtype=jnp.float32)
    j_dn = jnp.arange(n // 2, dtype=jnp.float32)
    # a symmetric FIR filter reproduces linear functions at the new sample centres:
    # up: output j sits at input coordinate (j + 1/2)/2 - 1/2; down: at 2j + 1/2
    want_up = j_up / 2 - 0.25
    want_dn = 2 * j_dn + 0.5
    up_line = up[0, :, 3, 0] if axis == 1 else up[0, 3, :, 0]
    dn_line = down[0, :, 1, 0] if axis == 1 else down[0, 1, :, 0]
    np.testing.assert_allclose(up_line[2:-2], want_up[2:-2], atol=1e-5)
    np.testing.assert_allclose(dn_line[1:-1], want_dn[1:-1], atol=1e-5)
    # and it is constant along the other axis (interior)
    other = up[0, 5, 2:-2, 0] if axis == 1 else up[0, 2:-2, 5, 0]
    np.testing.assert_allclose(other, other[0], atol=1e-5)


def test_naive_resampling_round_trip():
    x = jax.random.normal(jax.random.key(0), (2, 4, 6, 3))
    up = uds.naive_upsample_2d(x)
    assert up.shape == (2, 8, 12, 3)
    np.testing.assert_array_equal(up[:, ::2, 1::2], x)
    np.testing.assert_allclose(uds.naive_downsample_2d(up), x, rtol=1e-6)


def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_fused_convs_equal_unfused_away_from_the_border():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))
    a = uds.upsample_conv_2d(x, w, k=K)
    b = _conv(uds.upsample_2d(x, K), w)
    assert a.shape == b.shape == (2, 16, 16, 5)
    np.testing.assert_allclose(a[:, 2:-2, 2:-2], b[:, 2:-2, 2:-2], atol=1e-4)
    a = uds.conv_downsample_2d(x, w, k=K)
    b = uds.downsample_2d(_conv(x, w), K)
    assert a.shape == b.shape == (2, 4, 4, 5)
    np.testing.assert_allclose(a[:, 1:-1, 1:-1], b[:, 1:-1, 1:-1], atol=1e-4)


def _np_upfirdn(x, k, up, down, p0, p1):
    """Direct NCHW numpy version of StyleGAN2's upfirdn2d reference (upsample, pad, convolve
    with the flipped kernel, downsample)."""
    N, C, H, W = x.shape
    u = np.zeros((N, C, H * up, W * up), x.dtype)
    u[:, :, ::up, ::up] = x
    u = np.pad(u, ((0, 0), (0, 0), (max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0))))
    kf = k[::-1, ::-1]
    kh = k.shape[0]
    oh = u.shape[2] - kh + 1
    out = np.zeros((N, C, oh, oh), x.dtype)
    for i in range(oh):
        for j in range(oh):
            out[:, :, i, j] = np.einsum("ncab,ab->nc", u[:, :, i:i + kh, j:j + kh], kf)
    return out[:, :, ::down, ::down]


def _np_conv_transpose(x, wt, stride):
    """``torch.nn.functional.conv_transpose2d(x, wt, stride)`` by its definition (scatter)."""
    N, Ci, H, W = x.shape
    _, Co, kh, kw = wt.shape
    out = np.zeros((N, Co, (H - 1) * stride + kh, (W - 1) * stride + kw), x.dtype)
    for i in range(H):
        for j in range(W):
            out[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += np.einsum(
                "nc,cokl->nokl", x[:, :, i, j], wt)
    return out


def test_upsample_conv_matches_the_pytorch_reference_definition():
    """score_sde_pytorch: ``w`` (O, I, k, k) -> flipped, (I, O) transposed -> conv_transpose2d
    with stride 2 -> upfirdn2d(pad=((p+1)//2 + 1, p//2 + 1))."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    w_oihw = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    k = uds.setup_kernel(K) * 4
    p = (k.shape[0] - 2) - (3 - 1)
    wt = np.transpose(w_oihw[:, :, ::-1, ::-1], (1, 0, 2, 3))
    ref = _np_upfirdn(_np_conv_transpose(x, wt, 2), k, 1, 1, (p + 1) // 2 + 1, p // 2 + 1)
    got = uds.upsample_conv_2d(jnp.asarray(x.transpose(0, 2, 3, 1)),
                               jnp.asarray(w_oihw.transpose(2, 3, 1, 0)), k=K)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref, atol=1e-4)


def test_conv_downsample_matches_the_pytorch_reference_definition():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    w_oihw = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    k = uds.setup_kernel(K)
    p = (k.shape[0] - 2) + (3 - 1)
    xp = _np_upfirdn(x, k, 1, 1, (p + 1) // 2, p // 2)
    # F.conv2d(stride 2, no padding) = cross-correlation
    oh = (xp.shape[2] - 3) // 2 + 1
    ref = np.zeros((1, 3, oh, oh), np.float32)
    for i in range(oh):
        for j in range(oh):
            ref[:, :, i, j] = np.einsum("ncab,ocab->no", xp[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3],
                                        w_oihw)
    got = uds.conv_downsample_2d(jnp.asarray(x.transpose(0, 2, 3, 1)),
                                 jnp.asarray(w_oihw.transpose(2, 3, 1, 0)), k=K)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref, atol=1e-4)


def test_upfirdn_matches_reference_and_bad_input_is_named():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    k = uds.setup_kernel((1, 2, 1))
    for up, down, pad in [(2, 1, (1, 1)), (1, 2, (1, 0)), (1, 1, (1, 1))]:
        ref = _np_upfirdn(x, k, up, down, *pad)
        got = uds.upfirdn2d(jnp.asarray(x.transpose(0, 2, 3, 1)), k, up, down, pad)
        np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        uds.upfirdn2d(jnp.ones((2, 3)), k)
    with pytest.raises(ValueError, match="sums to zero"):
        uds.setup_kernel((1, -1))
