"""AWS secrets through the real proxy: fetched from moto, injected by mitmdump with the addon
into a real client's request to a loopback HTTPS upstream, still injected from the cache once
moto is gone, and following a `config use` switch without a restart.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.env import child_env
from tests.support.moto import REGION, MotoServer
from tests.support.net import LOOPBACK, wait_until
from tests.support.proxy import MitmdumpProcess, StartProxy, audit_text
from tests.support.upstream import RecordingUpstream
from vaultcore.profiles import ProviderConfig, SecretMapping
from vaultcore.providers.aws import StaticCredentials
from vaultcore.vault import Vault

REPO = Path(__file__).resolve().parents[1]
HOST = "api.example.com"
KEYS = StaticCredentials("FAKEE2ETEST000000001", "FAKE-e2e-secret-access-key-6a0b")
PROD_TOKEN = "FAKE-e2e-prod-token-41d7"
STAGING_TOKEN = "FAKE-e2e-staging-token-9e2c"
STAGING_EXTRA = "FAKE-e2e-staging-extra-c5a1"
SWITCH_TIMEOUT = 30.0  # the addon polls every 0.5 s; this only bounds a broken reload
TIMEOUT = 60
RELOADED = "vaultproxy: reloaded"  # the addon's log line after it picked up a changed vault


@pytest.fixture
def own_moto() -> Iterator[MotoServer]:
    """A moto endpoint the test stops halfway (the session's shared one must stay up)."""
    with MotoServer() as server:
        server.reset()  # moto's state is per process, shared with the other servers
        yield server


def configuration(name: str, endpoint: str, *secrets: SecretMapping) -> ProviderConfig:
    return ProviderConfig(name=name, display_name=name.title(), region=REGION, endpoint_url=endpoint,
                          hosts=(HOST,), secrets=secrets)


class Client:
    """requests through the proxy to the upstream under the name `api.example.com`."""

    def __init__(self, proxy: MitmdumpProcess, upstream: RecordingUpstream):
        self.session = proxy.requests_session()
        self.upstream = upstream
        self.url = upstream.url_for(HOST) + "/v1/charges"

    def send(self, header: str) -> requests.Response:
        return self.session.get(self.url, headers={"Authorization": header}, timeout=TIMEOUT)

    def received(self, header: str) -> str | None:
        """The Authorization header the upstream got for a request that carried `header`."""
        response = self.send(header)
        assert response.status_code == 200, f"{response.status_code} {response.headers.get('X-Vaultproxy-Error')}"
        return self.upstream.requests[-1].header("Authorization")


def test_fetched_values_resolve_from_the_cache_and_follow_a_switch(
    vault_home: Path, own_moto: MotoServer, tls_upstream: RecordingUpstream, mitmdump: StartProxy, tmp_path: Path
) -> None:
    admin = own_moto.client()
    admin.create_secret(Name="e2e/prod", SecretString=PROD_TOKEN)
    admin.create_secret(Name="e2e/staging", SecretString=STAGING_TOKEN)
    admin.create_secret(Name="e2e/extra", SecretString=STAGING_EXTRA)
    vault = Vault(vault_home)
    vault.add_config(configuration("prod", own_moto.endpoint_url, SecretMapping("token", "e2e/prod")), KEYS)
    vault.add_config(configuration("staging", own_moto.endpoint_url, SecretMapping("token", "e2e/staging"),
                                   SecretMapping("extra", "e2e/extra")), KEYS)
    assert all(r.error is None for r in vault.fetch().values())
    assert all(r.error is None for r in vault.fetch(config_name="staging").values())

    proxy = mitmdump(env={"VAULTPROXY_HOME": str(vault_home)}, hosts={HOST: LOOPBACK})
    client = Client(proxy, tls_upstream)
    assert client.received("Bearer <<vault:token>>") == f"Bearer {PROD_TOKEN}"
    refused = client.send("Bearer <<vault:extra>>")  # staging's key: not active, not resolved
    assert refused.status_code == 400 and refused.headers["X-Vaultproxy-Error"] == "unknown_key"

    own_moto.stop()
    reloads = proxy.output().count(RELOADED)
    assert vault.fetch()["token"].error_code == "unreachable"  # the error is written to vault.enc...
    wait_until(lambda: proxy.output().count(RELOADED) > reloads, SWITCH_TIMEOUT, "the proxy to reload")
    assert client.received("Bearer <<vault:token>>") == f"Bearer {PROD_TOKEN}"  # ...and the cache still serves

    switch = subprocess.run(
        [sys.executable, "-m", "vaultcore.cli", "config", "use", "staging"], capture_output=True, text=True,
        env=child_env({"VAULTPROXY_HOME": str(vault_home)}, home=tmp_path / "user-home"), cwd=REPO,
        timeout=TIMEOUT, check=False,
    )
    assert switch.returncode == 0, switch.stderr
    wait_until(lambda: client.received("Bearer <<vault:token>>") == f"Bearer {STAGING_TOKEN}",
               SWITCH_TIMEOUT, "the proxy to follow the switch to staging")
    assert client.received("<<vault:extra>>") == STAGING_EXTRA

    vault.use_config("prod")
    wait_until(lambda: client.send("<<vault:extra>>").status_code == 400, SWITCH_TIMEOUT,
               "the proxy to follow the switch back to prod")
    assert client.received("Bearer <<vault:token>>") == f"Bearer {PROD_TOKEN}"

    assert proxy.is_running()
    output, audit = proxy.output(), audit_text(vault_home)
    assert "/v1/charges" in output and "token" in audit  # both saw these requests...
    for secret in (PROD_TOKEN, STAGING_TOKEN, STAGING_EXTRA, KEYS.secret_access_key):
        assert secret not in output + audit  # ...and no value
