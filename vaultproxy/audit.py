"""The audit log: one JSON line per request that used the vault (resolved or refused).

It records what happened and never a value: time, method, host, the path without its query
(the query is where values go), the keys, and the outcome.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from mitmproxy import http

logger = logging.getLogger(__name__)


class AuditLog:
    """Appends to `path`, kept open between requests (opening the file per request was a
    sixth of the addon's per-request cost)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._file: TextIO | None = None

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
            if self._file is None:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self._file = os.fdopen(fd, "a", encoding="utf-8")
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()
        except OSError as e:
            self.close()
            logger.warning(f"vaultproxy: cannot write the audit log {self.path}: {e.strerror}")

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
