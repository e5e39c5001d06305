"""The encrypted local state file: format, key sources, atomic writes, locking, its home's checks.

`vault.enc` is one JSON document encrypted with AES-256-GCM:

    MAGIC | header length (4 bytes, big endian) | header (JSON) | ciphertext+tag

The header carries the format version, the key source, the KDF parameters, a key check
value and the nonce; all of it (with the magic and the length) is authenticated as
associated data, so a tampered header fails like a tampered body. The key check value lets
the error tell "wrong key or passphrase" from "file damaged".

Every write goes through `Store.update`: an exclusive lock, a fresh read, the change, and an
atomic replace (temp file, fsync, rename, fsync of the directory), keeping the previous good
file as `vault.enc.bak`. A crash or kill at any point leaves `vault.enc` old or new, never torn.
A change that spans more than vault.enc (a configuration file, see configurations.py) holds
the same lock around all of it (`Store.locked`).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import getpass
import hashlib
import hmac
import json
import os
import secrets
import select
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultcore.atomic import fsync_dir, replace_file, temp_files

MAGIC = b"VAULTPX\x00"
FORMAT_VERSION = 1
VAULT_FILE = "vault.enc"
KEY_FILE = "key"
LOCK_FILE = "vault.lock"
SCRYPT_PARAMS = {"n": 2**15, "r": 8, "p": 1}
LOCK_TIMEOUT_SECONDS = 30.0
PASSPHRASE_ENV = "VAULTPROXY_PASSPHRASE"
PASSPHRASE_FD_ENV = "VAULTPROXY_PASSPHRASE_FD"
KEY_SOURCE_ENV = "VAULTPROXY_KEY_SOURCE"

T = TypeVar("T")
State = dict[str, Any]
Signature = tuple[int, int, int]


class VaultError(Exception):
    """An error meant for the user: one line that names the cause and the fix, never a value."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _key_check(key: bytes) -> str:
    return _b64(hmac.new(key, b"vaultproxy key check", hashlib.sha256).digest()[:16])


# --- key sources -----------------------------------------------------------------------


class KeySource(Protocol):
    """Where the 256-bit vault key comes from. `kdf()` gives the header's KDF entry for a
    new vault; `key(header)` produces the key for an existing one."""

    name: str

    def kdf(self) -> dict[str, Any] | None: ...

    def key(self, header: dict[str, Any]) -> bytes: ...


class KeyFile:
    """A random key in `$VAULTPROXY_HOME/key`, created 0600 on first use (the default)."""

    name = "keyfile"

    def __init__(self, path: Path):
        self.path = path

    def kdf(self) -> None:
        return None

    def key(self, header: dict[str, Any]) -> bytes:
        if handed_over_passphrase() is not None:
            raise VaultError(
                f"{PASSPHRASE_ENV} is set, but this vault is encrypted with the key file "
                f"{self.path}, not a passphrase: unset {PASSPHRASE_ENV}"
            )
        try:
            mode = self.path.stat().st_mode
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise VaultError(
                f"the vault is encrypted with the key file {self.path}, which is missing: "
                "restore it from your backup"
            ) from None
        except OSError as e:
            raise VaultError(f"cannot read the key file {self.path}: {e.strerror}") from None
        if mode & 0o077:
            raise VaultError(f"the key file {self.path} is readable by others: chmod 600 {self.path}")
        if len(data) != 32:
            raise VaultError(f"{self.path} is not a vaultproxy key (expected 32 bytes)")
        return data

    def create(self) -> bytes:
        """Write a new random key, refusing to overwrite one that exists.

        The key is complete on disk before it gets its name (a temp file, then a hard link,
        which unlike a rename fails when a key exists): a crash never leaves a torn key that
        would block every later write."""
        key = secrets.token_bytes(32)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.path)
            fsync_dir(self.path.parent)
        except FileExistsError:
            return self.key({})
        except OSError as e:
            raise VaultError(f"cannot create the key file {self.path}: {e.strerror}; the vault is unchanged") from None
        finally:
            tmp.unlink(missing_ok=True)
        return key


_handed_over: str | None = None  # the passphrase once taken out of the environment (see below)


def handed_over_passphrase() -> str | None:
    """The passphrase this process was given without a prompt: `VAULTPROXY_PASSPHRASE`, else
    the pipe that `VAULTPROXY_PASSPHRASE_FD` names (see `pass_passphrase_by_pipe`), else the
    one `forget_passphrase_environment` kept. A pipe can be read once: its value is kept."""
    global _handed_over
    value = os.environ.get(PASSPHRASE_ENV)
    if value is not None:
        return value
    fd = os.environ.pop(PASSPHRASE_FD_ENV, None)
    if fd is not None:
        try:
            with open(int(fd), "rb") as pipe:
                _handed_over = os.fsdecode(pipe.read())
        except (OSError, ValueError):
            raise VaultError(f"{PASSPHRASE_FD_ENV}={fd} names no readable pipe") from None
    return _handed_over


def pass_passphrase_by_pipe(environment: dict[str, str]) -> dict[str, str]:
    """`environment` for a program this process is about to exec, with `VAULTPROXY_PASSPHRASE`
    moved into a pipe the program inherits (`VAULTPROXY_PASSPHRASE_FD` names it): the
    program's /proc/PID/environ, which its own user's processes can read for its whole life,
    then never holds the passphrase. Unchanged when no passphrase is set."""
    value = environment.get(PASSPHRASE_ENV)
    if value is None:
        return environment
    data = os.fsencode(value)
    # Up to PIPE_BUF bytes, a write to an empty pipe is whole and never blocks.
    if len(data) > select.PIPE_BUF:
        raise VaultError(f"{PASSPHRASE_ENV} is longer than {select.PIPE_BUF} bytes")
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    os.set_inheritable(read_end, True)
    rest = {name: v for name, v in environment.items() if name != PASSPHRASE_ENV}
    return {**rest, PASSPHRASE_FD_ENV: str(read_end)}


def without_passphrase(environment: Mapping[str, str]) -> dict[str, str]:
    """`environment` for a program that must not open the vault itself (a command `exec`
    runs, a provider's command): without the passphrase or the pipe that holds it."""
    return {name: value for name, value in environment.items() if name not in (PASSPHRASE_ENV, PASSPHRASE_FD_ENV)}


def forget_passphrase_environment() -> None:
    """Take the passphrase out of this process's environment, so that no process it starts
    inherits it (a provider's command, a profile's credential_process, `exec`'s command). The
    CLI calls this first thing, the proxy once it has opened the vault; the value stays in this
    process for later reloads (a vault written anew gets a new salt and needs it again)."""
    global _handed_over
    _handed_over = handed_over_passphrase()
    os.environ.pop(PASSPHRASE_ENV, None)


class Passphrase:
    """A passphrase from `VAULTPROXY_PASSPHRASE` (or the pipe `vaultproxy start` hands it over
    in) or a hidden prompt, stretched with scrypt.

    The salt stays the same for the vault's life (only the nonce changes per write), so a
    long-running proxy derives the key once and reloads cheaply."""

    name = "passphrase"

    def __init__(self) -> None:
        self._derived: dict[tuple[str, int, int, int], bytes] = {}
        self._passphrase: str | None = None

    def kdf(self) -> dict[str, Any]:
        return {"name": "scrypt", "salt": _b64(secrets.token_bytes(16)), **SCRYPT_PARAMS}

    def _get_passphrase(self) -> str:
        if self._passphrase is None:
            value = handed_over_passphrase()
            if value is None:
                if not sys.stdin.isatty():
                    raise VaultError(
                        f"the vault is protected by a passphrase: set {PASSPHRASE_ENV} "
                        "or run from a terminal to be prompted"
                    )
                value = getpass.getpass("vault passphrase: ")
            if not value:
                raise VaultError("the vault passphrase must not be empty")
            self._passphrase = value
        return self._passphrase

    def key(self, header: dict[str, Any]) -> bytes:
        kdf = header.get("kdf") or {}
        params = (kdf["salt"], int(kdf["n"]), int(kdf["r"]), int(kdf["p"]))
        if params not in self._derived:
            self._derived[params] = hashlib.scrypt(
                self._get_passphrase().encode(),
                salt=_unb64(params[0]),
                n=params[1],
                r=params[2],
                p=params[3],
                maxmem=128 * 1024 * 1024,
                dklen=32,
            )
        return self._derived[params]


class Keyring:
    """A random key kept in the OS keyring (the `keyring` extra), one entry per vault home."""

    name = "keyring"
    service = "vaultproxy"

    def __init__(self, home: Path):
        self.account = str(home.resolve())

    def _keyring(self) -> Any:
        try:
            import keyring
        except ImportError:
            raise VaultError(
                "the OS keyring needs the keyring extra: pip install 'vaultproxy[keyring]'"
            ) from None
        return keyring

    def kdf(self) -> None:
        return None

    def key(self, header: dict[str, Any]) -> bytes:
        stored = self._keyring().get_password(self.service, self.account)
        if stored is None:
            raise VaultError(f"no vault key in the OS keyring for {self.account}")
        return _unb64(stored)

    def create(self) -> bytes:
        """A new key, unless the keyring already holds one for this home: like the key file,
        never replace a key (a `vault.enc.bak` may still need it)."""
        existing = self._keyring().get_password(self.service, self.account)
        if existing is not None:
            return _unb64(existing)
        key = secrets.token_bytes(32)
        self._keyring().set_password(self.service, self.account, _b64(key))
        return key


KEY_SOURCES: dict[str, Callable[[Path], KeySource]] = {
    "keyfile": lambda home: KeyFile(home / KEY_FILE),
    "passphrase": lambda home: Passphrase(),
    "keyring": Keyring,
}


def key_source_named(name: str, home: Path) -> KeySource:
    if name not in KEY_SOURCES:
        raise VaultError(f"unknown key source {name!r}: use one of {', '.join(KEY_SOURCES)}")
    return KEY_SOURCES[name](home)


def default_key_source(home: Path) -> KeySource:
    """For a new vault: `VAULTPROXY_KEY_SOURCE`, else a passphrase when one is in the
    environment, else the key file."""
    chosen = os.environ.get(KEY_SOURCE_ENV)
    if chosen:
        return key_source_named("keyfile" if chosen == "file" else chosen, home)
    return Passphrase() if handed_over_passphrase() else KeyFile(home / KEY_FILE)


# --- file format -----------------------------------------------------------------------


def encrypt(state: State, key: bytes, header: dict[str, Any]) -> bytes:
    header = {**header, "nonce": _b64(secrets.token_bytes(12))}
    header_bytes = json.dumps(header, sort_keys=True).encode()
    prefix = MAGIC + struct.pack(">I", len(header_bytes)) + header_bytes
    plaintext = json.dumps(state, separators=(",", ":")).encode()
    return prefix + AESGCM(key).encrypt(_unb64(header["nonce"]), plaintext, prefix)


def read_header(data: bytes, path: Path) -> tuple[dict[str, Any], bytes, bytes]:
    """Split a vault file into (header, associated data, ciphertext), or say why it is not one."""
    if len(data) < len(MAGIC) + 4:
        if MAGIC.startswith(data[: len(MAGIC)]):
            raise VaultError(f"{path} is truncated; the previous good copy is {path}.bak")
        raise VaultError(f"{path} is not a vaultproxy vault")
    if data[: len(MAGIC)] != MAGIC:
        raise VaultError(f"{path} is not a vaultproxy vault")
    (length,) = struct.unpack(">I", data[len(MAGIC) : len(MAGIC) + 4])
    end = len(MAGIC) + 4 + length
    if len(data) < end + 16:
        raise VaultError(f"{path} is truncated; the previous good copy is {path}.bak")
    try:
        header = json.loads(data[len(MAGIC) + 4 : end])
        version = header["format"]
    except (ValueError, KeyError, TypeError):
        raise VaultError(f"{path} is damaged (unreadable header); the previous good copy is {path}.bak") from None
    if type(version) is int and version > FORMAT_VERSION:
        raise VaultError(f"{path} has format {version}; this vaultproxy reads format {FORMAT_VERSION}: upgrade vaultproxy")
    if version != FORMAT_VERSION:
        raise VaultError(f"{path} is damaged (unknown format {version!r}); the previous good copy is {path}.bak")
    return header, data[:end], data[end:]


def decrypt(data: bytes, path: Path, key_for: Callable[[dict[str, Any]], bytes]) -> tuple[State, bytes, dict[str, Any]]:
    """Return (state, key, header) of a vault file, or say precisely why it cannot be opened."""
    header, associated, ciphertext = read_header(data, path)
    try:
        key = key_for(header)
        nonce = _unb64(header["nonce"])
        key_check = str(header["key_check"]).encode()
    except (KeyError, ValueError, TypeError):
        raise VaultError(f"{path} is damaged (bad header fields); the previous good copy is {path}.bak") from None
    if not hmac.compare_digest(_key_check(key).encode(), key_check):
        raise VaultError(
            f"cannot open {path}: wrong {'passphrase' if header.get('key_source') == 'passphrase' else 'key'} "
            f"(the vault uses its {header.get('key_source')})"
        )
    try:
        state = json.loads(AESGCM(key).decrypt(nonce, ciphertext, associated))
    except InvalidTag:
        raise VaultError(
            f"{path} has been modified or damaged (authentication failed); "
            f"the previous good copy is {path}.bak"
        ) from None
    return state, key, header


# --- the home directory -----------------------------------------------------------------


def check_home(home: Path) -> None:
    """Refuse a vault home that another user could change: whoever can write to it can plant
    configurations, a `proxy.json` that sends clients elsewhere, or an audit log of their own."""
    try:
        st = home.stat()
    except FileNotFoundError:
        return  # made 0700 on first write
    except OSError as e:
        raise VaultError(f"cannot read vault home {home}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise VaultError(f"vault home {home} is not a directory (set VAULTPROXY_HOME to a directory)")
    if st.st_uid != os.geteuid():
        raise VaultError(
            f"vault home {home} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}): "
            "set VAULTPROXY_HOME to a directory of your own"
        )
    if st.st_mode & 0o022:
        raise VaultError(f"vault home {home} is writable by other users: chmod 700 {home}")


def ensure_home(home: Path) -> None:
    """A checked vault home, made 0700 when missing."""
    check_home(home)
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise VaultError(f"cannot create vault home {home}: {e.strerror}") from None


# --- the store -------------------------------------------------------------------------


class Store:
    """The encrypted state of one vault home. Reads are lock-free (writes are atomic
    renames); every change is a locked read-modify-write so concurrent CLIs lose nothing."""

    def __init__(self, home: Path, key_source: KeySource | None = None):
        self.home = home
        self.path = home / VAULT_FILE
        self.backup_path = home / (VAULT_FILE + ".bak")
        self._key_source = key_source
        self._holder = threading.local()  # how deep this thread is in `locked`

    # reading

    def signature(self) -> Signature | None:
        """Identity of the current file: changes on every write (each write is a new inode)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise VaultError(f"cannot read {self.path}: {e.strerror}") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def read(self) -> State:
        """The decrypted state; an empty one when no vault exists yet."""
        check_home(self.home)
        data = self._read_bytes()
        return {} if data is None else decrypt(data, self.path, self._key_for)[0]

    def _read_bytes(self) -> bytes | None:
        """The raw vault file, None when there is none yet."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise VaultError(f"cannot read {self.path}: {e.strerror}") from None

    def _key_for(self, header: dict[str, Any]) -> bytes:
        name = header.get("key_source")
        if name not in KEY_SOURCES:
            raise KeyError(name)  # decrypt() reports the header as damaged
        if self._key_source is None or self._key_source.name != name:
            self._key_source = key_source_named(name, self.home)
        return self._key_source.key(header)

    # writing

    def update(self, change: Callable[[State], T]) -> T:
        """Apply `change` to the current state under the lock and write the result."""
        with self.locked():
            for stale in [*temp_files(self.path), *self.home.glob(f".{KEY_FILE}.tmp-*")]:
                stale.unlink(missing_ok=True)  # left by a writer that died mid-write
            data = self._read_bytes()
            if data is None:
                state: State = {}
                key, header = self._new_key()
            else:
                state, key, header = decrypt(data, self.path, self._key_for)
            result = change(state)
            self._replace(encrypt(state, key, header))
            return result

    def _new_key(self) -> tuple[bytes, dict[str, Any]]:
        source = self._key_source or default_key_source(self.home)
        self._key_source = source
        kdf = source.kdf()
        header: dict[str, Any] = {"format": FORMAT_VERSION, "cipher": "AES-256-GCM", "key_source": source.name, "kdf": kdf}
        create = getattr(source, "create", None)
        key = create() if create else source.key(header)
        header["key_check"] = _key_check(key)
        return key, header

    def _replace(self, data: bytes) -> None:
        """Atomically make `data` the vault, keeping the old file as `vault.enc.bak`: at every
        instant `vault.enc` is a whole vault (old or new) and the backup a whole earlier one."""
        try:
            replace_file(self.path, data, backup=self.backup_path)
        except OSError as e:
            raise VaultError(f"cannot write {self.path}: {e.strerror}; the vault is unchanged") from None
        try:
            fsync_dir(self.home)
        except OSError as e:
            raise VaultError(f"{self.path} was written, but syncing {self.home} to disk failed: {e.strerror}") from None

    # the lock

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The vault's lock, for a read-modify-write of more than the state (a configuration
        file and the state beside it). Reentrant in the thread that holds it, so `update` runs
        inside; other threads, like other processes, wait for it (a flock is per open file)."""
        depth = getattr(self._holder, "depth", 0)
        with contextlib.nullcontext() if depth else self._locked():
            self._holder.depth = depth + 1
            try:
                yield
            finally:
                self._holder.depth = depth

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        ensure_home(self.home)
        return flocked(self.home / LOCK_FILE, f"the vault in {self.home} is locked by another vaultproxy process")


@contextlib.contextmanager
def flocked(path: Path, busy: str, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """An exclusive flock on `path` (created 0600 in a home the caller has checked), for
    `timeout` seconds at most; VaultError `busy` when another process holds it that long."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise VaultError(f"cannot write to vault home {path.parent}: {e.strerror}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise VaultError(busy) from None
                time.sleep(0.01)
            except OSError as e:  # a file system without locks (ENOLCK: some NFS and FUSE mounts)
                raise VaultError(f"cannot lock {path}: {e.strerror}") from None
        yield
    finally:
        os.close(fd)

