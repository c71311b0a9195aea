"""Deployment: a run's best model as a file that runs without deepworks (``deepworks export``).

``export(run_dir, format="onnx")`` writes ``model.onnx`` (a dynamic batch axis, fp32) and
``model.onnx.json`` beside it (what the graph's input means and how raw images, table rows or
texts become it), after checking ONNX Runtime's outputs against PyTorch's on real validation
samples; see :mod:`deepworks.exporting.to_onnx`.
"""

from deepworks.exporting.to_onnx import DEFAULT_OPSET, FORMAT_VERSION, TOLERANCE, ExportError, export

__all__ = ["export", "ExportError", "DEFAULT_OPSET", "FORMAT_VERSION", "TOLERANCE"]
