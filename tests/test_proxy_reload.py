"""End to end: the running proxy follows the vault without a restart.

The real `vaultproxy` CLI (a subprocess, value on stdin, VAULTPROXY_HOME in its environment)
changes the vault while mitmdump runs; the next requests show the change. A vault.enc replaced
with garbage keeps the last good state (requests still resolve, the log says why), and a
good file put back is picked up again. Waiting is by polling the proxy's behaviour, bounded.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.cli import run_cli
from tests.support.net import LOOPBACK, wait_until
from tests.support.proxy import MitmdumpProcess
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordingUpstream
from vaultcore.vault import Vault

TIMEOUT = 60
RELOAD_WAIT = 30.0  # the addon polls every 0.5 s; this only bounds a broken reload
TOKEN = "sk_live_Zq9Rl"  # a prefix of every value here


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("vault-home")
    Vault(home).set("reload.base", f"{TOKEN}Base", hosts=[LOOPBACK])
    return home


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial, home: Path) -> Iterator[MitmdumpProcess]:
    process = MitmdumpProcess(
        tmp_path_factory.mktemp("reload"), upstream_ca=tls_material.ca_cert,
        options={"vault_home": str(home), "flow_detail": 3},
    )
    with process:
        yield process
    assert TOKEN not in process.output()


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
