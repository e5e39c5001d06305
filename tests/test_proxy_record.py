"""A proxy.json that outlived its proxy sends no client anywhere.

The proxy removes its record when it stops; killed (kill -9, a crash, a reboot) it leaves it
behind. Another local user then waits until a process of theirs gets the recorded pid and
listens on the recorded port: were the record taken at its word (a live pid, a port that
answers), `status` would say the proxy runs, `start` would refuse to start one, and `env` and
`exec` would send clients there with the proxy credential in Proxy-Authorization (which stays
valid for the next proxy). The CLI takes the record's pid for the proxy only when it is a
process of the user's own that runs the addon, and its port only when the socket listening
there is that very process's.

The other user here is `nobody` (the tests run as root, as in CI), listening for real where a
record says, with the system's python3 (nobody cannot run this virtual environment's); the CLI
and curl are the real ones. So is another process of the user's own that listens on a
record's port and is no proxy. The rules for which listener gets a connection are tested on
sample /proc/net/tcp text.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import Listener, run_cli
from tests.support.net import LOOPBACK, free_port
from tests.support.tls import TLSMaterial
from tests.support.users import NOBODY, another_user
from vaultcore import credential, proxyenv
from vaultcore.credential import new_token, publish_credential, read_credential
from vaultcore.proxyenv import NoProxy, publish_proxy, runtime_info, serving_proxy, withdraw_proxy
from vaultcore.sockdiag import listening_inodes
from vaultcore.vault import Vault

VALUE = "FAKE-record-value-5d02c7"
SYSTEM_PYTHON = "/usr/bin/python3"

as_another_user = another_user(
    f"listens as the user nobody with {SYSTEM_PYTHON}, which needs root, that user and that python",
    os.access(SYSTEM_PYTHON, os.X_OK),
)


@pytest.fixture
def home(tmp_path: Path, tls_material: TLSMaterial) -> Path:
    """A vault with a secret and the proxy credential, as a proxy that was killed leaves it, and a
    confdir with mitmproxy's CA."""
    home = tmp_path / "vault-home"
    Vault(home).set("k", VALUE, hosts=[LOOPBACK])
    publish_credential(home, new_token())
    (tmp_path / "confdir").mkdir()
    (tmp_path / "confdir" / "mitmproxy-ca-cert.pem").write_text(tls_material.ca_cert.read_text())
    return home


def record(home: Path, pid: int, port: int, start_ticks: int | None = None) -> Path:
    """proxy.json as a proxy that ran with `pid` on `port` wrote it: with the start of that
    process (`start_ticks`, by default the real one, as a proxy records its own)."""
    if start_ticks is None and (found := proxyenv.process(pid)) is not None:
        start_ticks = found.start_ticks
    path = home / "proxy.json"
    path.write_text(json.dumps({
        "pid": pid, "host": LOOPBACK, "port": port, "confdir": str(home.parent / "confdir"),
        "started": "2026-01-31T09:00:00+00:00", "options": {},
        **({"start_ticks": start_ticks} if start_ticks is not None else {}),
    }))
    return path


def refused(result: subprocess.CompletedProcess[bytes]) -> str:
    """The one error line of a command that refused (exit status 1), without the value."""
    err = result.stderr.decode()
    assert (result.returncode, result.stdout) == (1, b""), (result.returncode, result.stdout, err)
    assert err.startswith("vaultproxy: error: ") and err.count("\n") == 1 and VALUE not in err, err
    return err


def credential_sent(listener: Listener) -> bool:
    return any(b"proxy-authorization" in data.lower() for data in listener.received)


def curl_through_exec(home: Path) -> subprocess.CompletedProcess[bytes]:
    return run_cli(home, "exec", "--", "curl", "-q", "--silent", "--max-time", "5",
                   "-H", "Authorization: Bearer <<vault:k>>", f"http://{LOOPBACK}:1/x")


@as_another_user
def test_another_users_listener_on_a_stale_records_pid_and_port_gets_nothing(home: Path) -> None:
    """nobody's listener holds the recorded pid (it is that pid) and port, and names the addon
    in its command line: only its owner tells it from the proxy."""
    assert NOBODY is not None
    with Listener(addon=True, user=NOBODY, python=SYSTEM_PYTHON) as squatter:
        path = record(home, squatter.pid, squatter.port)
        env, exec_, status = run_cli(home, "env"), curl_through_exec(home), run_cli(home, "status", "--json")
        start, stop = run_cli(home, "start", "--listen-port", str(squatter.port)), run_cli(home, "stop")
        still_there = squatter.process.poll() is None
    assert not credential_sent(squatter), "nobody's listener got the proxy credential"
    stale = f"pid {squatter.pid} from {path} is another user's process (uid {NOBODY.pw_uid}), not your proxy"
    assert stale in refused(env) and stale in refused(exec_) and stale in refused(stop)
    assert still_there  # stop signalled nothing
    proxy = json.loads(status.stdout)["proxy"]
    assert not proxy["running"] and stale in proxy["problem"]
    # No "a proxy already serves": start goes on, and finds the port taken.
    assert f"cannot listen on {LOOPBACK}:{squatter.port}: address already in use" in refused(start)


@pytest.mark.parametrize("pid_of", ["a-stand-in", "the-listener"])
def test_a_port_held_by_another_process_of_yours_is_not_the_proxy(home: Path, pid_of: str) -> None:
    """The record's pid is a process of the user's that names the addon, but what listens on
    the record's port is another (a plain listener); or the pid is that plain listener."""
    with Listener(addon=True) as stand_in, Listener(addon=False) as plain:
        pid = stand_in.pid if pid_of == "a-stand-in" else plain.pid
        path = record(home, pid, plain.port)
        env, exec_ = run_cli(home, "env"), curl_through_exec(home)
        status = json.loads(run_cli(home, "status", "--json").stdout)["proxy"]
    assert not credential_sent(plain), "a listener that is not the proxy got the proxy credential"
    if pid_of == "a-stand-in":
        says = f"what listens on {LOOPBACK}:{plain.port} is not the proxy (pid {pid}) that {path} names"
    else:
        says = f"pid {pid} from {path} is no vaultproxy proxy any more (the record is stale)"
    assert says in refused(env) and says in refused(exec_) and says in status["problem"]
    assert not status["running"]


def test_the_proxys_own_listener_is_the_proxy(home: Path) -> None:
    with Listener(addon=True) as stand_in:
        record(home, stand_in.pid, stand_in.port)
        assert serving_proxy(home).pid == stand_in.pid
        assert json.loads(run_cli(home, "status", "--json").stdout)["proxy"]["running"]


def test_a_proxy_of_yours_that_does_not_listen_is_stopped_all_the_same(home: Path) -> None:
    """`stop` is what the message says to do for a proxy that does not answer: it checks the
    process it signals (the user's, running the addon), not the port."""
    stand_in = Listener(addon=True)
    try:
        port = free_port()
        record(home, stand_in.pid, port)
        assert f"(pid {stand_in.pid}) does not answer on {LOOPBACK}:{port}: restart it" in refused(run_cli(home, "env"))
        stopped = run_cli(home, "stop")
        assert stopped.returncode == 0, stopped.stderr.decode()
        assert stand_in.process.wait(30) == -15  # SIGTERM
    finally:
        stand_in.stop()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="a process's start is read from /proc")
def test_a_process_that_did_not_write_the_record_is_not_its_proxy(home: Path) -> None:
    """The record's proxy was killed, and its pid now belongs to another proxy of the user's
    (for another home, started later): alive, the user's, running the addon, listening on
    the record's port. It did not start when the record's proxy did, so it did not write it:
    `stop` leaves it alone, and clients are not sent there."""
    with Listener(addon=True) as later_proxy:
        found = proxyenv.process(later_proxy.pid)
        assert found is not None and found.start_ticks is not None
        path = record(home, later_proxy.pid, later_proxy.port, start_ticks=found.start_ticks - 100)
        stop, env = run_cli(home, "stop"), run_cli(home, "env")
        still_there = later_proxy.process.poll() is None
    stale = f"pid {later_proxy.pid} from {path} is not the process that wrote the record (it started at another time)"
    assert stale in refused(stop) and stale in refused(env) and "the record is stale" in refused(stop)
    assert still_there  # stop signalled nothing


@pytest.fixture
def taken_over() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Where a test puts the processes that took over an exited one's pid; killed at teardown."""
    newcomers: list[subprocess.Popen[bytes]] = []
    yield newcomers
    for newcomer in newcomers:
        newcomer.kill()
        newcomer.wait()


def take_over(pid: int) -> subprocess.Popen[bytes]:
    """A new process with the pid of one that has exited and been reaped (as pid reuse gives
    it, by setting the pid the kernel hands out next: root only)."""
    for _ in range(20):  # another fork may take the pid first
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        newcomer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "vaultproxy_addon.py"])
        if newcomer.pid == pid:
            return newcomer
        newcomer.kill()
        newcomer.wait()
    pytest.skip(f"pid {pid} was not handed out again")


@pytest.mark.skipif(not hasattr(signal, "pidfd_send_signal"), reason="pidfds are Linux's")
def test_stop_signals_the_proxy_through_a_pidfd(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = []

    def pidfd_send_signal(fd: int, signalnum: int) -> None:
        sent.append(signalnum)
        real(fd, signalnum)

    real = signal.pidfd_send_signal
    monkeypatch.setattr(signal, "pidfd_send_signal", pidfd_send_signal)
    stand_in = Listener(addon=True)
    try:
        record(home, stand_in.pid, stand_in.port)
        assert proxyenv.stop_proxy(home).pid == stand_in.pid
        assert stand_in.process.wait(30) == -signal.SIGTERM and sent == [signal.SIGTERM]
    finally:
        stand_in.stop()


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="pidfds are Linux's")
def test_stop_signals_by_pid_where_pidfds_are_refused(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A seccomp filter older than pidfds (Docker's default before 20.10) answers EPERM: `stop`
    stopped nothing there. It signals by pid instead, as where there are no pidfds."""

    def refused(pid: int) -> int:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "pidfd_open", refused)
    stand_in = Listener(addon=True)
    try:
        record(home, stand_in.pid, stand_in.port)
        assert proxyenv.stop_proxy(home).pid == stand_in.pid
        assert stand_in.process.wait(30) == -signal.SIGTERM
    finally:
        stand_in.stop()


@pytest.mark.skipif(not hasattr(os, "pidfd_open") or os.geteuid() != 0, reason="reuses a pid, through Linux's ns_last_pid, as root")
def test_a_proxy_that_exits_between_the_checks_and_the_signal_takes_no_one_with_it(
    home: Path, monkeypatch: pytest.MonkeyPatch, taken_over: list[subprocess.Popen[bytes]],
) -> None:
    """`stop` checks the process, then signals it: the proxy may exit in between, and its pid
    go to a new process. The signal goes to the process that was checked or to none."""
    stand_in = Listener(addon=True)

    def checked_then_exited(*args: object) -> object:
        checked = real(*args)
        stand_in.stop()  # killed and reaped: its pid is free
        taken_over.append(take_over(stand_in.pid))
        return checked

    real = proxyenv.proxy_process
    monkeypatch.setattr(proxyenv, "proxy_process", checked_then_exited)
    record(home, stand_in.pid, stand_in.port)
    assert proxyenv.stop_proxy(home).pid == stand_in.pid  # stopped: it has exited
    newcomer, = taken_over
    assert newcomer.pid == stand_in.pid and newcomer.poll() is None


@as_another_user
def test_without_proc_the_owner_and_command_line_are_still_asked_of_ps(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on macOS (no /proc): `ps` says who owns the pid and what it runs; whose socket
    listens on the port is not known there, so a port that answers does."""
    assert NOBODY is not None
    monkeypatch.setattr(proxyenv, "PROC", tmp_path / "no-proc")
    with Listener(addon=True, user=NOBODY, python=SYSTEM_PYTHON) as squatter, Listener(addon=False) as plain, \
            Listener(addon=True) as stand_in:
        record(home, squatter.pid, squatter.port)
        with pytest.raises(NoProxy, match=f"another user's process \\(uid {NOBODY.pw_uid}\\)"):
            serving_proxy(home)
        record(home, plain.pid, plain.port)
        with pytest.raises(NoProxy, match="is no vaultproxy proxy any more"):
            serving_proxy(home)
        record(home, stand_in.pid, stand_in.port)
        assert serving_proxy(home).pid == stand_in.pid
    assert not credential_sent(squatter)


# --- which listener a connection goes to, from /proc/net/tcp{,6} --------------------------------

# Little-endian /proc text. Port 1F90: 127.0.0.1 (inode 11) and ::1 (inode 15), and a wildcard
# :: (inode 14, dual-stack or IPV6_V6ONLY: the table does not say); 1F91: 0.0.0.0 only (12);
# 1F92: an IPv4-mapped ::ffff:127.0.0.1 on an IPv6 socket (13); 1F93: a connection (01), no listener.
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 11 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F93 0100007F:8A6E 01 00000000:00000000 00:00000000 00000000     0        0 16 1 0000000000000000 20 4 30 10 -1
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 13 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 14 1 0000000000000000 100 0 0 10 0
   2: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 15 1 0000000000000000 100 0 0 10 0
"""


@pytest.mark.parametrize(("address", "inodes"), [
    # A listener on the very address wins over a wildcard one (which, V6ONLY, may be anyone's).
    pytest.param((LOOPBACK, 0x1F90), {11}, id="the-address-itself"),
    pytest.param((LOOPBACK, 0x1F91), {12}, id="ipv4-wildcard"),
    pytest.param((LOOPBACK, 0x1F92), {13}, id="ipv4-mapped"),
    pytest.param(("::ffff:127.0.0.1", 0x1F92), {13}, id="mapped-address-asked"),
    pytest.param(("::1", 0x1F90), {15}, id="ipv6"),
    pytest.param(("::1", 0x1F91), set(), id="an-ipv4-wildcard-takes-no-ipv6"),
    pytest.param(("127.0.0.2", 0x1F90), {14}, id="ipv6-wildcard-may-take-ipv4"),
    pytest.param((LOOPBACK, 0x1F93), set(), id="a-connection-is-no-listener"),
])
def test_the_listeners_that_take_a_connection(address: tuple[str, int], inodes: set[int]) -> None:
    assert listening_inodes([PROC_NET_TCP, PROC_NET_TCP6], address, "little") == inodes


def test_a_proxy_stopping_as_another_starts_leaves_the_newcomer_its_credential_and_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two proxies for one home: the first stops just as the second publishes. The first's
    withdrawal reads the credential, finds its own and deletes it; had the second published
    in between, its credential would go (and `env` would hand its clients none). Withdrawal and
    publication hold the home's record lock, so the second waits the moment out. The first
    here is this process; the second's record names another pid, as another process's does."""
    home = tmp_path / "home"
    first, second = new_token(), new_token()
    publish_proxy(home, first, {"pid": os.getpid()})
    read, go = threading.Event(), threading.Event()
    real_read = credential.read_credential

    def read_then_wait(where: Path) -> str | None:
        token = real_read(where)
        read.set()
        go.wait(10)
        return token

    monkeypatch.setattr(credential, "read_credential", read_then_wait)
    withdrawing = threading.Thread(target=withdraw_proxy, args=(home, first))
    withdrawing.start()
    assert read.wait(10), "the withdrawal never read the credential"
    publishing = threading.Thread(target=publish_proxy, args=(home, second, {"pid": os.getppid()}))
    publishing.start()
    publishing.join(0.5)  # without the lock, the second has published by now, mid-withdrawal
    go.set()
    withdrawing.join(10)
    publishing.join(10)
    monkeypatch.undo()
    assert read_credential(home) == second
    assert runtime_info(home) == {"pid": os.getppid()}
