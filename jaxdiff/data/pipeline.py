"""grain input pipelines over ``tfds.data_source`` (no TensorFlow) and the toy sources.

Training pipeline (one per host): a grain ``MapDataset`` over *batch* indices,
``range(inf)[host::num_hosts].map(read_batch)``, where local batch ``j`` holds positions
``[j b, (j + 1) b)`` of one global stream (``b`` the per-host batch). Position ``q`` is example
``perm_e[q mod N]`` of epoch ``e = q div N`` (a fresh permutation per epoch, drawn from the seed),
so concatenating the hosts' batches in process order gives exactly the global batch a single
process would see, and the order is a pure function of the seed and the step. Reading, flips and
dequantisation are vectorised per batch (grain's per-example overhead would dominate a small
model's step on a CPU); datasets of up to 65536 examples are cached in memory. The iterator is a
grain ``DatasetIterator`` whose state is saved in the checkpoint
(``grain.checkpoint.CheckpointSave``), so a restarted run continues with the same examples.

Elements are dicts: ``'x'`` float32 (the model input: ``(H, W, C)`` images in ``[0, 1]``, or
``[-1, 1]`` when ``config.data.centered``, optionally uniformly dequantised; ``(dim,)`` toy
vectors), for images also ``'image'`` (uint8 at the model resolution, for bits/dim) and ``'label'``.
"""

from __future__ import annotations

import os

import grain
import numpy as np

from jaxdiff.data.toy import ToySource

__all__ = ["get_source", "train_dataset", "eval_dataset", "DatasetNotFound", "scale_images",
           "resolve_data_dir", "example_shape", "select_fields"]


_STREAM_LEN = 1 << 40  # "infinite" stream of batch indices


class DatasetNotFound(FileNotFoundError):
    """The dataset (or its data_dir) is not prepared; the message says how to prepare it."""


def resolve_data_dir(config, workdir: str | None = None) -> str:
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


def select_fields(batch: dict, fields: tuple = ("x",)):
    """What a loss sees of a pipeline batch: the array of ``'x'`` for ``fields == ('x',)``, else
    the dict of ``fields`` (a task's ``batch_fields``, e.g. ``('x', 'label')``)."""
    if tuple(fields) == ("x",):
        return batch["x"]
    return {f: batch[f] for f in fields}


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
        from jaxdiff.data.digits import DIGITS_NAME, prepare_digits  # defines a tfds builder
        prepare_digits(data_dir)
        name = DIGITS_NAME
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types (DatasetNotFoundError, AssertionError...)
        msg = str(e).splitlines()[0] if str(e) else ""
        raise DatasetNotFound(
            f"config.data.dataset={name!r} (split {split!r}) is not prepared under "
            f"data_dir={data_dir!r} ({type(e).__name__}: {msg}). Prepare it once on a machine "
            f"with internet: `tfds build {name} --data_dir={data_dir} "
            f"--file_format=array_record` (or set config.data.data_dir to where it lives); "
            f"'digits' and 'toy' need no preparation.") from e


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
    out = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC if size > img.shape[0]
                                else Image.Resampling.LANCZOS))
    return out.reshape(size, size, c)


def scale_images(images: np.ndarray, centered: bool) -> np.ndarray:
    """uint8 (or dequantised float in [0, 256)) -> float32 in ``[0, 1]`` or ``[-1, 1]``."""
    x = np.asarray(images, np.float32) / 256.0 if images.dtype != np.uint8 else \
        np.asarray(images, np.float32) / 255.0
    return 2.0 * x - 1.0 if centered else x


class _BatchReader:
    """Reads the local batch ``j`` of the stream (a grain map over batch indices, so every
    Python-level cost is per batch, not per example).

    Local batch ``j`` holds stream positions ``[j b, (j + 1) b)``; position ``q`` is example
    ``perm_e[q mod N]`` of epoch ``e = q div N``, where ``perm_e`` is a permutation drawn from
    ``(seed, e)`` (identity without shuffling). Random flips and dequantisation noise are drawn
    per *global* batch ``k = j div P`` from ``(seed, k)`` and sliced, so they do not depend on
    the number of hosts either. Small sources are cached in memory on first use.
    """

    def __init__(self, source, *, batch: int, process_count: int, seed: int, shuffle: bool,
                 flip: bool, dequantize: bool, centered: bool, image: tuple | None,
                 center_crop: int = 0, cache_limit: int = 1 << 16):
        self.source, self.n = source, len(source)
        self.batch, self.pc, self.seed, self.shuffle = batch, process_count, seed, shuffle
        self.flip, self.dequantize, self.centered = flip, dequantize, centered
        self.image, self.center_crop = image, center_crop
        self.cache_limit = cache_limit
        self._cache: dict | None = None
        self._perm: dict = {}

    def __getstate__(self):  # do not ship caches to grain worker processes
        d = dict(self.__dict__)
        d["_cache"], d["_perm"] = None, {}
        return d

    def _indices(self, positions: np.ndarray) -> np.ndarray:
        if not self.shuffle:
            return positions % self.n
        epochs, within = np.divmod(positions, self.n)
        out = np.empty_like(positions)
        for e in np.unique(epochs):
            if e not in self._perm:
                if len(self._perm) > 2:
                    self._perm.clear()
                self._perm[e] = np.random.default_rng([self.seed, 0, int(e)]).permutation(self.n)
            sel = epochs == e
            out[sel] = self._perm[e][within[sel]]
        return out

    def _read(self, idx: np.ndarray) -> dict:
        if self._cache is None and self.n <= self.cache_limit:
            self._cache = self._read_raw(np.arange(self.n))
        if self._cache is not None:
            return {k: v[idx] for k, v in self._cache.items()}
        return self._read_raw(idx)

    def _read_raw(self, idx: np.ndarray) -> dict:
        exs = None
        if hasattr(self.source, "__getitems__"):
            try:
                exs = self.source.__getitems__([int(i) for i in idx])
            except TypeError:  # e.g. tfds.testing.mock_data's source
                exs = None
        if exs is None:
            exs = [self.source[int(i)] for i in idx]
        if self.image is None:
            return {"x": np.stack([np.asarray(e["x"], np.float32) for e in exs])}
        size, channels = self.image
        imgs = []
        for e in exs:
            img = np.asarray(e["image"])
            img = img[..., None] if img.ndim == 2 else img
            if img.shape[-1] != channels:
                raise ValueError(f"config.data.num_channels={channels} but the dataset's images "
                                 f"have {img.shape[-1]} channels")
            imgs.append(_resize(img.astype(np.uint8), size, self.center_crop))
        labels = np.asarray([int(e.get("label", -1)) if hasattr(e, "get") else -1 for e in exs],
                            np.int32)
        return {"image": np.stack(imgs), "label": labels}

    def __call__(self, j: int) -> dict:
        j = int(j)
        positions = j * self.batch + np.arange(self.batch, dtype=np.int64)
        ex = self._read(self._indices(positions))
        if self.image is None:
            return ex
        img = ex["image"]
        k, part = divmod(j, self.pc)
        rows = slice(part * self.batch, (part + 1) * self.batch)
        rng = np.random.default_rng([self.seed, 1, k])
        gb = self.batch * self.pc
        if self.flip:
            flips = (rng.uniform(size=gb) < 0.5)[rows]
            img = np.where(flips[:, None, None, None], img[:, :, ::-1], img)
        if self.dequantize:
            u = rng.uniform(size=(gb,) + img.shape[1:]).astype(np.float32)[rows]
            x = (img.astype(np.float32) + u) / 256.0
            x = 2.0 * x - 1.0 if self.centered else x
        else:
            x = scale_images(img, self.centered)
        return {"x": x.astype(np.float32), "image": np.ascontiguousarray(img),
                "label": ex["label"]}


def _reader(config, source, *, batch: int, process_count: int, train: bool) -> _BatchReader:
    d = config.data
    image = None if d.dataset == "toy" else (d.image_size, d.num_channels)
    return _BatchReader(source, batch=batch, process_count=process_count, seed=config.seed,
                        shuffle=train, flip=bool(d.random_flip) and train,
                        dequantize=bool(d.uniform_dequantization) and train,
                        centered=bool(d.centered), image=image, center_crop=d.center_crop)


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
    reader = _reader(config, source, batch=local, process_count=process_count, train=True)
    ds = grain.MapDataset.range(_STREAM_LEN)[process_index::process_count].map(reader)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                prefetch_buffer_size=4))


def eval_dataset(config, data_dir: str, *, batch_size: int | None = None,
                 process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
    """The held-out split, unshuffled, batched (``drop_remainder``), sharded like training.

    Returns a ``grain.MapDataset`` of batches (index it, or iterate over it once).
    """
    source = get_source(config, config.data.eval_split, data_dir)
    bs = batch_size or config.eval.batch_size
    local = _local_batch(bs, process_count, "config.eval.batch_size")
    reader = _reader(config, source, batch=local, process_count=process_count, train=False)
    n_batches = (len(source) // bs) * process_count
    return grain.MapDataset.range(n_batches)[process_index::process_count].map(reader)
