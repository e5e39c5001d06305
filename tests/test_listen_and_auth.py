"""Who can reach the proxy: `vaultproxy start` listens on 127.0.0.1 unless told otherwise,
warns when told to listen on every interface, and honours mitmproxy's proxy authentication.

Every proxy here is the real `vaultproxy start` (which execs mitmdump in the same process),
run with VAULTPROXY_HOME and HOME in the test's temp dir and its own mitmproxy confdir.
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.env import child_env
from tests.support.net import LOOPBACK, TCP_LISTEN
from tests.support.proxy import CLIENT_TIMEOUT, MitmdumpProcess
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordingUpstream
from tests.test_leak_hunt import hunt_bytes, needles_for

VAULTPROXY = Path(sys.executable).with_name("vaultproxy")  # the console script of this venv


class VaultproxyStart(MitmdumpProcess):
    """`vaultproxy start` in place of mitmdump: the harness's start (free port, retry on a
    lost port race, wait until this very process listens), stop, logs and clients apply
    unchanged, because `start` execs mitmdump in the same process."""

    def __init__(self, workdir: Path, *, start_args: Sequence[str] = (), mitmdump_args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        super().__init__(workdir, env=env)
        self._start_args = list(start_args)
        self._mitmdump_args = list(mitmdump_args)

    def command(self) -> list[str]:
        return [
            str(VAULTPROXY), "start", *self._start_args, "--listen-port", str(self.port),
            "--", "--set", f"confdir={self.confdir}", *self._mitmdump_args,
        ]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


StartVaultproxy = Callable[..., VaultproxyStart]


@pytest.fixture
def start_vaultproxy(tmp_path_factory: pytest.TempPathFactory, vault_home: Path) -> Iterator[StartVaultproxy]:
    """Factory: start `vaultproxy start` on a free port (kwargs as VaultproxyStart); every
    proxy is stopped at teardown."""
    started: list[VaultproxyStart] = []

    def start(**kwargs: Any) -> VaultproxyStart:
        proxy = VaultproxyStart(tmp_path_factory.mktemp("vaultproxy-start"), env={"VAULTPROXY_HOME": str(vault_home)}, **kwargs)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.stop()


def listening_addresses(port: int) -> set[str]:
    """The local addresses of every TCP socket listening on `port` (Linux /proc/net/tcp{,6})."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with open(table) as rows:
            next(rows)  # column titles
            for row in rows:
                fields = row.split()
                address, local_port = fields[1].rsplit(":", 1)
                if fields[3] == TCP_LISTEN and int(local_port, 16) == port:
                    # The kernel prints each 32-bit word of the address in host (little-endian) order.
                    raw = bytes.fromhex(address)
                    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
                    found.add(str(ipaddress.ip_address(packed)))
    return found


def test_listens_on_loopback_by_default(start_vaultproxy: StartVaultproxy) -> None:
    proxy = start_vaultproxy()
    assert listening_addresses(proxy.port) == {LOOPBACK}
    assert "warning" not in proxy.stderr().lower()


def test_listening_on_every_interface_warns(start_vaultproxy: StartVaultproxy) -> None:
    proxy = start_vaultproxy(start_args=["--listen-host", "0.0.0.0"])
    assert listening_addresses(proxy.port) == {"0.0.0.0"}
    warning = proxy.stderr()
    assert "warning" in warning and "0.0.0.0" in warning and "proxyauth" in warning, warning
    assert proxy.stop() is not None and not proxy.is_running()


def test_proxy_authentication(
    start_vaultproxy: StartVaultproxy, vault_home: Path, tmp_path: Path, tls_material: TLSMaterial,
    upstream: RecordingUpstream, tls_upstream: RecordingUpstream,
) -> None:
    """Without (or with wrong) credentials: 407 and the upstream gets nothing; with them the
    placeholder resolves, and the proxy's credentials do not travel on to the upstream."""
    token = f"LEAK-{secrets.token_hex(12)}"
    password = f"pw-{secrets.token_hex(12)}"
    subprocess.run(
        [sys.executable, "-m", "vaultcore.cli", "local", "set", "token", "--hosts", LOOPBACK],
        input=token.encode(), env=child_env({"VAULTPROXY_HOME": str(vault_home)}, home=tmp_path),
        capture_output=True, timeout=CLIENT_TIMEOUT, check=True,
    )
    proxy = start_vaultproxy(mitmdump_args=[
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
