"""The Colab notebooks execute top to bottom (nbclient), with tiny settings injected after their
``parameters`` cell, and produce the numbers they promise."""

import pathlib

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

COLAB = pathlib.Path(__file__).resolve().parents[1] / "colab"


def _execute(name, overrides, timeout=300):
    nb = nbformat.read(COLAB / name, as_version=4)
    idx = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(idx) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    inject = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in overrides.items()))
    nb.cells.insert(idx[0] + 1, inject)
    # Fewer host devices and threads: the test machine is small.
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        "import os\nos.environ['XLA_FLAGS'] = ''\nos.environ['JAX_PLATFORMS'] = 'cpu'"))
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(COLAB.parent)}})
    client.execute()
    return nb, client


def _stdout(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


def test_analytic_sde_notebook():
    nb, _ = _execute("analytic_sde.ipynb", dict(
        N_SAMPLES=256, STEP_COUNTS=[10, 40], ODE_TOLS=[1e-3], FAST_SAMPLERS=["dpm_solver++_2m"],
        N_LIKELIHOOD=8))
    out = _stdout(nb)
    assert "noise floor" in out and "dpm_solver++_2m" in out and "ode (RK45)" in out
    # The plot is inline.
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells for o in c.get("outputs", []))
    # Exact-divergence likelihood of the exact score matches the exact density.
    line = [ln for ln in out.splitlines() if ln.startswith("divergence=None")][0]
    assert float(line.split("max |error|")[1].split()[0]) < 0.02, line
