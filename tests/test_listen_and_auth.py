"""Who can reach the proxy: `vaultproxy start` listens on 127.0.0.1 unless told otherwise,
warns when told to listen on every interface, and honours mitmproxy's proxy authentication.

Every proxy here is the real `vaultproxy start` (which execs mitmdump in the same process),
run with VAULTPROXY_HOME and HOME in the test's temp dir and its own mitmproxy confdir.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import requests

from tests.support.cli import StartVaultproxy, run_cli
from tests.support.leaks import hunt_bytes, leak_value, needles_for
from tests.support.net import LOOPBACK, listening_addresses
from tests.support.proxy import CLIENT_TIMEOUT
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordingUpstream


def test_listens_on_loopback_by_default(start_vaultproxy: StartVaultproxy, vault_home: Path) -> None:
    proxy = start_vaultproxy(vault_home)
    assert listening_addresses(proxy.port) == {LOOPBACK}
    assert "warning" not in proxy.stderr().lower()


def test_listening_on_every_interface_warns(start_vaultproxy: StartVaultproxy, vault_home: Path) -> None:
    proxy = start_vaultproxy(vault_home, start_args=["--listen-host", "0.0.0.0"])
    assert listening_addresses(proxy.port) == {"0.0.0.0"}
    warning = proxy.stderr()
    assert "warning" in warning and "0.0.0.0" in warning and "proxyauth" in warning, warning
    assert proxy.stop() is not None and not proxy.is_running()


def test_proxy_authentication(
    start_vaultproxy: StartVaultproxy, vault_home: Path, tls_material: TLSMaterial,
    upstream: RecordingUpstream, tls_upstream: RecordingUpstream,
) -> None:
    """Without (or with wrong) credentials: 407 and the upstream gets nothing; with them the
    placeholder resolves, and the proxy's credentials do not travel on to the upstream."""
    token, _ = leak_value()
    password = f"pw-{secrets.token_hex(12)}"
    run_cli(vault_home, "local", "set", "token", "--hosts", LOOPBACK, stdin=token.encode(), check=True)
    proxy = start_vaultproxy(vault_home, mitmdump_args=[
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
