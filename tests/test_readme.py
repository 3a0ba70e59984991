"""The README's example runs as written (so the README cannot drift from the library), and the
set-up commands are the ones CI runs."""

import pathlib
import re

import jax.numpy as jnp

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_setup_commands():
    setup = _blocks("bash")[0].strip().splitlines()
    assert setup[1] == 'pip install -e ".[test]" && python -m pytest -q -m "not slow" -n auto'
    assert setup[0].startswith("pip install -e . && python launch/main.py --config=configs/")


def test_readme_example_runs_and_learns_the_mixture():
    (code,) = _blocks("python")
    scope = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - the README is ours
    x, nfe = scope["x"], scope["nfe"]
    assert x.shape == (512, 2) and int(nfe) == 200
    assert bool(jnp.all(jnp.isfinite(x)))
    # The trained model puts about half the samples near each mode (+-2, 0).
    frac_right = float(jnp.mean(x[:, 0] > 0))
    assert 0.3 < frac_right < 0.7, frac_right
    near = jnp.minimum(jnp.abs(x[:, 0] - 2.0), jnp.abs(x[:, 0] + 2.0))
    # exact samples: median 0.3 * 0.674 = 0.2; an untrained or sign-flipped score is far off
    assert float(jnp.median(near)) < 0.35, float(jnp.median(near))
    assert abs(float(jnp.mean(jnp.abs(x[:, 0]))) - 2.0) < 0.5
