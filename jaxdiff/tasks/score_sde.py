"""The unconditional score-SDE task (Song et al. 2021): denoising score matching of
``config.training``, sampling with ``config.sampling`` (:func:`jaxdiff.train.sampling.build_sampler`),
the generic evaluators (held-out loss, bits/dim, toy sliced Wasserstein, sample quality)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import parallel
from jaxdiff.data.toy import sample_toy
from jaxdiff.eval.distances import sliced_wasserstein
from jaxdiff.tasks.base import Task, register_task
from jaxdiff.train.evaluate import load_params
from jaxdiff.train.sampling import build_sampler, save_image_grid, save_scatter, to_uint8
from jaxdiff.train.step import get_loss_fn, get_score_fns

__all__ = ["ScoreSDETask"]


@register_task("score_sde")
class ScoreSDETask(Task):
    """Unconditional score-SDE training of ``config.model`` on ``config.data``."""

    def __init__(self, config, mesh=None):
        super().__init__(config, mesh)
        self._samplers: dict = {}

    def make_score_fns(self) -> tuple:
        """The network as a score function (``config.model.parameterization``,
        ``scale_by_sigma``, ``config.training.continuous``), dropout on / off."""
        return get_score_fns(self.config, self.model, self.sde)

    def make_loss(self, score_fn, *, train: bool):
        """:func:`jaxdiff.train.step.get_loss_fn` of ``config.training``."""
        return get_loss_fn(self.config, self.sde, score_fn, train=train)

    def sampler(self, n: int):
        """The (cached) ``sample(params, key) -> (x, nfe)`` of ``config.sampling`` for ``n``."""
        if n not in self._samplers:
            self._samplers[n] = build_sampler(self.config, self.sde, self.score_fn,
                                              (int(n),) + self.example_shape)
        return self._samplers[n]

    def draw_samples(self, params, key, n: int) -> np.ndarray:
        """``n`` samples in chunks of at most ``config.sampling.num_samples``."""
        chunk = min(int(n), int(self.config.sampling.num_samples))
        keys = jax.random.split(key, -(-int(n) // chunk))
        xs = [np.asarray(jax.device_get(self.sampler(chunk)(params, k)[0])) for k in keys]
        return np.concatenate(xs)[:n]

    def snapshot(self, params, step: int, *, workdir: str, data_dir: str) -> dict:
        """``config.sampling.num_samples`` samples: ``<workdir>/samples/step_<step>.png`` (image
        grid, or a scatter over the true distribution for toy data, then also
        ``{'sliced_wasserstein': ...}`` to it)."""
        c = self.config
        n = c.sampling.num_samples
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(c.seed), 2), step)
        x = np.asarray(jax.device_get(self.sampler(n)(params, key)[0]))
        out = os.path.join(workdir, "samples", f"step_{step:08d}.png")
        if c.data.dataset != "toy":
            if parallel.is_main_process():
                save_image_grid(out, x, centered=c.data.centered)
            return {}
        ref = sample_toy(c.data.toy, np.random.default_rng(c.seed + 7), n, c.data.dim)
        sw = float(sliced_wasserstein(jax.random.PRNGKey(3), jnp.asarray(x), jnp.asarray(ref),
                                      c.eval.sw_projections))
        if parallel.is_main_process():
            save_scatter(out, x, reference=ref)
        return {"sliced_wasserstein": sw}

    def sample(self, workdir: str, *, num_samples: int | None = None,
               stage_workdirs: Sequence[str] | None = None) -> dict:
        """Samples from the EMA params of the newest (or ``config.eval.checkpoint_step``)
        checkpoint with ``config.sampling``.

        Writes ``<workdir>/samples/samples_<step>.npz`` (``x``: model-space float samples,
        ``images``: uint8 for image data, ``nfe``) and ``samples_<step>.png`` (grid, or scatter
        for toy data). Returns ``{'step', 'npz', 'png', 'nfe', 'shape'}``.
        """
        c = self.config
        params, step, _ = load_params(self, workdir, step=c.eval.checkpoint_step)
        n = num_samples or c.sampling.num_samples
        key = jax.random.fold_in(jax.random.PRNGKey(c.seed), 2000 + step)
        x, nfe = self.sampler(n)(params, key)
        x = np.asarray(jax.device_get(x))
        out = os.path.join(workdir, "samples")
        npz = os.path.join(out, f"samples_{step}.npz")
        png = os.path.join(out, f"samples_{step}.png")
        if parallel.is_main_process():
            os.makedirs(out, exist_ok=True)
            arrays: dict[str, Any] = {"x": x, "nfe": np.asarray(nfe)}
            if c.data.dataset == "toy":
                save_scatter(png, x)
            else:
                arrays["images"] = to_uint8(x, c.data.centered)
                save_image_grid(png, x, centered=c.data.centered)
            np.savez(npz, **arrays)
        return {"step": step, "npz": npz, "png": png, "nfe": int(nfe), "shape": list(x.shape)}
