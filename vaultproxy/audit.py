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
    sixth of the addon's per-request cost), and reopened once `path` names another file or
    none: lines written to a log rotated away or deleted would never be seen."""

    def __init__(self, path: Path | None):
        self.path = path
        self._file: TextIO | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file

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
            file = self._open(self.path)
            file.write(json.dumps(line) + "\n")
            file.flush()
        except OSError as e:
            self.close()
            logger.warning(f"vaultproxy: cannot write the audit log {self.path}: {e.strerror}")

    def _open(self, path: Path) -> TextIO:
        """The file `path` names now: one stat per record tells a rotated or deleted log."""
        if self._file is not None and _identity(path) != self._identity:
            self.close()
        if self._file is None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "a", encoding="utf-8")
            self._identity = _identity(fd)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def _identity(file: Path | int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a path or an open descriptor; None when the path names nothing."""
    try:
        st = os.stat(file)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
