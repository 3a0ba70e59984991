"""The string argument of ``configs/*.py:get_config(arg)``, as in big_vision's ``parse_arg``.

``--config=configs/msdiff_conditional.py:dataset=celeba,task=inpaint,estimator=cde`` passes
``"dataset=celeba,task=inpaint,estimator=cde"`` to ``get_config``; :func:`parse_arg` turns it into
a ``ConfigDict`` of typed values with defaults. A lone value without ``=`` sets the first key
(``msdiff_conditional.py:cde`` is ``estimator=cde``); a bare boolean key means ``True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections

__all__ = ["parse_arg", "choose"]

_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0", "")


def _convert(key: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError(f"config argument {key}={raw!r}: expected a boolean")
    if isinstance(default, (int, float)):
        try:
            return type(default)(raw)
        except ValueError:
            raise ValueError(f"config argument {key}={raw!r}: expected "
                             f"{type(default).__name__}") from None
    return raw


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parse ``"key=value,key2=value2"`` against ``defaults`` (name -> default value).

    Values take the type of their default (bool, int, float or str). A token without ``=`` is
    the value of the first key when it is the only token, else a boolean flag set to ``True``.
    An unknown key or a value of the wrong type raises ``ValueError`` naming it.
    """
    out = dict(defaults)
    tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
    for token in tokens:
        key, sep, raw = token.partition("=")
        if not sep:
            first = next(iter(defaults), None)
            if len(tokens) == 1 and first is not None and not isinstance(defaults[first], bool):
                key, raw = first, token
            else:
                raw = "true"
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"config argument {key!r} unknown; accepted: {sorted(defaults)}")
        out[key] = _convert(key, raw.strip(), defaults[key])
    return ml_collections.ConfigDict(out)


def choose(name: str, value: str, options: Sequence[str]) -> str:
    """``value`` if it is one of ``options``, else a ``ValueError`` naming the argument."""
    if value not in options:
        raise ValueError(f"config argument {name}={value!r}: choose one of {tuple(options)}")
    return value
