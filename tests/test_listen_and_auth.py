"""Who can use the proxy, and which vault home it trusts: `vaultproxy start` listens on
127.0.0.1 unless told otherwise; told otherwise, however it is told, it warns and wants the
proxy credential from every client; a vault home that another user could change is refused
by the CLI and by the proxy, with the fix.

Every proxy here is real: `vaultproxy start` (which execs mitmdump in the same process), run
with VAULTPROXY_HOME and HOME in the test's temp dir, or mitmdump with the addon.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.support.cli import StartVaultproxy, VaultproxyStart, parse_exports, run_cli
from tests.support.leaks import hunt_bytes, leak_value, needles_for
from tests.support.net import LOOPBACK, free_port, listening_addresses, wait_until
from tests.support.proxy import CLIENT_TIMEOUT, STARTUP_TIMEOUT, MitmdumpProcess
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordingUpstream
from vaultcore.credential import CREDENTIAL_FILE
from vaultcore.proxyenv import proxy_info
from vaultcore.vault import Vault


@pytest.fixture(scope="module")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mitmproxy's confdir for `vaultproxy start`, shared: making its CA takes seconds."""
    return tmp_path_factory.mktemp("confdir")


def test_listens_on_loopback_by_default(start_vaultproxy: StartVaultproxy, vault_home: Path, confdir: Path) -> None:
    proxy = start_vaultproxy(vault_home, confdir=confdir)
    assert listening_addresses(proxy.port) == {LOOPBACK}
    assert "warning" not in proxy.stderr().lower()


@pytest.mark.parametrize("where", ["start", "mitmdump"])
def test_listening_on_every_interface_warns_and_wants_the_credential(
    start_vaultproxy: StartVaultproxy, vault_home: Path, confdir: Path, upstream: RecordingUpstream, where: str,
) -> None:
    """`vaultproxy start --listen-host 0.0.0.0`, or the same passed on to mitmdump: the uid of
    a loopback client no longer lets it in; the credential `vaultproxy env` hands out does."""
    token, _ = leak_value()
    run_cli(vault_home, "local", "set", "token", "--hosts", LOOPBACK, stdin=token.encode(), check=True)
    listen = ["--listen-host", "0.0.0.0"]
    proxy = start_vaultproxy(vault_home, confdir=confdir, **{"start_args" if where == "start" else "mitmdump_args": listen})
    assert listening_addresses(proxy.port) == {"0.0.0.0"}
    proxy.wait_for_output(f"vaultproxy: warning: listening on *:{proxy.port}: every client must present the proxy credential")
    if where == "start":
        warning = proxy.stderr().splitlines()[0]
        assert warning.startswith("vaultproxy: warning: listening on 0.0.0.0: ") and "proxyauth" not in warning, warning
        assert str(vault_home / CREDENTIAL_FILE) in warning

    def get(proxy_url: str) -> requests.Response:
        with proxy.requests_session() as session:
            session.proxies = {"http": proxy_url}
            return session.get(f"{upstream.url}/far", headers={"X-Token": "<<vault:token>>"}, timeout=CLIENT_TIMEOUT)

    assert get(proxy.url).status_code == 407
    assert not upstream.all_bytes()
    exports = run_cli(vault_home, "env", check=True)
    assert get(parse_exports(exports.stdout.decode())["HTTP_PROXY"]).status_code == 200
    (received,) = upstream.requests
    resolved = received.header("x-token") == token
    assert resolved, "the credential from `vaultproxy env` lets the owner in"
    assert received.header("proxy-authorization") is None
    assert not hunt_bytes("proxy output", proxy.output().encode(), needles_for("token", token, token))


def test_a_credential_handed_out_dies_with_the_proxy_it_belonged_to(
    start_vaultproxy: StartVaultproxy, vault_home: Path, confdir: Path, upstream: RecordingUpstream,
) -> None:
    """The attack (a review's, demonstrated with two users): a shell keeps `vaultproxy env`'s
    HTTP_PROXY after the proxy stops, and its next request hands the credential to whoever
    listens on that port by then, another local user. The credential was the same at every
    start, so they then used the owner's next proxy with it. Now each proxy makes its own
    when it starts, and deletes it when it stops: what a stale shell gives away opens nothing."""
    token, _ = leak_value()
    run_cli(vault_home, "local", "set", "token", "--hosts", LOOPBACK, stdin=token.encode(), check=True)
    everywhere = ["--listen-host", "0.0.0.0"]  # a client's uid lets no one in: only the credential does

    def status_with(proxy: VaultproxyStart, proxy_url: str) -> int:
        with proxy.requests_session() as session:
            session.proxies = {"http": proxy_url}
            return session.get(f"{upstream.url}/stale", headers={"X-Token": "<<vault:token>>"}, timeout=CLIENT_TIMEOUT).status_code

    first = start_vaultproxy(vault_home, confdir=confdir, start_args=everywhere)
    wait_until(lambda: proxy_info(vault_home) is not None, STARTUP_TIMEOUT, "the proxy's record")  # and its credential
    stale = parse_exports(run_cli(vault_home, "env", check=True).stdout.decode())["HTTP_PROXY"]
    assert status_with(first, stale) == 200
    run_cli(vault_home, "stop", check=True)
    assert not (vault_home / CREDENTIAL_FILE).exists()

    second = start_vaultproxy(vault_home, confdir=confdir, start_args=everywhere)
    wait_until(lambda: proxy_info(vault_home) is not None, STARTUP_TIMEOUT, "the proxy's record")
    captured = urlsplit(stale).password  # what the squatter read off the stale request
    assert status_with(second, f"http://vaultproxy:{captured}@{LOOPBACK}:{second.port}") == 407
    fresh = parse_exports(run_cli(vault_home, "env", check=True).stdout.decode())["HTTP_PROXY"]
    assert urlsplit(fresh).password != captured and status_with(second, fresh) == 200
    assert len(upstream.requests) == 2


def test_mitmproxys_proxyauth_still_works(
    start_vaultproxy: StartVaultproxy, vault_home: Path, confdir: Path, tls_material: TLSMaterial,
    upstream: RecordingUpstream, tls_upstream: RecordingUpstream,
) -> None:
    """mitmproxy's own proxyauth, in front of vaultproxy's gate (the proxy credential is
    vaultproxy's way): without (or with wrong) credentials, 407 and the upstream gets
    nothing; with them the placeholder resolves, and the credentials do not travel on."""
    token, _ = leak_value()
    password = f"pw-{secrets.token_hex(12)}"
    run_cli(vault_home, "local", "set", "token", "--hosts", LOOPBACK, stdin=token.encode(), check=True)
    proxy = start_vaultproxy(vault_home, confdir=confdir, mitmdump_args=[
        "--set", f"proxyauth=user:{password}", "--set", f"ssl_verify_upstream_trusted_ca={tls_material.ca_cert}",
    ])
    servers = {"http": upstream, "https": tls_upstream}

    def get(scheme: str, credentials: str | None) -> requests.Response:
        with proxy.requests_session() as session:
            if credentials is not None:
                session.proxies = {s: f"http://{credentials}@{LOOPBACK}:{proxy.port}" for s in servers}
            return session.get(f"{servers[scheme].url}/auth?k=<<vault:token>>", headers={"X-Token": "<<vault:token>>"},
                               timeout=CLIENT_TIMEOUT)

    for credentials in (None, "user:wrong", f"nobody:{password}"):
        assert get("http", credentials).status_code == 407
        with pytest.raises(requests.exceptions.ProxyError, match="407"):  # the CONNECT is refused
            get("https", credentials)
    assert not upstream.all_bytes() and not tls_upstream.all_bytes()

    for scheme, server in servers.items():
        assert get(scheme, f"user:{password}").status_code == 200
        (received,) = server.requests
        resolved = (received.target, received.header("x-token")) == (f"/auth?k={token}", token)
        assert resolved, "the placeholder resolves once authenticated"
        assert received.header("proxy-authorization") is None
        assert not hunt_bytes(scheme, server.all_bytes(), needles_for("password", password, password))
    assert not hunt_bytes("proxy output", proxy.output().encode(), needles_for("token", token, token))


# --- a vault home another user could change ---------------------------------------------------


def writable_by_others(home: Path) -> str:
    home.chmod(0o777)
    return f"vault home {home} is writable by other users: chmod 700 {home}"


def writable_by_its_group(home: Path) -> str:
    home.chmod(0o770)
    return f"vault home {home} is writable by other users: chmod 700 {home}"


def owned_by_nobody(home: Path) -> str:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    nobody = pwd.getpwnam("nobody")
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    return f"vault home {home} belongs to uid {nobody.pw_uid}, not to you (uid 0): set VAULTPROXY_HOME to a directory of your own"


UNSAFE_HOMES = [pytest.param(make, id=make.__name__) for make in (writable_by_others, writable_by_its_group, owned_by_nobody)]


@pytest.fixture
def planted_home(tmp_path: Path) -> Path:
    """A vault with a secret, and a proxy.json such as another user would plant to send
    clients to a proxy of theirs."""
    home = tmp_path / "vault-home"
    Vault(home).set("planted", leak_value()[1], hosts=[LOOPBACK])
    (home / "proxy.json").write_text(f'{{"host": "{LOOPBACK}", "port": {free_port()}}}')
    return home


@pytest.mark.parametrize("make_unsafe", UNSAFE_HOMES)
def test_the_cli_refuses_a_home_others_can_change(planted_home: Path, make_unsafe: Callable[[Path], str]) -> None:
    error = make_unsafe(planted_home)
    for command in (["local", "list"], ["env"], ["exec", "--", "true"], ["start", "--listen-port", str(free_port())]):
        result = run_cli(planted_home, *command)
        assert (result.returncode, result.stderr.decode()) == (1, f"vaultproxy: error: {error}\n"), command
        assert result.stdout == b""


@pytest.mark.parametrize("make_unsafe", UNSAFE_HOMES)
def test_the_proxy_refuses_a_home_others_can_change(planted_home: Path, tmp_path: Path, make_unsafe: Callable[[Path], str]) -> None:
    error = make_unsafe(planted_home)
    proxy = MitmdumpProcess(tmp_path / "mitmdump", options={"vault_home": str(planted_home)})
    try:
        with contextlib.suppress(RuntimeError):  # it may exit before its port listens, or just after
            proxy.start()
        wait_until(lambda: not proxy.is_running(), STARTUP_TIMEOUT, "mitmdump to exit")
    finally:
        status = proxy.stop()
    assert status == 1
    assert f"vaultproxy: cannot load the vault: {error}" in proxy.output()
    assert not (planted_home / CREDENTIAL_FILE).exists()
