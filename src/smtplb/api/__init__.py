"""The HTTP API (SPEC §3.3): routes in ``routes.py``, written against the
``Operations`` interface in ``operations.py``; ``/openapi.json`` from ``openapi.py``."""

from smtplb.api.operations import Operations
from smtplb.api.routes import create_app

__all__ = ["Operations", "create_app"]
