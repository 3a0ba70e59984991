"""The embedded default dataset: scikit-learn's 8x8 handwritten digits as a tfds dataset.

The 1797 images ship inside scikit-learn (no download). :func:`prepare_digits` writes them once as
a tfds dataset ``sklearn_digits`` in ArrayRecord format (``tfds.core.GeneratorBasedBuilder``,
readable by ``tfds.data_source`` without TensorFlow): ``image`` uint8 ``(8, 8, 1)`` scaled from
0..16 to 0..255, ``label``, ``index`` (position in ``load_digits()``), in scikit-learn's order.
Split ``test`` holds every 10th image (180), ``train`` the other 1617.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

__all__ = ["SklearnDigits", "prepare_digits", "DIGITS_NAME"]

DIGITS_NAME = "sklearn_digits"


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 digits (UCI optical recognition of handwritten digits, test part)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "8x8 uint8 images (0..16 scaled to 0..255), labels 0-9."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # No checksums file: nothing is downloaded. (The default looks the module up through
        # ``importlib_resources``, which tfds does not declare as a dependency.)
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn's 8x8 handwritten digits, built offline.",
            features=tfds.features.FeaturesDict({
                # Tensor, not Image: Image encodes PNGs through TensorFlow, which is not installed.
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
                "index": tfds.features.Scalar(dtype=np.int64),  # position in load_digits()
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # keep scikit-learn's order
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {"train": self._generate_examples(test=False),
                "test": self._generate_examples(test=True)}

    def _generate_examples(self, test: bool):
        from sklearn.datasets import load_digits
        d = load_digits()
        images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        for i, (im, label) in enumerate(zip(images, d.target)):
            if (i % 10 == 0) == test:
                yield i, {"image": im[..., None], "label": int(label), "index": i}


def prepare_digits(data_dir: str) -> str:
    """Build the digits dataset under ``data_dir`` unless it is already there.

    Args:
      data_dir: tfds data directory (created if missing).

    Returns:
      ``data_dir``.
    """
    builder = SklearnDigits(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        os.makedirs(data_dir, exist_ok=True)
        builder.download_and_prepare()
    return data_dir
