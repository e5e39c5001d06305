"""What the proxy did with each request that used the vault (resolved or refused): one JSON
line in the audit log, and one line on the proxy's console.

Both say what happened and never a value: time, method, host, the path without its query
(the query is where values go), the keys, and the outcome; the console line also says why a
request was refused. One record makes both, so they never disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from mitmproxy import http

from vaultcore.auditlog import open_own
from vaultcore.peertext import quoted
from vaultcore.placeholders import SubstitutionError

logger = logging.getLogger(__name__)
# The log is appended to, and made (0600) when missing.
WRITE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT

RESOLVED = "resolved"
REFUSED = "refused"  # the prefix of a refusal's outcome: refused:CODE


# The longest a resolved request's line waits in the buffer. Written at each turn of the event
# loop instead, the log cost a write and a stat call per turn: under a lone client, a sixth of
# a request's hooks.
FLUSH_SECONDS = 0.2


class AuditLog:
    """Appends to `path` through a buffer: a line is written at most FLUSH_SECONDS after it
    was recorded (with every other line recorded meanwhile, in one write), at once for a
    refusal (the proxy answers it at once: the line is there when the client sees the
    refusal), and when the log is closed, so a clean stop loses nothing.

    The file is kept open (opening it per request was a sixth of the addon's per-request
    cost) and reopened once `path` names another file or none, checked before each write:
    lines written to a log rotated away or deleted would never be seen."""

    def __init__(self, path: Path | None):
        self.path = path
        self._file: TextIO | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._refused: tuple[int, int] | None = None  # of a file at `path` that could not be opened
        self._buffer: list[str] = []

    def record(self, request: http.Request, path: str, keys: Sequence[str], outcome: str, reason: str = "") -> None:
        """`path` is the request's path as the client sent it (placeholders, not values);
        `reason` (the console's only) why it was refused."""
        what = (request.method, request.host, path.split("?", 1)[0], tuple(keys), outcome)
        refused = outcome.startswith(REFUSED)
        level = logging.WARNING if refused else logging.INFO
        if logger.isEnabledFor(level):  # see follow_console
            logger.log(level, console_line(*what, reason))
        if self.path is None:
            return
        self._buffer.append(f'{{"time": "{timestamp()}", {json_after_time(*what)}\n')
        if refused:
            self.flush()
        elif len(self._buffer) == 1:
            try:
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no event loop (the CLI's dry runs, tests): now
                self.flush()

    def refused(self, request: http.Request, path: str, error: SubstitutionError, reason: str | None = None) -> None:
        """A refusal: its key and code; `reason` (default: the error's message) for the console."""
        self.record(request, path, [error.key] if error.key else [], f"refused:{error.code}", str(error) if reason is None else reason)

    def flush(self) -> None:
        lines, self._buffer = self._buffer, []
        if not lines or self.path is None:
            return
        try:
            file = self._open(self.path)
            file.write("".join(lines))
            file.flush()
        except OSError as e:
            self._close_file()
            logger.warning(f"vaultproxy: cannot write the audit log {self.path}: {e.strerror}")

    def open(self) -> None:
        """Open the log now: the proxy does not start with a log it cannot write (OSError)."""
        if self.path is not None:
            self._open(self.path)

    def _open(self, path: Path) -> TextIO:
        """The file `path` names now: one stat per write tells a rotated or deleted log. Where
        the new file cannot be opened as the user's own (another user planted a link or a file
        at the path after a rotation), the lines go on into the file open already, the rotated
        one, rather than being lost; the console says so once."""
        if self._file is not None and (now := _identity(path)) != self._identity:
            try:
                fd = open_own(path, WRITE_FLAGS)
            except OSError as e:
                if now != self._refused:
                    self._refused = now
                    logger.warning(f"vaultproxy: cannot reopen the audit log {path}: {e.strerror}; its lines go on in the file it named before")
                return self._file
            self._close_file()
            self._adopt(fd)
        if self._file is None:
            self._adopt(open_own(path, WRITE_FLAGS))
        assert self._file is not None
        return self._file

    def _adopt(self, fd: int) -> None:
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._identity, self._refused = _identity(fd), None

    def close(self) -> None:
        self.flush()
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def follow_console(verbosity: str) -> None:
    """Make no console line the console would drop (`termlog_verbosity`, `-q`): mitmproxy
    hands every log record to each addon as a legacy `add_log` event, about as costly as all of
    a request's own hooks, even when the terminal shows nothing."""
    logger.setLevel(verbosity.upper())


def console_line(method: str, host: str, path: str, keys: tuple[str, ...], outcome: str, reason: str) -> str:
    """`vaultproxy: resolved GET api.example.com/v1/me [token]`, and for a refusal the reason.
    The path (and what the reason quotes) is the client's: control characters are escaped, or
    a path could drive the terminal with escape sequences or forge a line."""
    summary = f"vaultproxy: {outcome} {method} {host}{path} [{', '.join(keys)}]"
    return quoted(f"{summary}: {reason}" if reason else summary, None, neutralised=False)


def timestamp() -> str:
    """Now, in UTC, to the millisecond, as `datetime.isoformat` writes it (at a third of its cost)."""
    milliseconds = time.time_ns() // 1_000_000
    return f"{_second(milliseconds // 1000)}.{milliseconds % 1000:03d}+00:00"


@functools.lru_cache(maxsize=1)
def _second(second: int) -> str:
    return datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


@functools.lru_cache(maxsize=1024)
def json_after_time(method: str, host: str, path: str, keys: tuple[str, ...], outcome: str) -> str:
    """An audit line's JSON after its time field (from its first member to the closing brace).
    Kept: the same few requests come again and again, only their time differs, and `json.dumps`
    was half the cost of a line. It holds key names and paths without their queries, never a value."""
    return json.dumps({"method": method, "host": host, "path": path, "keys": list(keys), "outcome": outcome})[1:]


def _identity(file: Path | int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a path or an open descriptor; None when the path names nothing."""
    try:
        st = os.stat(file)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
