"""Evaluation: sample-based distances (toy and analytic data), FID/IS/KID with a Flax FID
Inception (weights from a local file), digits-classifier metrics,
dataset bits/dim, and the evaluators of a run (:mod:`jaxdiff.eval.evaluators`)."""

from jaxdiff.eval.bpd import dataset_bits_per_dim
from jaxdiff.eval.convert_inception import convert_pth, convert_state_dict
from jaxdiff.eval.digits import DigitsClassifier, digits_metrics, load_or_train_digits_classifier
from jaxdiff.eval.distances import component_fractions, moment_errors, sliced_wasserstein
from jaxdiff.eval.evaluators import (
                                     EvalContext,
                                     Evaluator,
                                     from_config,
                                     register_eval_hook,
                                     run_evaluators,
                                     write_report,
)
from jaxdiff.eval.features import cached_statistics, extract_features, inception_feature_fn, make_feature_fn
from jaxdiff.eval.inception import FIDInceptionV3, load_inception_params, preprocess, save_inception_params
from jaxdiff.eval.metrics import (
                                     feature_statistics,
                                     fid_from_features,
                                     frechet_distance,
                                     inception_score,
                                     kernel_inception_distance,
                                     polynomial_mmd2_unbiased,
)
from jaxdiff.eval.quality import quality_metrics

__all__ = [
    "sliced_wasserstein", "component_fractions", "moment_errors",
    "FIDInceptionV3", "preprocess", "load_inception_params", "save_inception_params",
    "convert_state_dict", "convert_pth",
    "frechet_distance", "fid_from_features", "feature_statistics", "inception_score",
    "kernel_inception_distance", "polynomial_mmd2_unbiased",
    "make_feature_fn", "inception_feature_fn", "extract_features", "cached_statistics",
    "DigitsClassifier", "load_or_train_digits_classifier", "digits_metrics",
    "quality_metrics", "dataset_bits_per_dim",
    "Evaluator", "EvalContext", "from_config", "run_evaluators", "write_report",
    "register_eval_hook",
]
