"""End to end: `vaultproxy env`, `vaultproxy exec` and `vaultproxy start` with a real proxy.

The addon writes proxy.json (address, confdir) and the proxy credential into the vault home
when it runs; `env` and `exec` follow them. `exec -- curl ...` runs the real curl, which
trusts only the CA bundle exec hands it (system CAs plus mitmproxy's CA, not the test CA the
upstream's certificate comes from), so a resolved placeholder at the HTTPS upstream proves
curl went through the proxy. The credential travels in the environment, never in argv; the
vault's passphrase reaches neither exec's command nor the proxy's environment. `start` is
run for real on 0.0.0.0 and must warn about it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import StartVaultproxy, parse_exports, run_cli, start_cli
from tests.support.leaks import fail_on, hunt_bytes, leak_value, needles_for, read_process
from tests.support.net import LOOPBACK, wait_until
from tests.support.proxy import CLIENT_TIMEOUT, EXAMPLE_HOSTS, REPO, MitmdumpProcess, StartProxy, curl
from tests.support.upstream import RecordingUpstream
from vaultcore import store
from vaultcore.credential import read_credential
from vaultcore.proxyenv import proxy_url
from vaultcore.store import PASSPHRASE_ENV, PASSPHRASE_FD_ENV, forget_passphrase_environment, handed_over_passphrase
from vaultcore.vault import Vault

ENVIRON_SCRIPT = REPO / "tests" / "support" / "environ_addon.py"

TIMEOUT = 60
VALUE = "sk_live_Zq9ExecToken"


def vault_home_with_value(home: Path) -> Path:
    Vault(home).set("exec.k", VALUE, hosts=["api.example.com"])
    return home


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return vault_home_with_value(tmp_path / "vault-home")


def wait_for_proxy_json(home: Path) -> dict[str, object]:
    """The addon writes proxy.json once mitmproxy runs, a moment after the port listens."""
    path = home / "proxy.json"
    wait_until(path.exists, TIMEOUT, "proxy.json")
    return json.loads(path.read_text())


def start_proxy(start: StartProxy, home: Path) -> MitmdumpProcess:
    proxy = start(options={"vault_home": str(home)}, hosts=EXAMPLE_HOSTS)
    wait_for_proxy_json(home)
    return proxy


@pytest.fixture
def proxy(mitmdump: StartProxy, home: Path) -> MitmdumpProcess:
    """A proxy of the test's own, for the tests that stop it."""
    return start_proxy(mitmdump, home)


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vault_home_with_value(tmp_path_factory.mktemp("vault-home"))


@pytest.fixture(scope="module")
def shared_proxy(module_mitmdump: StartProxy, shared_home: Path) -> MitmdumpProcess:
    """The proxy of the tests that only use it: none changes the vault or the proxy."""
    return start_proxy(module_mitmdump, shared_home)


def test_proxy_json_tells_where_the_proxy_runs(proxy: MitmdumpProcess, home: Path) -> None:
    info = wait_for_proxy_json(home)
    assert (info["host"], info["port"], Path(info["confdir"])) == (LOOPBACK, proxy.port, proxy.confdir)
    assert proxy.stop() == 0
    assert not (home / "proxy.json").exists()  # a stopped proxy is not advertised


def test_env_prints_the_proxy_and_a_bundle_with_mitmproxys_ca(shared_proxy: MitmdumpProcess, shared_home: Path) -> None:
    proxy, home = shared_proxy, shared_home
    result = run_cli(home, "env")
    assert result.returncode == 0, result.stderr.decode()
    variables = parse_exports(result.stdout.decode())
    credential = read_credential(home)
    assert credential is not None
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert variables[name] == f"http://vaultproxy:{credential}@{LOOPBACK}:{proxy.port}"
    bundle = Path(variables["SSL_CERT_FILE"])
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        assert variables[name] == str(bundle)
    assert proxy.ca_path.read_text().strip() in bundle.read_text()


def test_exec_runs_curl_through_the_proxy(shared_proxy: MitmdumpProcess, tls_upstream: RecordingUpstream, shared_home: Path) -> None:
    proxy, home = shared_proxy, shared_home
    url = tls_upstream.url_for("api.example.com") + "/exec"
    result = run_cli(home, "exec", "--", "curl", "--silent", "--show-error", "--fail",
                     "-H", "Authorization: Bearer <<vault:exec.k>>", url)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout) == {"ok": True}  # the upstream's answer reached curl
    (received,) = tls_upstream.wait_for(1)
    assert received.header("Authorization") == f"Bearer {VALUE}"
    assert received.header("Host") == f"api.example.com:{tls_upstream.port}"
    assert VALUE not in (result.stdout + result.stderr).decode() + proxy.output()


def test_exec_hands_on_the_credential_in_the_environment_and_never_the_passphrase(
    shared_proxy: MitmdumpProcess, shared_home: Path
) -> None:
    """The command's argv is its own; its environment has the proxy URL with the credential,
    and not the passphrase (with it, the command could open the vault: `vaultproxy local get`)."""
    proxy, home = shared_proxy, shared_home
    passphrase, _ = leak_value()
    credential = read_credential(home)
    assert credential is not None
    command = [sys.executable, "-c", "import sys; sys.stdin.read()"]  # waits until communicate() below

    def is_command(seen: tuple[bytes, bytes] | None) -> bool:
        """Whether exec has become the command (until then its argv starts with the CLI's)."""
        return seen is not None and seen[0].split(b"\0")[:-1] == [part.encode() for part in command]

    child = start_cli(home, "exec", "--", *command, env={PASSPHRASE_ENV: passphrase})
    try:
        wait_until(lambda: is_command(read_process(child.pid)), TIMEOUT, "exec to run the command")
        seen = read_process(child.pid)
    finally:
        out, err = child.communicate(b"", timeout=TIMEOUT)
    assert child.returncode == 0, err.decode()
    assert seen is not None
    cmdline, environ = seen
    given = f"HTTPS_PROXY={proxy_url(LOOPBACK, proxy.port, credential)}".encode() in environ.split(b"\0")
    assert given, "exec's command has the proxy URL with the credential"
    fail_on(hunt_bytes("exec's command line", cmdline, needles_for("credential", credential, credential)))
    fail_on(hunt_bytes("exec's command", cmdline + environ + out + err, needles_for("passphrase", passphrase, passphrase)))
    names = {variable.partition(b"=")[0].decode() for variable in environ.split(b"\0")}
    assert not {PASSPHRASE_ENV, PASSPHRASE_FD_ENV} & names


def test_exec_without_a_running_proxy_fails_clearly(proxy: MitmdumpProcess, home: Path) -> None:
    record = (home / "proxy.json").read_text()
    proxy.stop()
    # As a proxy that died without cleaning up would leave it: its pid has exited.
    (home / "proxy.json").write_text(record)
    result = run_cli(home, "exec", "--", "curl", "--silent", "https://api.example.com/")
    assert result.returncode == 1
    assert f"no proxy serves {home}: the one that did (pid {proxy.pid}) has exited; start one with `vaultproxy start`" in result.stderr.decode()


@pytest.fixture(scope="module")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mitmproxy's confdir for `vaultproxy start`, shared: making its CA takes seconds."""
    return tmp_path_factory.mktemp("confdir")


def test_start_on_all_interfaces_warns(start_vaultproxy: StartVaultproxy, home: Path, confdir: Path) -> None:
    proxy = start_vaultproxy(home, confdir=confdir, start_args=["--listen-host", "0.0.0.0"])
    warning = proxy.stderr()
    assert "vaultproxy: warning: listening on 0.0.0.0: anyone who can reach this address can ask for your secrets" in warning
    # and says how clients get in: with the credential, not with a password in argv
    assert f"every client must present the proxy credential ({home / 'proxy-credential'}" in warning
    assert "proxyauth" not in warning
    # Clients are still pointed at loopback, which reaches a proxy on every interface.
    assert wait_for_proxy_json(home)["host"] == "0.0.0.0"
    result = run_cli(home, "env")
    assert result.returncode == 0, result.stderr.decode()
    assert parse_exports(result.stdout.decode())["HTTPS_PROXY"] == proxy_url(LOOPBACK, proxy.port, read_credential(home))


def test_start_on_loopback_does_not_warn(start_vaultproxy: StartVaultproxy, home: Path, confdir: Path) -> None:
    proxy = start_vaultproxy(home, confdir=confdir)
    assert wait_for_proxy_json(home)["port"] == proxy.port
    proxy.stop()
    assert "warning" not in proxy.stderr()


# --- the passphrase stays out of environments -------------------------------------------------


@pytest.fixture
def passphrase_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A vault protected by a passphrase (a random token, so any trace of it is found)."""
    passphrase, _ = leak_value()
    home = tmp_path / "passphrase-home"
    monkeypatch.setenv(PASSPHRASE_ENV, passphrase)
    Vault(home).set("pass.k", VALUE, hosts=[LOOPBACK])
    monkeypatch.delenv(PASSPHRASE_ENV)
    return home, passphrase


def environment_names(proxy: MitmdumpProcess) -> list[str]:
    """The names in the proxy's own environment, which any process it starts inherits."""
    with proxy.requests_session() as session:
        response = session.get("http://environ.vaultproxy.test/", timeout=CLIENT_TIMEOUT)
    assert response.status_code == 200
    return response.text.splitlines()


def test_start_hands_the_passphrase_to_the_proxy_in_a_pipe(
    start_vaultproxy: StartVaultproxy, passphrase_home: tuple[Path, str], confdir: Path, upstream: RecordingUpstream,
) -> None:
    """/proc/PID/environ of the proxy (readable by its user's processes for its whole life)
    never holds the passphrase, yet the proxy opens the vault with it."""
    home, passphrase = passphrase_home
    proxy = start_vaultproxy(home, confdir=confdir, env={PASSPHRASE_ENV: passphrase}, mitmdump_args=["-s", str(ENVIRON_SCRIPT)])
    result = curl(proxy, f"{upstream.url}/pass", "-H", "X-Key: <<vault:pass.k>>")
    assert result.returncode == 0, result.stderr.decode()
    (received,) = upstream.wait_for(1)
    resolved = received.header("x-key") == VALUE
    assert resolved, "the proxy opened the vault with the passphrase from the pipe"
    seen = read_process(proxy.pid)
    assert seen is not None
    cmdline, environ = seen
    assert f"{PASSPHRASE_FD_ENV}=".encode() in environ  # the pipe it came in
    fail_on(hunt_bytes("the proxy's argv and environment", cmdline + environ, needles_for("passphrase", passphrase, passphrase)))
    names = environment_names(proxy)
    assert "VAULTPROXY_HOME" in names and PASSPHRASE_ENV not in names and PASSPHRASE_FD_ENV not in names
    proxy.stop()
    fail_on(hunt_bytes("proxy output", proxy.output().encode(), needles_for("passphrase", passphrase, passphrase)))


def test_the_proxy_drops_a_passphrase_from_its_environment(
    mitmdump: StartProxy, passphrase_home: tuple[Path, str], upstream: RecordingUpstream,
) -> None:
    """mitmdump started by hand with VAULTPROXY_PASSPHRASE: once the vault is open, processes
    the proxy starts no longer inherit it."""
    home, passphrase = passphrase_home
    proxy = mitmdump(options={"vault_home": str(home)}, env={PASSPHRASE_ENV: passphrase}, args=["-s", str(ENVIRON_SCRIPT)])
    result = curl(proxy, f"{upstream.url}/pass", "-H", "X-Key: <<vault:pass.k>>")
    assert result.returncode == 0, result.stderr.decode()
    resolved = upstream.wait_for(1)[0].header("x-key") == VALUE
    assert resolved, "the proxy opened the vault with the passphrase"
    assert PASSPHRASE_ENV not in environment_names(proxy)


def test_forgetting_the_passphrase_keeps_it_from_child_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    passphrase, _ = leak_value()
    monkeypatch.setattr(store, "_handed_over", None)
    monkeypatch.setenv(PASSPHRASE_ENV, passphrase)
    forget_passphrase_environment()
    child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.environ))"], capture_output=True, check=True)
    assert PASSPHRASE_ENV.encode() not in child.stdout and PASSPHRASE_ENV not in os.environ
    assert handed_over_passphrase() == passphrase  # this process can still open the vault


SWITCH_HOME = '''\
"""Sets vault_home on the running proxy (as any addon or a `set` command may) to the home
named in the file TRIGGER, once it appears."""
import asyncio
from pathlib import Path
from mitmproxy import ctx

TRIGGER = Path({trigger!r})


class SwitchHome:
    def running(self):
        asyncio.get_running_loop().create_task(self.switch())

    async def switch(self):
        while not TRIGGER.exists():
            await asyncio.sleep(0.05)
        ctx.options.update(vault_home=TRIGGER.read_text())


addons = [SwitchHome()]
'''


def test_a_proxy_given_another_home_records_itself_there(
    mitmdump: StartProxy, tmp_path: Path, upstream: RecordingUpstream,
) -> None:
    """vault_home changed on a running proxy: its credential and its record go to the new home
    together, and leave the old one. The credential alone moved before: `env` for the new home
    found no proxy, and for the old one handed out a URL without the credential (407 where it
    is needed), to a proxy serving the other home's secrets."""
    first = tmp_path / "first-home"
    Vault(first).set("exec.k", VALUE, hosts=[LOOPBACK])
    second = tmp_path / "second-home"
    Vault(second).set("exec.other", VALUE + "Other", hosts=[LOOPBACK])
    trigger, switch = tmp_path / "switch-to", tmp_path / "switch_home.py"
    switch.write_text(SWITCH_HOME.format(trigger=str(trigger)))
    proxy = mitmdump(options={"vault_home": str(first)}, args=["-s", str(switch), "--listen-host", "0.0.0.0"])
    wait_for_proxy_json(first)
    trigger.write_text(str(second))
    wait_for_proxy_json(second)
    wait_until(lambda: not (first / "proxy.json").exists(), TIMEOUT, "the first home's record to go")
    assert not (first / "proxy-credential").exists() and run_cli(first, "env").returncode == 1
    exports = parse_exports(run_cli(second, "env", check=True).stdout.decode())
    with proxy.requests_session() as session:
        session.proxies = {"http": exports["HTTP_PROXY"]}
        answer = session.get(f"{upstream.url}/switched", headers={"X-Token": "<<vault:exec.other>>"}, timeout=CLIENT_TIMEOUT)
    assert answer.status_code == 200 and upstream.requests[-1].header("x-token") == VALUE + "Other"
    proxy.stop()
    assert not (second / "proxy.json").exists() and not (second / "proxy-credential").exists()
