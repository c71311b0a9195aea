"""Evaluation: metrics accumulated during training, classification and regression reports."""

from deepworks.evaluate.metrics import MetricAccumulator, classification_report, render_report
from deepworks.evaluate.regression import RegressionAccumulator, regression_report, render_regression_report

__all__ = [
    "MetricAccumulator",
    "classification_report",
    "render_report",
    "RegressionAccumulator",
    "regression_report",
    "render_regression_report",
]
