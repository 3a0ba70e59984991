"""Score networks (Flax Linen) and their construction from ``config.model`` / ``config.data``.

``get_model(config)`` returns a Linen module called as::

    model.apply({'params': params}, x, labels, train=False, y=None, rngs={'dropout': key})

``x`` is ``(B, H, W, C)`` (NHWC) for images or ``(B, D)`` for vectors, ``labels`` are the
network's time labels (``t*999`` for VP/sub-VP, ``sigma(t)`` for VE, or the discrete index; see
:mod:`jaxdiff.scores`), ``y`` optional class labels ``(B,)``. The output has ``x``'s shape.
``init_params(key, model, x_shape)`` returns the plain nested-dict ``'params'`` collection.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models import configs, layers
from jaxdiff.models.classifier import NoiseConditionalWideResNet
from jaxdiff.models.ncsnpp import DDPM, NCSNpp
from jaxdiff.models.small import MLP, SmallUNet

__all__ = [
    "get_model", "get_classifier", "init_params", "count_params", "configs", "NCSNpp", "DDPM",
    "MLP", "SmallUNet", "NoiseConditionalWideResNet", "MODEL_KEYS",
]

# Keys of the ``model`` section that are not architecture options (read by SDE / training code).
_NON_ARCH_KEYS = {
    "name", "sigma_min", "sigma_max", "num_scales", "beta_min", "beta_max", "ema_rate",
    "scale_by_sigma", "normalization", "conv_size", "attention_type", "parameterization",
    "embedding_type", "fourier_scale", "dropout", "nonlinearity", "num_classes", "dtype",
}
_NCSNPP_KEYS = {
    "nf", "ch_mult", "num_res_blocks", "attn_resolutions", "resamp_with_conv", "conditional",
    "fir", "fir_kernel", "skip_rescale", "resblock_type", "progressive", "progressive_input",
    "progressive_combine", "init_scale",
}
#: accepted ``config.model`` keys per architecture name
MODEL_KEYS = {
    "ncsnpp": _NCSNPP_KEYS | _NON_ARCH_KEYS,
    "ddpmpp": _NCSNPP_KEYS | _NON_ARCH_KEYS,
    "ddpm": {"nf", "ch_mult", "num_res_blocks", "attn_resolutions", "resamp_with_conv",
             "conditional"} | _NON_ARCH_KEYS,
    "mlp": {"nf", "num_layers"} | _NON_ARCH_KEYS,
    "small_unet": {"nf", "ch_mult", "num_res_blocks", "attn_resolutions"} | _NON_ARCH_KEYS,
    "classifier": {"nf", "depth", "widen_factor"} | _NON_ARCH_KEYS,
}


def _section(config, name: str):
    if hasattr(config, name):
        return getattr(config, name)
    if isinstance(config, dict) and name in config:
        return config[name]
    return None


def _get(section, key, default):
    if section is None:
        return default
    try:
        v = section[key] if isinstance(section, dict) else getattr(section, key)
    except (KeyError, AttributeError):
        return default
    return default if v is None else v


def _validate(mcfg, name: str) -> None:
    allowed = MODEL_KEYS[name]
    keys = list(mcfg.keys())
    bad = sorted(k for k in keys if k not in allowed)
    if bad:
        raise ValueError(
            f"unknown config.model key(s) {bad} for model {name!r}; accepted keys: {sorted(allowed)}")
    if mcfg.get("normalization", "GroupNorm") != "GroupNorm":
        raise ValueError(f"config.model.normalization must be 'GroupNorm', got "
                         f"{mcfg.get('normalization')!r}")
    if mcfg.get("attention_type", "ddpm") != "ddpm":
        raise ValueError(f"config.model.attention_type must be 'ddpm', got "
                         f"{mcfg.get('attention_type')!r}")
    if mcfg.get("conv_size", 3) != 3:
        raise ValueError(f"config.model.conv_size must be 3, got {mcfg.get('conv_size')!r}")
    d = mcfg.get("dropout", 0.0)
    if not 0.0 <= float(d) < 1.0:
        raise ValueError(f"config.model.dropout must be in [0, 1), got {d!r}")
    for k in ("nf", "num_res_blocks", "num_layers", "depth", "widen_factor"):
        if k in mcfg and int(mcfg[k]) < 1:
            raise ValueError(f"config.model.{k} must be a positive integer, got {mcfg[k]!r}")
    if "ch_mult" in mcfg and (len(mcfg["ch_mult"]) == 0 or min(mcfg["ch_mult"]) < 1):
        raise ValueError(f"config.model.ch_mult must be a non-empty tuple of positive ints, "
                         f"got {mcfg['ch_mult']!r}")
    et = mcfg.get("embedding_type", "positional")
    if str(et).lower() not in ("positional", "fourier"):
        raise ValueError(f"config.model.embedding_type must be 'positional' or 'fourier', got {et!r}")
    layers.get_act(mcfg.get("nonlinearity", "swish"))
    layers.resolve_dtype(mcfg.get("dtype", "float32"))
    nc = mcfg.get("num_classes", 0) or 0
    if int(nc) < 0:
        raise ValueError(f"config.model.num_classes must be >= 0, got {nc!r}")


def _to_dict(section) -> dict:
    if section is None:
        return {}
    if hasattr(section, "to_dict"):
        return section.to_dict()
    return dict(section)


def get_model(config) -> nn.Module:
    """Build the score network described by ``config.model`` (and ``config.data``).

    Args:
      config: an ``ml_collections.ConfigDict`` (or nested dict) with a ``model`` section
        (``name`` in 'mlp', 'small_unet', 'ddpm', 'ddpmpp', 'ncsnpp' and the architecture keys
        of :mod:`jaxdiff.models.configs`) and optionally a ``data`` section (``num_channels``,
        ``centered``; ``image_size`` / ``dim`` are used by callers for shapes). Every
        ``config.model`` key is validated; an unknown key or value raises ``ValueError`` naming it.

    Returns:
      A ``flax.linen.Module``; see the module docstring for the call convention.
    """
    mcfg = _to_dict(_section(config, "model"))
    if not mcfg:
        raise ValueError("config has no 'model' section")
    data = _section(config, "data")
    name = str(mcfg.get("name", "")).lower()
    if name not in MODEL_KEYS or name == "classifier":
        raise ValueError(f"config.model.name must be one of "
                         f"{sorted(k for k in MODEL_KEYS if k != 'classifier')}, got {name!r}")
    _validate(mcfg, name)
    g = mcfg.get
    dtype = layers.resolve_dtype(g("dtype", "float32"))
    num_classes = int(g("num_classes", 0) or 0)
    centered = bool(_get(data, "centered", True))
    num_channels = _get(data, "num_channels", None)
    common = dict(dropout=float(g("dropout", 0.0)), nonlinearity=g("nonlinearity", "swish"),
                  num_classes=num_classes, dtype=dtype)
    if name in ("ncsnpp", "ddpmpp"):
        base = configs.ddpmpp().to_dict() if name == "ddpmpp" else configs.ncsnpp().to_dict()
        c = {**base, **mcfg}
        return NCSNpp(
            nf=int(c["nf"]), ch_mult=tuple(c["ch_mult"]), num_res_blocks=int(c["num_res_blocks"]),
            attn_resolutions=tuple(c["attn_resolutions"]),
            resamp_with_conv=bool(c["resamp_with_conv"]), conditional=bool(c["conditional"]),
            fir=bool(c["fir"]), fir_kernel=tuple(c["fir_kernel"]),
            skip_rescale=bool(c["skip_rescale"]), resblock_type=str(c["resblock_type"]),
            progressive=str(c["progressive"]), progressive_input=str(c["progressive_input"]),
            progressive_combine=str(c["progressive_combine"]),
            embedding_type=str(c["embedding_type"]), fourier_scale=float(c["fourier_scale"]),
            init_scale=float(c["init_scale"]), centered=centered,
            num_channels=None if num_channels is None else int(num_channels), **common)
    if name == "ddpm":
        c = {**configs.ddpm().to_dict(), **mcfg}
        return DDPM(nf=int(c["nf"]), ch_mult=tuple(c["ch_mult"]),
                    num_res_blocks=int(c["num_res_blocks"]),
                    attn_resolutions=tuple(c["attn_resolutions"]),
                    resamp_with_conv=bool(c["resamp_with_conv"]),
                    conditional=bool(c["conditional"]), centered=centered,
                    num_channels=None if num_channels is None else int(num_channels), **common)
    if name == "mlp":
        c = {**configs.mlp().to_dict(), **mcfg}
        return MLP(nf=int(c["nf"]), num_layers=int(c["num_layers"]),
                   embedding_type=str(c["embedding_type"]),
                   fourier_scale=float(c["fourier_scale"]), **common)
    c = {**configs.small_unet().to_dict(), **mcfg}
    return SmallUNet(nf=int(c["nf"]), ch_mult=tuple(c["ch_mult"]),
                     num_res_blocks=int(c["num_res_blocks"]),
                     attn_resolutions=tuple(c["attn_resolutions"]),
                     embedding_type=str(c["embedding_type"]),
                     fourier_scale=float(c["fourier_scale"]), centered=centered, **common)


def get_classifier(config) -> nn.Module:
    """Noise-conditional Wide-ResNet classifier from ``config.classifier`` (or ``config.model``
    when its ``name`` is 'classifier'); see :func:`jaxdiff.models.configs.classifier`.

    Returns a Linen module called as ``apply({'params': p}, x, labels, train=False)`` ->
    logits ``(B, num_classes)``.
    """
    sec = _section(config, "classifier")
    if sec is None:
        sec = _section(config, "model")
    c = _to_dict(sec)
    if str(c.get("name", "classifier")).lower() != "classifier":
        raise ValueError(f"get_classifier needs a section with name='classifier', got "
                         f"{c.get('name')!r}")
    c = {**configs.classifier().to_dict(), **c}
    _validate(c, "classifier")
    data = _section(config, "data")
    return NoiseConditionalWideResNet(
        num_classes=int(c["num_classes"]), depth=int(c["depth"]),
        widen_factor=int(c["widen_factor"]), nf=int(c["nf"]), dropout=float(c["dropout"]),
        embedding_type=str(c["embedding_type"]), fourier_scale=float(c["fourier_scale"]),
        nonlinearity=c.get("nonlinearity", "swish"), centered=bool(_get(data, "centered", True)),
        dtype=layers.resolve_dtype(c.get("dtype", "float32")))


def _dummy_inputs(model: nn.Module, x_shape, label_value: float = 0.5):
    x = jnp.zeros(tuple(x_shape), jnp.float32)
    labels = jnp.full((x.shape[0],), label_value, jnp.float32)
    kw = {}
    if getattr(model, "num_classes", 0) and not isinstance(model, NoiseConditionalWideResNet):
        kw["y"] = jnp.zeros((x.shape[0],), jnp.int32)
    return x, labels, kw


# Compiling an initialiser (one PRNG kernel per parameter) with XLA:CPU's full LLVM optimisation
# takes minutes for a U-Net on a small CPU; it runs once, so optimising it is wasted time.
_FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def init_compiler_options(*args) -> dict:
    """``jax.jit(..., compiler_options=...)`` for one-off initialisers: on CPU, XLA's backend
    optimisations off (equal to float32 rounding, ~3-4x faster compile of a U-Net init);
    elsewhere, or when any of ``args`` is a tracer (a nested ``jit`` takes no compiler options:
    the enclosing one decides), none."""
    if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(args)):
        return {}
    return dict(_FAST_CPU_COMPILE) if jax.default_backend() == "cpu" else {}


def init_params(key: jax.Array, model: nn.Module, x_shape) -> dict:
    """Initialise a model's parameters.

    Args:
      key: PRNG key.
      model: a module from :func:`get_model` / :func:`get_classifier`.
      x_shape: input shape including the batch axis, e.g. ``(1, 32, 32, 3)`` or ``(1, 2)``.

    Returns:
      The ``'params'`` collection as a plain nested ``dict`` of float32 arrays.
    """
    x, labels, kw = _dummy_inputs(model, x_shape)
    pkey, dkey = jax.random.split(key)
    variables = jax.jit(lambda k1, k2: model.init({"params": k1, "dropout": k2}, x, labels,
                                                  train=False, **kw),
                        compiler_options=init_compiler_options(key))(pkey, dkey)
    return _unfreeze(variables["params"])


def _unfreeze(tree):
    if hasattr(tree, "items"):
        return {k: _unfreeze(v) for k, v in tree.items()}
    return tree


def count_params(model: nn.Module, x_shape) -> int:
    """Number of parameters, computed abstractly with ``jax.eval_shape`` (no memory used)."""
    x, labels, kw = _dummy_inputs(model, x_shape)
    shapes = jax.eval_shape(lambda k: model.init({"params": k}, x, labels, train=False, **kw),
                            jax.random.key(0))
    return int(sum(math.prod(s.shape) for s in jax.tree.leaves(shapes["params"])))
