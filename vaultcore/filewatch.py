"""Whether a few files may have changed, told by the kernel (Linux inotify) rather than asked
for with stat calls before each request.

The proxy must resolve every request against what the vault's files say when the request
arrives (`vaultcore.freshness`). Asking costs a stat call per file per event-loop turn; with a
watch, the kernel queues an event on this watch's descriptor inside the very system call that
renames or writes the file, before that call returns to the CLI. A client that waited for the
CLI and then sent a request can only have its bytes read after that event was queued, so a
proxy that reads its watch whenever the descriptor is readable knows of the change before it
handles the request (see `VaultProxy.is_current` for the event loop's part).

A watch says "maybe": a change it reports is confirmed by the stamps, never trusted alone.
Where inotify is missing (not Linux) or fails, `FileWatch` raises OSError and the caller
keeps checking with stat calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Iterable
from pathlib import Path

# <sys/inotify.h>
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED = 0x4000, 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
# Everything that changes a file's (inode, mtime, size) stamp, or a directory's entries. (The
# audit log beside vault.enc wakes the watch at each of its writes, at most five a second: its
# events name no watched file and are dropped.)
DIRECTORY_EVENTS = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
)
EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
ANY_NAME = None  # an event of a watched directory that counts whatever it names


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c")
    if name is None:
        raise OSError(errno.ENOSYS, "no C library")
    libc = ctypes.CDLL(name, use_errno=True)
    if not hasattr(libc, "inotify_init1"):
        raise OSError(errno.ENOSYS, "no inotify")
    return libc


def _directories_to_watch(paths: Iterable[Path]) -> dict[Path, set[str | None]]:
    """Each directory to watch, and the names in it that concern `paths` (ANY_NAME: all)."""
    wanted: dict[Path, set[str | None]] = {}
    for path in paths:
        # A symlink's target changes where it lives: stat follows the link, so must the watch.
        for where in dict.fromkeys((path, path.resolve())):
            wanted.setdefault(where.parent, set()).add(where.name)
            if where.is_dir():
                wanted.setdefault(where, set()).add(ANY_NAME)
        # A symlink on the way (a symlinked home) is watched where it is named: retargeted, it
        # puts other files behind the same path.
        for link in (directory for directory in path.parents if directory.is_symlink()):
            wanted.setdefault(link.parent, set()).add(link.name)
    return wanted


class FileWatch:
    """A watch on the directories that hold `paths` (and on those of `paths` that are
    directories): `changed` is true after any event that may have changed one of them."""

    def __init__(self) -> None:
        self._libc = _libc()
        self.fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._names: dict[int, set[str | None]] = {}  # watch descriptor -> the names it is for
        self._paths: tuple[Path, ...] = ()
        # A directory of `paths` that could not be watched, nor its parent (where it would
        # appear): the watch cannot vouch for anything, and the caller checks for itself.
        self.blind = False

    def watch(self, paths: Iterable[Path]) -> None:
        """Watch for changes to `paths` (files or directories, present or not). A directory
        that does not exist yet is watched once it appears: call `watch` again then (`changed`
        reports its creation in its parent)."""
        self._paths = tuple(paths)
        try:
            wanted = _directories_to_watch(self._paths)
        except (OSError, RuntimeError):  # a path that cannot be looked at (no permission, a symlink loop)
            self.blind = True
            return
        names: dict[int, set[str | None]] = {}
        missing, unwatchable = set(), False
        for directory, wanted_names in wanted.items():
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), DIRECTORY_EVENTS | IN_ONLYDIR)
            if wd >= 0:
                names.setdefault(wd, set()).update(wanted_names)
            elif ctypes.get_errno() == errno.ENOENT:
                missing.add(directory)
            else:  # it exists, and cannot be watched (no watches left, no permission...)
                unwatchable = True
        for wd in set(self._names) - set(names):
            self._libc.inotify_rm_watch(self.fd, wd)
        self._names = names
        # A missing configs directory is fine: its parent's watch reports its creation.
        self.blind = unwatchable or any(directory.parent not in wanted or directory.parent in missing for directory in missing)

    def changed(self) -> bool:
        """Read every event queued so far; true when one may concern a watched path (or
        events were lost: the kernel's queue overflowed)."""
        changed = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return changed
            changed = self._concerns_paths(data) or changed

    def _concerns_paths(self, data: bytes) -> bool:
        changed = False
        offset = 0
        while offset < len(data):
            wd, mask, _, length = EVENT_HEADER.unpack_from(data, offset)
            name = data[offset + EVENT_HEADER.size : offset + EVENT_HEADER.size + length].rstrip(b"\0")
            offset += EVENT_HEADER.size + length
            names = self._names.get(wd)
            if mask & (IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF) or names is None:
                changed = True  # lost events, or a watched directory gone or moved
            elif ANY_NAME in names or os.fsdecode(name) in names:
                changed = True
        if changed:
            self.watch(self._paths)  # a directory may have appeared, gone or been replaced
        return changed

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
