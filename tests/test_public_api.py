"""Every public name of jaxdiff (``jaxdiff.__all__`` and each public subpackage's ``__all__``) is
importable and documented."""

import importlib
import inspect

import pytest

import jaxdiff

SUBPACKAGES = ["jaxdiff." + name for name in jaxdiff.__all__
               if inspect.ismodule(getattr(jaxdiff, name))]
# imported explicitly (tfds, Orbax)
EXPLICIT = ["jaxdiff.train", "jaxdiff.data", "jaxdiff.eval", "jaxdiff.tasks"]


def _public(modname):
    mod = importlib.import_module(modname)
    names = getattr(mod, "__all__", None)
    assert names is not None, f"{modname} has no __all__"
    return mod, names


def _undocumented(modname):
    mod, names = _public(modname)
    missing = []
    for name in names:
        assert hasattr(mod, name), f"{modname}.__all__ lists {name!r}, which it does not define"
        obj = getattr(mod, name)
        if not (inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj)):
            continue  # constants (tuples, registries) carry no docstring of their own
        doc = inspect.getdoc(obj)
        if not doc or not doc.strip():
            missing.append(f"{modname}.{name}")
    return missing


def test_top_level_names_exist_and_are_documented():
    assert jaxdiff.__doc__
    assert _undocumented("jaxdiff") == []


@pytest.mark.parametrize("modname", SUBPACKAGES + EXPLICIT)
def test_subpackage_names_are_documented(modname):
    assert _undocumented(modname) == []


def test_version():
    assert isinstance(jaxdiff.__version__, str) and jaxdiff.__version__.count(".") == 2
