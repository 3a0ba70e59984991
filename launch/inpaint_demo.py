"""Inpaint the lower half of held-out digits with a trained score model and write a PNG grid.

    python launch/main.py --config=configs/digits.py --workdir=runs/digits --mode=train
    python launch/inpaint_demo.py --config=configs/digits.py --workdir=runs/digits

The grid has one column per test digit and rows: the original, the observed upper half (lower
half gray), then ``--num_draws`` independent inpaintings. Every draw keeps the observed pixels
exactly; one compiled sampler serves all digits (vmap over observations). ``--method`` picks the
replacement PC sampler (Song et al. 2021), the probability-flow ODE, or the SMC sampler.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/digits.py", "training config of the model")
flags.DEFINE_string("workdir", None, "the training run's directory (checkpoints)")
flags.DEFINE_string("out", "", "output PNG (default <workdir>/inpaint/inpaint_<step>.png)")
flags.DEFINE_integer("num_digits", 8, "number of held-out digits (columns)")
flags.DEFINE_integer("num_draws", 4, "inpaintings per digit (rows after the two reference rows)")
flags.DEFINE_enum("method", "pc", ["pc", "ode", "smc"], "sampler")
flags.DEFINE_integer("num_steps", 0, "reverse steps (0: config.sampling.num_steps or the SDE's N)")
flags.DEFINE_string("corrector", "langevin", "PC corrector ('none' for none)")
flags.DEFINE_integer("seed", 0, "PRNG seed")
flags.mark_flags_as_required(["workdir"])


def lower_half_mask(shape):
    """``(H, W, C)`` mask: 1 on the upper half (observed), 0 on the lower half."""
    import numpy as np
    h = shape[0]
    mask = np.zeros(shape, np.float32)
    mask[: h // 2] = 1.0
    return mask


def inpaint(config, workdir, *, num_digits=8, num_draws=4, method="pc", num_steps=0,
            corrector="langevin", seed=0, out=""):
    """Load the newest checkpoint of ``workdir``, inpaint ``num_digits`` held-out digits
    ``num_draws`` times each, save the grid; return ``{'png', 'step', 'nfe', 'max_known_error'}``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdiff import inverse as inv
    from jaxdiff.data import eval_dataset, resolve_data_dir
    from jaxdiff.inverse.smc import smc_inverse_sampler
    from jaxdiff.tasks import load_params

    params, step, exp = load_params(config, workdir)
    shape = exp.example_shape
    data = eval_dataset(config, resolve_data_dir(config, workdir))[0]   # first held-out batch
    images = np.asarray(data["x"], np.float32).reshape((-1,) + tuple(shape))  # model space
    if len(images) < num_digits:
        raise ValueError(f"num_digits={num_digits} exceeds the eval batch of {len(images)}")
    # evenly spaced picks (the held-out split may be ordered by class)
    images = images[np.linspace(0, len(images) - 1, num_digits).astype(int)]
    mask = lower_half_mask(shape)
    n = num_steps or config.sampling.num_steps or exp.sde.N
    batch_shape = (num_draws,) + tuple(shape)
    if method == "smc":
        smc = smc_inverse_sampler(exp.sde, exp.score_fn, batch_shape, num_steps=n)
        op = inv.Mask(jnp.asarray(mask)[None])

        def one(key, y):
            return smc(params, key, inv.Observation(op, (mask * y)[None]))
    else:
        kw = dict(num_steps=n, corrector=None if corrector == "none" else corrector) \
            if method == "pc" else dict(rtol=1e-3, atol=1e-3)
        sampler = inv.inpaint_sampler(exp.sde, exp.score_fn, batch_shape, method=method, **kw)

        def one(key, y):
            return sampler(params, key, inv.Observation.inpainting(y[None], jnp.asarray(mask)))

    keys = jax.random.split(jax.random.key(seed), num_digits)
    x, nfe = jax.jit(jax.vmap(one))(keys, jnp.asarray(images))        # (digits, draws, H, W, C)
    x = np.asarray(x)
    known_err = float(np.max(np.abs((x - images[:, None]) * mask)))
    gray = 0.0 if config.data.centered else 0.5                       # mid-gray in model space
    observed = images * mask + (1 - mask) * gray
    rows = [images, observed] + [x[:, d] for d in range(num_draws)]
    grid = np.stack(rows, 0).reshape((-1,) + tuple(shape))                 # row-major
    png = out or os.path.join(workdir, "inpaint", f"inpaint_{method}_{step}.png")
    _save_rows(png, grid, len(rows), num_digits, centered=config.data.centered)
    return {"png": png, "step": step, "nfe": int(np.asarray(nfe).ravel()[0]),
            "max_known_error": known_err, "method": method}


def _save_rows(path, images, rows, cols, *, centered):
    """Grid with ``rows`` x ``cols`` cells (``images`` in row-major order)."""
    import numpy as np
    from PIL import Image

    from jaxdiff.train.sampling import to_uint8
    imgs = to_uint8(images, centered)
    n, h, w, c = imgs.shape
    pad = 1
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h,
             pad + col * (w + pad): pad + col * (w + pad) + w] = imgs[i]
    scale = max(1, -(-256 // grid.shape[0]))
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        result = inpaint(FLAGS.config, FLAGS.workdir, num_digits=FLAGS.num_digits,
                         num_draws=FLAGS.num_draws, method=FLAGS.method,
                         num_steps=FLAGS.num_steps, corrector=FLAGS.corrector, seed=FLAGS.seed,
                         out=FLAGS.out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
