"""Input pipelines: grain over tfds data sources, the embedded digits dataset, toy distributions."""

from jaxdiff.data.pipeline import (
                                   DatasetNotFound,
                                   eval_dataset,
                                   example_shape,
                                   get_source,
                                   resolve_data_dir,
                                   scale_images,
                                   select_fields,
                                   train_dataset,
)
from jaxdiff.data.toy import TOY_NAMES, ToySource, sample_toy, toy_mixture

__all__ = ["train_dataset", "eval_dataset", "get_source", "resolve_data_dir", "example_shape",
           "scale_images", "DatasetNotFound", "ToySource", "sample_toy", "toy_mixture",
           "TOY_NAMES", "select_fields"]
