"""Reading the audit log the proxy writes (vaultproxy/audit.py): one JSON object a line,
`time`, `method`, `host`, `path` (no query), `keys` and `outcome`; never a value.

`vaultproxy log` filters it by key, host and age, and can follow it as it grows, across a
rotation (a new file at the same path is read from its start).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO

from vaultcore.hostrules import host_matches
from vaultcore.store import VaultError

AUDIT_FILE = "audit.log"
FOLLOW_POLL_SECONDS = 0.2
_AGE_RE = re.compile(r"([0-9]+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

Entry = dict[str, Any]


def open_own(path: Path, flags: int) -> int:
    """`path` opened with `flags` (os.O_*), as the writer and the reader both must: never
    through a symbolic link, and only a regular file of this user's. vault_audit_log may name
    a file in a directory others can write to (/tmp): a link planted there would have the
    proxy append, with its rights, to whatever file it names; a file planted there is its
    planter's to read, and would show `vaultproxy log` their forged lines. O_NONBLOCK: a FIFO
    planted there fails to open, or is refused, instead of holding the proxy (or the reader)
    until someone writes to it. OSError otherwise, with a message that says the fix."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(e.errno, "it is a symbolic link, which the proxy does not follow: set vault_audit_log to the file itself") from None
        if e.errno == errno.ENXIO:  # a FIFO that no one reads, opened to write
            raise OSError(e.errno, "it is not a regular file: set vault_audit_log to a file of your own") from None
        if e.errno == errno.EACCES and (owner := _owner(path)) not in (None, os.geteuid()):  # another's, not writable by us
            raise _not_yours(owner) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "it is not a regular file: set vault_audit_log to a file of your own")
        raise _not_yours(info.st_uid)
    return fd


def _owner(path: Path) -> int | None:
    try:
        return os.lstat(path).st_uid
    except OSError:
        return None


def _not_yours(owner: int) -> OSError:
    return OSError(errno.EPERM, f"it belongs to uid {owner}, not to you (uid {os.geteuid()}): set vault_audit_log to a file of your own")


def audit_path(home: Path, setting: str) -> Path | None:
    """Where the proxy writes: its `vault_audit_log` setting ("" is audit.log in the home,
    "off" is nowhere)."""
    if setting == "off":
        return None
    return Path(setting).expanduser() if setting else home / AUDIT_FILE


def parse_since(text: str, now: datetime) -> datetime:
    """`30s`, `10m`, `2h` or `1d` before `now`, or an ISO time (a time without a zone is local
    time). Raises ValueError with the forms it takes."""
    age = _AGE_RE.fullmatch(text.strip())
    if age:
        return now - timedelta(**{_UNITS[age[2]]: int(age[1])})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is no age or time: use e.g. 30s, 10m, 2h, 1d or 2026-01-31T09:00") from None
    return moment if moment.tzinfo else moment.astimezone()


@dataclass(frozen=True)
class Filter:
    """Which entries to show. `key` matches a key, or an alias's JSON keys (`db`: db.user);
    `host` is a hosts rule (`*.example.com`)."""

    key: str | None = None
    host: str | None = None
    since: datetime | None = None

    def matches(self, entry: Entry) -> bool:
        keys = entry.get("keys") or []
        if self.key is not None and not any(k == self.key or str(k).startswith(self.key + ".") for k in keys):
            return False
        if self.host is not None and not host_matches(str(entry.get("host", "")), None, [self.host]):
            return False
        return self.since is None or _time(entry) >= self.since


def _time(entry: Entry) -> datetime:
    try:
        return datetime.fromisoformat(str(entry.get("time")))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)  # older than any --since


def entries(lines: Iterator[str]) -> Iterator[Entry]:
    """The JSON objects among `lines`; anything else (a line cut by a full disk) is skipped."""
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            yield entry


def read_lines(path: Path, *, follow: bool) -> Iterator[str]:
    """The complete lines of the log; with `follow`, then each line appended, until the caller
    stops. A missing log ends the reading, unless following: then it is waited for."""
    reader = _Reader(path)
    while True:
        lines = reader.new_lines()
        yield from lines
        if not follow:
            return
        if not lines:
            time.sleep(FOLLOW_POLL_SECONDS)


class _Reader:
    """The file at `path` as it grows; reopened when the path names another file (rotated)
    or the file shrank (truncated)."""

    def __init__(self, path: Path):
        self.path = path
        self._file: BinaryIO | None = None
        self._partial = b""  # a line the proxy has not finished writing

    def new_lines(self) -> list[str]:
        if self._file is None and not self._open():
            return []
        assert self._file is not None
        data = self._file.read()
        if not data and self._replaced():
            self._file.close()
            self._file, self._partial = None, b""
            return self.new_lines()
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in lines]

    def _open(self) -> bool:
        try:
            fd = open_own(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise VaultError(f"cannot read the audit log {self.path}: {e.strerror}") from None
        os.set_blocking(fd, True)
        self._file = os.fdopen(fd, "rb")
        return True

    def _replaced(self) -> bool:
        assert self._file is not None
        try:
            now = self.path.stat()
        except FileNotFoundError:
            return False  # rotated away, no new file yet: keep waiting on the old one
        opened = os.fstat(self._file.fileno())
        return (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino) or now.st_size < self._file.tell()
