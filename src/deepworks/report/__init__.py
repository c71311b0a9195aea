"""A self-contained ``report.html`` per run directory (``deepworks report RUN_DIR``)."""

from deepworks.report.html import write_report

__all__ = ["write_report"]
