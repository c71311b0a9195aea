"""The version of deepworks, in a module of its own: any layer (the report's and the study's page
footers, the export sidecar) can name it without importing ``deepworks/__init__.py``, which imports
the whole public API, pipeline included."""

__version__ = "0.1.0"  # as pyproject.toml's [project] version
