"""Reports on runs: ``report.html`` per run directory (``deepworks report RUN_DIR``; html.py,
sections.py, plots.py, context.py) and ``compare.py`` (several runs side by side in compare.html)."""

from deepworks.reporting.html import write_report

__all__ = ["write_report"]
