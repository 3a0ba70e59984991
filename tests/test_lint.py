"""The linter and the type checker, as configured in pyproject.toml ([tool.ruff], [tool.mypy]),
pass on the whole tree: ``ruff check .`` and ``mypy`` (basic mode over ``jaxdiff/``) exit 0."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _tool(module, exe):
    """The tool as ``python -m module`` when installed in this interpreter, else on PATH."""
    try:
        __import__(module)
        return [sys.executable, "-m", module]
    except ImportError:
        path = shutil.which(exe)
        if path is None:
            pytest.skip(f"{exe} is not installed (pip install -e '.[test]')")
        return [path]


def test_ruff_is_clean():
    r = _run(_tool("ruff", "ruff") + ["check", "--output-format", "concise", "."])
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_mypy_is_clean():
    r = _run(_tool("mypy", "mypy"))          # files, mode: pyproject.toml [tool.mypy]
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
