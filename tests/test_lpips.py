"""LPIPS: the converter's key / shape mapping from an ``lpips.LPIPS`` state dict (random
weights, never downloaded), basic properties, and equality with a torch implementation of the
lpips package's forward pass when torch is importable."""

import jax
import numpy as np
import pytest

from jaxdiff.eval import lpips as L


def _random_state_dict(net, seed=0):
    rng = np.random.default_rng(seed)
    sd, cin = {}, 3
    for s, layers in enumerate(L.NETS[net]):
        for layer in layers:
            if isinstance(layer, str):
                continue
            idx, c, k, _, _ = layer
            sd[f"net.slice{s + 1}.{idx}.weight"] = rng.normal(0, 1 / np.sqrt(cin * k * k),
                                                              (c, cin, k, k)).astype(np.float32)
            sd[f"net.slice{s + 1}.{idx}.bias"] = rng.normal(0, 0.1, (c,)).astype(np.float32)
            cin = c
        sd[f"lin{s}.model.1.weight"] = rng.uniform(0, 1, (1, cin, 1, 1)).astype(np.float32)
    return sd


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_converter_matches_the_flax_tree(net, tmp_path):
    sd = _random_state_dict(net)
    params = L.convert_state_dict(sd, net)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
    init = jax.eval_shape(lambda a: L.LPIPS(net).init(jax.random.key(0), a, a), x)["params"]
    shapes = lambda t: jax.tree_util.tree_map(lambda a: tuple(a.shape), t)
    assert shapes(params) == shapes(init)
    np.testing.assert_array_equal(params["slice1_0"]["kernel"][1, 2, 0, 5],
                                  sd["net.slice1.0.weight"][5, 0, 1, 2])   # OIHW -> HWIO
    bad = dict(sd)
    del bad["lin2.model.1.weight"]
    with pytest.raises(ValueError, match="lin2.model.1.weight"):
        L.convert_state_dict(bad, net)
    bad = dict(sd, **{"lin0.model.1.weight": np.zeros((1, 7, 1, 1))})
    with pytest.raises(ValueError, match="lin0"):
        L.convert_state_dict(bad, net)
    with pytest.raises(ValueError, match="never"):
        L.load_lpips_params(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="net"):
        L.convert_state_dict(sd, "squeeze")


@pytest.mark.slow
def test_lpips_properties_from_a_local_file(tmp_path):
    sd = _random_state_dict("alex")
    np.savez(tmp_path / "alex.npz", **sd)
    fn = L.lpips_distance_fn(str(tmp_path / "alex.npz"), "alex", min_size=32)
    rng = np.random.default_rng(1)
    a, b = rng.uniform(size=(2, 3, 16, 16, 1))       # digits-sized gray images (resized to 32)
    d_ab, d_ba = fn(a, b), fn(b, a)
    assert d_ab.shape == (3,) and np.all(d_ab > 0)
    np.testing.assert_allclose(d_ab, d_ba, rtol=1e-5)
    np.testing.assert_allclose(fn(a, a), 0.0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_torch(net):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    sd = _random_state_dict(net, seed=2)
    rng = np.random.default_rng(3)
    a, b = (rng.uniform(-1, 1, (2, 40, 40, 3)).astype(np.float32) for _ in range(2))

    def torch_lpips(x0, x1):          # the lpips package's LPIPS.forward (lpips=True, normalize=False)
        shift = torch.tensor(L._SHIFT).view(1, 3, 1, 1)
        scale = torch.tensor(L._SCALE).view(1, 3, 1, 1)
        feats = []
        for x in (x0, x1):
            h = (torch.tensor(x).permute(0, 3, 1, 2) - shift) / scale
            taps = []
            for s, layers in enumerate(L.NETS[net]):
                for layer in layers:
                    if isinstance(layer, str):
                        h = F.max_pool2d(h, int(layer[1:]), 2)
                        continue
                    idx, _, _, st, p = layer
                    h = F.relu(F.conv2d(h, torch.tensor(sd[f"net.slice{s + 1}.{idx}.weight"]),
                                        torch.tensor(sd[f"net.slice{s + 1}.{idx}.bias"]),
                                        stride=st, padding=p))
                taps.append(h)
            feats.append(taps)
        out = 0
        for l_idx, (f0, f1) in enumerate(zip(*feats)):
            n0 = f0 / (torch.sqrt(torch.sum(f0 ** 2, 1, keepdim=True)) + 1e-10)
            n1 = f1 / (torch.sqrt(torch.sum(f1 ** 2, 1, keepdim=True)) + 1e-10)
            d = F.conv2d((n0 - n1) ** 2, torch.tensor(sd[f"lin{l_idx}.model.1.weight"]))
            out = out + d.mean((2, 3), keepdim=True)
        return out.reshape(-1).numpy()

    params = L.convert_state_dict(sd, net)
    got = np.asarray(L.LPIPS(net).apply({"params": params}, a, b))
    np.testing.assert_allclose(got, torch_lpips(a, b), rtol=1e-4, atol=1e-6)
