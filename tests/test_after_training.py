"""After a short training run on the embedded digits (issue: evaluation): the evaluation of the
trained model beats that of an untrained one on the digits FID and on bits/dim, and the exact
(probability-flow) bits/dim is close to the variational bound that the training loss implies.

Slow (a few minutes on an idle 2-core CPU, far longer on a loaded one): ``pytest -m slow``.
The default run's numbers are in docs/eval.md."""

import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 1500


def _config(n_iters):
    from jaxdiff.train import load_config
    return load_config(os.path.join(ROOT, "configs", "digits.py"), [
        f"training.n_iters={n_iters}", "training.snapshot_sampling=False",
        "training.eval_freq=100000", "training.snapshot_freq=100000",
        "training.snapshot_freq_for_preemption=100000", "sampling.num_steps=200",
        "sampling.num_samples=128", "eval.num_samples=256", "eval.bpd_num_examples=32"])


@pytest.mark.slow
def test_short_training_beats_untrained_and_bpd_is_near_the_bound(tmp_path):
    from jaxdiff.tasks import evaluate, train
    reports = {}
    for name, steps in (("untrained", 1), ("trained", STEPS)):
        config = _config(steps)
        workdir = str(tmp_path / name)
        result = train(config, workdir, progress=False)
        assert result["step"] == steps and result["status"] == "done"
        reports[name] = evaluate(config, workdir)
    tr, un = reports["trained"], reports["untrained"]
    for r in (tr, un):
        for k in ("digits_fid", "bits_per_dim", "bits_per_dim_bound", "held_out_loss"):
            assert np.isfinite(r[k]), (k, r)
    assert tr["held_out_loss"] < 0.5 * un["held_out_loss"], (tr, un)
    assert tr["digits_fid"] < 0.5 * un["digits_fid"], (tr["digits_fid"], un["digits_fid"])
    assert tr["bits_per_dim"] < un["bits_per_dim"] - 0.5, (tr["bits_per_dim"], un["bits_per_dim"])
    # The probability-flow bits/dim of a trained model sits close to (usually a little below) the
    # variational bound of the same score.
    gap = tr["bits_per_dim_bound"] - tr["bits_per_dim"]
    assert -3 * tr["bits_per_dim_bound_stderr"] - 0.1 < gap < 0.5, (gap, tr)
