"""The encrypted state file: format, tamper detection, key sources, crash safety, locking."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.env import child_env
from vaultcore import store as store_module
from vaultcore.store import FORMAT_VERSION, MAGIC, Passphrase, Store, VaultError, encrypt, read_header

REPO = Path(__file__).resolve().parent.parent
FAKE_SECRET = "FAKE-store-secret-7c1e9a4b"
FAKE_PASSPHRASE = "FAKE-passphrase-correct-horse-31"
FAKE_OTHER_PASSPHRASE = "FAKE-passphrase-wrong-battery-77"
# Files a vault home may hold once no write is in progress.
HOME_FILES = {"key", "vault.enc", "vault.enc.bak", "vault.lock"}


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A vault home that does not exist yet: the store creates it."""
    return tmp_path / "home"


def write_state(home: Path, state: dict[str, Any]) -> None:
    """Make `state` the whole content of the vault."""

    def replace(current: dict[str, Any]) -> None:
        current.clear()
        current.update(state)

    Store(home).update(replace)


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def read_backup(home: Path, scratch: Path) -> dict[str, Any]:
    """Open `vault.enc.bak` as a vault of its own (a copy of the home with the backup in place)."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700)
    if (home / "key").exists():
        shutil.copy2(home / "key", scratch / "key")
    shutil.copyfile(home / "vault.enc.bak", scratch / "vault.enc")
    return Store(scratch).read()


def open_error(home: Path) -> str:
    """The message of the VaultError that reading the vault raises (it must raise)."""
    with pytest.raises(VaultError) as caught:
        Store(home).read()
    return str(caught.value)


def assert_user_message(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message
    assert FAKE_SECRET not in message


def header_of(home: Path) -> dict[str, Any]:
    path = home / "vault.enc"
    return read_header(path.read_bytes(), path)[0]


# --- round trip and format ---------------------------------------------------------------


def test_round_trip_and_file_format(home: Path) -> None:
    assert Store(home).read() == {}
    assert not home.exists()  # reading creates nothing

    result = Store(home).update(lambda state: state.update(secret=FAKE_SECRET, n=1) or "done")
    assert result == "done"
    assert Store(home).read() == {"secret": FAKE_SECRET, "n": 1}

    data = (home / "vault.enc").read_bytes()
    assert data.startswith(MAGIC)
    header = header_of(home)
    assert header["format"] == FORMAT_VERSION and header["cipher"] == "AES-256-GCM"
    assert header["key_source"] == "keyfile" and header["kdf"] is None
    assert files_containing(home, FAKE_SECRET.encode()) == []


def test_each_write_uses_a_fresh_nonce_and_keeps_the_previous_file(home: Path, tmp_path: Path) -> None:
    write_state(home, {"n": 1})
    first = header_of(home)
    assert not (home / "vault.enc.bak").exists()
    write_state(home, {"n": 2})
    assert header_of(home)["nonce"] != first["nonce"]
    assert read_backup(home, tmp_path / "scratch") == {"n": 1}


def test_new_home_is_0700_and_key_and_vault_are_0600(home: Path) -> None:
    write_state(home, {"n": 1})
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "key").stat().st_mode) == 0o600
    assert len((home / "key").read_bytes()) == 32
    assert stat.S_IMODE((home / "vault.enc").stat().st_mode) == 0o600


# --- tampering and foreign files -----------------------------------------------------------


def flip_positions(data: bytes) -> Iterator[int]:
    """Every byte of magic, length and header (where all the parsing happens), and a sample
    of the ciphertext; the last 16 bytes are the GCM tag."""
    (length,) = struct.unpack(">I", data[len(MAGIC) : len(MAGIC) + 4])
    header_end = len(MAGIC) + 4 + length
    yield from range(header_end)
    body = range(header_end, len(data) - 16)
    yield from sorted(set(body[:: max(1, len(body) // 24)]) | {body[0], body[-1]})
    yield from range(len(data) - 16, len(data))


@pytest.mark.parametrize("source", ["keyfile", "passphrase"])
def test_flipping_any_byte_is_detected_and_leaves_the_file_untouched(
    home: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    key_source = None
    if source == "passphrase":
        monkeypatch.setenv("VAULTPROXY_PASSPHRASE", FAKE_PASSPHRASE)
        key_source = Passphrase()  # shared: only tampered KDF parameters cost a derivation
    Store(home, key_source).update(lambda state: state.update(secret=FAKE_SECRET, padding="x" * 300))
    path = home / "vault.enc"
    original = path.read_bytes()
    ciphertext_start = len(read_header(original, path)[1])
    header = header_of(home)

    def span(value: object) -> set[int]:
        text = json.dumps(value, sort_keys=True).encode()  # as the header was written
        start = original.index(text)
        return set(range(start, start + len(text)))

    # the key check, and the KDF parameters that derive the key, are what tell a wrong key from damage
    may_say_wrong = span(header["key_check"]) | (span(header["kdf"]) if header["kdf"] else set())
    checked = 0
    for position in flip_positions(original):
        for mask in (0x01, 0x80):
            tampered = bytearray(original)
            tampered[position] ^= mask
            path.write_bytes(bytes(tampered))
            with pytest.raises(VaultError) as caught:
                Store(home, key_source).read()
            message = str(caught.value)
            assert_user_message(message)
            assert str(path) in message, (position, message)
            if position >= ciphertext_start:  # body and tag: only authentication can tell
                assert "modified or damaged" in message, (position, message)
            elif position >= len(MAGIC) + 4 and position not in may_say_wrong:
                assert "damaged" in message, (position, message)
            else:
                phrases = ["not a vaultproxy vault", "truncated", "damaged"]
                phrases += ["wrong key", "wrong passphrase"] if position in may_say_wrong else []
                assert any(phrase in message for phrase in phrases), (position, message)
            with pytest.raises(VaultError):
                Store(home, key_source).update(lambda state: state.update(n=1))
            assert path.read_bytes() == bytes(tampered)
            checked += 1
    assert checked > 2 * 200
    path.write_bytes(original)
    assert Store(home, key_source).read()["secret"] == FAKE_SECRET


@pytest.mark.parametrize("keep", [0, 3, len(MAGIC), len(MAGIC) + 3, len(MAGIC) + 20, -17, -16, -1])
def test_truncated_vault_is_reported_and_left_alone(home: Path, keep: int) -> None:
    write_state(home, {"secret": FAKE_SECRET})
    path = home / "vault.enc"
    data = path.read_bytes()
    if keep in (-17, -16, -1):
        keep = len(data) + keep
    if keep == len(MAGIC) + 20:
        keep = len(read_header(data, path)[1]) - 5  # inside the header
    truncated = data[:keep]
    path.write_bytes(truncated)
    message = open_error(home)
    assert_user_message(message)
    assert str(path) in message
    assert "truncated" in message or "damaged" in message
    with pytest.raises(VaultError):
        Store(home).update(lambda state: state.update(n=1))
    assert path.read_bytes() == truncated


@pytest.mark.parametrize(
    "content",
    [os.urandom(4096), os.urandom(5), b"API_KEY=something\nother=1\n", b"hi", b"{\"local\": {}}"],
    ids=["random", "short-random", "text", "short-text", "json"],
)
def test_foreign_file_is_not_taken_for_a_vault(home: Path, content: bytes) -> None:
    home.mkdir(mode=0o700)
    path = home / "vault.enc"
    path.write_bytes(content)
    message = open_error(home)
    assert_user_message(message)
    assert f"{path} is not a vaultproxy vault" in message
    with pytest.raises(VaultError, match="not a vaultproxy vault"):
        Store(home).update(lambda state: state.update(n=1))
    assert path.read_bytes() == content
    assert not (home / "key").exists()


def test_future_format_version_asks_for_an_upgrade_and_is_never_overwritten(home: Path) -> None:
    write_state(home, {"n": 1})
    path = home / "vault.enc"
    header = {k: v for k, v in header_of(home).items() if k != "nonce"}
    future = encrypt({"n": 99, "new": "shape"}, (home / "key").read_bytes(), {**header, "format": FORMAT_VERSION + 1})
    path.write_bytes(future)
    message = open_error(home)
    assert f"format {FORMAT_VERSION + 1}" in message and "upgrade vaultproxy" in message
    with pytest.raises(VaultError, match="upgrade"):
        Store(home).update(lambda state: state.update(n=2))
    assert path.read_bytes() == future


def test_format_version_that_never_existed_is_damage_not_a_reason_to_upgrade(home: Path) -> None:
    write_state(home, {"n": 1})
    path = home / "vault.enc"
    header = {k: v for k, v in header_of(home).items() if k != "nonce"}
    for bogus in (0, "1", None):
        path.write_bytes(encrypt({"n": 2}, (home / "key").read_bytes(), {**header, "format": bogus}))
        message = open_error(home)
        assert "damaged" in message and "upgrade" not in message, (bogus, message)


# --- key sources ---------------------------------------------------------------------------


def test_wrong_key_file_is_named_as_such(home: Path) -> None:
    write_state(home, {"secret": FAKE_SECRET})
    path = home / "vault.enc"
    before = path.read_bytes()
    key = home / "key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    message = open_error(home)
    assert_user_message(message)
    assert "wrong key" in message
    with pytest.raises(VaultError, match="wrong key"):
        Store(home).update(lambda state: state.update(n=1))
    assert path.read_bytes() == before


def test_missing_key_file_says_to_restore_it(home: Path) -> None:
    write_state(home, {"n": 1})
    (home / "key").unlink()
    message = open_error(home)
    assert "missing" in message and str(home / "key") in message


def test_key_file_readable_by_others_is_refused_with_the_fix(home: Path) -> None:
    write_state(home, {"n": 1})
    key = home / "key"
    key.chmod(0o644)
    before = (home / "vault.enc").read_bytes()
    message = open_error(home)
    assert f"chmod 600 {key}" in message
    with pytest.raises(VaultError, match="chmod 600"):
        Store(home).update(lambda state: state.update(n=2))
    assert (home / "vault.enc").read_bytes() == before
    key.chmod(0o600)
    assert Store(home).read() == {"n": 1}


def test_key_file_of_the_wrong_size_is_refused(home: Path) -> None:
    write_state(home, {"n": 1})
    (home / "key").write_bytes(b"short")
    assert "expected 32 bytes" in open_error(home)


def test_passphrase_vault_uses_scrypt_and_no_key_file(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VAULTPROXY_PASSPHRASE", FAKE_PASSPHRASE)
    write_state(home, {"secret": FAKE_SECRET})
    header = header_of(home)
    assert header["key_source"] == "passphrase"
    kdf = header["kdf"]
    assert kdf["name"] == "scrypt" and kdf["n"] >= 2**14 and kdf["r"] >= 8 and kdf["p"] >= 1 and kdf["salt"]
    assert not (home / "key").exists()
    assert Store(home).read() == {"secret": FAKE_SECRET}
    for file in home.iterdir():
        data = file.read_bytes()
        assert FAKE_SECRET.encode() not in data and FAKE_PASSPHRASE.encode() not in data

    write_state(home, {"secret": FAKE_SECRET, "n": 2})
    assert header_of(home)["kdf"]["salt"] == kdf["salt"]  # one salt for the vault's life

    monkeypatch.setenv("VAULTPROXY_PASSPHRASE", FAKE_OTHER_PASSPHRASE)
    message = open_error(home)
    assert "wrong passphrase" in message
    assert FAKE_OTHER_PASSPHRASE not in message and FAKE_PASSPHRASE not in message


def test_passphrase_vault_without_a_passphrase_or_terminal_says_how_to_give_one(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULTPROXY_PASSPHRASE", FAKE_PASSPHRASE)
    write_state(home, {"n": 1})
    monkeypatch.delenv("VAULTPROXY_PASSPHRASE")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal: no prompt possible
    message = open_error(home)
    assert "VAULTPROXY_PASSPHRASE" in message and "terminal" in message


def test_passphrase_given_for_a_key_file_vault_is_pointed_out(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_state(home, {"n": 1})
    monkeypatch.setenv("VAULTPROXY_PASSPHRASE", FAKE_PASSPHRASE)
    message = open_error(home)
    assert "VAULTPROXY_PASSPHRASE is set" in message and "key file" in message
    assert FAKE_PASSPHRASE not in message


def test_passphrase_source_derives_the_key_once_per_vault(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-running proxy reloads with the same Passphrase object: no scrypt per reload."""
    monkeypatch.setenv("VAULTPROXY_PASSPHRASE", FAKE_PASSPHRASE)
    source = Passphrase()
    Store(home, source).update(lambda state: state.update(n=1))
    calls = []
    real_scrypt = store_module.hashlib.scrypt
    monkeypatch.setattr(store_module.hashlib, "scrypt", lambda *a, **k: calls.append(1) or real_scrypt(*a, **k))
    for n in range(2, 5):
        Store(home, source).update(lambda state: state.update(n=n))
        assert Store(home, source).read() == {"n": n}
    assert calls == []


# --- the vault home --------------------------------------------------------------------------


def test_home_that_is_a_file_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a directory")
    with pytest.raises(VaultError, match="not a directory"):
        Store(home).read()
    with pytest.raises(VaultError, match="not a directory"):
        Store(home).update(lambda state: state.update(n=1))
    assert home.read_text() == "not a directory"


def test_home_that_cannot_be_created_is_reported() -> None:
    home = Path("/proc/vaultproxy-test/home")  # root ignores permission bits; /proc refuses anyway
    with pytest.raises(VaultError) as caught:
        Store(home).update(lambda state: state.update(n=1))
    assert f"cannot create vault home {home}" in str(caught.value)


# --- failures and crashes during a write --------------------------------------------------------


class SimulatedCrash(BaseException):
    """The process dying at this point: not an OSError, so no cleanup code of the store runs."""


class Faults:
    """Counts the steps of a write (file writes, fsync, link, replace) and fails the Nth one,
    either with an OSError (the store's error path) or with a SimulatedCrash."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int, crash: bool) -> None:
        self.count = 0
        self.fail_at = fail_at
        self.crash = crash
        self.fired: str | None = None
        for name in ("fsync", "link", "replace"):
            monkeypatch.setattr(os, name, self._counted(name, getattr(os, name)))
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FaultyFile(real_fdopen(*a, **k), self))

    def step(self, name: str) -> None:
        self.count += 1
        if self.count == self.fail_at:
            self.fired = name
            if self.crash:
                raise SimulatedCrash(name)
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def _counted(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.step(name)
            return real(*args, **kwargs)

        return call


class _FaultyFile:
    """A file whose failing write leaves half the data behind, as a torn write does."""

    def __init__(self, file: Any, faults: Faults) -> None:
        self._file = file
        self._faults = faults

    def write(self, data: bytes) -> int:
        try:
            self._faults.step("write")
        except BaseException:
            self._file.write(data[: len(data) // 2])
            self._file.flush()
            raise
        return self._file.write(data)

    def __enter__(self) -> _FaultyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def leftovers(home: Path) -> set[str]:
    return {p.name for p in home.iterdir()} - HOME_FILES


@pytest.mark.parametrize("crash", [False, True], ids=["oserror", "crash"])
@pytest.mark.parametrize("first_write", [True, False], ids=["first-write", "later-write"])
def test_failure_at_every_step_of_a_write_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: bool, first_write: bool
) -> None:
    old = {} if first_write else {"n": 2, "secret": FAKE_SECRET}
    new = {"n": 3, "secret": FAKE_SECRET}
    steps_seen = []
    for fail_at in range(1, 50):
        home = tmp_path / f"home-{fail_at}"
        if not first_write:
            write_state(home, {"n": 1})
            write_state(home, old)
        with monkeypatch.context() as patch:
            faults = Faults(patch, fail_at, crash)
            error: BaseException | None = None
            try:
                Store(home).update(lambda state: (state.clear(), state.update(new)))
            except (VaultError, SimulatedCrash) as e:
                error = e
        if faults.fired is None:
            assert error is None
            assert Store(home).read() == new
            break
        steps_seen.append(faults.fired)
        assert error is not None, faults.fired

        state = Store(home).read()  # never an error
        assert state in (old, new), faults.fired
        if not crash:
            message = str(error)
            assert isinstance(error, VaultError)
            assert_user_message(message)
            assert ("the vault is unchanged" in message) == (state == old), (faults.fired, message)
            assert leftovers(home) == set(), faults.fired  # its own temp files removed
        if (home / "vault.enc.bak").exists():
            assert read_backup(home, tmp_path / "scratch") in ({"n": 1}, old), faults.fired

        Store(home).update(lambda state: state.update(n=4))  # a later write succeeds...
        assert Store(home).read() == {**state, "n": 4}
        assert leftovers(home) == set()  # ...and clears what a dead writer left
        if (home / "vault.enc.bak").exists():
            assert read_backup(home, tmp_path / "scratch") == state
    else:
        pytest.fail("the write never completed")

    # every step of the write was exercised: temp write, fsync, backup link, renames, dir fsync
    assert {"write", "fsync", "link", "replace"} <= set(steps_seen)
    assert len(steps_seen) >= (8 if first_write else 6), steps_seen


def test_disk_full_during_the_temp_write_leaves_the_old_state(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_state(home, {"secret": FAKE_SECRET})
    before = (home / "vault.enc").read_bytes()
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, file: Any) -> None:
            self.file = file

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def write(self, data: bytes) -> int:
            self.file.write(data[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
        with pytest.raises(VaultError) as caught:
            Store(home).update(lambda state: state.update(more="x" * 10_000))
    message = str(caught.value)
    assert_user_message(message)
    assert "No space left on device" in message and "the vault is unchanged" in message
    assert (home / "vault.enc").read_bytes() == before
    assert leftovers(home) == set()
    assert Store(home).read() == {"secret": FAKE_SECRET}


# --- other processes ---------------------------------------------------------------------------

WRITER = """
import sys
from pathlib import Path
from vaultcore.store import Store

store = Store(Path(sys.argv[1]))
padding = "p" * 200_000  # long writes: a kill lands inside one more often

def bump(state):
    state["n"] = state.get("n", 0) + 1
    state["padding"] = padding

store.update(bump)
print("ready", flush=True)
while True:
    store.update(bump)
"""


def start_python(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=REPO, env=child_env(),
    )


def test_kill_9_during_writes_loses_nothing(home: Path, tmp_path: Path) -> None:
    rounds = random.Random(9)
    last = 0
    for _ in range(4):
        writer = start_python(WRITER, str(home))
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline() == b"ready\n", writer.stderr.read() if writer.stderr else b""
            time.sleep(rounds.uniform(0, 0.08))
        finally:
            writer.kill()
            writer.communicate(timeout=30)
        state = Store(home).read()  # never an error
        assert state["n"] > last  # every completed write survived
        assert read_backup(home, tmp_path / "scratch")["n"] in (state["n"] - 1, state["n"])
        last = state["n"]
    Store(home).update(lambda state: state.update(n=state["n"] + 1))
    assert Store(home).read()["n"] == last + 1
    assert leftovers(home) == set()


WORKER = """
import sys
from pathlib import Path
from vaultcore.store import Store

home, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
store = Store(home)
print("ready", flush=True)
sys.stdin.readline()  # all workers start together

def bump(state):
    counters = state.setdefault("counters", {})
    counters[name] = counters.get(name, 0) + 1
    state.setdefault("keys", {})[f"{name}-{counters[name]}"] = True

for _ in range(count):
    store.update(bump)
"""


def test_concurrent_writers_lose_no_update(home: Path) -> None:
    names = ["a", "b", "c"]
    workers = [start_python(WORKER, str(home), name, "50") for name in names]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline() == b"ready\n"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
            worker.stdin.flush()
        for worker in workers:
            _, errors = worker.communicate(timeout=120)
            assert worker.returncode == 0, errors.decode()
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                worker.communicate()
    state = Store(home).read()
    assert state["counters"] == {name: 50 for name in names}
    assert set(state["keys"]) == {f"{name}-{i}" for name in names for i in range(1, 51)}
    assert leftovers(home) == set()


def test_a_file_system_without_locks_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review's: on a mount that has no locks (some NFS and FUSE ones) flock raises ENOLCK,
    which escaped as a bare OSError where callers expect VaultError (the proxy's publishing
    of its record caught only that)."""

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(store_module.fcntl, "flock", no_locks)
    with pytest.raises(VaultError, match=r"cannot lock .*proxy\.lock: No locks available"):
        with store_module.flocked(tmp_path / "proxy.lock", "busy"):
            pass
