"""End to end: the running proxy follows the vault without a restart, and a CLI write is in force
for the very next request the proxy receives.

The real `vaultproxy` CLI (a subprocess, value on stdin, VAULTPROXY_HOME in its environment)
changes the vault while mitmdump runs; the next requests show the change. A vault.enc replaced
with garbage keeps the last good state (requests still resolve, the log says why), and a
good file put back is picked up again.

Freshness: the attack this guards against: `printf v1 | vaultproxy local set k ...; curl ...`
sent the old value (or was refused with `unknown_key` for a new key) because the proxy only
polled the vault every 0.5 s; a revoked secret kept going out that long, and for as long as the
active configuration's YAML was broken. In those tests nothing waits or retries: every request
is sent right after the command returns, and must see its effect. They NEED THE ADDON'S
PER-REQUEST FRESHNESS CHECK (`Snapshot.is_stale()` before resolving, and a reload through
`Vault.snapshot(previous)`): without it, the tests of local set/unset and of the revocation
under a broken configuration fail. The audit log rotation test needs only vaultproxy/audit.py.

Real parts only: mitmdump with the addon (one shared by the tests of this module: each uses keys
of its own), the `vaultproxy` CLI as a child process, a recording upstream on loopback, and moto
for the configuration's Secrets Manager.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.cli import run_cli
from tests.support.moto import REGION, MotoServer
from tests.support.net import LOOPBACK, wait_until
from tests.support.proxy import MitmdumpProcess, StartProxy, audit_lines
from tests.support.upstream import RecordingUpstream
from vaultcore.profiles import ProviderConfig, SecretMapping
from vaultcore.providers.aws import StaticCredentials
from vaultcore.vault import Vault

TIMEOUT = 60
RELOAD_WAIT = 30.0  # the addon polls every 0.5 s; this only bounds a broken reload
ROUNDS = 10
TOKEN = "sk_live_Zq9Rl"  # a prefix of every value of the reload tests
FRESH_TOKEN = "sk_live_Fr3sh"  # a prefix of every value of the freshness tests
KEYS = StaticCredentials("FAKEFRESHTEST0000001", "FAKE-fresh-secret-key-0c4d")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("vault-home")
    Vault(home).set("reload.base", f"{TOKEN}Base", hosts=[LOOPBACK])
    Vault(home).set("fresh.base", f"{FRESH_TOKEN}Base", hosts=[LOOPBACK])
    return home


@pytest.fixture(scope="module")
def proxy(module_mitmdump: StartProxy, home: Path) -> Iterator[MitmdumpProcess]:
    process = module_mitmdump(options={"vault_home": str(home), "flow_detail": 3})
    yield process
    process.stop()  # its output is complete
    assert TOKEN not in process.output() and FRESH_TOKEN not in process.output()


def send(proxy: MitmdumpProcess, upstream: RecordingUpstream, key: str) -> requests.Response:
    with proxy.requests_session() as session:
        return session.get(f"{upstream.url}/use/{key}", headers={"X-Key": f"<<vault:{key}>>"}, timeout=TIMEOUT)


def wait_for_status(proxy: MitmdumpProcess, upstream: RecordingUpstream, key: str, status: int) -> requests.Response:
    """Send requests using `key` until one gets `status` (the proxy reloads asynchronously)."""
    responses: list[requests.Response] = []

    def answered() -> bool:
        responses.append(send(proxy, upstream, key))
        return responses[-1].status_code == status

    wait_until(answered, RELOAD_WAIT, f"a request using {key} to get {status}")
    return responses[-1]


def sent_values(upstream: RecordingUpstream) -> list[str | None]:
    return [request.header("X-Key") for request in upstream.requests]


def test_local_set_takes_effect_on_the_next_request(
    proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path, tmp_path: Path
) -> None:
    assert send(proxy, upstream, "reload.new").headers["X-Vaultproxy-Error"] == "unknown_key"
    result = run_cli(home, "local", "set", "reload.new", "--hosts", LOOPBACK, stdin=f"{TOKEN}New\n".encode(),
                     user_home=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    wait_for_status(proxy, upstream, "reload.new", 200)
    assert sent_values(upstream) == [f"{TOKEN}New"]  # refused requests never reached it
    # A changed value is picked up the same way.
    result = run_cli(home, "local", "set", "reload.new", stdin=f"{TOKEN}Changed".encode(), user_home=tmp_path)
    assert result.returncode == 0, result.stderr.decode()

    def sends_changed_value() -> bool:
        return send(proxy, upstream, "reload.new").status_code == 200 and sent_values(upstream)[-1] == f"{TOKEN}Changed"

    wait_until(sends_changed_value, RELOAD_WAIT, "the changed value to be sent")
    assert TOKEN.encode() not in result.stdout + result.stderr


def test_local_unset_takes_effect_on_the_next_request(
    proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path, tmp_path: Path
) -> None:
    result = run_cli(home, "local", "set", "reload.gone", "--hosts", LOOPBACK, stdin=f"{TOKEN}Gone".encode(),
                     user_home=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    wait_for_status(proxy, upstream, "reload.gone", 200)
    upstream.clear()
    assert run_cli(home, "local", "unset", "reload.gone", user_home=tmp_path).returncode == 0
    refused = wait_for_status(proxy, upstream, "reload.gone", 400)
    assert refused.headers["X-Vaultproxy-Error"] == "unknown_key" and "'reload.gone'" in refused.text
    # Some requests may have resolved before the reload; none after it.
    assert set(sent_values(upstream)) <= {f"{TOKEN}Gone"}
    assert send(proxy, upstream, "reload.gone").status_code == 400


def replace_atomically(path: Path, data: bytes) -> None:
    """As a careful writer would (the proxy never sees a half-written file)."""
    tmp = path.with_name(path.name + ".test-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_corrupted_vault_keeps_the_last_good_state_until_fixed(
    proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path, tmp_path: Path
) -> None:
    assert send(proxy, upstream, "reload.base").status_code == 200
    # The fix is prepared first: a copy of the vault, with one more secret, under the same key.
    fixed = tmp_path / "fixed-home"
    fixed.mkdir(mode=0o700)
    for name in ("vault.enc", "key"):
        shutil.copy2(home / name, fixed / name)
    Vault(fixed).set("reload.fixed", f"{TOKEN}Fixed", hosts=[LOOPBACK])

    replace_atomically(home / "vault.enc", b"this is not a vault at all" * 10)
    proxy.wait_for_output(f"vaultproxy: reload failed, keeping the last good state: {home / 'vault.enc'} is not a vaultproxy vault")
    upstream.clear()
    assert send(proxy, upstream, "reload.base").status_code == 200  # still resolves
    assert sent_values(upstream) == [f"{TOKEN}Base"]
    assert send(proxy, upstream, "reload.fixed").status_code == 400

    replace_atomically(home / "vault.enc", (fixed / "vault.enc").read_bytes())
    wait_for_status(proxy, upstream, "reload.fixed", 200)
    assert sent_values(upstream)[-1] == f"{TOKEN}Fixed"
    assert send(proxy, upstream, "reload.base").status_code == 200


# --- freshness: local set / unset in force for the next request (needs the freshness check) -------


def cli(home: Path, *args: str, stdin: str = "") -> None:
    """Run the real CLI; it must succeed (and, like the proxy, never print a value)."""
    result = run_cli(home, *args, stdin=stdin.encode())
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert FRESH_TOKEN.encode() not in result.stdout + result.stderr


def send_to(proxy: MitmdumpProcess, upstream: RecordingUpstream, key: str, path: str = "/use") -> requests.Response:
    with proxy.requests_session() as session:
        return session.get(f"{upstream.url}{path}", headers={"X-Key": f"<<vault:{key}>>"}, timeout=TIMEOUT)


def received(proxy: MitmdumpProcess, upstream: RecordingUpstream, key: str) -> str | None:
    """What the upstream got for `key` from one request (None: the proxy refused it)."""
    upstream.clear()
    response = send_to(proxy, upstream, key)
    if response.status_code != 200:
        assert not upstream.requests, "a refused request reached the upstream"
        return None
    return upstream.requests[-1].header("X-Key")


def refused_as_unknown(response: requests.Response) -> bool:
    return response.status_code in (400, 403) and response.headers.get("X-Vaultproxy-Error") == "unknown_key"


def test_each_local_set_is_sent_by_the_next_request(proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path) -> None:
    stale = []
    for i in range(ROUNDS):
        value = f"{FRESH_TOKEN}Round{i}"
        cli(home, "local", "set", "fresh.k", "--hosts", LOOPBACK, stdin=value)
        if (got := received(proxy, upstream, "fresh.k")) != value:
            stale.append((i, got))
    assert not stale, f"{len(stale)} of {ROUNDS} requests right after `local set` did not carry its value"


def test_a_new_key_resolves_on_the_next_request(proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path) -> None:
    unknown = []
    for i in range(ROUNDS):
        key, value = f"fresh.new{i}", f"{FRESH_TOKEN}New{i}"
        cli(home, "local", "set", key, "--hosts", LOOPBACK, stdin=value)
        if (got := received(proxy, upstream, key)) != value:
            unknown.append((key, got))
    assert not unknown, f"{len(unknown)} of {ROUNDS} new keys did not resolve on the request right after `local set`"


def test_an_unset_key_is_refused_on_the_next_request(proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path) -> None:
    leaked = []
    for i in range(ROUNDS):
        key = f"fresh.gone{i}"
        Vault(home).set(key, f"{FRESH_TOKEN}Gone{i}", hosts=[LOOPBACK])
        wait_until(lambda key=key: received(proxy, upstream, key) is not None, TIMEOUT, f"{key} to resolve")  # in force first
        upstream.clear()
        cli(home, "local", "unset", key)
        response = send_to(proxy, upstream, key)
        if not refused_as_unknown(response) or upstream.requests:
            leaked.append((key, response.status_code, response.headers.get("X-Vaultproxy-Error")))
    assert not leaked, f"{len(leaked)} of {ROUNDS} requests right after `local unset` were not refused as unknown_key"


# --- freshness: revocation while the active configuration's YAML is broken ---------------------------


def test_revocation_works_while_the_active_configuration_is_broken(
    vault_home: Path, moto: MotoServer, mitmdump: StartProxy, upstream: RecordingUpstream
) -> None:
    moto.client().create_secret(Name="fresh/api", SecretString=f"{FRESH_TOKEN}Provider")
    vault = Vault(vault_home)
    config = ProviderConfig(name="prod", display_name="Prod", region=REGION, endpoint_url=moto.endpoint_url,
                            hosts=(LOOPBACK,), secrets=(SecretMapping("api", "fresh/api"),))
    vault.add_config(config, KEYS)
    assert vault.fetch()["api"].error is None
    vault.set("rv", f"{FRESH_TOKEN}Revoked", hosts=[LOOPBACK])
    proxy = mitmdump(options={"vault_home": str(vault_home)})
    assert received(proxy, upstream, "rv") == f"{FRESH_TOKEN}Revoked"
    assert received(proxy, upstream, "api") == f"{FRESH_TOKEN}Provider"

    vault.configs.file("prod").write_text("name: prod\nregion: [\nsecrets: [unclosed\n")  # broken by hand
    cli(vault_home, "local", "unset", "rv")
    upstream.clear()
    response = send_to(proxy, upstream, "rv")
    assert not upstream.requests, "the revoked secret went out"
    assert refused_as_unknown(response), response.headers.get("X-Vaultproxy-Error")
    # The provider secret keeps resolving from the cache, through the last good configuration.
    assert received(proxy, upstream, "api") == f"{FRESH_TOKEN}Provider"
    status = run_cli(vault_home, "status", "--json")
    assert status.returncode == 0 and b"prod.yaml:" in status.stdout
    assert FRESH_TOKEN not in proxy.output()


# --- the audit log follows rotation (needs only audit.py) ------------------------------------------


def test_audit_log_is_reopened_when_rotated_or_deleted(proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path) -> None:
    log = home / "audit.log"
    assert send_to(proxy, upstream, "fresh.base", "/audit-before").status_code == 200
    assert audit_lines(home, "/audit-before")
    rotated = log.with_name("audit.log.1")
    os.rename(log, rotated)  # as logrotate does

    assert send_to(proxy, upstream, "fresh.base", "/audit-after-rename").status_code == 200
    assert [line["keys"] for line in audit_lines(home)] == [["fresh.base"]]
    assert audit_lines(home, "/audit-after-rename")
    assert "/audit-after-rename" not in rotated.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600

    log.unlink()
    assert send_to(proxy, upstream, "fresh.base", "/audit-after-delete").status_code == 200
    assert [line["path"] for line in audit_lines(home)] == ["/audit-after-delete"]
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert FRESH_TOKEN not in log.read_text() + rotated.read_text()
