"""End to end: a CLI write is in force for the very next request the proxy receives.

The attack this guards against: `printf v1 | vaultproxy local set k ...; curl ...` sent the
old value (or was refused with `unknown_key` for a new key) because the proxy only polled the
vault every 0.5 s; a revoked secret kept going out that long, and for as long as the active
configuration's YAML was broken. Nothing here waits or retries: every request is sent right
after the command returns, and must see its effect.

NEEDS THE ADDON'S PER-REQUEST FRESHNESS CHECK (`Snapshot.is_stale()` before resolving, and a
reload through `Vault.snapshot(previous)`): without it, the tests of local set/unset and of the
revocation under a broken configuration fail. The audit log rotation test needs only
vaultproxy/audit.py.

Real parts only: mitmdump with the addon, the `vaultproxy` CLI as a child process, a recording
upstream on loopback, and moto for the configuration's Secrets Manager.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.cli import run_cli
from tests.support.moto import REGION, MotoServer
from tests.support.net import LOOPBACK, wait_until
from tests.support.proxy import MitmdumpProcess, StartProxy, audit_lines
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordingUpstream
from vaultcore.profiles import ProviderConfig, SecretMapping
from vaultcore.providers.aws import StaticCredentials
from vaultcore.vault import Vault

TIMEOUT = 60
ROUNDS = 10
TOKEN = "sk_live_Fr3sh"  # a prefix of every value here: none may show in the proxy's output
KEYS = StaticCredentials("AKIAFRESHTEST0000001", "FAKE-fresh-secret-key-0c4d")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("vault-home")
    Vault(home).set("fresh.base", f"{TOKEN}Base", hosts=[LOOPBACK])
    return home


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial, home: Path) -> Iterator[MitmdumpProcess]:
    process = MitmdumpProcess(
        tmp_path_factory.mktemp("freshness"), upstream_ca=tls_material.ca_cert,
        options={"vault_home": str(home), "flow_detail": 3},
    )
    with process:
        yield process
    assert TOKEN not in process.output()


def cli(home: Path, *args: str, stdin: str = "") -> None:
    """Run the real CLI; it must succeed (and, like the proxy, never print a value)."""
    result = run_cli(home, *args, stdin=stdin.encode())
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert TOKEN.encode() not in result.stdout + result.stderr


def send(proxy: MitmdumpProcess, upstream: RecordingUpstream, key: str, path: str = "/use") -> requests.Response:
    with proxy.requests_session() as session:
        return session.get(f"{upstream.url}{path}", headers={"X-Key": f"<<vault:{key}>>"}, timeout=TIMEOUT)


def received(proxy: MitmdumpProcess, upstream: RecordingUpstream, key: str) -> str | None:
    """What the upstream got for `key` from one request (None: the proxy refused it)."""
    upstream.clear()
    response = send(proxy, upstream, key)
    if response.status_code != 200:
        assert not upstream.requests, "a refused request reached the upstream"
        return None
    return upstream.requests[-1].header("X-Key")


def refused_as_unknown(response: requests.Response) -> bool:
    return response.status_code in (400, 403) and response.headers.get("X-Vaultproxy-Error") == "unknown_key"


# --- local set / unset: in force for the next request (needs the freshness check) ---------------


def test_each_local_set_is_sent_by_the_next_request(proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path) -> None:
    stale = []
    for i in range(ROUNDS):
        value = f"{TOKEN}Round{i}"
        cli(home, "local", "set", "fresh.k", "--hosts", LOOPBACK, stdin=value)
        if (got := received(proxy, upstream, "fresh.k")) != value:
            stale.append((i, got))
    assert not stale, f"{len(stale)} of {ROUNDS} requests right after `local set` did not carry its value"


def test_a_new_key_resolves_on_the_next_request(proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path) -> None:
    unknown = []
    for i in range(ROUNDS):
        key, value = f"fresh.new{i}", f"{TOKEN}New{i}"
        cli(home, "local", "set", key, "--hosts", LOOPBACK, stdin=value)
        if (got := received(proxy, upstream, key)) != value:
            unknown.append((key, got))
    assert not unknown, f"{len(unknown)} of {ROUNDS} new keys did not resolve on the request right after `local set`"


def test_an_unset_key_is_refused_on_the_next_request(proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path) -> None:
    leaked = []
    for i in range(ROUNDS):
        key = f"fresh.gone{i}"
        Vault(home).set(key, f"{TOKEN}Gone{i}", hosts=[LOOPBACK])
        wait_until(lambda: received(proxy, upstream, key) is not None, TIMEOUT, f"{key} to resolve")  # in force first
        upstream.clear()
        cli(home, "local", "unset", key)
        response = send(proxy, upstream, key)
        if not refused_as_unknown(response) or upstream.requests:
            leaked.append((key, response.status_code, response.headers.get("X-Vaultproxy-Error")))
    assert not leaked, f"{len(leaked)} of {ROUNDS} requests right after `local unset` were not refused as unknown_key"


# --- revocation while the active configuration's YAML is broken (needs the freshness check) --------


def test_revocation_works_while_the_active_configuration_is_broken(
    vault_home: Path, moto: MotoServer, mitmdump: StartProxy, upstream: RecordingUpstream
) -> None:
    moto.client().create_secret(Name="fresh/api", SecretString=f"{TOKEN}Provider")
    vault = Vault(vault_home)
    config = ProviderConfig(name="prod", display_name="Prod", region=REGION, endpoint_url=moto.endpoint_url,
                            hosts=(LOOPBACK,), secrets=(SecretMapping("api", "fresh/api"),))
    vault.add_config(config, KEYS)
    assert vault.fetch()["api"].error is None
    vault.set("rv", f"{TOKEN}Revoked", hosts=[LOOPBACK])
    proxy = mitmdump(options={"vault_home": str(vault_home)})
    assert received(proxy, upstream, "rv") == f"{TOKEN}Revoked"
    assert received(proxy, upstream, "api") == f"{TOKEN}Provider"

    vault.configs.file("prod").write_text("name: prod\nregion: [\nsecrets: [unclosed\n")  # broken by hand
    cli(vault_home, "local", "unset", "rv")
    upstream.clear()
    response = send(proxy, upstream, "rv")
    assert not upstream.requests, "the revoked secret went out"
    assert refused_as_unknown(response), response.headers.get("X-Vaultproxy-Error")
    # The provider secret keeps resolving from the cache, through the last good configuration.
    assert received(proxy, upstream, "api") == f"{TOKEN}Provider"
    status = run_cli(vault_home, "status", "--json")
    assert status.returncode == 0 and b"prod.yaml:" in status.stdout
    assert TOKEN not in proxy.output()


# --- the audit log follows rotation (needs only audit.py) ------------------------------------------


def test_audit_log_is_reopened_when_rotated_or_deleted(proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path) -> None:
    log = home / "audit.log"
    assert send(proxy, upstream, "fresh.base", "/audit-before").status_code == 200
    assert audit_lines(home, "/audit-before")
    rotated = log.with_name("audit.log.1")
    os.rename(log, rotated)  # as logrotate does

    assert send(proxy, upstream, "fresh.base", "/audit-after-rename").status_code == 200
    assert [line["keys"] for line in audit_lines(home)] == [["fresh.base"]]
    assert audit_lines(home, "/audit-after-rename")
    assert "/audit-after-rename" not in rotated.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600

    log.unlink()
    assert send(proxy, upstream, "fresh.base", "/audit-after-delete").status_code == 200
    assert [line["path"] for line in audit_lines(home)] == ["/audit-after-delete"]
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert TOKEN not in log.read_text() + rotated.read_text()
