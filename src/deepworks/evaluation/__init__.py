"""Evaluation: metrics accumulated during training, classification and regression reports,
permutation importance, 2-D projections of activations, and the quality and variety of
generated images as a classifier of the same dataset sees them."""

from deepworks.evaluation.importance import permutation_importance, plot_importance
from deepworks.evaluation.metrics import MetricAccumulator, classification_report, render_report
from deepworks.evaluation.regression import RegressionAccumulator, regression_report, render_regression_report
from deepworks.evaluation.generative import Judge, frechet_distance, judge_generator, render_quality
from deepworks.evaluation.projection import capture_activations, default_layer, plot_projection, project_2d

__all__ = [
    "MetricAccumulator",
    "classification_report",
    "render_report",
    "RegressionAccumulator",
    "regression_report",
    "render_regression_report",
    "permutation_importance",
    "plot_importance",
    "capture_activations",
    "default_layer",
    "project_2d",
    "plot_projection",
    "Judge",
    "frechet_distance",
    "judge_generator",
    "render_quality",
]
