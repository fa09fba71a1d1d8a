"""The backend's public API as the demo reads it: epochs and the record log, page by page."""

from __future__ import annotations

from typing import Any

import httpx


class BackendApi:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(self.url + path, params=params, timeout=30.0)
        response.raise_for_status()
        return response.json()

    def epochs(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.get("/v1/epochs", afterEpochId=after, limit=1000)
            found += page["epochs"]
            if page["nextAfterEpochId"] is None:
                return found
            after = page["nextAfterEpochId"]

    def log_records(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        after = -1
        while True:
            page = self.get("/v1/records", afterLogIndex=after, limit=1000)
            found += page["records"]
            if page["nextAfterLogIndex"] is None:
                return found
            after = page["nextAfterLogIndex"]

    def log_size(self) -> int:
        """How many records the backend holds (sealed or not)."""
        return int(self.get("/v1/records", limit=1)["logSize"])
