"""vaultcore.filewatch: the kernel's word on the vault's files (Linux inotify), which spares
the proxy its stat calls; a change it misses would serve a revoked secret, so each way the CLI
and a user change those files is tried here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from vaultcore.atomic import replace_file
from vaultcore.filewatch import FileWatch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "vault.enc").write_bytes(b"v1")
    return tmp_path


@pytest.fixture
def watch(home: Path):
    watch = FileWatch()
    watch.watch([home / "vault.enc", home / "configs", home / "configs" / "prod.yaml"])
    assert not watch.changed()
    yield watch
    watch.close()


def test_an_atomic_replace_is_a_change(home: Path, watch: FileWatch) -> None:
    replace_file(home / "vault.enc", b"v2")
    assert watch.changed()
    assert not watch.changed()  # read once


def test_writes_in_place_count_and_other_files_never(home: Path, watch: FileWatch) -> None:
    with (home / "audit.log").open("a") as log:  # kept open beside vault.enc, written all the time
        log.write("line\n")
        log.flush()
        assert not watch.changed()
    assert not watch.changed()  # audit.log is not watched, even closed
    with (home / "vault.enc").open("ab") as vault:  # an edit in place, still open
        vault.write(b"more")
        vault.flush()
        assert watch.changed()
    os.truncate(home / "vault.enc", 0)  # by path: no open, no close
    assert watch.changed()
    replace_file(home / "token-status.json", b"{}")
    assert not watch.changed()


def test_a_directory_created_later_is_watched_from_then_on(home: Path, watch: FileWatch) -> None:
    (home / "configs").mkdir()
    assert watch.changed()
    replace_file(home / "configs" / "prod.yaml", b"name: prod\n")
    assert watch.changed()
    replace_file(home / "configs" / "staging.yaml", b"name: staging\n")
    assert watch.changed()  # the configs directory's entries are what a switch reads


def test_deleted_renamed_and_touched_files_are_changes(home: Path, watch: FileWatch) -> None:
    os.utime(home / "vault.enc", ns=(1, 1))
    assert watch.changed()
    os.rename(home / "vault.enc", home / "vault.enc.old")
    assert watch.changed()
    os.rename(home / "vault.enc.old", home / "vault.enc")
    assert watch.changed()
    (home / "vault.enc").unlink()
    assert watch.changed()


def test_a_replaced_home_is_a_change_and_is_watched_again(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    watch = FileWatch()
    watch.watch([home / "vault.enc"])
    os.rename(home, tmp_path / "old-home")
    home.mkdir()
    assert watch.changed()  # the watched directory moved away
    replace_file(home / "vault.enc", b"v3")
    assert watch.changed()  # the new directory of that name is watched
    watch.close()


def test_a_watch_that_cannot_see_a_directory_says_so(tmp_path: Path) -> None:
    watch = FileWatch()
    watch.watch([tmp_path / "gone" / "vault.enc", tmp_path / "gone" / "configs"])
    assert watch.blind  # neither the home nor where it would appear is watched: the caller must stat
    (tmp_path / "gone").mkdir()
    watch.watch([tmp_path / "gone" / "vault.enc", tmp_path / "gone" / "configs"])
    assert not watch.blind  # the configs directory may be missing: its parent sees it appear
    watch.close()


def test_a_symlinked_vault_is_watched_where_it_lives(tmp_path: Path) -> None:
    elsewhere = tmp_path / "synced"
    elsewhere.mkdir()
    (elsewhere / "vault.enc").write_bytes(b"v1")
    home = tmp_path / "home"
    home.mkdir()
    (home / "vault.enc").symlink_to(elsewhere / "vault.enc")
    watch = FileWatch()
    watch.watch([home / "vault.enc"])
    replace_file(elsewhere / "vault.enc", b"v2")  # what stat(home / "vault.enc") sees change
    assert watch.changed()
    watch.close()


def test_a_retargeted_symlinked_home_is_a_change(tmp_path: Path) -> None:
    """A home that is a symlink (to a synced folder, say) is retargeted by renaming a new link
    over it: stat(home / "vault.enc") then sees another file, and so must the watch."""
    for name, content in (("one", b"v1"), ("two", b"v2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vault.enc").write_bytes(content)
    home = tmp_path / "home"
    home.symlink_to(tmp_path / "one")
    watch = FileWatch()
    watch.watch([home / "vault.enc"])
    assert not watch.changed()
    (tmp_path / "home.new").symlink_to(tmp_path / "two")
    os.replace(tmp_path / "home.new", home)
    assert watch.changed()
    replace_file(tmp_path / "two" / "vault.enc", b"v3")
    assert watch.changed()  # the new target is watched
    watch.close()


def test_a_path_that_cannot_be_looked_at_makes_the_watch_blind(tmp_path: Path) -> None:
    """A symlink loop (RuntimeError on Python 3.11, resolved as it stands on 3.13) must not
    escape the watch: the caller then stats, whose error it reports on its own."""
    (tmp_path / "configs").symlink_to(tmp_path / "configs")
    watch = FileWatch()
    watch.watch([tmp_path / "configs" / "prod.yaml"])
    assert watch.blind
    watch.close()


def test_a_directory_that_exists_but_cannot_be_watched_makes_the_watch_blind(tmp_path: Path) -> None:
    """Only a missing directory is seen appearing by its parent's watch: one that exists and
    cannot be watched (no inotify watches left, no permission; here: not a directory) leaves
    changes unseen, so the caller must stat."""
    (tmp_path / "configs").write_bytes(b"")
    watch = FileWatch()
    watch.watch([tmp_path / "vault.enc", tmp_path / "configs" / "prod.yaml"])
    assert watch.blind
    watch.close()
