"""The commands around the proxy, run for real: `start` (and what it refuses before mitmdump
runs), `stop`, `status`, `env`, `exec`, and how they fail.

Clients only ever use the proxy that serves this vault home, as its proxy.json says and
verified (its pid a proxy of this user's, whose own socket listens at the address), never a
default address; a proxy only ever removes its own record (test_proxy_record.py: a record
that outlived its proxy). Failures are one line, never "unexpected", with a shell's exit
codes where a shell would give them.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import CLI, Listener, StartVaultproxy, cli_env, run_cli, run_on_terminal, stand_in_proxy
from tests.support.net import LOOPBACK, free_port, wait_until
from tests.support.proxy import StartProxy, audit_lines, curl
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordingUpstream
from vaultcore.proxyenv import proxy_info
from vaultcore.store import PASSPHRASE_ENV
from vaultcore.vault import Vault

TIMEOUT = 60
VALUE = "FAKE-proxycli-value-3e8b21"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "vault-home"
    Vault(home).set("k", VALUE, hosts=[LOOPBACK])
    return home


@pytest.fixture(scope="module")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mitmproxy's confdir, shared: making its CA takes a while."""
    return tmp_path_factory.mktemp("confdir")


@pytest.fixture
def ca_confdir(tmp_path: Path, tls_material: TLSMaterial) -> Path:
    """A confdir with a CA in it, for a stand-in proxy."""
    confdir = tmp_path / "stand-in-confdir"
    confdir.mkdir()
    (confdir / "mitmproxy-ca-cert.pem").write_text(tls_material.ca_cert.read_text())
    return confdir


def one_line(result: subprocess.CompletedProcess[bytes], code: int) -> str:
    """The error line of a command that failed with `code`: nothing on stdout, no value."""
    err = result.stderr.decode()
    assert result.returncode == code, (result.returncode, err)
    assert err.startswith("vaultproxy: error: ") and err.count("\n") == 1 and "unexpected" not in err, err
    assert result.stdout == b"" and VALUE not in err
    return err


def record(home: Path) -> dict[str, object]:
    return json.loads((home / "proxy.json").read_text())


@pytest.fixture
def exited_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# --- env and exec: this home's proxy, verified, or a clear no ------------------------------------


def test_env_without_a_proxy_says_so_and_prints_nothing(home: Path) -> None:
    assert f"no proxy serves {home}: start one with `vaultproxy start`" in one_line(run_cli(home, "env"), 1)


def test_a_record_of_a_proxy_that_exited_is_not_followed(home: Path, exited_pid: int, ca_confdir: Path) -> None:
    (home / "proxy.json").write_text(json.dumps({"pid": exited_pid, "host": LOOPBACK, "port": free_port(), "confdir": str(ca_confdir)}))
    says = one_line(run_cli(home, "exec", "--", "true"), 1)
    assert f"the one that did (pid {exited_pid}) has exited; start one with `vaultproxy start`" in says


def test_a_proxy_whose_port_does_not_answer_is_not_used(home: Path, ca_confdir: Path) -> None:
    port = free_port()
    with Listener(addon=True) as stand_in:  # listening on a port of its own, not this one
        (home / "proxy.json").write_text(json.dumps({"pid": stand_in.pid, "host": LOOPBACK, "port": port, "confdir": str(ca_confdir)}))
        says = one_line(run_cli(home, "env"), 1)
    assert f"(pid {stand_in.pid}) does not answer on {LOOPBACK}:{port}: restart it" in says


def test_a_second_proxy_for_the_home_keeps_its_record_when_the_first_stops(mitmdump: StartProxy, home: Path) -> None:
    first = mitmdump(options={"vault_home": str(home)})
    wait_until(lambda: (home / "proxy.json").exists() and record(home)["pid"] == first.pid, TIMEOUT, "the first record")
    says = one_line(run_cli(home, "start", "--listen-port", "0"), 1)  # refused before mitmdump runs
    assert f"a proxy already serves {home}, on {LOOPBACK}:{first.port} (pid {first.pid}): `vaultproxy stop` first" in says
    second = mitmdump(options={"vault_home": str(home)})  # by hand: nothing stops that
    wait_until(lambda: record(home)["pid"] == second.pid, TIMEOUT, "the second record")
    first.stop()
    assert record(home)["pid"] == second.pid  # the first one left the second one's record alone
    second.stop()
    assert not (home / "proxy.json").exists()


def test_the_record_names_the_http_proxy_whichever_mode_listens_first(mitmdump: StartProxy, home: Path) -> None:
    """`env` and `exec` point clients at proxy.json's address as an HTTP proxy: with a SOCKS5
    (or reverse) listener first, they pointed them at that one, whose clients' requests fail
    (or all go to the reverse target)."""
    proxy = mitmdump(options={"vault_home": str(home), "mode": [f"socks5@{LOOPBACK}:0", "regular"]})
    wait_until(lambda: (home / "proxy.json").exists() and record(home)["pid"] == proxy.pid, TIMEOUT, "the record")
    assert (record(home)["host"], record(home)["port"]) == (LOOPBACK, proxy.port)


# --- start: refused before mitmdump runs ------------------------------------------------------------


@pytest.mark.parametrize(("words", "says"), [
    (["--listen-port", "8084", "extra"], "stray words after the options"),
    (["extra", "--", "--set", "x=y"], "stray words after the options"),
    (["--listen-port", "70000"], "--listen-port: a port is a number from 0"),
], ids=["stray-word", "stray-word-first", "bad-port"])
def test_start_refuses_stray_words(home: Path, words: list[str], says: str) -> None:
    assert says in one_line(run_cli(home, "start", *words), 2)
    assert not (home / "proxy.json").exists()


def test_start_on_a_port_in_use_names_listen_port(home: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        says = one_line(run_cli(home, "start", "--listen-port", str(port)), 1)
    assert f"cannot listen on {LOOPBACK}:{port}: address already in use; choose another port with --listen-port PORT" in says


@pytest.fixture
def passphrase_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    home = tmp_path / "passphrase-home"
    passphrase = "FAKE-start-passphrase-17c0"
    monkeypatch.setenv(PASSPHRASE_ENV, passphrase)
    Vault(home).set("k", VALUE, hosts=[LOOPBACK])
    monkeypatch.delenv(PASSPHRASE_ENV)
    return home, passphrase


def test_start_with_a_wrong_passphrase_is_one_line(passphrase_home: tuple[Path, str]) -> None:
    home, _ = passphrase_home
    result = run_cli(home, "start", "--listen-port", "0", env={PASSPHRASE_ENV: "FAKE-not-the-passphrase"})
    assert "wrong passphrase" in one_line(result, 1)
    assert not (home / "proxy.json").exists()


def test_start_asks_for_the_passphrase_once_and_stop_ends_it(passphrase_home: tuple[Path, str], confdir: Path) -> None:
    """Typed at start's prompt, the passphrase reaches the proxy through the pipe: the
    terminal shows one prompt, and the proxy opens the vault (it records itself only then)."""
    home, passphrase = passphrase_home
    words = ["start", "--listen-port", "0", "--", "--set", f"confdir={confdir}"]
    status, screen = run_on_terminal(home, words, [("vault passphrase: ", "FAKE-mistyped")])
    assert status == 1 and screen.endswith("vault.enc: wrong passphrase (the vault uses its passphrase)\r\n")
    assert screen.count("\n") == 2  # the prompt, and one line: no traceback, no mitmdump
    seen: list[tuple[int, str]] = []
    terminal = threading.Thread(target=lambda: seen.append(run_on_terminal(home, words, [("vault passphrase: ", passphrase)])))
    terminal.start()
    try:
        wait_until(lambda: proxy_info(home) is not None or not terminal.is_alive(), TIMEOUT, "the proxy to record itself")
        stopped = run_cli(home, "stop")
    finally:
        terminal.join(TIMEOUT)
    (status, screen), = seen
    assert stopped.returncode == 0, (stopped.stderr.decode(), screen)
    assert screen.count("vault passphrase:") == 1 and passphrase not in screen
    assert not (home / "proxy.json").exists()


# --- status and stop ----------------------------------------------------------------------------------


def test_status_says_which_proxy_serves_the_home_and_stop_stops_it(
    start_vaultproxy: StartVaultproxy, home: Path, confdir: Path, upstream: RecordingUpstream,
) -> None:
    proxy = start_vaultproxy(home, confdir=confdir, mitmdump_args=["--set", "vault_on_missing=keep"])
    wait_until(lambda: proxy_info(home) is not None, TIMEOUT, "proxy.json")
    lines = run_cli(home, "status").stdout.decode().splitlines()
    assert lines[1].startswith(f"proxy:         on {LOOPBACK}:{proxy.port} (pid {proxy.pid}) since 20")
    assert lines[2].startswith("proxy options: ") and "vault_on_missing=keep" in lines[2]
    described = json.loads(run_cli(home, "status", "--json").stdout)["proxy"]
    assert described["running"] and described["pid"] == proxy.pid and described["options"]["vault_on_missing"] == "keep"

    assert curl(proxy, f"{upstream.url}/seen", "-H", "X-Key: <<vault:k>>").returncode == 0
    audit_lines(home, "/seen")  # written within the audit log's flush interval
    logged = [json.loads(line) for line in run_cli(home, "log", "--json", "--key", "k").stdout.splitlines()]
    assert [(entry["path"], entry["keys"], entry["outcome"]) for entry in logged] == [("/seen", ["k"], "resolved")]

    stopped = run_cli(home, "stop")
    assert stopped.stdout.decode() == f"stopped the proxy on {LOOPBACK}:{proxy.port} (pid {proxy.pid})\n"
    assert not proxy.is_running() and not (home / "proxy.json").exists()
    assert f"proxy:         no proxy serves {home}" in run_cli(home, "status").stdout.decode()
    assert not json.loads(run_cli(home, "status", "--json").stdout)["proxy"]["running"]
    assert f"no proxy serves {home}" in one_line(run_cli(home, "stop"), 1)


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is no proxy, whose pid a stale record names."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def test_stop_never_signals_a_process_that_is_not_the_proxy(home: Path, bystander: subprocess.Popen[bytes]) -> None:
    (home / "proxy.json").write_text(json.dumps({"pid": bystander.pid, "host": LOOPBACK, "port": free_port()}))
    says = one_line(run_cli(home, "stop"), 1)
    assert f"pid {bystander.pid} from {home / 'proxy.json'} is no vaultproxy proxy any more" in says
    assert bystander.poll() is None


def test_stop_and_log_refuse_a_home_other_users_can_write(home: Path, tmp_path: Path) -> None:
    """In a home anyone can write to, another user plants a proxy.json that names a proxy of
    yours (for another home) and an audit log of their own: `stop` would kill that proxy, and
    `log` show their entries. Both refuse the home, as `env` and `status` do."""
    planted = tmp_path / "planted.log"
    planted.write_text(json.dumps({"time": "2026-01-31T09:00:00.000+00:00", "method": "GET", "host": LOOPBACK,
                                   "path": "/planted", "keys": ["k"], "outcome": "resolved"}) + "\n")
    with Listener(addon=True) as other_proxy:
        home.chmod(0o777)
        (home / "proxy.json").write_text(json.dumps({
            "pid": other_proxy.pid, "host": LOOPBACK, "port": other_proxy.port, "options": {"vault_audit_log": str(planted)},
        }))
        stop, log = run_cli(home, "stop"), run_cli(home, "log")
        still_there = other_proxy.process.poll() is None
    writable = f"vault home {home} is writable by other users: chmod 700 {home}"
    assert writable in one_line(stop, 1) and writable in one_line(log, 1)
    assert still_there  # stop signalled nothing


# --- no "unexpected" errors ---------------------------------------------------------------------------


def test_status_into_a_closed_pipe_ends_quietly(home: Path) -> None:
    """`vaultproxy status | head -2`, with head gone before status writes: SIGPIPE's exit."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([*CLI, "status"], stdout=write_end, stderr=subprocess.PIPE,
                                env=cli_env(home, home.parent), timeout=TIMEOUT, check=False)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, b"")


def test_exec_of_a_command_that_is_not_there_is_a_shells_127(home: Path, ca_confdir: Path, tmp_path: Path) -> None:
    not_executable = tmp_path / "script.sh"
    not_executable.write_text("echo hi\n")
    with stand_in_proxy(home, ca_confdir):
        assert "no-such-command-3f1: command not found" in one_line(run_cli(home, "exec", "--", "no-such-command-3f1"), 127)
        assert f"{not_executable}: Permission denied" in one_line(run_cli(home, "exec", "--", str(not_executable)), 126)


def without_file_permission_override() -> None:
    """For a child run as root: drop the capabilities that let root write where the mode bits
    say no (from the bounding set, so the exec'd CLI never has them)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.skipif(sys.platform != "linux", reason="drops Linux capabilities when run as root")
def test_env_in_a_read_only_home_says_what_to_change(home: Path, ca_confdir: Path) -> None:
    with stand_in_proxy(home, ca_confdir):
        home.chmod(0o500)
        try:
            result = run_cli(home, "env", preexec_fn=without_file_permission_override)
        finally:
            home.chmod(0o700)
    says = one_line(result, 1)
    assert f"cannot write the CA bundle {home / 'ca-bundle.pem'}: Permission denied; the vault home must be writable by you" in says
