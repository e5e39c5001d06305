"""Crash-safe file replacement, shared by the vault file and the configuration files.

The new content is complete and on disk before it is renamed over the old file, and the
rename is made durable with an fsync of the directory: a crash or kill at any point leaves
the old file or the new one, never a mix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_files(path: Path) -> list[Path]:
    """Temp files a writer of `path` left behind when it died mid-write."""
    return list(path.parent.glob(f".{path.name}.*.tmp"))


def replace_file(path: Path, data: bytes, *, mode: int = 0o600, backup: Path | None = None) -> None:
    """Atomically make `data` the content of `path`, or raise OSError with `path` unchanged.

    With `backup`, the old file becomes `backup` first, as a hard link (no copy, and at every
    instant both names hold a whole file). The directory is not synced here: callers call
    `fsync_dir`, since a failure there (the new file is in place, maybe not yet durable)
    means something else to the user than a failure before the rename."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    backup_tmp = path.parent / f".{path.name}.{os.getpid()}-backup.tmp"
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if backup is not None and path.exists():
            backup_tmp.unlink(missing_ok=True)
            os.link(path, backup_tmp)
            os.replace(backup_tmp, backup)
            # rename() of two links to one file (a backup left equal to the file by a writer
            # that died before its last rename) does nothing: drop the extra name
            backup_tmp.unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        backup_tmp.unlink(missing_ok=True)
        raise
