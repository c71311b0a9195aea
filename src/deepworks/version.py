"""The version of deepworks, in a module of its own: any layer (the report's and the study's page
footers, the export sidecar) can name it without importing ``deepworks/__init__.py``, which imports
the whole public API, pipeline included. The one place the version is written: pyproject.toml
reads it from here ([tool.setuptools.dynamic]), so keep it a plain string literal."""

__version__ = "0.1.0"
