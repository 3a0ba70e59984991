"""colab/quickstart.ipynb executes top to bottom (nbclient) with tiny settings injected after its
``parameters`` cell: it trains the digits U-Net for a few steps, samples with two samplers, computes
bits/dim and inpaints; a cell appended by the test saves the arrays the assertions check."""

import pathlib

import nbformat
import numpy as np
import pytest

nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "colab" / "quickstart.ipynb"

# Tiny settings; compiling the U-Net (init, train step, 2 samplers, bits/dim, inpainting) is the
# main cost. inpaint_steps >= 21: the inpainting PC sampler uses the VP SDE's discrete alphas
# 1 - beta_i, and with N steps beta_max / N must stay below 1.
TINY = dict(train_steps=20, image_size=8, nf=4, ch_mult=(1,), batch_size=16, num_samples=4, pc_steps=8,
            fast_steps=5, bpd_examples=3, bpd_tol=1e-2, num_inpaint=3, inpaint_steps=25, seed=0)


def _run(overrides, out_path, timeout=300):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    idx = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(idx) == 1, "quickstart.ipynb needs exactly one cell tagged 'parameters'"
    nb.cells.insert(idx[0] + 1, nbformat.v4.new_code_cell(
        "\n".join(f"{k} = {v!r}" for k, v in overrides.items())))
    # One host device, CPU: the test machine is small.
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        "import os\nos.environ['XLA_FLAGS'] = ''\nos.environ['JAX_PLATFORMS'] = 'cpu'"))
    nb.cells.append(nbformat.v4.new_code_cell(
        f"np.savez({str(out_path)!r}, loss_steps=loss_steps, losses=losses, "
        "names=np.array(list(samples)), nfes=np.array([nfes[k] for k in samples]), "
        "**{f'sample_{i}': v for i, v in enumerate(samples.values())}, bpd=bpd, "
        "bpd_nfe=int(bpd_nfe), inpainted=inpainted, observed=observed, truth=truth, mask=mask, "
        "known_error=known_error, step=step)"))
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    return nb, np.load(out_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The notebook run from scratch: (workdir, executed notebook, saved arrays)."""
    tmp = tmp_path_factory.mktemp("quickstart")
    workdir = tmp / "run"
    nb, r = _run({**TINY, "workdir": str(workdir), "checkpoint": None}, tmp / "out.npz")
    return workdir, nb, r


def test_quickstart_notebook(trained):
    workdir, nb, r = trained
    t = TINY
    s, h = TINY["image_size"], TINY["image_size"] // 2
    # Trained for train_steps steps: every step's loss is logged and finite, and the checkpoint
    # that the sampling cells loaded is the final one.
    np.testing.assert_array_equal(r["loss_steps"], np.arange(1, t["train_steps"] + 1))
    assert np.all(np.isfinite(r["losses"])) and np.all(r["losses"] > 0), r["losses"]
    assert int(r["step"]) == t["train_steps"]
    assert (workdir / "metrics.jsonl").exists() and (workdir / "checkpoints").is_dir()
    # Two samplers, their NFE: PC with Euler-Maruyama = 1 evaluation per step; multistep
    # DPM-Solver++ = 1 per step.
    assert list(r["names"]) == [f"PC (Euler-Maruyama, {t['pc_steps']} steps)",
                                f"DPM-Solver++(2M), {t['fast_steps']} steps"]
    assert list(r["nfes"]) == [t["pc_steps"], t["fast_steps"]]
    for i in range(2):
        x = r[f"sample_{i}"]
        assert x.shape == (t["num_samples"], s, s, 1) and np.all(np.isfinite(x))
        assert x.std() > 0.05, "samples collapsed to a constant"
    # Bits/dim: finite, positive, one per held-out example, from an ODE solve.
    bpd = r["bpd"]
    assert bpd.shape == (t["bpd_examples"],) and np.all(np.isfinite(bpd)) and np.all(bpd > 0), bpd
    assert int(r["bpd_nfe"]) > 0
    # Inpainting: upper half known; those pixels equal the observation exactly, the lower half
    # is sampled (differs from the zeros of the masked observation).
    mask, obs, x, truth = r["mask"], r["observed"], r["inpainted"], r["truth"]
    assert mask.shape == (s, s, 1) and mask[:h].min() == 1 and mask[h:].max() == 0
    assert x.shape == truth.shape == (t["num_inpaint"], s, s, 1) and np.all(np.isfinite(x))
    # The last projection x + (y - x) is exact up to float32 rounding at the scale of x, which for
    # this untrained model reaches ~1e2 in the known half (measured error ~1e-5); a projection one
    # step too early (alpha(T/N) y, off by ~1e-2) or onto a noisy observation (sigma(eps) ~1e-2)
    # would fail.
    np.testing.assert_allclose(x[:, :h], truth[:, :h], rtol=0, atol=1e-4)
    np.testing.assert_allclose(x * mask, obs * mask, rtol=0, atol=1e-4)
    assert float(r["known_error"]) < 1e-4, float(r["known_error"])
    assert np.abs(x[:, h:]).mean() > 0.05, "the masked half was not filled in"
    # Plots are inline: loss curve, the two sample grids, the inpainting rows.
    pngs = sum(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells for o in c.get("outputs", []))
    assert pngs >= 3, pngs
    out = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                  if o.get("output_type") == "stream")
    assert "devices:" in out and "bits/dim of" in out


@pytest.mark.slow
def test_quickstart_notebook_from_checkpoint(trained, tmp_path):
    """``checkpoint=<workdir>`` skips training and samples from that run's final EMA params."""
    workdir, _, first = trained
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    nb, r = _run({**TINY, "workdir": str(tmp_path / "unused"), "checkpoint": str(workdir)},
                 tmp_path / "out.npz")
    assert not (tmp_path / "unused").exists()          # nothing trained
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
    assert int(r["step"]) == TINY["train_steps"]
    np.testing.assert_array_equal(r["losses"], first["losses"])   # the run's own metrics.jsonl
    # Same params, same seed, same keys: the same samples and inpaintings.
    for i in range(2):
        np.testing.assert_allclose(r[f"sample_{i}"], first[f"sample_{i}"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r["inpainted"], first["inpainted"], rtol=1e-5, atol=1e-5)
    out = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                  if o.get("output_type") == "stream")
    assert "training skipped" in out
