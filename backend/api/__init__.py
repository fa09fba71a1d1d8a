"""The HTTP API (FastAPI)."""

from backend.api.app import create_app

__all__ = ["create_app"]
