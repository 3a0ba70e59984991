"""Sample-quality metrics for ``launch/main.py --mode=eval`` (an evaluation hook).

:func:`quality_metrics` runs as the ``quality_metrics`` evaluator of
:func:`jaxdiff.eval.evaluators.from_config`. From the samples the evaluation draws once
(``ctx.samples()``) it computes

* for the embedded digits: the digits classifier metrics (:mod:`jaxdiff.eval.digits`), the
  classifier trained once on the training split and cached in ``<workdir>/eval/``;
* when ``config.eval.inception_weights`` names a converted Inception file: FID against the cached
  statistics of ``config.eval.fid_split`` (``<workdir>/eval/inception_stats_*.npz``), the Inception
  Score (10 splits) and KID.

Config keys read (with these defaults when absent): ``eval.enable_sampling`` (True),
``eval.inception_weights`` (''), ``eval.fid_split`` (the training split),
``eval.fid_num_reference`` (50000), ``eval.inception_batch_size`` (100), ``eval.kid_subsets``
(100), ``eval.kid_subset_size`` (1000), ``eval.digits_classifier_steps`` (300).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import jax
import numpy as np

from jaxdiff.data import eval_dataset
from jaxdiff.data.pipeline import get_source
from jaxdiff.eval import digits as digits_lib
from jaxdiff.eval import metrics
from jaxdiff.eval.features import cached_statistics, extract_features, inception_feature_fn

__all__ = ["quality_metrics", "to_unit_range", "digits_quality", "inception_quality"]


def _get(section, key: str, default):
    return section.get(key, default) if hasattr(section, "get") else default


def to_unit_range(samples, centered: bool) -> np.ndarray:
    """Model-space samples (``[-1, 1]`` if ``centered`` else ``[0, 1]``) -> clipped ``[0, 1]``."""
    x = np.asarray(samples, np.float32)
    if centered:
        x = (x + 1.0) / 2.0
    return np.clip(x, 0.0, 1.0)


def _split_images(config, data_dir: str, split: str, max_examples: int | None = None,
                  batch_size: int | None = None):
    """Yield ``{'image': uint8 (B, H, W, C), 'label': (B,)}`` batches of a split, unshuffled."""
    cfg = copy.deepcopy(config)
    cfg.data.eval_split = split
    n = len(get_source(cfg, split, data_dir))
    if max_examples:
        n = min(n, max_examples)
    bs = min(batch_size or n, n)
    ds = eval_dataset(cfg, data_dir, batch_size=bs, process_index=0, process_count=1)
    return ds, bs


def _all_images(config, data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    ds, _ = _split_images(config, data_dir, split)
    batches = [ds[i] for i in range(len(ds))]
    return (np.concatenate([b["image"] for b in batches]),
            np.concatenate([b["label"] for b in batches]))


def digits_quality(config, samples01: np.ndarray, *, workdir: str, data_dir: str,
                   key: jax.Array) -> dict:
    """Digits classifier metrics of samples in ``[0, 1]`` against the held-out split.

    The classifier is trained on the training split (at the model's resolution) on first use and
    cached as ``<workdir>/eval/digits_classifier_<H>x<W>.npz``. Returns the dict of
    :func:`jaxdiff.eval.digits.digits_metrics` plus ``digits_classifier_test_accuracy``.
    """
    d = config.data
    xtr, ytr = _all_images(config, data_dir, d.train_split)
    xte, yte = _all_images(config, data_dir, d.eval_split)
    h, w = xtr.shape[1:3]
    path = os.path.join(workdir, "eval", f"digits_classifier_{h}x{w}.npz")
    params = digits_lib.load_or_train_digits_classifier(
        path, key, xtr, ytr, tag=f"{d.dataset}/{d.train_split}",
        steps=int(_get(config.eval, "digits_classifier_steps", 300)))
    out = digits_lib.digits_metrics(params, samples01, xte)
    acc = np.mean(digits_lib.digits_features(params, xte)[1].argmax(1) == yte)
    out["digits_classifier_test_accuracy"] = float(acc)
    return out


def inception_quality(config, samples01: np.ndarray, *, workdir: str, data_dir: str,
                      key: jax.Array, mesh=None) -> dict:
    """FID, Inception Score and KID of samples in ``[0, 1]`` with the FID Inception.

    Reference statistics of ``config.eval.fid_split`` (up to ``fid_num_reference`` images) are
    computed once and cached in ``<workdir>/eval/``; the cache is keyed by dataset, split,
    resolution, count and the weights file (path, size, mtime).
    """
    e, d = config.eval, config.data
    weights = e.inception_weights
    fn, params = inception_feature_fn(weights, mesh)
    bs = int(_get(e, "inception_batch_size", 100))
    split = _get(e, "fid_split", "") or d.train_split
    n_ref = int(_get(e, "fid_num_reference", 50000))
    n_kid = int(_get(e, "kid_subset_size", 1000))
    st = os.stat(weights)
    tag = (f"{d.dataset}/{split}/{d.image_size}/{n_ref}/{os.path.abspath(weights)}/"
           f"{st.st_size}/{int(st.st_mtime)}")
    name = f"inception_stats_{d.dataset}_{split}_{d.image_size}_{n_ref}.npz"

    def compute():
        ds, _ = _split_images(config, data_dir, split, max_examples=n_ref, batch_size=bs)
        # the loader yields the whole split: stop after fid_num_reference images
        return extract_features(fn, params, (ds[i] for i in range(len(ds))),
                                max_examples=n_ref)[0]

    ref = cached_statistics(os.path.join(workdir, "eval", name), compute, tag=tag,
                            keep_features=max(n_kid, 2))
    pool, logits = extract_features(fn, params, samples01, batch_size=bs)
    fid = metrics.frechet_distance(*metrics.feature_statistics(pool), ref["mu"], ref["sigma"])
    is_mean, is_std = metrics.inception_score(logits, splits=min(10, len(logits)))
    kid, kid_std = metrics.kernel_inception_distance(
        key, pool, ref["features"], num_subsets=int(_get(e, "kid_subsets", 100)),
        subset_size=n_kid)
    return {"fid": fid, "inception_score": is_mean, "inception_score_std": is_std, "kid": kid,
            "kid_std": kid_std, "fid_num_samples": int(len(pool)),
            "fid_num_reference": int(ref["num_examples"]), "fid_split": split}


def quality_metrics(ctx: Any) -> dict:
    """Sample-quality metrics: ``ctx`` is :class:`jaxdiff.eval.evaluators.EvalContext` (or anything
    with ``config``, ``samples()``, ``key``, ``workdir``, ``data_dir``); returns a dict."""
    c = ctx.config
    if c.data.dataset == "toy" or not _get(c.eval, "enable_sampling", True):
        return {}
    want_digits = c.data.dataset == "digits"
    want_inception = bool(_get(c.eval, "inception_weights", ""))
    if not (want_digits or want_inception):
        return {}
    x01 = to_unit_range(ctx.samples(), c.data.centered)
    out = {}
    k_digits, k_kid = jax.random.split(jax.random.fold_in(ctx.key, 55))
    if want_digits:
        out.update(digits_quality(c, x01, workdir=ctx.workdir, data_dir=ctx.data_dir,
                                  key=k_digits))
    if want_inception:
        out.update(inception_quality(c, x01, workdir=ctx.workdir, data_dir=ctx.data_dir,
                                     key=k_kid, mesh=getattr(ctx, "mesh", None)))
    return out
