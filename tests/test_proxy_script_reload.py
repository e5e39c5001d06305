"""End to end: mitmproxy reloads a `-s` script whose file changes (a checkout that touches it),
here while requests are in flight. The instance the reload retires knew which values those
requests carried; the new one answers their responses, and must still put their placeholders
back before anything records the flow, and redact the values their responses echo.

Each test runs mitmdump with its own copy of the addon's script (touching the repository's
would reload every proxy of the test session) and writes a flow file (`-w`).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mitmproxy import io
from mitmproxy.http import HTTPFlow

from tests.support.net import LOOPBACK, wait_until
from tests.support.oauth_server import AuthorizationServer
from tests.support.proxy import ADDON_SCRIPT, CLIENT_TIMEOUT, MitmdumpProcess, StartProxy
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply
from vaultcore.credential import read_credential
from vaultcore.proxyenv import proxy_info, proxy_url
from vaultcore.vault import Vault

VALUE = "sk_live_Zq9Reload"
CLIENT_SECRET = "FAKE-client-secret-reload-77d1"


def echo(header: str, after: threading.Event | None = None) -> Callable[[RecordedRequest], tuple[list[tuple[str, str]], bytes]]:
    """An upstream answer that echoes the request's `header`, once `after` is set if given."""

    def respond(request: RecordedRequest) -> tuple[list[tuple[str, str]], bytes]:
        if after is not None:
            after.wait(CLIENT_TIMEOUT)
        return [("Content-Type", "text/plain")], (request.header(header) or "").encode()

    return respond


@pytest.fixture
def script(tmp_path: Path) -> Path:
    copy = tmp_path / "script" / ADDON_SCRIPT.name
    copy.parent.mkdir()
    shutil.copy(ADDON_SCRIPT, copy)
    return copy


def start(mitmdump: StartProxy, script: Path, flows: Path, home: Path, *args: str, **kwargs: object) -> MitmdumpProcess:
    return mitmdump(addon=False, args=["-s", str(script), "-w", str(flows), *args], env={"VAULTPROXY_HOME": str(home)}, **kwargs)


def reload_script(proxy: MitmdumpProcess, script: Path) -> None:
    """Change the script's mtime (mitmproxy looks every second) and wait for the new instance."""
    loaded = proxy.output().count("vaultproxy: ")
    later = time.time() + 10
    os.utime(script, (later, later))
    wait_until(lambda: proxy.output().count("Loading script") >= 2, CLIENT_TIMEOUT, "the script's reload")
    wait_until(lambda: proxy.output().count("vaultproxy: ") > loaded, CLIENT_TIMEOUT, "the new instance's vault")


def recorded(proxy: MitmdumpProcess, flows: Path) -> list[HTTPFlow]:
    """The flows the proxy wrote, once it has stopped."""
    proxy.stop()
    with flows.open("rb") as file:
        return list(io.FlowReader(file).stream())


def test_a_request_upstream_during_a_reload_is_recorded_and_answered_with_placeholders(
    mitmdump: StartProxy, upstream: RecordingUpstream, script: Path, tmp_path: Path, vault_home: Path
) -> None:
    Vault(vault_home).set("reload.tok", VALUE, hosts=[LOOPBACK])
    release = threading.Event()
    upstream.route("/slow", Reply(respond=echo("x-token", after=release)))
    flows = tmp_path / "flows.mitm"
    proxy = start(mitmdump, script, flows, vault_home)
    with ThreadPoolExecutor(1) as pool, proxy.requests_session() as session:
        answer = pool.submit(session.get, f"http://{LOOPBACK}:{upstream.port}/slow",
                             headers={"X-Token": "<<vault:reload.tok>>"}, timeout=CLIENT_TIMEOUT)
        (sent,) = upstream.wait_for(1)
        assert sent.header("x-token") == VALUE
        reload_script(proxy, script)
        release.set()
        response = answer.result()
    assert response.status_code == 200 and response.text == "<<vault:reload.tok>>"
    (flow,) = recorded(proxy, flows)
    assert flow.request.headers["x-token"] == "<<vault:reload.tok>>"
    assert VALUE.encode() not in flows.read_bytes() and VALUE not in proxy.output()


def test_a_request_waiting_for_a_token_during_a_reload_is_recorded_and_answered_with_placeholders(
    mitmdump: StartProxy, tls_upstream: RecordingUpstream, tls_material: TLSMaterial, script: Path, tmp_path: Path,
    vault_home: Path,
) -> None:
    """The retired instance finishes what it was doing (the mint, then the substitution); the
    new one must know of it when the answer comes."""
    tls_upstream.route("/api", Reply(respond=echo("authorization")))
    with AuthorizationServer(tls_material) as authorization:
        authorization.add_client("reload-e2e", CLIENT_SECRET)
        Vault(vault_home).set("billing.client_secret", CLIENT_SECRET, hosts=["auth.example.com"])
        (vault_home / "tokens.yaml").write_text(json.dumps({"tokens": [{
            "name": "billing", "hosts": ["api.example.com"], "client_id": "reload-e2e", "client_secret": "billing.client_secret",
            "token_url": f"https://auth.example.com:{authorization.port}/oauth/token",
        }]}))
        flows = tmp_path / "flows.mitm"
        proxy = start(mitmdump, script, flows, vault_home, hosts={"*.example.com": LOOPBACK})
        with ThreadPoolExecutor(1) as pool, proxy.requests_session() as session:
            with authorization.held():
                answer = pool.submit(session.get, f"https://api.example.com:{tls_upstream.port}/api",
                                     headers={"Authorization": "Bearer <<vault:billing>>"}, timeout=CLIENT_TIMEOUT)
                wait_until(lambda: authorization.token_requests() == 1, CLIENT_TIMEOUT, "the mint")
                reload_script(proxy, script)
            response = answer.result()
        (sent,) = tls_upstream.wait_for(1)
    token = sent.header("authorization").removeprefix("Bearer ")
    assert token and "vault" not in token
    assert response.status_code == 200 and response.text == "Bearer <<vault:billing>>"
    (flow,) = recorded(proxy, flows)
    assert flow.request.headers["authorization"] == "Bearer <<vault:billing>>"
    assert token.encode() not in flows.read_bytes() and token not in proxy.output()


def test_a_name_a_reverse_proxy_does_not_serve_stays_refused_across_a_reload(
    mitmdump: StartProxy, upstream: RecordingUpstream, script: Path, tmp_path: Path, vault_home: Path
) -> None:
    """A page whose name was rebound to the proxy's address sends its head before a reload and
    its body after: the instance that saw the head knew the name is not served, and the one
    that resolves the request must too."""
    Vault(vault_home).set("reload.tok", VALUE, hosts=[LOOPBACK])
    flows = tmp_path / "flows.mitm"
    proxy = start(mitmdump, script, flows, vault_home, "--mode", f"reverse:http://{LOOPBACK}:{upstream.port}",
                  options={"vault_served_names": ["app.test"]})
    body = b'{"token": "<<vault:reload.tok>>"}'
    head = (f"POST /rebound HTTP/1.1\r\nHost: rebind.attacker.test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((LOOPBACK, proxy.port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(head)
        time.sleep(0.3)  # the head has been read (requestheaders ran)
        reload_script(proxy, script)
        sock.sendall(body)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
    assert answer.status == 403 and answer.getheader("X-Vaultproxy-Error") == "name_not_served"
    assert VALUE.encode() not in upstream.all_bytes()


def test_a_reload_keeps_the_proxys_credential(
    mitmdump: StartProxy, script: Path, upstream: RecordingUpstream, vault_home: Path, tmp_path: Path,
) -> None:
    """A reload is the same proxy, in the same process: the credential its clients were given
    (`vaultproxy env`) still lets them in. A new one per instance answered them 407 after a
    `git pull` that touched the script, with no restart to tell them to ask again."""
    Vault(vault_home).set("reload.tok", VALUE, hosts=[LOOPBACK])
    proxy = start(mitmdump, script, tmp_path / "flows", vault_home, "--listen-host", "0.0.0.0")  # only the credential lets a client in
    wait_until(lambda: proxy_info(vault_home) is not None, CLIENT_TIMEOUT, "the proxy's record")
    given = proxy_url(LOOPBACK, proxy.port, read_credential(vault_home))

    def status() -> int:
        with proxy.requests_session() as session:
            session.proxies = {"http": given}
            return session.get(f"{upstream.url}/reloaded", headers={"X-Token": "<<vault:reload.tok>>"}, timeout=CLIENT_TIMEOUT).status_code

    assert status() == 200
    (vault_home / "proxy.json").unlink()  # the new instance writes its record again: wait for that
    reload_script(proxy, script)
    wait_until(lambda: proxy_info(vault_home) is not None, CLIENT_TIMEOUT, "the new instance's record")
    assert status() == 200 and proxy_url(LOOPBACK, proxy.port, read_credential(vault_home)) == given
    assert [r.header("x-token") for r in upstream.requests] == [VALUE, VALUE]


def test_a_reload_keeps_writing_the_audit_log_it_has_open(
    mitmdump: StartProxy, script: Path, upstream: RecordingUpstream, vault_home: Path, tmp_path: Path,
) -> None:
    """After a rotation whose path another user took first (a link planted in a shared
    directory), the proxy writes on into the rotated file. A reload then opened the log anew,
    could not, and ended the running proxy: the new instance writes on into the same file."""
    Vault(vault_home).set("reload.tok", VALUE, hosts=[LOOPBACK])
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    log, rotated, victim = shared / "audit.log", shared / "audit.log.1", tmp_path / "victim"
    victim.write_text("precious\n")
    proxy = start(mitmdump, script, tmp_path / "flows", vault_home, "--set", f"vault_audit_log={log}")

    def resolved(path: str) -> int:
        with proxy.requests_session() as session:
            return session.get(f"{upstream.url}{path}", headers={"X-Token": "<<vault:reload.tok>>"}, timeout=CLIENT_TIMEOUT).status_code

    assert resolved("/before") == 200
    wait_until(lambda: log.is_file() and "/before" in log.read_text(), CLIENT_TIMEOUT, "the first line")
    log.rename(rotated)
    log.symlink_to(victim)
    reload_script(proxy, script)
    assert proxy.is_running() and resolved("/after") == 200
    wait_until(lambda: "/after" in rotated.read_text(), CLIENT_TIMEOUT, "the line after the reload")
    assert victim.read_text() == "precious\n"
