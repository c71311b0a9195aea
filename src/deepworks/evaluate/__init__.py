"""Evaluation: metrics accumulated during training and the classification report."""

from deepworks.evaluate.metrics import MetricAccumulator, classification_report, render_report

__all__ = ["MetricAccumulator", "classification_report", "render_report"]
