"""Where the proxy runs and how clients find it: the mitmdump command line that
`vaultproxy start` runs, the running proxy's record (`proxy.json`), and the environment
(`vaultproxy env` / `exec`) that points curl, Python and Node at the proxy, with its
credential, and makes them trust mitmproxy's CA.

The running addon writes `proxy.json` into the vault home (its pid, address, mitmproxy
confdir, start time and vault_* options) and removes it when it stops. The CLI only ever
uses the proxy that record names, once verified, never a default address, where another
vault's proxy could be listening. Verified means more than a live pid and a port that
answers: a proxy killed outright (kill -9, a crash, a reboot) leaves its record behind, and
another local user can then hold its pid and listen on its port. The pid must be a process
of this user running the addon, the very process that wrote the record (its start, in clock
ticks since boot), and the socket listening where clients connect its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vaultcore.atomic import replace_file
from vaultcore.credential import CREDENTIAL_USER, publish_credential, read_credential, withdraw_credential
from vaultcore.sockdiag import TCP_TABLES, listening_inodes
from vaultcore.store import VaultError, check_home, ensure_home, flocked

ADDON_SCRIPT = Path(__file__).resolve().parent.parent / "addon" / "vaultproxy_addon.py"
RUNTIME_FILE = "proxy.json"
RECORD_LOCK = "proxy.lock"  # held while a proxy publishes or withdraws its credential and record
RECORD_LOCK_SECONDS = 5.0  # each holder holds it for two file operations
DEFAULT_CONFDIR = Path("~/.mitmproxy")
SYSTEM_CA_CANDIDATES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
ALL_INTERFACES = ("0.0.0.0", "::", "")
PROC = Path("/proc")
ANSWER_TIMEOUT_SECONDS = 2.0
STOP_TIMEOUT_SECONDS = 15.0


def mitmdump_argv(home: Path, listen_host: str, listen_port: int, extra: list[str]) -> list[str]:
    """mitmdump from this interpreter's environment, with the addon and the vault home.
    No UI: live UIs would be shown flows with values in them (README, "Watching flows")."""
    mitmdump = Path(sys.executable).parent / "mitmdump"
    if not ADDON_SCRIPT.exists():
        raise VaultError(f"the addon script {ADDON_SCRIPT} is missing: install vaultproxy from its source tree (pip install -e .)")
    return [
        str(mitmdump), "-s", str(ADDON_SCRIPT),
        "--listen-host", listen_host, "--listen-port", str(listen_port),
        "--set", f"vault_home={home}",
        *extra,
    ]


# --- the running proxy's record --------------------------------------------------------------


@dataclass(frozen=True)
class ProxyInfo:
    """What a proxy wrote about itself into proxy.json."""

    pid: int
    host: str
    port: int
    confdir: Path
    started: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    start_ticks: int | None = None  # when its process started (Linux); None in records of older versions

    @property
    def client_host(self) -> str:
        """Where clients connect: loopback reaches a proxy that listens on every interface."""
        return "127.0.0.1" if self.host in ALL_INTERFACES else self.host

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def runtime_record(host: str, port: int, confdir: str, options: dict[str, Any]) -> dict[str, Any]:
    """What the running addon writes into proxy.json (for `env`, `exec`, `status`, `stop`, `log`)."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = {"pid": os.getpid(), "host": host, "port": port, "confdir": confdir, "started": started, "options": options}
    if (own := process(os.getpid())) is not None and own.start_ticks is not None:
        record["start_ticks"] = own.start_ticks
    return record


def publish_proxy(home: Path, credential: str, record: dict[str, Any]) -> None:
    """A starting proxy's credential, then its record (`vaultproxy env` reads both), in place of
    any other proxy's. Each is written atomically: a reader gets the old file or the new one."""
    ensure_home(home)
    with _record_lock(home):
        publish_credential(home, credential)
        try:
            replace_file(home / RUNTIME_FILE, json.dumps(record).encode())
        except OSError as e:
            raise VaultError(f"cannot write {home / RUNTIME_FILE}: {e.strerror}") from None


def withdraw_proxy(home: Path, credential: str) -> None:
    """Delete a stopping proxy's credential and record from `home`, each only while it is still
    this process's: a second proxy for the home may have published its own since."""
    if not home.is_dir():
        return  # the home went away: it took both files with it
    with _record_lock(home):
        withdraw_credential(home, credential)
        if runtime_info(home).get("pid") == os.getpid():
            try:
                (home / RUNTIME_FILE).unlink()
            except OSError:
                pass  # gone already: nothing of ours left


def _record_lock(home: Path) -> contextlib.AbstractContextManager[None]:
    """A withdrawal compares, then deletes: a second proxy publishing in between would lose
    its credential and record. Both hold this lock, not the vault's, which a CLI command may
    hold for as long as its provider takes to answer."""
    return flocked(home / RECORD_LOCK, f"another proxy for {home} is publishing or withdrawing its record", RECORD_LOCK_SECONDS)


def runtime_info(home: Path) -> dict[str, Any]:
    """What the running proxy wrote about itself; empty when absent or unreadable."""
    try:
        info = json.loads((home / RUNTIME_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def proxy_info(home: Path) -> ProxyInfo | None:
    """proxy.json as a ProxyInfo; None when there is none, or it is damaged or written by a
    version that recorded no pid (nothing it says can be verified)."""
    info = runtime_info(home)
    pid, port, host = info.get("pid"), info.get("port"), info.get("host")
    if not (isinstance(pid, int) and pid > 0 and isinstance(port, int) and 0 < port < 65536 and isinstance(host, str)):
        return None
    options, start_ticks = info.get("options"), info.get("start_ticks")
    return ProxyInfo(
        pid, host, port, Path(str(info.get("confdir") or DEFAULT_CONFDIR)).expanduser(),
        info.get("started") if isinstance(info.get("started"), str) else None,
        options if isinstance(options, dict) else {},
        start_ticks if isinstance(start_ticks, int) and not isinstance(start_ticks, bool) else None,
    )


def process_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (exited, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal test is all there is
    return stat.rpartition(")")[2].split()[0] != "Z"


@dataclass(frozen=True)
class Process:
    """What the CLI sees of a process, all of it read at one time."""

    uid: int
    command_line: str
    sockets: frozenset[int] | None  # the inodes of its sockets; None where they cannot be seen (no /proc)
    start_ticks: int | None  # when it started, in clock ticks since boot; None where that is not read (no /proc)


def process(pid: int) -> Process | None:
    """Process `pid`: its owner, command line, start time and sockets, read through one handle
    on /proc/PID, so that all of it is about one process (were the pid reused meanwhile, reads
    through the handle fail). Sockets are read only of a process of this user: those of
    another are not its to read. None when the process has gone. Without /proc (macOS), one
    run of `ps` tells the owner and the whole command line (-ww: not cut to a terminal's
    width), and neither sockets nor start time."""
    if not (PROC / "self").exists():
        ps = subprocess.run(["ps", "-ww", "-o", "uid=", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False)
        uid, _, command_line = ps.stdout.strip().partition(" ")
        return Process(int(uid), command_line.strip(), None, None) if uid.isdigit() else None
    try:
        directory = os.open(PROC / str(pid), os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        uid = os.fstat(directory).st_uid
        command_line = _read_at(directory, "cmdline").replace(b"\0", b" ").decode(errors="replace")
        sockets = _socket_inodes(directory) if uid == os.geteuid() else frozenset()
        return Process(uid, command_line, sockets, _start_ticks(directory))
    except OSError:
        return None
    finally:
        os.close(directory)


def _read_at(directory: int, name: str) -> bytes:
    with open(os.open(name, os.O_RDONLY, dir_fd=directory), "rb") as file:
        return file.read()


def _start_ticks(directory: int) -> int:
    """When the process whose /proc directory is `directory` started: field 22 of its stat, in
    clock ticks since boot (counted after the command name, which may hold spaces and ")").
    No pid is reused within one tick, and the wall clock does not move it."""
    return int(_read_at(directory, "stat").rpartition(b")")[2].split()[22 - 3])


def _socket_inodes(directory: int) -> frozenset[int]:
    """The sockets among the open files of the process whose /proc directory is `directory`."""
    fds = os.open("fd", os.O_RDONLY | os.O_DIRECTORY, dir_fd=directory)
    try:
        links = []
        for name in os.listdir(fds):
            try:
                links.append(os.readlink(name, dir_fd=fds))
            except OSError:
                continue  # closed meanwhile
    finally:
        os.close(fds)
    return frozenset(int(link[len("socket:["):-1]) for link in links if link.startswith("socket:["))


def answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=ANSWER_TIMEOUT_SECONDS).close()
    except OSError:
        return False
    return True


def _listeners(address: tuple[str, int]) -> set[int]:
    """The sockets that may take a connection to `address`, from /proc/net/tcp and tcp6."""
    tables = []
    for path in TCP_TABLES:
        try:
            tables.append(Path(path).read_text())
        except OSError:
            continue  # no IPv6
    return listening_inodes(tables, address)


class NoProxy(VaultError):
    """No verified proxy serves the home; `info` is what proxy.json says, if anything."""

    def __init__(self, message: str, info: ProxyInfo | None = None):
        super().__init__(message)
        self.info = info


def recorded_proxy(home: Path) -> ProxyInfo:
    """What proxy.json says; NoProxy when there is nothing (usable) there."""
    info = proxy_info(home)
    if info is None:
        raise NoProxy(f"no proxy serves {home}: start one with `vaultproxy start`")
    return info


def _exited(home: Path, info: ProxyInfo) -> NoProxy:
    return NoProxy(f"no proxy serves {home}: the one that did (pid {info.pid}) has exited; start one with `vaultproxy start`", info)


def proxy_process(home: Path, info: ProxyInfo) -> Process:
    """The process of the pid in `home`'s record `info`, once that is a vaultproxy proxy of
    this user: alive, this user's, running the addon (mitmdump's command line names it), and,
    where /proc tells it, the process that wrote the record (it started when the record says
    it did). A stale record's pid
    may be anyone's process now; another user's would be sent clients with the proxy
    credential, or `stop`'s signal; a later proxy of this user's, serving another home, would
    be stopped in its place. Otherwise NoProxy, saying why and what to do."""
    found = process(info.pid) if process_alive(info.pid) else None
    if found is None:
        raise _exited(home, info)
    stale = f"no proxy serves {home}: pid {info.pid} from {home / RUNTIME_FILE}"
    if found.uid != os.geteuid():
        raise NoProxy(f"{stale} is another user's process (uid {found.uid}), not your proxy (the record is stale); "
                      "start one with `vaultproxy start`", info)
    if ADDON_SCRIPT.name not in found.command_line:
        raise NoProxy(f"{stale} is no vaultproxy proxy any more (the record is stale); start one with `vaultproxy start`", info)
    if found.start_ticks is not None and info.start_ticks is not None and found.start_ticks != info.start_ticks:
        raise NoProxy(f"{stale} is not the process that wrote the record (it started at another time): the record is stale; "
                      "start one with `vaultproxy start`", info)
    return found


def serving_proxy(home: Path) -> ProxyInfo:
    """The proxy serving `home`, verified (for `env`, `exec`, `status` and `start`): its pid is
    a vaultproxy proxy of this user (proxy_process), and the sockets that may take a client's
    connection to its address are all that process's own. Otherwise NoProxy, saying why and
    what to do.

    Without /proc (macOS) no socket can be tied to a process: a port that answers is taken
    for the proxy's. Another user listening there is still refused unless the recorded pid
    is, by chance, a process of this user that runs the addon."""
    info = recorded_proxy(home)
    found = proxy_process(home, info)
    address = (info.client_host, info.port)
    if found.sockets is None:
        listening, its_own = answers(*address), True
    else:
        try:
            inodes = _listeners(address)
        except ValueError:  # a host that is no IP address is in no table
            inodes = set()
        listening, its_own = bool(inodes), inodes <= found.sockets
    if not listening:
        raise NoProxy(
            f"the proxy serving {home} (pid {info.pid}) does not answer on {info.address}: "
            "restart it with `vaultproxy stop` and `vaultproxy start`", info,
        )
    if not its_own:
        raise NoProxy(
            f"no proxy serves {home}: what listens on {info.address} is not the proxy (pid {info.pid}) that "
            f"{home / RUNTIME_FILE} names (the record is stale); restart the proxy with `vaultproxy stop` and `vaultproxy start`", info,
        )
    return info


def stop_proxy(home: Path) -> ProxyInfo:
    """SIGTERM the proxy serving `home` and wait until it has exited. What is signalled must be
    a vaultproxy proxy of this user (proxy_process: the checks of serving_proxy but the port's);
    one that does not answer on its port is stopped all the same, as its NoProxy says to. In a
    home others can write to, the record could name any proxy of this user's: refused.

    The signal goes through a pidfd opened before the checks: the proxy may exit between the
    checks and the signal, and its pid go to another process, which a pidfd never reaches."""
    check_home(home)
    info = recorded_proxy(home)
    try:
        handle = _pidfd(info.pid)
    except ProcessLookupError:
        raise _exited(home, info) from None
    try:
        proxy_process(home, info)
        if _terminate(info.pid, handle) and not _exits(info.pid, handle):
            raise VaultError(f"the proxy (pid {info.pid}) has not stopped after {STOP_TIMEOUT_SECONDS:.0f}s: `kill -9 {info.pid}`")
    finally:
        if handle is not None:
            os.close(handle)
    return info


def _pidfd(pid: int) -> int | None:
    """A pidfd for process `pid`: it stays the handle of that process, even once the pid is
    another's. None without pidfds (macOS; Linux before 5.3). ProcessLookupError when `pid`
    has exited."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):  # refused by a seccomp filter (older Docker), say
            return None
        raise


def _terminate(pid: int, handle: int | None) -> bool:
    """SIGTERM process `pid`, through its pidfd `handle` where there is one. False when it has
    exited: then nothing is signalled."""
    try:
        if handle is None:
            os.kill(pid, signal.SIGTERM)
        else:
            signal.pidfd_send_signal(handle, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def _exits(pid: int, handle: int | None) -> bool:
    """Whether process `pid` exits within STOP_TIMEOUT_SECONDS: its pidfd `handle` becomes
    readable then (a pid seen alive could be another process's by now); without one, the pid
    is polled."""
    if handle is not None:
        return bool(select.select([handle], [], [], STOP_TIMEOUT_SECONDS)[0])
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- what clients get ------------------------------------------------------------------------


def proxy_url(host: str, port: int, credential: str | None = None) -> str:
    """The proxy's URL; with the credential as its password (clients send it as
    Proxy-Authorization) when there is one."""
    userinfo = f"{CREDENTIAL_USER}:{credential}@" if credential else ""
    return f"http://{userinfo}[{host}]:{port}" if ":" in host else f"http://{userinfo}{host}:{port}"


def system_ca_file() -> Path | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get("SSL_CERT_FILE"), paths.cafile, paths.openssl_cafile, *SYSTEM_CA_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    try:
        import certifi  # a dependency of mitmproxy and requests

        return Path(certifi.where())
    except ImportError:
        return None


def ca_bundle(home: Path, confdir: Path) -> Path:
    """System CAs plus mitmproxy's CA in one file: clients that take a single bundle
    (curl, requests, OpenSSL) then trust both the proxy and sites reached without it."""
    mitm_ca = confdir / "mitmproxy-ca-cert.pem"
    if not mitm_ca.is_file():
        raise VaultError(f"mitmproxy's CA {mitm_ca} does not exist yet: start the proxy once (`vaultproxy start`)")
    system = system_ca_file()
    bundle = home / "ca-bundle.pem"
    parts = [system.read_text() if system else "", mitm_ca.read_text()]
    try:
        replace_file(bundle, ("\n".join(p.strip() for p in parts if p) + "\n").encode(), mode=0o644)
    except OSError as e:
        raise VaultError(f"cannot write the CA bundle {bundle}: {e.strerror}; the vault home must be writable by you (chmod 700 {home})") from None
    return bundle


def client_environment(home: Path) -> dict[str, str]:
    """The variables that send a client through the proxy serving `home`. In a home someone
    else can write to, proxy.json could send it (and its secrets) anywhere: refused."""
    check_home(home)
    proxy = serving_proxy(home)
    url = proxy_url(proxy.client_host, proxy.port, read_credential(home))
    bundle = str(ca_bundle(home, proxy.confdir))
    return {
        "HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url,
        "SSL_CERT_FILE": bundle, "REQUESTS_CA_BUNDLE": bundle, "CURL_CA_BUNDLE": bundle,
        "NODE_EXTRA_CA_CERTS": bundle,
    }
