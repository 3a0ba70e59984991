"""Reference architectures of the score-SDE paper as ``config.model`` sections.

Each function returns an :class:`ml_collections.ConfigDict` holding the architecture keys read
by :func:`jaxdiff.models.get_model` plus the paper's SDE / training hyper-parameters that live in
the ``model`` section of the reference configs (``beta_min``, ``sigma_max``, ``num_scales``,
``ema_rate``, ``scale_by_sigma``, ...). Values are those of ``yang-song/score_sde`` /
``score_sde_pytorch`` (``configs/{vp,subvp,ve}/*.py`` and their defaults). The parameter counts in
the docstrings are those of the published code; ``tests/test_models_counts.py`` checks them.

The data section is not part of these dicts: CIFAR-10 configs expect ``image_size=32,
num_channels=3``; ``ncsnpp_256``/``ddpm_256`` 256x256 and ``ncsnpp_1024`` 1024x1024.
"""

from __future__ import annotations

import ml_collections

__all__ = [
    "mlp", "small_unet", "ddpm", "ddpmpp", "ddpmpp_deep", "ncsnpp", "ncsnpp_ve",
    "ncsnpp_deep", "ncsnpp_deep_ve", "ncsnpp_256", "ncsnpp_1024", "ddpm_256", "classifier",
    "REFERENCE",
]


def _common(**kw) -> ml_collections.ConfigDict:
    base = dict(
        # SDE constants (default_cifar10_configs)
        sigma_min=0.01, sigma_max=50.0, num_scales=1000, beta_min=0.1, beta_max=20.0,
        dropout=0.1, ema_rate=0.9999, scale_by_sigma=False,
        nonlinearity="swish", normalization="GroupNorm",
        num_classes=0, dtype="float32",
    )
    base.update(kw)
    return ml_collections.ConfigDict(base)


def mlp() -> ml_collections.ConfigDict:
    """A small residual MLP for 2-D / low-dimensional vectors (trains in seconds on a CPU).

    ``nf`` hidden width, ``num_layers`` residual blocks, ``embedding_type`` 'positional' (VP
    labels ``t*999``) or 'fourier' (of ``log(label)``, for VE labels ``sigma``).
    """
    return _common(
        name="mlp", nf=128, num_layers=3, embedding_type="positional", fourier_scale=16.0,
        dropout=0.0, ema_rate=0.999,
    )


def small_unet() -> ml_collections.ConfigDict:
    """A small U-Net for 8x8 to 32x32 images with 1 or 3 channels (minutes on a CPU)."""
    return _common(
        name="small_unet", nf=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
        embedding_type="positional", fourier_scale=16.0, dropout=0.0, ema_rate=0.999,
    )


def _ncsnpp_base(**kw) -> ml_collections.ConfigDict:
    cfg = _common(
        name="ncsnpp", nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
        resamp_with_conv=True, conditional=True, fir=False, fir_kernel=(1, 3, 3, 1),
        skip_rescale=True, resblock_type="biggan", progressive="none",
        progressive_input="none", progressive_combine="sum", attention_type="ddpm",
        init_scale=0.0, embedding_type="positional", fourier_scale=16.0, conv_size=3,
    )
    cfg.update(kw)
    return cfg


def ddpm() -> ml_collections.ConfigDict:
    """DDPM (Ho et al.) CIFAR-10 U-Net, ``vp/ddpm/cifar10_continuous``: 35,218,947 params."""
    return _common(
        name="ddpm", nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
        resamp_with_conv=True, conditional=True, embedding_type="positional",
    )


def ddpm_256() -> ml_collections.ConfigDict:
    """DDPM for LSUN / CelebA-HQ 256x256 (``ddpm/celebahq``): 111,569,923 params."""
    return _common(
        name="ddpm", nf=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
        attn_resolutions=(16,), resamp_with_conv=True, conditional=True,
        embedding_type="positional", dropout=0.0,
    )


def ddpmpp() -> ml_collections.ConfigDict:
    """DDPM++ cont. (VP and sub-VP), ``vp/cifar10_ddpmpp_continuous``: 61,804,419 params."""
    return _ncsnpp_base()


def ddpmpp_deep() -> ml_collections.ConfigDict:
    """DDPM++ cont. deep (8 blocks per resolution): 106,632,579 params."""
    return _ncsnpp_base(num_res_blocks=8)


def ncsnpp() -> ml_collections.ConfigDict:
    """NCSN++ for VP / sub-VP (positional embedding), ``vp/cifar10_ncsnpp_continuous``:
    62,693,251 params."""
    return _ncsnpp_base(fir=True, progressive_input="residual")


def ncsnpp_ve() -> ml_collections.ConfigDict:
    """NCSN++ cont. (VE, Gaussian Fourier embedding, ``scale_by_sigma``),
    ``ve/cifar10_ncsnpp_continuous``: 62,758,915 params."""
    return _ncsnpp_base(
        fir=True, progressive_input="residual", embedding_type="fourier", scale_by_sigma=True,
        ema_rate=0.999,
    )


def ncsnpp_deep() -> ml_collections.ConfigDict:
    """NCSN++ cont. deep for VP / sub-VP: 107,521,411 params."""
    return _ncsnpp_base(fir=True, progressive_input="residual", num_res_blocks=8)


def ncsnpp_deep_ve() -> ml_collections.ConfigDict:
    """NCSN++ cont. deep (VE), ``ve/cifar10_ncsnpp_deep_continuous``: 107,587,075 params."""
    return _ncsnpp_base(
        fir=True, progressive_input="residual", num_res_blocks=8, embedding_type="fourier",
        scale_by_sigma=True, ema_rate=0.999,
    )


def ncsnpp_256() -> ml_collections.ConfigDict:
    """NCSN++ cont. VE for CelebA-HQ / FFHQ 256x256 (``ve/celebahq_256_ncsnpp_continuous``):
    65,574,549 params."""
    return _ncsnpp_base(
        ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, fir=True, progressive="output_skip",
        progressive_input="input_skip", embedding_type="fourier", scale_by_sigma=True,
        dropout=0.0, ema_rate=0.999, sigma_max=348.0, num_scales=2000,
    )


def ncsnpp_1024() -> ml_collections.ConfigDict:
    """NCSN++ cont. VE for FFHQ 1024x1024 (``ve/ffhq_ncsnpp_continuous``): 105,785,896 params."""
    return _ncsnpp_base(
        nf=16, ch_mult=(1, 2, 4, 8, 16, 32, 32, 32), num_res_blocks=1, fir=True,
        progressive="output_skip", progressive_input="input_skip", embedding_type="fourier",
        scale_by_sigma=True, dropout=0.0, ema_rate=0.9999, sigma_max=1348.0, num_scales=2000,
    )


def classifier() -> ml_collections.ConfigDict:
    """Noise-conditional Wide-ResNet classifier (for classifier guidance): WRN-``depth``-``widen``
    conditioned on the time label through a positional / Fourier embedding."""
    return ml_collections.ConfigDict(dict(
        name="classifier", num_classes=10, nf=32, depth=16, widen_factor=4, dropout=0.0,
        embedding_type="positional", fourier_scale=16.0, dtype="float32",
    ))


#: name -> (config function, data image size, exact parameter count of the published code)
REFERENCE = {
    "ddpm": (ddpm, 32, 35_218_947),
    "ddpmpp": (ddpmpp, 32, 61_804_419),
    "ddpmpp_deep": (ddpmpp_deep, 32, 106_632_579),
    "ncsnpp": (ncsnpp, 32, 62_693_251),
    "ncsnpp_ve": (ncsnpp_ve, 32, 62_758_915),
    "ncsnpp_deep": (ncsnpp_deep, 32, 107_521_411),
    "ncsnpp_deep_ve": (ncsnpp_deep_ve, 32, 107_587_075),
    "ncsnpp_256": (ncsnpp_256, 256, 65_574_549),
    "ncsnpp_1024": (ncsnpp_1024, 1024, 105_785_896),
    "ddpm_256": (ddpm_256, 256, 111_569_923),
}
