"""The HTTP API (SPEC §3.3): routes in ``routes.py``."""

from smtplb.api.routes import create_app

__all__ = ["create_app"]
