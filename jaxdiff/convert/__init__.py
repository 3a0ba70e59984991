"""Checkpoint converters (score_sde_pytorch ``.pth`` -> jaxdiff params)."""

from jaxdiff.convert.score_sde_pytorch import (
    child_module_order,
    config_from_reference,
    convert_state_dict,
    load_pth,
    load_score_sde_pytorch,
)

__all__ = ["child_module_order", "config_from_reference", "convert_state_dict", "load_pth",
           "load_score_sde_pytorch"]
