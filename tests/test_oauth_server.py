"""The loopback OAuth 2.0 servers of tests/support/oauth_server.py, checked directly with
requests (no proxy): the token minting tests rely on them refusing what a real
authorization server refuses, and on their counts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.support.oauth_server import AuthorizationServer, ResourceServer
from tests.support.tls import TLSMaterial

SECRET = "FAKE-oauth-client-secret-3d9a"


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # never a proxy from the environment
        yield session


@pytest.fixture
def auth() -> Iterator[AuthorizationServer]:
    with AuthorizationServer() as server:
        server.add_client("svc", SECRET)
        server.add_client("poster", SECRET, auth_method="client_secret_post")
        yield server


def mint(http: requests.Session, server: AuthorizationServer, client_id: str = "svc", secret: str = SECRET, *,
         post: bool = False, verify: bool | str = True, **form: str) -> requests.Response:
    """A token request, authenticating with HTTP Basic or (post=True) in the form."""
    if post:
        return http.post(server.token_url, data={**form, "client_id": client_id, "client_secret": secret}, timeout=10, verify=verify)
    return http.post(server.token_url, data=form, auth=(client_id, secret), timeout=10, verify=verify)


def refresh(http: requests.Session, server: AuthorizationServer, refresh_token: str) -> requests.Response:
    return mint(http, server, grant_type="refresh_token", refresh_token=refresh_token)


def error_of(answer: requests.Response) -> tuple[int, str]:
    return answer.status_code, answer.json()["error"]


def test_client_credentials_with_basic(http: requests.Session, auth: AuthorizationServer) -> None:
    answer = mint(http, auth, grant_type="client_credentials", scope="read")
    assert answer.status_code == 200
    token: dict[str, Any] = answer.json()
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3600 and token["scope"] == "read"
    assert "refresh_token" not in token
    assert answer.headers["Cache-Control"] == "no-store"
    assert auth.introspect(token["access_token"]) == {"client_id": "svc", "scope": "read"}
    assert auth.introspect("not-a-token") is None
    # a proxy keeps the name it was asked for: plain HTTP on loopback is accepted whatever Host says
    named = http.post(auth.token_url, data={"grant_type": "client_credentials"}, auth=("svc", SECRET),
                      headers={"Host": "auth.example.com"}, timeout=10)
    assert named.status_code == 200
    assert auth.auth_methods_seen() == ["client_secret_basic"] * 2
    assert (auth.token_requests(), auth.token_requests("client_credentials"), auth.token_requests("refresh_token")) == (2, 2, 0)


def test_client_credentials_with_post(http: requests.Session, auth: AuthorizationServer) -> None:
    answer = mint(http, auth, "poster", post=True, grant_type="client_credentials", audience="https://api.example.com")
    assert answer.status_code == 200
    assert answer.json()["scope"] == "read write"  # no scope asked: all of the client's
    assert auth.introspect(answer.json()["access_token"]) == {"client_id": "poster", "scope": "read write"}
    assert auth.last_form() == {"grant_type": "client_credentials", "client_id": "poster", "audience": "https://api.example.com"}
    # a client registered for client_secret_post may not use Basic
    assert error_of(mint(http, auth, "poster", grant_type="client_credentials")) == (401, "invalid_client")
    assert auth.auth_methods_seen() == ["client_secret_post", "client_secret_basic"]


def test_scope_is_limited_to_the_clients(http: requests.Session, auth: AuthorizationServer) -> None:
    assert mint(http, auth, grant_type="client_credentials", scope="read admin").json()["scope"] == "read"
    assert error_of(mint(http, auth, grant_type="client_credentials", scope="admin")) == (400, "invalid_scope")


def test_wrong_secret_and_revoked_client_are_invalid_client(http: requests.Session, auth: AuthorizationServer) -> None:
    assert error_of(mint(http, auth, secret="FAKE-wrong", grant_type="client_credentials")) == (401, "invalid_client")
    assert error_of(mint(http, auth, "poster", "FAKE-wrong", post=True, grant_type="client_credentials")) == (401, "invalid_client")
    assert mint(http, auth, grant_type="client_credentials").status_code == 200
    kept = mint(http, auth, "poster", post=True, grant_type="client_credentials").json()["access_token"]
    auth.revoke_client("svc")
    auth.revoke_client("poster")
    assert error_of(mint(http, auth, grant_type="client_credentials")) == (401, "invalid_client")
    assert error_of(mint(http, auth, "poster", post=True, grant_type="client_credentials")) == (401, "invalid_client")
    assert auth.introspect(kept) is not None  # issued tokens stay until they expire...
    auth.revoke_client("poster", revoke_tokens=True)
    assert auth.introspect(kept) is None  # ...unless revoked with the client
    assert auth.token_requests("client_credentials") == 6  # failed requests count too


def test_refresh_rotates(http: requests.Session, auth: AuthorizationServer) -> None:
    first = auth.issue_refresh_token("svc", scope="read write")
    answer = refresh(http, auth, first)
    assert answer.status_code == 200
    token = answer.json()
    assert token["scope"] == "read write" and token["expires_in"] == 3600
    second = token["refresh_token"]
    assert second != first
    assert not auth.refresh_token_valid(first) and auth.refresh_token_valid(second)
    assert auth.introspect(token["access_token"]) == {"client_id": "svc", "scope": "read write"}

    assert error_of(refresh(http, auth, first)) == (400, "invalid_grant")  # rotated away
    assert error_of(refresh(http, auth, "FAKE-unknown-refresh-token")) == (400, "invalid_grant")

    narrower = mint(http, auth, grant_type="refresh_token", refresh_token=second, scope="read").json()
    assert narrower["scope"] == "read"
    assert auth.introspect(token["access_token"]) is None  # the grant's old access token is revoked
    assert auth.introspect(narrower["access_token"]) == {"client_id": "svc", "scope": "read"}
    assert mint(http, auth, grant_type="refresh_token", refresh_token=narrower["refresh_token"]).json()["scope"] == "read write"
    assert auth.token_requests("refresh_token") == 5
    assert auth.last_form()["refresh_token"] == narrower["refresh_token"]


def test_a_refresh_token_is_used_once_even_concurrently(http: requests.Session, auth: AuthorizationServer) -> None:
    shared = auth.issue_refresh_token("svc")
    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(lambda _: refresh(http, auth, shared).status_code, range(8)))
    assert statuses == [200] + [400] * 7
    assert auth.token_requests("refresh_token") == 8


def test_refresh_token_belongs_to_its_client(http: requests.Session, auth: AuthorizationServer) -> None:
    theirs = auth.issue_refresh_token("poster")
    assert error_of(refresh(http, auth, theirs)) == (400, "invalid_grant")
    assert auth.refresh_token_valid(theirs)


def test_refresh_without_rotation(http: requests.Session) -> None:
    with AuthorizationServer(rotate_refresh_tokens=False) as auth:
        auth.add_client("svc", SECRET)
        kept = auth.issue_refresh_token("svc")
        tokens = [refresh(http, auth, kept).json() for _ in range(2)]
        assert all("refresh_token" not in token and token["scope"] == "read" for token in tokens)
        assert auth.refresh_token_valid(kept)
        assert all(auth.introspect(token["access_token"]) for token in tokens)


def test_tokens_expire(http: requests.Session, auth: AuthorizationServer) -> None:
    lasting = mint(http, auth, grant_type="client_credentials").json()["access_token"]
    auth.token_lifetime = 1
    answer = mint(http, auth, grant_type="client_credentials").json()
    assert answer["expires_in"] == 1
    assert auth.introspect(answer["access_token"]) is not None
    time.sleep(1.1)
    assert auth.introspect(answer["access_token"]) is None
    assert auth.introspect(lasting) is not None
    auth.expire_access_tokens()
    assert auth.introspect(lasting) is None
    auth.token_lifetime = 3600
    assert auth.introspect(mint(http, auth, grant_type="client_credentials").json()["access_token"]) is not None


def test_concurrent_requests_are_all_counted(http: requests.Session, auth: AuthorizationServer) -> None:
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: mint(http, auth, grant_type="client_credentials").status_code, range(40)))
    assert statuses == [200] * 40
    assert auth.token_requests() == 40 and len(auth.auth_methods_seen()) == 40


def test_resource_server(http: requests.Session, auth: AuthorizationServer) -> None:
    token = mint(http, auth, grant_type="client_credentials", scope="read").json()["access_token"]
    with ResourceServer(auth) as api:
        assert api.url == f"http://127.0.0.1:{api.port}"
        ok = http.get(f"{api.url}/v1/things?x=1", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert ok.status_code == 200
        assert ok.json() == {"client_id": "svc", "scope": "read", "path": "/v1/things"}
        posted = http.post(f"{api.url}/v1/things", data=b"{}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert posted.status_code == 200

        refused = [
            http.get(f"{api.url}/v1/things", headers=headers, timeout=10)
            for headers in ({}, {"Authorization": "Bearer FAKE-unknown"}, {"Authorization": f"Basic {token}"})
        ]
        auth.expire_access_tokens()
        refused.append(http.get(f"{api.url}/v1/things", headers={"Authorization": f"Bearer {token}"}, timeout=10))
        for answer in refused:
            assert answer.status_code == 401
            assert answer.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
            assert answer.json()["error"] == "invalid_token"
        assert (api.requests, api.rejected) == (6, 4)
        assert api.tokens_seen == [token, token, "FAKE-unknown", token]


def test_over_tls(http: requests.Session, tls_material: TLSMaterial) -> None:
    ca = str(tls_material.ca_cert)
    with AuthorizationServer(tls_material) as auth, ResourceServer(auth, tls_material) as api:
        auth.add_client("svc", SECRET)
        assert auth.token_url.startswith("https://127.0.0.1:") and auth.token_url.endswith("/oauth/token")
        token = mint(http, auth, verify=ca, grant_type="client_credentials").json()["access_token"]
        answer = http.get(f"{api.url}/data", headers={"Authorization": f"Bearer {token}"}, verify=ca, timeout=10)
        assert answer.json() == {"client_id": "svc", "scope": "read write", "path": "/data"}
        with pytest.raises(requests.exceptions.SSLError):
            http.get(f"{api.url}/data", timeout=10)  # the test CA is not trusted by default: really TLS
