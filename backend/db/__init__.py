"""The backend's storage: models, engine and sessions, schema migrations."""

from backend.db.session import Database, create_db_engine, normalize_url, redact

__all__ = ["Database", "create_db_engine", "normalize_url", "redact"]
