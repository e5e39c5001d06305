"""OAuth 2.0 access tokens minted by the proxy, end to end: a real mitmdump with the addon, a
real authorization server (authlib's server components, tests/support/oauth_server.py) and an
API that accepts only its current tokens, both over HTTPS on loopback under example.com names.

The client sends `Authorization: Bearer <<vault:billing>>` and holds nothing else: no client
secret, no refresh token, no access token. Each test counts what reached the token endpoint.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.cli import run_cli
from tests.support.net import LOOPBACK, free_port, wait_until
from tests.support.oauth_server import AuthorizationServer, ResourceServer
from tests.support.proxy import MitmdumpProcess, StartProxy, audit_lines, audit_text
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordingUpstream, Reply, WebSocketUpstream
from vaultcore import oauth
from vaultcore.oauth import Minter, MintError
from vaultcore.redaction import value_forms
from vaultcore.store import VaultError
from vaultcore.tokens import TokenSource, load_sources
from vaultcore.vault import Vault

CLIENT_ID = "vaultproxy-e2e"
CLIENT_SECRET = "FAKE-client-secret-oauth-e2e-41c7"
TIMEOUT = 30
STREAM_ABOVE = "1k"  # stream_large_bodies where a test needs a streamed request
BEARER = {"Authorization": "<<vault:billing.token_type>> <<vault:billing>>"}


@pytest.fixture
def authorization(tls_material: TLSMaterial) -> Iterator[AuthorizationServer]:
    with AuthorizationServer(tls_material) as server:
        yield server


@pytest.fixture
def api(authorization: AuthorizationServer, tls_material: TLSMaterial) -> Iterator[ResourceServer]:
    with ResourceServer(authorization, tls_material) as server:
        yield server


def token_source(home: Path, port: int, names: tuple[str, ...] = ("billing",), **fields: Any) -> None:
    """tokens.yaml with one source of each of `names` for api.example.com, whose token endpoint
    is auth.example.com."""
    sources = [{
        "name": name, "hosts": ["api.example.com"], "token_url": f"https://auth.example.com:{port}/oauth/token",
        "client_id": CLIENT_ID, "client_secret": "billing.client_secret", "scope": "read", **fields,
    } for name in names]
    (home / "tokens.yaml").write_text(json.dumps({"tokens": sources}))


def start(mitmdump: StartProxy, home: Path, **options: str) -> MitmdumpProcess:
    return mitmdump(env={"VAULTPROXY_HOME": str(home)}, hosts={"*.example.com": LOOPBACK}, options=options)


def client_credentials(home: Path, authorization: AuthorizationServer, auth_method: str = "client_secret_basic") -> Vault:
    authorization.add_client(CLIENT_ID, CLIENT_SECRET, auth_method=auth_method)
    vault = Vault(home)
    vault.set("billing.client_secret", CLIENT_SECRET, hosts=["auth.example.com"])
    token_source(home, authorization.port, auth_method=auth_method, audience="https://api.example.com")
    return vault


def call(session: requests.Session, api: ResourceServer, path: str = "/v1/invoices", headers: dict[str, str] = BEARER) -> requests.Response:
    return session.get(f"https://api.example.com:{api.port}{path}", headers=headers, timeout=TIMEOUT)


def token_status(home: Path) -> dict[str, Any]:
    (status,) = Vault(home).status()["tokens"]
    return status


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_client_credentials_token_reaches_the_api_and_is_reused(
    vault_home: Path, authorization: AuthorizationServer, api: ResourceServer, mitmdump: StartProxy, auth_method: str,
) -> None:
    client_credentials(vault_home, authorization, auth_method)
    proxy = start(mitmdump, vault_home)
    session = proxy.requests_session()

    for _ in range(3):
        answer = call(session, api)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"client_id": CLIENT_ID, "scope": "read", "path": "/v1/invoices"}
    assert authorization.token_requests() == 1  # one token, kept until shortly before it expires
    assert authorization.auth_methods_seen() == [auth_method]
    assert authorization.last_form() | {"scope": "read"} == {"grant_type": "client_credentials", "scope": "read", "audience": "https://api.example.com"} | (
        {"client_id": CLIENT_ID} if auth_method == "client_secret_post" else {}
    )
    token = api.tokens_seen[0]
    assert api.tokens_seen == [token] * 3 and authorization.introspect(token) is not None

    status = token_status(vault_home)
    assert status["minted_at"] and status["expires_at"] and status["error"] is None
    audit = audit_lines(vault_home, "/v1/invoices", count=3)
    assert [line["keys"] for line in audit] == [["billing.token_type", "billing"]] * 3
    everything = proxy.output() + audit_text(vault_home) + (vault_home / "token-status.json").read_text()
    assert token not in everything and CLIENT_SECRET not in everything


def test_a_destination_outside_the_sources_hosts_gets_no_token_and_causes_no_mint(
    vault_home: Path, authorization: AuthorizationServer, api: ResourceServer, mitmdump: StartProxy,
) -> None:
    """A hostile page or host cannot make the proxy spend its client secret: the token's own
    rules are checked before anything is minted."""
    client_credentials(vault_home, authorization)
    session = start(mitmdump, vault_home).requests_session()

    elsewhere = session.get(f"https://other.example.com:{api.port}/steal", headers=BEARER, timeout=TIMEOUT)
    assert elsewhere.status_code == 403 and elsewhere.headers["X-Vaultproxy-Error"] == "host_not_allowed"
    page = call(session, api, headers={**BEARER, "Origin": "https://evil.example.com"})
    assert page.status_code == 403 and page.headers["X-Vaultproxy-Error"] == "origin_not_allowed"
    assert authorization.token_requests() == 0 and api.requests == 0


@pytest.mark.parametrize("anywhere", ["*", "*.**"])
def test_a_shared_tokens_file_cannot_send_a_token_to_every_page_and_host(
    vault_home: Path, authorization: AuthorizationServer, api: ResourceServer, mitmdump: StartProxy, anywhere: str,
) -> None:
    """A teammate's tokens.yaml saying `hosts: ["*"]` and `origins: ["https://*"]` would have
    any page put `<<vault:billing>>` in a request to its own server and get a token minted
    from your client secret. Such an entry must say `allow_any_host: true`: the file is
    refused, at its line, and nothing is minted."""
    client_credentials(vault_home, authorization)
    token_source(vault_home, authorization.port, hosts=[anywhere], origins=[f"https://{anywhere}"])
    proxy = start(mitmdump, vault_home)
    with proxy.requests_session() as session:
        stolen = session.get(f"https://evil.example.com:{api.port}/steal", headers={**BEARER, "Origin": "https://evil.example.com"},
                             timeout=TIMEOUT)
    assert stolen.status_code in (400, 403) and authorization.token_requests() == 0 and api.requests == 0
    proxy.wait_for_output(f"{vault_home / 'tokens.yaml'}:1: tokens[0].hosts[0]: {anywhere} matches nearly every host")


def test_the_client_secret_only_goes_where_its_hosts_rule_allows(
    vault_home: Path, authorization: AuthorizationServer, api: ResourceServer, mitmdump: StartProxy,
) -> None:
    vault = client_credentials(vault_home, authorization)
    vault.edit("billing.client_secret", hosts=["login.example.com"])  # not the token endpoint's host
    session = start(mitmdump, vault_home).requests_session()

    refused = call(session, api)
    assert refused.status_code == 403 and refused.headers["X-Vaultproxy-Error"] == "host_not_allowed"
    assert "token 'billing' cannot be minted" in refused.text and "auth.example.com" in refused.text
    assert authorization.token_requests() == 0 and api.requests == 0


def test_a_client_cannot_send_a_token_sources_credentials_itself(
    vault_home: Path, authorization: AuthorizationServer, api: ResourceServer, mitmdump: StartProxy,
) -> None:
    """A review's: the client secret and refresh token are allowed for the token endpoint's
    host, so the proxy can mint. A client that POSTed them there itself as placeholders got a
    fresh access token and refresh token back in clear (no value of the request, so nothing to
    redact), could use them anywhere, and revoked the vault's rotating refresh token. They are
    the proxy's to send: a request that names them is refused, and the token endpoint hears
    nothing; the proxy's own mint goes on working."""
    authorization.add_client(CLIENT_ID, CLIENT_SECRET, auth_method="client_secret_post")
    first = authorization.issue_refresh_token(CLIENT_ID, scope="read")
    vault = Vault(vault_home)
    vault.set("billing.client_secret", CLIENT_SECRET, hosts=["auth.example.com"])
    vault.set("billing.refresh_token", first, hosts=["auth.example.com"])
    token_source(vault_home, authorization.port, grant="refresh_token", refresh_token="billing.refresh_token",
                 auth_method="client_secret_post")
    proxy = start(mitmdump, vault_home)
    session = proxy.requests_session()

    for form in ({"client_secret": "<<vault:billing.client_secret>>", "grant_type": "client_credentials"},
                 {"client_secret": "FAKE-guess", "refresh_token": "<<vault:billing.refresh_token>>", "grant_type": "refresh_token"}):
        answer = session.post(authorization.token_url.replace(LOOPBACK, "auth.example.com"), data={"client_id": CLIENT_ID, **form}, timeout=TIMEOUT)
        assert answer.status_code == 403 and answer.headers["X-Vaultproxy-Error"] == "mint_only", answer.text
        assert "access_token" not in answer.text
    assert authorization.token_requests() == 0 and authorization.refresh_token_valid(first)
    assert call(session, api).status_code == 200  # the proxy mints with them as before
    dry_run = run_cli(vault_home, "resolve", "<<vault:billing.client_secret>>", "--host", "auth.example.com")
    assert dry_run.returncode == 1 and b"REFUSED mint_only" in dry_run.stdout, dry_run.stdout  # as the proxy answers


def test_refresh_token_rotation_is_stored_before_the_new_token_is_used(
    vault_home: Path, authorization: AuthorizationServer, api: ResourceServer, mitmdump: StartProxy,
) -> None:
    authorization.add_client(CLIENT_ID, CLIENT_SECRET)
    first = authorization.issue_refresh_token(CLIENT_ID, scope="read")
    vault = Vault(vault_home)
    vault.set("billing.client_secret", CLIENT_SECRET, hosts=["auth.example.com"])
    vault.set("billing.refresh_token", first, hosts=["auth.example.com"])
    token_source(vault_home, authorization.port, grant="refresh_token", refresh_token="billing.refresh_token")
    proxy = start(mitmdump, vault_home)
    session = proxy.requests_session()

    assert call(session, api).status_code == 200
    rotated = Vault(vault_home).get("billing.refresh_token")
    assert rotated != first and authorization.refresh_token_valid(rotated) and not authorization.refresh_token_valid(first)
    assert Vault(vault_home).local_secrets()[1]["hosts"] == ["auth.example.com"]  # its rules kept

    # The API stops taking the token (revoked, expired early): the proxy mints again with the
    # rotated refresh token and sends the request once more; the client sees only the 200.
    authorization.expire_access_tokens()
    again = call(session, api, "/v1/again")
    assert again.status_code == 200, again.text
    assert api.rejected == 1 and authorization.token_requests("refresh_token") == 2
    assert Vault(vault_home).get("billing.refresh_token") not in (first, rotated)
    assert [line["outcome"] for line in audit_lines(vault_home, "/v1/again", count=3)] == ["resolved", "retried_after_401", "resolved"]

    # An API that rejects every token cannot make the proxy hammer the token endpoint: a token
    # is replaced after a rejection at most once in 30 s; meanwhile the client gets the 401.
    authorization.expire_access_tokens()
    assert call(session, api, "/v1/hostile").status_code == 401
    assert authorization.token_requests("refresh_token") == 2
    assert rotated not in proxy.output() and first not in proxy.output()


def test_a_burst_after_expiry_mints_exactly_one_token(
    vault_home: Path, authorization: AuthorizationServer, api: ResourceServer, mitmdump: StartProxy,
) -> None:
    authorization.token_lifetime = 2
    client_credentials(vault_home, authorization)
    proxy = start(mitmdump, vault_home)
    assert call(proxy.requests_session(), api).status_code == 200
    first = api.tokens_seen[0]
    wait_until(lambda: authorization.introspect(first) is None, 10, "the first token to expire")
    authorization.token_lifetime = 3600  # the burst's own token must outlive the burst on a loaded host

    def one(_: int) -> int:
        return call(proxy.requests_session(), api).status_code

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(one, range(20)))
    assert statuses == [200] * 20
    assert authorization.token_requests() == 2  # one for the first request, one for the whole burst
    assert first not in api.tokens_seen[1:]  # never sent once it was due
    assert api.rejected == 0


def test_a_revoked_client_gets_502_and_the_api_is_never_called(
    vault_home: Path, authorization: AuthorizationServer, api: ResourceServer, mitmdump: StartProxy,
) -> None:
    client_credentials(vault_home, authorization)
    authorization.revoke_client(CLIENT_ID)
    proxy = start(mitmdump, vault_home)
    session = proxy.requests_session()

    refused = call(session, api)
    assert refused.status_code == 502 and refused.headers["X-Vaultproxy-Error"] == "token_refused"
    assert "invalid_client" in refused.text
    again = call(session, api)  # within the backoff: answered at once, the server is not asked again
    assert again.status_code == 502 and authorization.token_requests() == 1
    assert api.requests == 0
    status = token_status(vault_home)
    assert "invalid_client" in status["error"] and status["error_code"] == "token_refused" and status["failures"] == 1
    assert CLIENT_SECRET not in proxy.output() + refused.text

    # A fixed credential ends the backoff at once.
    authorization.add_client(CLIENT_ID, "FAKE-new-client-secret-oauth-e2e-9d2e")
    Vault(vault_home).set("billing.client_secret", "FAKE-new-client-secret-oauth-e2e-9d2e")
    assert call(session, api).status_code == 200
    assert token_status(vault_home)["error"] is None


def test_an_unreachable_token_endpoint_gets_503(vault_home: Path, mitmdump: StartProxy, api: ResourceServer) -> None:
    vault = Vault(vault_home)
    vault.set("billing.client_secret", CLIENT_SECRET, hosts=["auth.example.com"])
    token_source(vault_home, free_port())  # nothing listens there
    session = start(mitmdump, vault_home).requests_session()

    refused = call(session, api)
    assert refused.status_code == 503 and refused.headers["X-Vaultproxy-Error"] == "token_unavailable"
    assert api.requests == 0
    started = time.monotonic()
    assert call(session, api).status_code == 503 and time.monotonic() - started < 2  # the backoff answers at once


def test_a_mint_in_flight_never_holds_up_other_requests(
    vault_home: Path, mitmdump: StartProxy, api: ResourceServer, tls_upstream: RecordingUpstream,
) -> None:
    """The token request runs on a thread of its own: while a token endpoint hangs, the proxy
    serves everything else."""
    vault = Vault(vault_home)
    vault.set("billing.client_secret", CLIENT_SECRET, hosts=["auth.example.com"])
    with socket.create_server((LOOPBACK, 0)) as silent:  # accepts connections, never answers
        token_source(vault_home, silent.getsockname()[1])
        proxy = start(mitmdump, vault_home)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(call, proxy.requests_session(), api)
            time.sleep(1.0)  # the request has reached the proxy, whose mint now waits for the silent endpoint
            other = proxy.requests_session().get(tls_upstream.url_for("other.example.com") + "/meanwhile", timeout=TIMEOUT)
            assert other.status_code == 200 and not waiting.done()
            silent.close()  # resets the waiting connection: the mint fails
            refused = waiting.result(timeout=TIMEOUT)
    assert refused.status_code == 503 and refused.headers["X-Vaultproxy-Error"] == "token_unavailable"
    assert api.requests == 0


def test_a_websocket_message_waits_for_its_token(
    vault_home: Path, authorization: AuthorizationServer, ws_upstream: WebSocketUpstream, mitmdump: StartProxy,
) -> None:
    """A placeholder in a client's message mints the token too, and the message goes out with it."""
    client_credentials(vault_home, authorization)
    token_source(vault_home, authorization.port, hosts=[LOOPBACK])
    with start(mitmdump, vault_home).websocket(f"{ws_upstream.url}/socket") as connection:
        connection.send("token=<<vault:billing>>")
        (message,) = ws_upstream.wait_for(1, TIMEOUT)
    token = str(message).removeprefix("token=")
    assert authorization.introspect(token) == {"client_id": CLIENT_ID, "scope": "read"}
    assert authorization.token_requests() == 1


def streamed_upload(session: requests.Session, url: str, path: str = "/upload", **headers: str) -> requests.Response:
    """A JSON upload the proxy streams (STREAM_ABOVE), whose only token placeholder is in its
    body: nothing in its head asks for a mint."""
    body = json.dumps({"pad": "x" * 4096, "token": "<<vault:billing>>"}).encode()
    return session.post(url + path, data=body, headers={"Content-Type": "application/json", **headers}, timeout=TIMEOUT)


def test_a_token_only_in_a_streamed_body_is_minted_before_the_body_leaves(
    vault_home: Path, authorization: AuthorizationServer, mitmdump: StartProxy, tls_upstream: RecordingUpstream,
) -> None:
    """A streamed body is resolved as it leaves, when no mint can hold the request any more: the
    tokens it could use are minted while its head waits, so the body carries a current one."""
    client_credentials(vault_home, authorization)
    proxy = start(mitmdump, vault_home, stream_large_bodies=STREAM_ABOVE)

    answer = streamed_upload(proxy.requests_session(), tls_upstream.url_for("api.example.com"))
    assert answer.status_code == 200, answer.text
    (received,) = tls_upstream.wait_for(1)
    assert received.chunked  # streamed, and re-framed for the value
    token = received.json()["token"]
    assert authorization.introspect(token) == {"client_id": CLIENT_ID, "scope": "read"}
    assert authorization.token_requests() == 1
    assert [line["keys"] for line in audit_lines(vault_home, "/upload")] == [["billing"]]
    assert token not in proxy.output() + audit_text(vault_home)


def test_a_streamed_request_the_token_is_not_for_causes_no_mint(
    vault_home: Path, authorization: AuthorizationServer, mitmdump: StartProxy, tls_upstream: RecordingUpstream,
) -> None:
    """Minting ahead asks what any placeholder asks, and only of a head that would pass: another
    host, a page's origin the source does not allow, a Host header that disagrees with the
    destination, a head refused for a key of its own each get no token minted, and the bodies
    that leave keep the placeholder."""
    client_credentials(vault_home, authorization)
    session = start(mitmdump, vault_home, stream_large_bodies=STREAM_ABOVE).requests_session()
    api = tls_upstream.url_for("api.example.com")

    assert streamed_upload(session, tls_upstream.url_for("other.example.com"), "/other").status_code == 200
    assert streamed_upload(session, api, "/page", Origin="https://evil.example.com").status_code == 200
    assert streamed_upload(session, api, "/host", Host=f"other.example.com:{tls_upstream.port}").status_code == 200
    with pytest.raises(requests.RequestException):  # a streamed head refused: the connection is closed
        streamed_upload(session, api, "/head", **{"X-Key": "<<vault:billing.client_secret>>"})
    outcomes = {path: audit_lines(vault_home, path)[0]["outcome"] for path in ("/other", "/page", "/host", "/head")}
    assert outcomes == {
        "/other": "refused:host_not_allowed", "/page": "refused:origin_not_allowed",
        "/host": "refused:host_mismatch", "/head": "refused:mint_only",  # the client secret is the minter's alone
    }
    assert [request.json()["token"] for request in tls_upstream.requests] == ["<<vault:billing>>"] * 3
    assert authorization.token_requests() == 0


def test_a_streamed_body_that_can_take_no_value_causes_no_mint(
    vault_home: Path, authorization: AuthorizationServer, mitmdump: StartProxy, tls_upstream: RecordingUpstream,
) -> None:
    """An HTTP/2 client's streamed body, on a lazily made upstream connection, must keep its length
    (tests/test_proxy_streaming.py): no value can go into it, so no token is minted for it."""
    client_credentials(vault_home, authorization)
    proxy = start(mitmdump, vault_home, stream_large_bodies=STREAM_ABOVE, connection_strategy="lazy")
    body = json.dumps({"pad": "x" * 4096, "token": "<<vault:billing>>"}).encode()
    with proxy.httpx_client(http2=True) as client:
        answer = client.post(tls_upstream.url_for("api.example.com") + "/h2", content=body, headers={"Content-Type": "application/json"})
    assert answer.http_version == "HTTP/2" and answer.status_code == 200
    (received,) = tls_upstream.wait_for(1)
    assert received.body == body
    assert authorization.token_requests() == 0


@pytest.mark.parametrize(("secret_hosts", "code", "why"), [
    (["auth.example.com"], "token_unavailable", "token 'billing' cannot be minted: the token endpoint could not be asked"),  # nothing listens
    (["api.example.com"], "host_not_allowed", "token 'billing' cannot be minted: secret 'billing.client_secret' is not allowed for host 'auth.example.com'"),
])
def test_a_streamed_body_whose_token_cannot_be_minted_still_goes_with_the_placeholder(
    vault_home: Path, mitmdump: StartProxy, tls_upstream: RecordingUpstream, secret_hosts: list[str], code: str, why: str,
) -> None:
    """Minting ahead refuses nothing: the body may not use the token. If it does, that placeholder
    stays literal, as a refused key in a streamed body does, and the log and the audit line say
    why (the mint's own refusal, not the internal mint_needed)."""
    Vault(vault_home).set("billing.client_secret", CLIENT_SECRET, hosts=secret_hosts)
    token_source(vault_home, free_port())
    proxy = start(mitmdump, vault_home, stream_large_bodies=STREAM_ABOVE)

    assert streamed_upload(proxy.requests_session(), tls_upstream.url_for("api.example.com")).status_code == 200
    (received,) = tls_upstream.wait_for(1)
    assert received.json()["token"] == "<<vault:billing>>"
    output = proxy.output()
    assert f"could not mint token 'billing' ahead of a streamed body to api.example.com: {why}" in output
    assert f"left 'billing' unresolved in a streamed body to api.example.com: {why}" in output
    assert [line["outcome"] for line in audit_lines(vault_home, "/upload")] == [f"refused:{code}"]


def test_a_streamed_body_carries_the_token_minted_for_it_however_long_it_streams(
    vault_home: Path, authorization: AuthorizationServer, mitmdump: StartProxy, tls_upstream: RecordingUpstream,
) -> None:
    """The body is resolved against the tokens held when its head left: a token minted ahead of
    it, which falls due before the body reaches its placeholders, is still the one they take
    (access token and type alike), as a token held before would be. Nothing else could go
    there: a mint cannot hold a body that has started."""
    authorization.token_lifetime = 2  # due 1.8 s after it was minted
    client_credentials(vault_home, authorization)
    proxy = start(mitmdump, vault_home, stream_large_bodies=STREAM_ABOVE)

    def chunks() -> Iterator[bytes]:  # chunked: streamed from its first byte
        yield b'{"pad": "' + b"x" * 2048 + b'", '
        wait_until(lambda: authorization.token_requests() == 1, TIMEOUT, "the token minted ahead of the body")
        time.sleep(3)  # it falls due
        yield b'"token": "<<vault:billing>>", "type": "<<vault:billing.token_type>>"}'

    answer = proxy.requests_session().post(
        tls_upstream.url_for("api.example.com") + "/slow", data=chunks(), headers={"Content-Type": "application/json"}, timeout=TIMEOUT,
    )
    assert answer.status_code == 200
    (received,) = tls_upstream.wait_for(1)
    body = received.json()
    assert authorization.issued(body["token"]) and body["type"] == "Bearer"
    assert authorization.token_requests() == 1  # minted ahead; not again inside the body
    (line,) = audit_lines(vault_home, "/slow")
    assert (line["outcome"], sorted(line["keys"])) == ("resolved", ["billing", "billing.token_type"])
    assert body["token"] not in proxy.output() + audit_text(vault_home)


def test_every_token_a_streamed_body_may_take_is_minted_before_it_leaves(
    vault_home: Path, authorization: AuthorizationServer, mitmdump: StartProxy, tls_upstream: RecordingUpstream,
) -> None:
    """Two token sources for one host, both due: both are minted while the head waits, and the
    body's placeholders take a token each."""
    client_credentials(vault_home, authorization)
    token_source(vault_home, authorization.port, names=("billing", "reports"))
    proxy = start(mitmdump, vault_home, stream_large_bodies=STREAM_ABOVE)

    body = json.dumps({"pad": "x" * 4096, "billing": "<<vault:billing>>", "reports": "<<vault:reports>>"}).encode()
    answer = proxy.requests_session().post(
        tls_upstream.url_for("api.example.com") + "/both", data=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    (received,) = tls_upstream.wait_for(1)
    tokens = [received.json()[name] for name in ("billing", "reports")]
    assert [authorization.introspect(token) for token in tokens] == [{"client_id": CLIENT_ID, "scope": "read"}] * 2
    assert tokens[0] != tokens[1] and authorization.token_requests() == 2


def test_status_shows_each_token_and_whether_tokens_yaml_loads(vault_home: Path, authorization: AuthorizationServer) -> None:
    """(What it shows after a mint or a failure: the tests above, through Vault.status.)"""
    client_credentials(vault_home, authorization)
    status = run_cli(vault_home, "status")
    assert status.returncode == 0, status.stderr
    said = f"token billing: client_credentials at https://auth.example.com:{authorization.port}/oauth/token; not minted yet"
    assert said in status.stdout.decode()

    (vault_home / "tokens.yaml").write_text("tokens:\n  - name: billing\n    hosts: api.example.com\n")
    broken = run_cli(vault_home, "status").stdout.decode()
    assert f"tokens error:  {vault_home / 'tokens.yaml'}:2: tokens[0].token_url: missing (required)" in broken


def test_a_refresh_token_the_server_does_not_know_gets_invalid_grant(
    vault_home: Path, authorization: AuthorizationServer, api: ResourceServer, mitmdump: StartProxy,
) -> None:
    authorization.add_client(CLIENT_ID, CLIENT_SECRET)
    vault = Vault(vault_home)
    vault.set("billing.client_secret", CLIENT_SECRET, hosts=["auth.example.com"])
    vault.set("billing.refresh_token", "FAKE-refresh-token-never-issued-5b1e", hosts=["auth.example.com"])
    token_source(vault_home, authorization.port, grant="refresh_token", refresh_token="billing.refresh_token")
    proxy = start(mitmdump, vault_home)

    refused = call(proxy.requests_session(), api)
    assert refused.status_code == 502 and refused.headers["X-Vaultproxy-Error"] == "token_refused"
    assert "invalid_grant" in refused.text and api.requests == 0
    assert "invalid_grant" in token_status(vault_home)["error"]
    assert Vault(vault_home).get("billing.refresh_token") == "FAKE-refresh-token-never-issued-5b1e"  # nothing lost
    assert "FAKE-refresh-token-never-issued-5b1e" not in proxy.output() + refused.text


def test_a_token_endpoint_that_redirects_gets_no_credentials_past_it(vault_home: Path, mitmdump: StartProxy, api: ResourceServer) -> None:
    """A 307 would make an HTTP client send the form, refresh token and client secret
    included, to wherever it points: the proxy never follows one."""
    with RecordingUpstream() as elsewhere, RecordingUpstream() as redirecting:
        redirecting.route("/oauth/token", Reply(307, b"", (("Location", f"http://127.0.0.1:{elsewhere.port}/collect"),)))
        vault = Vault(vault_home)
        vault.set("billing.client_secret", CLIENT_SECRET, hosts=["127.0.0.1"])
        (vault_home / "tokens.yaml").write_text(json.dumps({"tokens": [{
            "name": "billing", "hosts": ["api.example.com"], "token_url": f"http://127.0.0.1:{redirecting.port}/oauth/token",
            "client_id": CLIENT_ID, "client_secret": "billing.client_secret", "auth_method": "client_secret_post",
        }]}))
        refused = call(start(mitmdump, vault_home).requests_session(), api)
        assert refused.status_code == 503 and refused.headers["X-Vaultproxy-Error"] == "token_unavailable"
        assert len(redirecting.requests) == 1 and not elsewhere.requests


def test_one_waiter_giving_up_cancels_the_mint_for_no_one(vault_home: Path, authorization: AuthorizationServer) -> None:
    """Every request waiting for a token shares one future: a client that disconnects (its
    flow's wait cancelled) must not cancel it for the others."""
    client_credentials(vault_home, authorization)
    (source,) = load_sources(vault_home)
    with socket.create_server((LOOPBACK, 0)) as silent:
        slow = dataclasses.replace(source, token_url=f"http://127.0.0.1:{silent.getsockname()[1]}/oauth/token")
        minter = Minter(Vault(vault_home))
        shared = minter.mint(slow, {"billing.client_secret": CLIENT_SECRET})
        assert minter.mint(slow, {"billing.client_secret": CLIENT_SECRET}) is shared  # one mint in flight
        assert not shared.cancel()
        silent.close()
        assert isinstance(shared.exception(timeout=TIMEOUT), MintError)


@pytest.mark.parametrize(("answer", "expected"), [
    # a lifetime past the year 9999: the token is kept for at most MAX_LIFETIME_SECONDS, and the
    # status that names its end still writes (it raised OverflowError in the minter's thread,
    # and every later mint of every source hung)
    ({"access_token": "FAKE-hostile-long-life", "expires_in": 1e308}, "minted"),
    ({"access_token": "FAKE-hostile-inf", "expires_in": "inf"}, "not a token response"),  # authlib's refusal
    # an answer past MAX_ANSWER_BYTES is not read into memory whole, nor a token past MAX_TOKEN_CHARS kept
    ({"access_token": "FAKE-" + "x" * (2 * oauth.MAX_ANSWER_BYTES)}, "larger than"),
    ({"access_token": "FAKE-" + "x" * (oauth.MAX_TOKEN_CHARS + 1)}, "access_token is longer than"),
    # a gzip answer of kilobytes that inflates to 64 MiB: read in steps, never inflated whole
    ({"access_token": "FAKE-bomb", "padding": " " * (64 << 20)}, "larger than"),
], ids=["expires-past-9999", "expires-inf", "answer-too-large", "token-too-long", "gzip-bomb"])
def test_a_hostile_token_endpoints_answer_is_bounded(vault_home: Path, answer: dict[str, Any], expected: str) -> None:
    """A review's: a token endpoint's answer was read whole (1.5 GB of RSS), its tokens kept
    whatever their size, and an expires_in past the year 9999 killed the minting thread before
    it answered, leaving the request, and every later mint of every source, waiting until a
    restart. A hostile endpoint costs its own source a refusal now, no more."""
    Vault(vault_home).set("billing.client_secret", CLIENT_SECRET, hosts=[LOOPBACK])
    body, headers = json.dumps(answer).encode(), [("Content-Type", "application/json")]
    if "padding" in answer:
        body, headers = gzip.compress(body), [*headers, ("Content-Encoding", "gzip")]
    with RecordingUpstream() as hostile, RecordingUpstream() as honest:
        hostile.route("/oauth/token", Reply(body=body, headers=tuple(headers)))
        honest.route("/oauth/token", Reply(body=json.dumps({"access_token": "FAKE-honest", "expires_in": 60}).encode(),
                                           headers=(("Content-Type", "application/json"),)))
        source = TokenSource("billing", ("api.example.com",), f"{hostile.url}/oauth/token", CLIENT_ID, "billing.client_secret")
        minter = Minter(Vault(vault_home))
        minted = minter.mint(source, {"billing.client_secret": CLIENT_SECRET})
        if expected == "minted":
            token = minted.result(timeout=TIMEOUT)
            assert token.expires_at - token.issued_at <= oauth.MAX_LIFETIME_SECONDS
            assert minter.status()["billing"]["expires_at"] is not None
        else:
            error = minted.exception(timeout=TIMEOUT)
            assert isinstance(error, MintError) and expected in str(error), error
        other = dataclasses.replace(source, name="other", token_url=f"{honest.url}/oauth/token")
        assert minter.mint(other, {"billing.client_secret": CLIENT_SECRET}).result(timeout=TIMEOUT).access_token == "FAKE-honest"


class TricklingTokenEndpoint:
    """A token endpoint that answers one byte every 0.2 s, forever: each read gets data well
    within the per-read timeout, so only a deadline on the whole request ends the wait."""

    def __init__(self) -> None:
        self.server = socket.create_server((LOOPBACK, 0))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.connections = 0

    def __enter__(self) -> TricklingTokenEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() (closing alone does not)
        self.server.close()
        self.thread.join(timeout=TIMEOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/oauth/token"

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.server.accept()
                self.connections += 1
                threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: "
            while not self.stop.wait(0.2):
                connection.sendall(head[:1] if head else b"a")
                head = head[1:]


def test_a_token_endpoint_that_trickles_fails_the_mint_at_its_deadline(
    vault_home: Path, authorization: AuthorizationServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that keeps sending a byte now and then never trips the per-read timeout: the
    whole token request has a deadline, the waiters get token_unavailable, and the next
    attempt is a new mint, not a wait on the stuck one."""
    monkeypatch.setattr(oauth, "MINT_DEADLINE_SECONDS", 1.0)
    client_credentials(vault_home, authorization)
    (source,) = load_sources(vault_home)
    with TricklingTokenEndpoint() as trickling:
        stuck = dataclasses.replace(source, token_url=trickling.url)
        minter = Minter(Vault(vault_home))
        waiting = minter.mint(stuck, {"billing.client_secret": CLIENT_SECRET})
        error = waiting.exception(timeout=TIMEOUT)
        assert isinstance(error, MintError) and error.code == "token_unavailable" and "1 s" in str(error)
        assert CLIENT_SECRET not in str(error)
        assert minter.mint(stuck, {"billing.client_secret": CLIENT_SECRET}).exception(timeout=0) is error  # backing off
        # Another secret (the fix a user would make): a new attempt at once, not a wait on the stuck one.
        again = minter.mint(stuck, {"billing.client_secret": "FAKE-billing-client-secret-new"})
        assert again is not waiting and isinstance(again.exception(timeout=TIMEOUT), MintError)
        assert minter.status()["billing"]["failures"] == 1  # another credential: its first failure


def test_a_refresh_token_stuck_at_a_trickling_endpoint_is_never_sent_twice(
    vault_home: Path, authorization: AuthorizationServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the deadline the waiters are answered, but a rotating refresh token still in flight
    is not sent again beside it: servers that detect reuse revoke the whole grant. Until the
    stuck request ends, the source answers token_unavailable at once."""
    monkeypatch.setattr(oauth, "MINT_DEADLINE_SECONDS", 0.5)
    monkeypatch.setattr(oauth, "BACKOFF_TTL", 0.0)  # no backoff: only the request in flight holds a new one back
    client_credentials(vault_home, authorization)
    (source,) = load_sources(vault_home)
    with TricklingTokenEndpoint() as trickling:
        stuck = dataclasses.replace(source, token_url=trickling.url, grant="refresh_token", refresh_token="billing.refresh_token")
        values = {"billing.client_secret": CLIENT_SECRET, "billing.refresh_token": "FAKE-refresh-token-in-flight"}
        minter = Minter(Vault(vault_home))
        first = minter.mint(stuck, values)
        assert isinstance(first.exception(timeout=TIMEOUT), MintError)
        time.sleep(0.3)
        again = minter.mint(stuck, values)
        assert isinstance(again.exception(timeout=0), MintError)  # at once: nothing sent
        assert trickling.connections == 1


class ReadOnlyVault:
    """A vault whose writes fail (a full disk, a read-only home): where the Minter stores
    a rotated refresh token."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def set(self, key: str, value: str) -> None:
        raise VaultError("the vault home is read-only")


def test_a_rotated_refresh_token_that_could_not_be_stored_is_still_the_one_sent(
    vault_home: Path, authorization: AuthorizationServer, tls_material: TLSMaterial, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server revoked the old refresh token when it rotated it: sending it again would
    look like token theft to servers with reuse detection (they revoke the whole grant)."""
    monkeypatch.setattr(oauth, "backoff", lambda failures, ttl: 0.0)
    authorization.add_client(CLIENT_ID, CLIENT_SECRET)
    first = authorization.issue_refresh_token(CLIENT_ID, scope="read")
    source = TokenSource("billing", ("api.example.com",), authorization.token_url, CLIENT_ID, "billing.secret",
                         refresh_token="billing.refresh", grant="refresh_token")
    minter = Minter(ReadOnlyVault(vault_home), verify=str(tls_material.ca_cert))
    stale = {"billing.secret": CLIENT_SECRET, "billing.refresh": first}  # the index, never updated

    with pytest.raises(MintError, match="kept in this proxy's memory only"):
        minter.mint(source, stale).result(timeout=TIMEOUT)
    with pytest.raises(MintError):
        minter.mint(source, stale).result(timeout=TIMEOUT)
    assert authorization.token_requests("refresh_token") == 2
    assert authorization.last_form()["refresh_token"] != first  # the rotated one, not the revoked one


def rejects_the_first_then_echoes(seen: list[str], padding: int) -> Reply:
    """An API that rejects the first request's token, then answers the retry with every
    Authorization it was sent (the first token may still be good elsewhere: an API that
    rejects it need not have revoked it), padded to `padding` bytes."""

    def answer(request: Any) -> bytes:
        seen.append(request.header("Authorization") or "")
        if len(seen) == 1:
            status, body = "401 Unauthorized", b'{"error": "invalid_token"}'
        else:
            status, body = "200 OK", json.dumps({"sent": seen, "padding": "x" * padding}).encode()
        return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode() + body

    return Reply(raw=answer)


def test_a_retrys_answer_hides_the_rejected_token_too_and_arrives_whole(
    vault_home: Path, authorization: AuthorizationServer, tls_upstream: RecordingUpstream, mitmdump: StartProxy,
) -> None:
    """The retry's answer was redacted for the retry's token only, so an API that echoed the
    rejected one handed it to the client; and one past stream_large_bodies was streamed into
    the replay, which kept nothing of it: the client got an empty 200."""
    client_credentials(vault_home, authorization)
    seen: list[str] = []
    tls_upstream.route("/v1/echo", rejects_the_first_then_echoes(seen, padding=4096))
    proxy = start(mitmdump, vault_home, stream_large_bodies=STREAM_ABOVE)
    answer = proxy.requests_session().get(tls_upstream.url_for("api.example.com") + "/v1/echo",
                                          headers={"Authorization": "Bearer <<vault:billing>>"}, timeout=TIMEOUT)
    assert answer.status_code == 200 and authorization.token_requests() == 2
    assert len(seen) == 2 and seen[0] != seen[1]
    assert answer.json() == {"sent": ["Bearer <<vault:billing>>"] * 2, "padding": "x" * 4096}


def test_a_websocket_handshake_the_api_rejects_is_not_sent_again(
    vault_home: Path, authorization: AuthorizationServer, tls_upstream: RecordingUpstream, mitmdump: StartProxy,
) -> None:
    """mitmproxy knows a WebSocket only once its 101 came: a rejected handshake was sent again,
    and the replay's 101 left the client's connection a raw relay. Its rejection goes to the
    client, as docs/freshness.md says."""
    client_credentials(vault_home, authorization)
    seen: list[str] = []
    tls_upstream.route("/v1/socket", rejects_the_first_then_echoes(seen, padding=0))
    proxy = start(mitmdump, vault_home)
    answer = proxy.requests_session().get(
        tls_upstream.url_for("api.example.com") + "/v1/socket", timeout=TIMEOUT,
        headers={"Authorization": "Bearer <<vault:billing>>", "Connection": "Upgrade", "Upgrade": "websocket",
                 "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
    )
    assert answer.status_code == 401 and len(seen) == 1 and authorization.token_requests() == 1


def test_a_hostile_token_endpoints_error_text_is_quoted_wherever_it_goes(
    vault_home: Path, tls_upstream: RecordingUpstream, mitmdump: StartProxy,
) -> None:
    """A token endpoint's `error` and `error_description` went as they came into the client's
    502 (a placeholder there was not neutralised), the proxy's console (a forged line, a
    terminal escape) and token-status.json. Now each is quoted (vaultcore/peertext.py)."""
    Vault(vault_home).set("billing.client_secret", CLIENT_SECRET, hosts=["auth.example.com"])
    token_source(vault_home, tls_upstream.port)
    forged = "\r\n[12:00:00.000] vaultproxy: resolved GET api.example.com/forged [billing]\n"
    tls_upstream.route("/oauth/token", Reply(status=400, body=json.dumps({
        "error": "invalid_client\x1b]0;title\x07", "error_description": f"send X-Key: <<vault:prod_db>>{forged}\x1b[2J",
    }).encode()))
    proxy = start(mitmdump, vault_home)
    answer = proxy.requests_session().get(tls_upstream.url_for("api.example.com") + "/v1/x", timeout=TIMEOUT,
                                          headers={"Authorization": "Bearer <<vault:billing>>"})
    assert answer.status_code == 502 and answer.headers["X-Vaultproxy-Error"] == "token_refused"
    assert "<<blocked-vault:prod_db>>" in answer.text and "<<vault:prod_db>>" not in answer.text
    shown = [answer.text, proxy.output(), (vault_home / "token-status.json").read_text()]
    assert not any("\x1b" in text or "\r" in text for text in shown)
    assert not any(line.startswith("[12:00:00.000]") for line in proxy.output().splitlines())


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
# `/`, `+`, `=` are percent-encoded; authlib's Basic header holds `ä` and `§` as latin-1 bytes
@pytest.mark.parametrize("secret", ["FAKE-cs/e2e+7a1==", "FAKE-cs/e2e+7ä1§=="], ids=["ASCII secret", "non-ASCII secret"])
def test_a_token_endpoint_whose_error_quotes_the_request_shows_no_credential(
    vault_home: Path, authorization: AuthorizationServer, api: ResourceServer, mitmdump: StartProxy, auth_method: str, secret: str,
) -> None:
    """A token endpoint whose error quotes the request it refused hands back what was sent:
    the refresh token percent-encoded (the form body), the client secret percent-encoded (the
    form, client_secret_post) or in base64 with the client id (the Basic header). The mint's
    error was cleaned of the raw values only, and it goes to the client's 502, the proxy's log
    and token-status.json. The checks name what leaked where, never the value. A secret with
    a non-ASCII character: authlib's Basic header is base64 of its latin-1 bytes, which the
    cleaning missed when it looked for the base64 of the UTF-8 ones."""
    refresh = "FAKE-rt/Zx9+Qw==e2e-never-issued"
    authorization.quote_requests_in_errors = True
    authorization.add_client(CLIENT_ID, secret, auth_method=auth_method)
    vault = Vault(vault_home)
    vault.set("billing.client_secret", secret, hosts=["auth.example.com"])
    vault.set("billing.refresh_token", refresh, hosts=["auth.example.com"])
    token_source(vault_home, authorization.port, grant="refresh_token", refresh_token="billing.refresh_token", auth_method=auth_method)
    proxy = start(mitmdump, vault_home)

    refused = call(proxy.requests_session(), api)
    assert refused.status_code == 502 and refused.headers["X-Vaultproxy-Error"] == "token_refused"
    assert authorization.token_requests() == 1 and api.requests == 0
    shown = {
        "the client's 502": refused.text, "the proxy's output": proxy.output(), "the audit log": audit_text(vault_home),
        "token-status.json": (vault_home / "token-status.json").read_text(),
    }
    forms = {
        "client secret": value_forms(secret), "refresh token": value_forms(refresh),
        "Basic credential": value_forms(f"{CLIENT_ID}:{secret}"),
        "Basic credential, latin-1 (as authlib sends it)": value_forms(f"{CLIENT_ID}:{secret}".encode("latin-1")),
    }
    leaks = [(where, what) for where, text in shown.items() for what, each in forms.items() if any(form in text.encode() for form in each)]
    assert leaks == []
    # The server's words stay, its error code and its quote of the request, with what was cut named
    # (booleans: a failure prints no text that could hold a value).
    client_auth = "Authorization: Basic [redacted Basic credential of billing.client_secret]" if auth_method == "client_secret_basic" else "client_secret=[redacted billing.client_secret]"
    kept = [
        "the token endpoint refused: invalid_grant (could not accept request body 'grant_type=refresh_token&" in refused.text,
        "refresh_token=[redacted billing.refresh_token]" in refused.text, client_auth in refused.text,
        oauth.NOT_SHOWN in refused.text,  # whole forms are cut, and the server's words shown
    ]
    assert kept == [True, True, True, False]
    named = "invalid_grant" in token_status(vault_home)["error"]
    assert named
