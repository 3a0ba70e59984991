"""LPIPS (Zhang et al. 2018) in Flax, with weights from a user-given LOCAL file (never fetched).

The network is the ``lpips`` package's ``LPIPS(net='alex' | 'vgg', lpips=True)``: the fixed input
scaling layer, the torchvision AlexNet / VGG16 feature taps (ReLU outputs of the 5 stages), each
tap normalised to unit length over channels, squared differences weighted by the learned 1x1
``lin`` layers, averaged over space and summed over taps.

Weights: the ``state_dict()`` of an ``lpips.LPIPS`` module (keys ``net.slice{k}.{i}.weight`` /
``.bias`` and ``lin{l}.model.1.weight``), saved with ``torch.save`` (``.pth`` / ``.pt``, read
with torch) or as an ``.npz`` of the same keys (no torch needed), converted by
:func:`convert_state_dict`. Example, on a machine with the ``lpips`` package and its weights::

    import lpips, numpy as np
    sd = lpips.LPIPS(net="alex").state_dict()
    np.savez("lpips_alex.npz", **{k: v.numpy() for k, v in sd.items()})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LPIPS", "NETS", "convert_state_dict", "load_lpips_params", "lpips_distance_fn"]

# (torchvision feature index, out channels, kernel, stride, padding) of each conv, grouped by
# LPIPS slice (a slice ends at a tapped ReLU); "M" is a max pool (kernel, stride)
_ALEX = [[(0, 64, 11, 4, 2)], ["M3", (3, 192, 5, 1, 2)], ["M3", (6, 384, 3, 1, 1)],
         [(8, 256, 3, 1, 1)], [(10, 256, 3, 1, 1)]]
_VGG = [[(0, 64, 3, 1, 1), (2, 64, 3, 1, 1)], ["M2", (5, 128, 3, 1, 1), (7, 128, 3, 1, 1)],
        ["M2", (10, 256, 3, 1, 1), (12, 256, 3, 1, 1), (14, 256, 3, 1, 1)],
        ["M2", (17, 512, 3, 1, 1), (19, 512, 3, 1, 1), (21, 512, 3, 1, 1)],
        ["M2", (24, 512, 3, 1, 1), (26, 512, 3, 1, 1), (28, 512, 3, 1, 1)]]
NETS = {"alex": _ALEX, "vgg": _VGG}
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def _arch(net: str):
    if net not in NETS:
        raise ValueError(f"LPIPS net must be one of {sorted(NETS)}, got {net!r}")
    return NETS[net]


class LPIPS(nn.Module):
    """``LPIPS(net)(x0, x1) -> (B,)`` for NHWC images in ``[-1, 1]`` with 3 channels."""

    net: str = "alex"

    @nn.compact
    def __call__(self, x0, x1):
        arch = _arch(self.net)
        convs = {layer[0]: nn.Conv(layer[1], (layer[2], layer[2]), strides=(layer[3], layer[3]),
                                   padding=((layer[4], layer[4]), (layer[4], layer[4])),
                                   name=f"slice{s + 1}_{layer[0]}")
                 for s, layers in enumerate(arch) for layer in layers if not isinstance(layer, str)}
        lins = [nn.Conv(1, (1, 1), use_bias=False, name=f"lin{i}") for i in range(len(arch))]
        feats = []
        for x in (x0, x1):
            h = (x - _SHIFT) / _SCALE
            taps = []
            for layers in arch:
                for layer in layers:
                    if isinstance(layer, str):
                        k = int(layer[1:])
                        h = nn.max_pool(h, (k, k), strides=(2, 2), padding="VALID")
                    else:
                        h = nn.relu(convs[layer[0]](h))
                taps.append(h)
            feats.append(taps)
        total = 0.0
        for l_idx, (f0, f1) in enumerate(zip(*feats)):
            n0 = f0 / (jnp.sqrt(jnp.sum(f0**2, axis=-1, keepdims=True)) + 1e-10)
            n1 = f1 / (jnp.sqrt(jnp.sum(f1**2, axis=-1, keepdims=True)) + 1e-10)
            d = lins[l_idx]((n0 - n1) ** 2)
            total = total + jnp.mean(d, axis=(1, 2, 3))
        return total


def convert_state_dict(state_dict: Mapping, net: str = "alex") -> dict:
    """Flax params of :class:`LPIPS` from an ``lpips.LPIPS(net=...)`` state dict (arrays or
    tensors; keys ``net.slice{s}.{i}.weight|bias`` and ``lin{l}.model.1.weight``; other keys,
    e.g. the scaling layer's buffers, are checked or ignored).

    Raises:
      ValueError naming a missing key or a wrong shape.
    """
    arch = _arch(net)

    def get(key):
        if key not in state_dict:
            raise ValueError(f"LPIPS state dict ({net}) has no {key!r}; keys: "
                             f"{sorted(state_dict)[:8]}...")
        v = state_dict[key]
        v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        return np.asarray(v, np.float32)

    params: dict = {}
    cin = 3
    for s, layers in enumerate(arch):
        for layer in layers:
            if isinstance(layer, str):
                continue
            idx, c, k, _, _ = layer
            w, b = get(f"net.slice{s + 1}.{idx}.weight"), get(f"net.slice{s + 1}.{idx}.bias")
            if w.shape != (c, cin, k, k) or b.shape != (c,):
                raise ValueError(f"net.slice{s + 1}.{idx}: want weight {(c, cin, k, k)} and bias "
                                 f"{(c,)}, got {w.shape} and {b.shape}")
            params[f"slice{s + 1}_{idx}"] = {"kernel": jnp.asarray(w.transpose(2, 3, 1, 0)),
                                             "bias": jnp.asarray(b)}
            cin = c
        w = get(f"lin{s}.model.1.weight")
        if w.shape != (1, cin, 1, 1):
            raise ValueError(f"lin{s}.model.1.weight: want {(1, cin, 1, 1)}, got {w.shape}")
        params[f"lin{s}"] = {"kernel": jnp.asarray(w.transpose(2, 3, 1, 0))}
    return params


def load_lpips_params(path: str, net: str = "alex") -> dict:
    """Params from a local ``.npz`` (no torch) or ``.pth`` / ``.pt`` (``torch.load``) file."""
    import os
    if not os.path.isfile(path):
        raise ValueError(f"LPIPS weights file {path!r} does not exist (weights are never "
                         f"downloaded: pass a local file, see jaxdiff.eval.lpips)")
    if path.endswith(".npz"):
        with np.load(path) as f:
            return convert_state_dict({k: f[k] for k in f.files}, net)
    if path.endswith((".pth", ".pt")):
        try:
            import torch
        except ImportError as e:
            raise ValueError(f"reading {path!r} needs torch; convert it to .npz on a machine "
                             f"with torch (see jaxdiff.eval.lpips)") from e
        return convert_state_dict(torch.load(path, map_location="cpu"), net)
    raise ValueError(f"LPIPS weights file {path!r}: expected .npz, .pth or .pt")


def lpips_distance_fn(params_or_path, net: str = "alex", *, min_size: int = 64
                      ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``fn(a, b) -> (B,)`` LPIPS of NHWC images in ``[0, 1]`` (1 or 3 channels; gray is
    repeated). Images smaller than ``min_size`` (AlexNet needs about 32 pixels; the digits are
    16x16) are bilinearly resized to ``min_size`` first (the lpips package does not resize)."""
    params = (load_lpips_params(params_or_path, net) if isinstance(params_or_path, str)
              else params_or_path)
    model = LPIPS(net)

    @jax.jit
    def f(a, b):
        def prep(x):
            if x.shape[-1] == 1:
                x = jnp.repeat(x, 3, axis=-1)
            if x.shape[-1] != 3:
                raise ValueError(f"LPIPS needs 1 or 3 channels, got {x.shape}")
            h, w = x.shape[1:3]
            if min(h, w) < min_size:
                s = min_size / min(h, w)
                x = jax.image.resize(x, (x.shape[0], round(h * s), round(w * s), 3), "bilinear")
            return 2.0 * x - 1.0
        return model.apply({"params": params}, prep(a), prep(b))

    return lambda a, b: np.asarray(f(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)),
                                   np.float64)
