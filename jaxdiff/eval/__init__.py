"""Evaluation: sample-based distances (toy and analytic data), FID/IS/KID, sample grids."""

from jaxdiff.eval.distances import component_fractions, moment_errors, sliced_wasserstein

__all__ = ["sliced_wasserstein", "component_fractions", "moment_errors"]
