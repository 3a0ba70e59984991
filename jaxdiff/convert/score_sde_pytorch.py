"""Convert score_sde_pytorch checkpoints (NCSN++ / DDPM++ / DDPM) to jaxdiff Linen params.

A score_sde_pytorch checkpoint (``checkpoint.pth``) holds ``{'model': state_dict, 'ema':
{'shadow_params': [...]}, 'optimizer': ..., 'step': ...}``. Its model state-dict keys are
``[module.]all_modules.{i}.{sub}.{leaf}`` where ``i`` indexes the network's module list, which is
built in forward order. Our networks call their top-level submodules in that same order (recorded
with ``flax.linen.intercept_methods`` during an abstract ``init``), so the ``k``-th distinct index
maps to the ``k``-th top-level submodule that has params (the reference state dicts number only
modules with params; a numbering over all modules, parameter-free resamplers included, is
recognised too). Leaves change layout:

* conv ``weight`` ``(O, I, kh, kw)`` -> ``kernel`` ``(kh, kw, I, O)``;
* linear ``weight`` ``(out, in)`` -> ``kernel`` ``(in, out)``;
* GroupNorm ``weight`` -> ``scale``; ``bias``, NIN ``W``/``b`` and Fourier ``W`` unchanged;
* ``Combine.Conv`` -> ``Combine/Conv_0``; the ``sigmas`` buffer is checked against the config.

Every key must be consumed and every param filled, else ``ValueError`` lists what is missing.
``torch`` is needed only by :func:`load_pth` (``pip install jaxdiff[convert]``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff.models import get_model

__all__ = ["child_module_order", "convert_state_dict", "load_pth", "load_score_sde_pytorch",
           "config_from_reference"]

_KEY = re.compile(r"^all_modules\.(\d+)\.(.+)$")


def _trace(model: nn.Module, x_shape: Sequence[int]):
    """Abstract ``init`` (``jax.eval_shape``: no memory) recording the top-level submodules in
    the order they are first called; returns ``(order, param shapes)``."""
    order: list[str] = []

    def interceptor(next_fun, args, kwargs, context):
        path = context.module.path
        if context.method_name == "__call__" and len(path) == 1 and path[0] not in order:
            order.append(path[0])
        return next_fun(*args, **kwargs)

    x = jnp.zeros(tuple(x_shape), jnp.float32)
    labels = jnp.ones((x.shape[0],), jnp.float32)
    kw = {"y": jnp.zeros((x.shape[0],), jnp.int32)} if getattr(model, "num_classes", 0) else {}

    def init(k):
        with nn.intercept_methods(interceptor):
            return model.init({"params": k}, x, labels, train=False, **kw)

    shapes = jax.eval_shape(init, jax.random.key(0))
    return order, jax.tree.map(lambda s: tuple(s.shape), shapes["params"])


def child_module_order(model: nn.Module, x_shape: Sequence[int]) -> list[str]:
    """Names of the model's top-level submodules in the order they are first called
    (computed abstractly, no memory used)."""
    return _trace(model, x_shape)[0]


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in state_dict.items():
        k2 = k[len("module."):] if k.startswith("module.") else k
        out[k2] = np.asarray(v)
    return out


def _leaf(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    if name == "weight":
        if value.ndim == 4:
            return "kernel", np.transpose(value, (2, 3, 1, 0))
        if value.ndim == 2:
            return "kernel", value.T
        if value.ndim == 1:
            return "scale", value
        raise ValueError(f"unexpected weight of shape {value.shape}")
    if name in ("bias", "W", "b"):
        return name, value
    raise ValueError(f"unknown parameter leaf {name!r}")


def _expected_sigmas(mcfg) -> np.ndarray | None:
    try:
        smin, smax, n = float(mcfg["sigma_min"]), float(mcfg["sigma_max"]), int(mcfg["num_scales"])
    except (KeyError, TypeError):
        return None
    return np.exp(np.linspace(np.log(smax), np.log(smin), n))


def convert_state_dict(state_dict: Mapping[str, Any], model: nn.Module, x_shape: Sequence[int],
                       *, model_config: Mapping | None = None, check_sigmas: bool = True,
                       dtype=np.float32) -> dict:
    """Map a score_sde_pytorch model state dict onto ``model``'s params.

    Args:
      state_dict: ``{key: array}`` (numpy or torch tensors already converted to numpy), with or
        without the ``module.`` prefix of DataParallel.
      model: the matching network from :func:`jaxdiff.models.get_model`.
      x_shape: an input shape ``(B, H, W, C)`` for the abstract init.
      model_config: ``config.model`` (for checking the ``sigmas`` buffer); optional.
      check_sigmas: compare the ``sigmas`` buffer with ``sigma_min/max`` and ``num_scales``.
      dtype: dtype of the returned arrays.

    Returns:
      The ``'params'`` pytree (nested dict of numpy arrays).

    Raises:
      ValueError: a key that maps to no param, a shape mismatch, an unconsumed key or an
        unfilled param (all listed by name).
    """
    sd = _strip_prefix(state_dict)
    order_all, expected = _trace(model, x_shape)
    with_params = [o for o in order_all if o in expected]
    indices = sorted({int(m.group(1)) for m in map(_KEY.match, sd) if m})
    if len(indices) == len(with_params):
        order = dict(zip(indices, with_params))
    elif indices and indices[-1] + 1 == len(order_all):
        order = dict(enumerate(order_all))
    else:
        raise ValueError(
            f"the state dict has {len(indices)} modules with params (max index "
            f"{indices[-1] if indices else None}) but the model has {len(with_params)} "
            f"({len(order_all)} with parameter-free ones): wrong config for this checkpoint?")
    params: dict = {}
    unused: list[str] = []
    for key, value in sd.items():
        if key == "sigmas":
            want = _expected_sigmas(model_config) if model_config is not None else None
            if check_sigmas and want is not None and model_config is not None:
                if value.shape != want.shape or not np.allclose(value, want, rtol=1e-4):
                    raise ValueError(
                        f"checkpoint 'sigmas' buffer (shape {value.shape}, range "
                        f"[{value.min():.4g}, {value.max():.4g}]) does not match sigma_min="
                        f"{model_config['sigma_min']}, sigma_max={model_config['sigma_max']}, "
                        f"num_scales={model_config['num_scales']}")
            continue
        m = _KEY.match(key)
        if not m:
            unused.append(key)
            continue
        idx, rest = int(m.group(1)), m.group(2).split(".")
        path = [order[idx]] + ["Conv_0" if p == "Conv" else p for p in rest[:-1]]
        leaf, arr = _leaf(rest[-1], value)
        path.append(leaf)
        node = expected
        for p in path:
            if not isinstance(node, Mapping) or p not in node:
                raise ValueError(f"state-dict key {key!r} maps to param {'/'.join(path)}, which "
                                 "the model does not have")
            node = node[p]
        if tuple(node) != arr.shape:
            raise ValueError(f"state-dict key {key!r} of shape {value.shape} -> "
                             f"{'/'.join(path)}: expected {tuple(node)}, got {arr.shape}")
        dst = params
        for p in path[:-1]:
            dst = dst.setdefault(p, {})
        if path[-1] in dst:
            raise ValueError(f"param {'/'.join(path)} filled twice (key {key!r})")
        dst[path[-1]] = np.asarray(arr, dtype=dtype)
    if unused:
        raise ValueError(f"state-dict keys not consumed: {unused}")
    missing = []

    def walk(exp, got, prefix):
        for k, v in exp.items():
            if isinstance(v, Mapping):
                walk(v, got.get(k, {}) if isinstance(got, Mapping) else {}, prefix + (k,))
            elif not isinstance(got, Mapping) or k not in got:
                missing.append("/".join(prefix + (k,)))

    walk(expected, params, ())
    if missing:
        raise ValueError(f"params not filled by the checkpoint: {missing}")
    return params


def _requires_grad_keys(state_dict: Mapping[str, Any]) -> list[str]:
    """Keys of ``model.parameters()`` with ``requires_grad`` (what the EMA tracks): all but the
    ``sigmas`` buffer and the fixed Gaussian-Fourier ``W`` (module 0, 1-D)."""
    keys = []
    for k, v in state_dict.items():
        k2 = k[len("module."):] if k.startswith("module.") else k
        if k2 == "sigmas":
            continue
        if k2 == "all_modules.0.W" and np.ndim(v) == 1:
            continue
        keys.append(k)
    return keys


def load_pth(path: str, *, use_ema: bool = True) -> dict[str, np.ndarray]:
    """Read a score_sde_pytorch ``checkpoint.pth`` into a ``{key: numpy array}`` state dict.

    Args:
      path: the ``.pth`` file (``{'model', 'ema', ...}``).
      use_ema: replace the trainable params by the EMA shadow params (what the paper samples
        with), as ``ExponentialMovingAverage.copy_to`` does.
    Requires ``torch`` (an optional dependency).
    """
    try:
        import torch  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading .pth files needs torch: pip install 'jaxdiff[convert]'") from e
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if "model" not in ckpt:
        raise ValueError(f"{path}: expected a dict with a 'model' state dict, got keys {list(ckpt)}")
    sd = {k: v.detach().cpu().numpy() for k, v in ckpt["model"].items()}
    if use_ema:
        if "ema" not in ckpt:
            raise ValueError(f"{path}: use_ema=True but the checkpoint has no 'ema' entry")
        shadow = [t.detach().cpu().numpy() for t in ckpt["ema"]["shadow_params"]]
        sd = apply_ema(sd, shadow)
    return sd


def apply_ema(state_dict: Mapping[str, np.ndarray], shadow_params: Sequence[np.ndarray]) -> dict:
    """Replace the trainable entries of ``state_dict`` (in order) by ``shadow_params``."""
    keys = _requires_grad_keys(state_dict)
    if len(keys) != len(shadow_params):
        raise ValueError(f"EMA has {len(shadow_params)} tensors but the model has {len(keys)} "
                         "trainable params")
    out = dict(state_dict)
    for k, s in zip(keys, shadow_params):
        if tuple(np.shape(out[k])) != tuple(np.shape(s)):
            raise ValueError(f"EMA tensor for {k!r} has shape {np.shape(s)}, expected "
                             f"{np.shape(out[k])}")
        out[k] = np.asarray(s)
    return out


def config_from_reference(reference: str | Mapping) -> ml_collections.ConfigDict:
    """A ``ConfigDict`` with ``model`` and ``data`` sections from one of the reference JSON files
    (``score_sde_pytorch_state_dicts/*.json``) or an equivalent dict."""
    ref: Mapping
    if isinstance(reference, str):
        with open(reference) as f:
            ref = json.load(f)
    else:
        ref = reference
    model = dict(ref["model"])
    for k in ("ch_mult", "attn_resolutions", "fir_kernel"):
        if k in model:
            model[k] = tuple(model[k])
    data = dict(ref.get("data", {}))
    return ml_collections.ConfigDict({"model": model, "data": data})


def load_score_sde_pytorch(path: str, config, *, use_ema: bool = True):
    """Build the network of ``config`` and load a score_sde_pytorch checkpoint into it.

    Returns ``(model, params)``; sample with ``jaxdiff.scores.get_score_fn(sde, model,
    scale_by_sigma=config.model.scale_by_sigma)``.
    """
    model = get_model(config)
    size = int(config.data.image_size)
    x_shape = (1, size, size, int(config.data.num_channels))
    sd = load_pth(path, use_ema=use_ema)
    return model, convert_state_dict(sd, model, x_shape, model_config=config.model)
