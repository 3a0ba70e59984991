"""Convert pytorch-fid's Inception weights (a torch state dict) to a Flax parameter file.

Usage (torch is needed here only; ``pip install torch`` or ``pip install jaxdiff[convert]``)::

    python -m jaxdiff.eval.convert_inception pt_inception-2015-12-05-6726825d.pth inception_fid.npz

The output is an ``.npz`` (or an Orbax checkpoint directory for any other output path) to pass as
``--config.eval.inception_weights=inception_fid.npz``. The input file's SHA-256 is printed and its
prefix checked against the one in pytorch-fid's file name (``6726825d``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxdiff.eval.inception import _check_tree, _unflatten, inception_param_shapes, save_inception_params

__all__ = ["convert_state_dict", "convert_pth", "sha256_of", "PYTORCH_FID_FILE",
           "PYTORCH_FID_SHA256_PREFIX"]

PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_SHA256_PREFIX = "6726825d"

_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        v = v.numpy()
    return np.asarray(v)


def convert_state_dict(state_dict: Mapping[str, Any], *, num_classes: int = 1008) -> dict:
    """Map a torch FID-Inception state dict to the parameter tree of ``FIDInceptionV3``.

    Args:
      state_dict: ``{name: tensor or array}`` as saved by pytorch-fid (keys like
        ``Mixed_5b.branch1x1.conv.weight``, ``Mixed_5b.branch1x1.bn.running_var``, ``fc.weight``).
        ``num_batches_tracked`` and ``AuxLogits.*`` entries are ignored.
      num_classes: rows of ``fc.weight`` (1008 for the FID graph).

    Returns:
      nested dict of float32 numpy arrays (conv kernels OIHW -> HWIO, linear ``(out, in)`` ->
      ``(in, out)``; batch-norm ``weight/bias/running_mean/running_var`` -> ``scale/bias/mean/var``).

    Raises:
      ValueError naming any key that is not understood, or any missing / mis-shaped parameter.
    """
    flat: dict[str, np.ndarray] = {}
    unknown = []
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[-1] == "num_batches_tracked" or parts[0] == "AuxLogits":
            continue
        arr = _to_numpy(value).astype(np.float32)
        if parts[0] == "fc" and len(parts) == 2:
            flat["fc/" + ("kernel" if parts[1] == "weight" else "bias")] = (
                arr.T if parts[1] == "weight" else arr)
            continue
        if len(parts) >= 3 and parts[-2] == "conv" and parts[-1] == "weight" and arr.ndim == 4:
            flat["/".join(parts[:-1] + ["kernel"])] = np.transpose(arr, (2, 3, 1, 0))
        elif len(parts) >= 3 and parts[-2] == "bn" and parts[-1] in _BN:
            flat["/".join(parts[:-1] + [_BN[parts[-1]]])] = arr
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"state dict keys not understood as FID Inception weights: {unknown[:8]}")
    params = _unflatten(flat)
    _check_tree(params, inception_param_shapes(num_classes))
    return params


def sha256_of(path: str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def convert_pth(pth_path: str, out_path: str, *,
                expected_sha256_prefix: str | None = PYTORCH_FID_SHA256_PREFIX) -> str:
    """Convert a ``.pth`` state dict file to ``out_path`` (``.npz`` or an Orbax directory).

    Args:
      pth_path: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (or a state dict of the same
        architecture, e.g. one saved from a test model).
      out_path: destination; see :func:`jaxdiff.eval.inception.save_inception_params`.
      expected_sha256_prefix: the file's SHA-256 must start with it (``None`` skips the check, for
        other weights of the same architecture).

    Returns:
      the file's full SHA-256 (hex).
    """
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("converting a .pth file needs torch: `pip install torch` "
                          "(or `pip install jaxdiff[convert]`)") from e
    digest = sha256_of(pth_path)
    if expected_sha256_prefix is not None and not digest.startswith(expected_sha256_prefix):
        raise ValueError(f"{pth_path!r} has SHA-256 {digest}, which does not start with "
                         f"{expected_sha256_prefix!r} (pytorch-fid's {PYTORCH_FID_FILE}); pass "
                         "--no-hash-check to convert other weights of the same architecture")
    state = torch.load(pth_path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{pth_path!r} does not hold a state dict (got {type(state).__name__})")
    save_inception_params(convert_state_dict(state), out_path)
    return digest


def main(argv=None) -> int:
    """Command line: ``python -m jaxdiff.eval.convert_inception IN.pth OUT.npz [--no-hash-check]``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("pth", help=f"torch state dict, normally pytorch-fid's {PYTORCH_FID_FILE}")
    p.add_argument("out", help="output .npz file, or an Orbax checkpoint directory")
    p.add_argument("--no-hash-check", action="store_true",
                   help=f"do not require the SHA-256 to start with {PYTORCH_FID_SHA256_PREFIX}")
    args = p.parse_args(argv)
    digest = convert_pth(args.pth, args.out, expected_sha256_prefix=None if args.no_hash_check
                         else PYTORCH_FID_SHA256_PREFIX)
    print(f"sha256 {digest}  {args.pth}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
