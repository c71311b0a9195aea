"""Serving a run over HTTP (``deepworks serve RUN_DIR``): FastAPI + uvicorn.

``create_app(run_dir, ...)`` returns the FastAPI app: ``POST /predict`` (an image upload in the
multipart field ``file``, or JSON ``{"rows": [...]}`` / ``{"texts": [...]}``), ``GET /health``,
``GET /ready`` and ``GET /`` (a page to try the model). Concurrent requests are micro-batched;
see :mod:`deepworks.serve.app`.
"""

from deepworks.serve.app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PIXELS, MicroBatcher, ServedModel, create_app

__all__ = ["create_app", "ServedModel", "MicroBatcher", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_PIXELS"]
