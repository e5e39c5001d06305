"""Is an index still what its files say? A few stat calls: cheap enough for every request.

Every writer replaces a file by renaming a new one over it (see `vaultcore.atomic`), so each
write gives the path a new inode, and a rename into a directory changes the directory's
mtime. Comparing each path's (inode, mtime, size) with what it was when the index was built
catches every write without reading a byte.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

Stamp = tuple[int, int, int]


def stamp(path: Path) -> Stamp | None:
    """A path's identity: (inode, mtime in ns, size); None when it cannot be stat'ed
    (missing or unreadable), which compares like any stamp: a file that appears is a change."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class Signature:
    """The stamps of the files something was built from. Take each stamp before its file
    is read: a write during the build then shows as a change at the next check, never
    the other way round."""

    paths: tuple[Path, ...]
    stamps: tuple[Stamp | None, ...]

    @classmethod
    def of(cls, *paths: Path) -> Signature:
        return cls(paths, tuple(stamp(path) for path in paths))

    def __add__(self, other: Signature) -> Signature:
        return Signature(self.paths + other.paths, self.stamps + other.stamps)

    def restamped(self) -> Signature:
        """The same files as they are now (to remember what a failed rebuild saw)."""
        return Signature.of(*self.paths)

    def is_stale(self) -> bool:
        """Whether any of the files changed since it was stamped."""
        return any(stamp(path) != old for path, old in zip(self.paths, self.stamps))
