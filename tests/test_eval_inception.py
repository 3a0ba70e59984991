"""The Flax FID Inception against pytorch-fid's architecture (built here in plain torch, random
weights), the converter, the 299 bilinear resize, and the parameter count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.eval import convert_inception as ci
from jaxdiff.eval import inception as inc

# torchvision's inception_v3(num_classes=1008, aux_logits=False): 23,834,568 - 1000*2049 + 1008*2049.
EXPECTED_NUM_PARAMS = 23_850_960


def test_param_count_matches_torchvision_layout():
    # Counted from shapes only (jax.eval_shape): no FLOPs, no memory.
    assert inc.inception_num_params() == EXPECTED_NUM_PARAMS
    shapes = inc.inception_param_shapes()
    assert shapes["Conv2d_1a_3x3"]["conv"]["kernel"].shape == (3, 3, 3, 32)
    assert shapes["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"].shape == (1, 7, 128, 128)
    assert shapes["Mixed_7c"]["branch_pool"]["conv"]["kernel"].shape == (1, 1, 2048, 192)
    assert shapes["fc"]["kernel"].shape == (2048, 1008)


# --------------------------------------------------------------------------------------------
# Reference: pytorch-fid's FID Inception written in plain torch (no torchvision, no weights).
# Layer names and forward passes mirror torchvision.models.inception + pytorch_fid/inception.py.
# --------------------------------------------------------------------------------------------

def _torch_reference():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    F = torch.nn.functional

    class BasicConv2d(nn.Module):
        def __init__(self, cin, cout, **kw):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
            self.bn = nn.BatchNorm2d(cout, eps=0.001)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    class FIDInceptionA(nn.Module):
        def __init__(self, cin, pool_features):
            super().__init__()
            self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
            self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
            self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
            self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
            self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

        def forward(self, x):
            b1 = self.branch1x1(x)
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
            return torch.cat([b1, b5, b3, bp], 1)

    class InceptionB(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
            self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

        def forward(self, x):
            b3 = self.branch3x3(x)
            bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)

    class FIDInceptionC(nn.Module):
        def __init__(self, cin, channels_7x7):
            super().__init__()
            c7 = channels_7x7
            self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
            self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
            self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
            self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
            self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
            self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
            self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

        def forward(self, x):
            b1 = self.branch1x1(x)
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = self.branch7x7dbl_1(x)
            for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
                bd = m(bd)
            bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
            return torch.cat([b1, b7, bd, bp], 1)

    class InceptionD(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
            self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
            self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
            self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
            self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

        def forward(self, x):
            b3 = self.branch3x3_2(self.branch3x3_1(x))
            b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
            return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)

    class FIDInceptionE(nn.Module):  # _1 (avg pool, no padding counted) and _2 (max pool)
        def __init__(self, cin, max_pool):
            super().__init__()
            self.max_pool = max_pool
            self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
            self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
            self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
            self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
            self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
            self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
            self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
            self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
            self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

        def forward(self, x):
            b1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            if self.max_pool:
                pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            else:
                pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
            return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)

    class FIDInception(nn.Module):
        def __init__(self):
            super().__init__()
            self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
            self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
            self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
            self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
            self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
            self.Mixed_5b = FIDInceptionA(192, pool_features=32)
            self.Mixed_5c = FIDInceptionA(256, pool_features=64)
            self.Mixed_5d = FIDInceptionA(288, pool_features=64)
            self.Mixed_6a = InceptionB(288)
            self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
            self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
            self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
            self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
            self.Mixed_7a = InceptionD(768)
            self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
            self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
            self.fc = nn.Linear(2048, 1008)

        def forward(self, inp):
            # pytorch-fid's InceptionV3.forward: resize, normalise, blocks 0-3, then the fc layer.
            x = F.interpolate(inp, size=(299, 299), mode="bilinear", align_corners=False)
            x = 2 * x - 1
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                         "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
                x = getattr(self, name)(x)
            pool3 = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
            return pool3, self.fc(pool3)

    torch.manual_seed(0)
    net = FIDInception().eval()
    # Random weights that keep activations O(1) through ~50 layers, and non-trivial batch-norm
    # statistics (so that a mixed-up mean/var/scale/bias in the converter shows).
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 2048 ** -0.5)
                m.bias.normal_(0.0, 0.1)
    return torch, net


@pytest.fixture(scope="module")
def torch_ref(tmp_path_factory):
    torch, net = _torch_reference()
    path = str(tmp_path_factory.mktemp("inc") / "random_fid_inception.pth")
    torch.save(net.state_dict(), path)
    return torch, net, path


def test_flax_inception_matches_pytorch_fid_blocks(torch_ref, tmp_path):
    torch, net, pth = torch_ref
    out = str(tmp_path / "inc.npz")
    digest = ci.convert_pth(pth, out, expected_sha256_prefix=None)
    assert digest == ci.sha256_of(pth) and len(digest) == 64
    params = inc.load_inception_params(out)
    n_torch = sum(p.numel() for p in net.parameters())
    assert n_torch == EXPECTED_NUM_PARAMS == inc.inception_num_params()

    rng = np.random.default_rng(0)
    imgs = rng.uniform(0.0, 1.0, size=(2, 3, 40, 40)).astype(np.float32)  # NCHW in [0, 1]
    with torch.no_grad():
        ref_pool, ref_logits = (t.numpy() for t in net(torch.from_numpy(imgs)))

    model = inc.FIDInceptionV3()
    fn = jax.jit(lambda p, x: model.apply({"params": p}, inc.preprocess(x)))
    pool, logits = fn(params, jnp.asarray(imgs.transpose(0, 2, 3, 1)))
    pool, logits = np.asarray(pool), np.asarray(logits)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert np.abs(ref_pool).max() > 0.1  # the comparison is not between two tiny numbers
    rel = lambda a, b: np.abs(a - b).max() / np.abs(b).max()
    assert rel(pool, ref_pool) < 1e-4, rel(pool, ref_pool)
    assert rel(logits, ref_logits) < 1e-4, rel(logits, ref_logits)
    # The two images give different features (the check is not on a constant output).
    assert rel(pool[0], pool[1]) > 1e-2


@pytest.mark.parametrize("size", [(16, 16), (32, 24), (400, 333)])
def test_resize_matches_torch_bilinear(size):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(2, 3) + size).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=(299, 299), mode="bilinear",
                                          align_corners=False).numpy() * 2 - 1
    got = np.asarray(inc.preprocess(jnp.asarray(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, ref, atol=2e-6)


def test_preprocess_uint8_grayscale_and_bad_shapes():
    x = jnp.full((1, 8, 8, 1), 255, jnp.uint8)
    y = inc.preprocess(x)
    assert y.shape == (1, 299, 299, 3)
    np.testing.assert_allclose(np.asarray(y), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, H, W, 1\|3\)"):
        inc.preprocess(jnp.zeros((1, 8, 8, 2)))
    with pytest.raises(ValueError, match="H, W >= 75"):
        inc.FIDInceptionV3().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_converter_rejects_wrong_state_dicts():
    shapes = inc.inception_param_shapes()
    # Build a fake torch-layout state dict of zeros from the shapes, then break it.
    sd = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        names = [p.key for p in path]
        s = leaf.shape
        if names[-1] == "kernel" and len(s) == 4:
            sd[".".join(names[:-1] + ["weight"])] = np.zeros((s[3], s[2], s[0], s[1]), np.float32)
        elif names[0] == "fc":
            sd["fc." + ("weight" if names[-1] == "kernel" else "bias")] = np.zeros(s[::-1], np.float32)
        else:
            torch_name = {"scale": "weight", "bias": "bias", "mean": "running_mean",
                          "var": "running_var"}[names[-1]]
            sd[".".join(names[:-1] + [torch_name])] = np.zeros(s, np.float32)
    sd["Mixed_5b.branch1x1.bn.num_batches_tracked"] = np.zeros(())
    params = ci.convert_state_dict(sd)
    assert params["Mixed_5b"]["branch1x1"]["conv"]["kernel"].shape == (1, 1, 192, 64)

    bad = dict(sd)
    del bad["Mixed_6e.branch_pool.bn.running_var"]
    with pytest.raises(ValueError, match="Mixed_6e/branch_pool/bn/var"):
        ci.convert_state_dict(bad)
    bad = dict(sd, **{"Mixed_9z.conv.weight2": np.zeros(3)})
    with pytest.raises(ValueError, match="Mixed_9z.conv.weight2"):
        ci.convert_state_dict(bad)
    bad = dict(sd, **{"fc.weight": np.zeros((1000, 2048), np.float32)})
    with pytest.raises(ValueError, match="fc/kernel"):
        ci.convert_state_dict(bad)


def test_load_reports_missing_weights(tmp_path):
    with pytest.raises(ValueError, match="inception_weights"):
        inc.load_inception_params("")
    with pytest.raises(FileNotFoundError, match="convert_inception"):
        inc.load_inception_params(str(tmp_path / "nope.npz"))
