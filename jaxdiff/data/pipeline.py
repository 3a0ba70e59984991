"""grain input pipelines over ``tfds.data_source`` (no TensorFlow) and the toy sources.

Training pipeline (one per host)::

    source -> shuffle(seed) -> repeat (reshuffled every epoch) -> preprocess -> random flip
           -> batch(global_batch / num_hosts) -> take every num_hosts-th batch from this host's index

Batch ``j`` of host ``p`` of ``P`` therefore holds examples ``[(jP + p) b, (jP + p + 1) b)`` of
the one global shuffled stream (``b`` the per-host batch): concatenating the hosts' batches in
process order gives exactly the global batch a single process would see, and the order is a
pure function of the seed and the step. The iterator is a grain ``DatasetIterator`` whose state
is saved in the checkpoint (``grain.checkpoint.CheckpointSave``), so a restarted run continues
with the same examples.

Elements are dicts: ``'x'`` float32 (the model input: ``(H, W, C)`` images in ``[0, 1]``, or
``[-1, 1]`` when ``config.data.centered``, optionally uniformly dequantised; ``(dim,)`` toy
vectors), for images also ``'image'`` (uint8 at the model resolution, for bits/dim) and ``'label'``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import grain
import numpy as np

from jaxdiff.data.toy import ToySource

__all__ = ["get_source", "train_dataset", "eval_dataset", "DatasetNotFound", "scale_images",
           "resolve_data_dir", "example_shape"]


class DatasetNotFound(FileNotFoundError):
    """The dataset (or its data_dir) is not prepared; the message says how to prepare it."""


def resolve_data_dir(config, workdir: Optional[str] = None) -> str:
    """``config.data.data_dir``, or ``<workdir>/tfds`` for the embedded digits, or the tfds
    default (``$TFDS_DATA_DIR`` / ``~/tensorflow_datasets``)."""
    d = config.data.data_dir
    if d:
        return os.path.expanduser(d)
    if config.data.dataset == "digits":
        if workdir is None:
            raise ValueError("the digits dataset is built into <workdir>/tfds: give a workdir or "
                             "set config.data.data_dir")
        return os.path.join(workdir, "tfds")
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def example_shape(config) -> tuple[int, ...]:
    """Shape of one model input: ``(dim,)`` for toy data, ``(H, W, C)`` for images."""
    if config.data.dataset == "toy":
        return (config.data.dim,)
    return (config.data.image_size, config.data.image_size, config.data.num_channels)


def get_source(config, split: str, data_dir: str):
    """A random-access source: the toy source, the digits (built on first use) or a tfds dataset.

    Raises:
      DatasetNotFound: the tfds dataset is not prepared under ``data_dir`` (the message gives the
        command to prepare it) or the split does not exist.
    """
    name = config.data.dataset
    if name == "toy":
        seed = config.seed * 1000 + (0 if split == config.data.train_split else 1)
        return ToySource(config.data.toy, dim=config.data.dim, size=config.data.toy_size,
                         seed=seed)
    import tensorflow_datasets as tfds
    if name == "digits":
        from jaxdiff.data.digits import DIGITS_NAME, prepare_digits
        prepare_digits(data_dir)
        name = DIGITS_NAME
    try:
        sources = tfds.data_source(name, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types (DatasetNotFoundError, AssertionError...)
        raise DatasetNotFound(
            f"config.data.dataset={name!r} is not prepared under data_dir={data_dir!r} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Prepare it once on "
            f"a machine with internet: `tfds build {name} --data_dir={data_dir} "
            f"--file_format=array_record` (or set config.data.data_dir to where it lives); "
            f"'digits' and 'toy' need no preparation.") from e
    if split not in sources:
        raise DatasetNotFound(f"config.data: split {split!r} not in dataset {name!r} "
                              f"(splits: {sorted(sources)})")
    return sources[split]


def _resize(img: np.ndarray, size: int, crop: int) -> np.ndarray:
    if crop:
        h, w = img.shape[:2]
        if crop > min(h, w):
            raise ValueError(f"config.data.center_crop={crop} exceeds the image size {h}x{w}")
        top, left = (h - crop) // 2, (w - crop) // 2
        img = img[top:top + crop, left:left + crop]
    if img.shape[0] == size and img.shape[1] == size:
        return img
    from PIL import Image
    c = img.shape[-1]
    pil = Image.fromarray(img[..., 0] if c == 1 else img)
    out = np.asarray(pil.resize((size, size), Image.BICUBIC if size > img.shape[0]
                                else Image.LANCZOS))
    return out.reshape(size, size, c)


def scale_images(images: np.ndarray, centered: bool) -> np.ndarray:
    """uint8 (or dequantised float in [0, 256)) -> float32 in ``[0, 1]`` or ``[-1, 1]``."""
    x = np.asarray(images, np.float32) / 256.0 if images.dtype != np.uint8 else \
        np.asarray(images, np.float32) / 255.0
    return 2.0 * x - 1.0 if centered else x


@dataclasses.dataclass(frozen=True)
class _Preprocess:
    image_size: int
    num_channels: int
    center_crop: int
    centered: bool
    dequantize: bool
    flip: bool

    def __call__(self, ex: dict, rng: np.random.Generator) -> dict:
        img = np.asarray(ex["image"])
        if img.ndim == 2:
            img = img[..., None]
        if img.shape[-1] != self.num_channels:
            raise ValueError(f"config.data.num_channels={self.num_channels} but the dataset's "
                             f"images have {img.shape[-1]} channels")
        img = _resize(img.astype(np.uint8), self.image_size, self.center_crop)
        if self.flip and rng.uniform() < 0.5:
            img = img[:, ::-1]
        img = np.ascontiguousarray(img)
        if self.dequantize:
            x = (img.astype(np.float32) + rng.uniform(size=img.shape).astype(np.float32)) / 256.0
            x = 2.0 * x - 1.0 if self.centered else x
        else:
            x = scale_images(img, self.centered)
        return {"x": x.astype(np.float32), "image": img,
                "label": np.asarray(ex.get("label", -1), np.int32)}


def _toy_map(ex: dict) -> dict:
    return {"x": ex["x"]}


def _map_dataset(config, source, *, train: bool) -> grain.MapDataset:
    ds = grain.MapDataset.source(source)
    if train:
        ds = ds.shuffle(seed=config.seed).repeat(None)
    if config.data.dataset == "toy":
        return ds.map(_toy_map)
    d = config.data
    prep = _Preprocess(d.image_size, d.num_channels, d.center_crop, d.centered,
                       bool(d.uniform_dequantization) and train, bool(d.random_flip) and train)
    return ds.random_map(prep, seed=config.seed + 1)


def _local_batch(global_batch: int, process_count: int, what: str) -> int:
    if global_batch % process_count:
        raise ValueError(f"{what}={global_batch} is not divisible by the number of processes "
                         f"{process_count}")
    return global_batch // process_count


def train_dataset(config, data_dir: str, *, process_index: int = 0, process_count: int = 1,
                  num_threads: int = 2) -> grain.IterDataset:
    """The infinite, sharded, batched training stream of this host.

    Args:
      config: the experiment config (``data``, ``training.batch_size``, ``seed``).
      data_dir: tfds data directory (see :func:`resolve_data_dir`).
      process_index, process_count: this host and the number of hosts
        (``jax.process_index()``, ``jax.process_count()``).
      num_threads: grain read threads (the order does not depend on it).

    Returns:
      A ``grain.IterDataset``; ``iter()`` of it is a checkpointable ``DatasetIterator`` of dicts
      with ``'x'`` float32 ``(global_batch / process_count, *example_shape)``.
    """
    source = get_source(config, config.data.train_split, data_dir)
    local = _local_batch(config.training.batch_size, process_count, "config.training.batch_size")
    ds = _map_dataset(config, source, train=True).batch(local, drop_remainder=True)
    ds = ds[process_index::process_count]
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                prefetch_buffer_size=4))


def eval_dataset(config, data_dir: str, *, batch_size: Optional[int] = None,
                 process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
    """The held-out split, unshuffled, batched (``drop_remainder``), sharded like training.

    Returns a ``grain.MapDataset`` of batches (index it, or iterate over it once).
    """
    source = get_source(config, config.data.eval_split, data_dir)
    bs = batch_size or config.eval.batch_size
    local = _local_batch(bs, process_count, "config.eval.batch_size")
    ds = _map_dataset(config, source, train=False).batch(local, drop_remainder=True)
    return ds[process_index::process_count]
