"""The audit log: one JSON line per request that used the vault (resolved or refused).

It records what happened and never a value: time, method, host, the path without its query
(the query is where values go), the keys, and the outcome.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from mitmproxy import http

logger = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, path: Path | None):
        self.path = path

    def record(self, request: http.Request, path: str, keys: list[str], outcome: str) -> None:
        """`path` is the request's path as the client sent it (placeholders, not values)."""
        if self.path is None:
            return
        line = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "method": request.method,
            "host": request.host,
            "path": path.split("?", 1)[0],
            "keys": keys,
            "outcome": outcome,
        }
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(json.dumps(line) + "\n")
        except OSError as e:
            logger.warning(f"vaultproxy: cannot write the audit log {self.path}: {e.strerror}")
