"""A real OAuth 2.0 authorization server and a resource server on loopback, for the token
minting tests.

`AuthorizationServer` is authlib's server side (`AuthorizationServer` on Flask, with its
`ClientCredentialsGrant` and `RefreshTokenGrant`), not a hand-written token endpoint: client
authentication, grant and scope checks and the error responses are authlib's own. Only the
storage is ours, in memory, so a test can look at it: how many token requests came (failed
ones too), which client authentication method each used, the last form, whether a token is
still good. Refresh tokens rotate (the old refresh token and the access tokens of its grant
are revoked) unless told not to; expiry is real time. `quote_requests_in_errors` makes its
error answers quote the request they refuse, as some servers do: a hostile or careless
token endpoint that hands the credentials sent back in its error text.

`ResourceServer` is an API behind authlib's `ResourceProtector`: 200 for a current bearer
token of that authorization server, 401 with `WWW-Authenticate: Bearer error="invalid_token"`
otherwise, recording each token it was shown (the test's own record, never printed).

Both serve on 127.0.0.1 only, over HTTP or (given TLSMaterial) HTTPS, without request logs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import itertools
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace, TracebackType
from typing import Any

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import (
    AuthorizationServer as FlaskAuthorizationServer,
)
from authlib.integrations.flask_oauth2 import ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, InvalidScopeError, TokenMixin
from authlib.oauth2.rfc6749.authenticate_client import authenticate_client_secret_basic
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant, RefreshTokenGrant
from authlib.oauth2.rfc6750 import (
    BearerTokenGenerator,
    BearerTokenValidator,
    InvalidTokenError,
)
from flask import Flask, Response, json, jsonify, request
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from .net import LOOPBACK
from .tls import TLSMaterial

TOKEN_PATH = "/oauth/token"
AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
RESOURCE_OWNER = "resource-owner"  # the user who "authorized" the client for issue_refresh_token
SHUTDOWN_POLL = 0.05  # how often serve_forever checks for shutdown(): keeps teardown quick
HTTP_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def _scopes(scope: str | None) -> list[str]:
    return (scope or "").split()


@dataclass
class _Client(ClientMixin):
    """A registered confidential client; `revoked` makes every authentication fail."""

    client_id: str
    client_secret: str = field(repr=False)
    auth_method: str
    scope: str
    grant_types: tuple[str, ...]
    revoked: bool = False

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        """The requested scopes this client may have, or all of its scopes if none was asked.

        authlib 1.9 calls this even without a requested scope (None means invalid_scope),
        1.6 only with one; `_Tokens` calls it in both, so the result must be stable when
        fed back: an empty intersection is invalid_scope rather than "" (which would then
        widen to every scope).
        """
        if not scope:
            return self.scope
        allowed = set(_scopes(self.scope))
        granted = [s for s in _scopes(scope) if s in allowed]
        if not granted:
            raise InvalidScopeError()
        return " ".join(granted)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return not self.revoked and secrets.compare_digest(self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """Only the registered method (RFC 7591 token_endpoint_auth_method), as real servers do."""
        return method == self.auth_method if endpoint == "token" else True

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class _AccessToken(TokenMixin):
    value: str = field(repr=False)
    client_id: str
    scope: str
    issued_at: float
    expires_in: int
    family: int | None  # the refresh token grant it came from, if any
    revoked: bool = False
    expired: bool = False  # forced by expire_access_tokens()

    def check_client(self, client: ClientMixin) -> bool:
        return self.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return self.expired or time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> str | None:
        return RESOURCE_OWNER if self.family is not None else None


@dataclass
class _RefreshToken(TokenMixin):
    value: str = field(repr=False)
    client_id: str
    scope: str
    family: int
    revoked: bool = False

    def check_client(self, client: ClientMixin) -> bool:
        return self.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return 0

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> str:
        return RESOURCE_OWNER


class _Tokens(BearerTokenGenerator):
    """authlib's bearer token generator, with `expires_in` read from the server at issue time
    and the scope always resolved by the client (authlib 1.6 skips that without a scope)."""

    def __init__(self, lifetime: Callable[[], int]) -> None:
        super().__init__(
            access_token_generator=lambda **_: generate_token(42),
            refresh_token_generator=lambda **_: generate_token(48),
            expires_generator=lambda client, grant_type: lifetime(),
        )

    def generate(
        self, grant_type: str, client: _Client, user: str | None = None, scope: str | None = None,
        expires_in: int | None = None, include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        scope = client.get_allowed_scope(scope)
        return super().generate(grant_type, client, user, scope, expires_in, include_refresh_token)


class _Authlib(FlaskAuthorizationServer):
    """authlib's Flask authorization server, knowing the AuthorizationServer that stores for it."""

    owner: AuthorizationServer


class _ClientCredentials(ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS


class _Refresh(RefreshTokenGrant):
    """authlib's refresh grant over our storage; rotation is the owner's setting."""

    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    server: _Authlib
    _issued: _AccessToken | None = None
    _rotated = False

    @property
    def INCLUDE_NEW_REFRESH_TOKEN(self) -> bool:  # authlib's name
        return self.server.owner.rotate_refresh_tokens

    def authenticate_refresh_token(self, refresh_token: str) -> _RefreshToken | None:
        found = self.server.owner._refresh_token(refresh_token)
        return found if found is not None and not found.is_revoked() else None

    def authenticate_user(self, refresh_token: _RefreshToken) -> str:
        return refresh_token.get_user()

    def save_token(self, token: dict[str, Any]) -> None:
        old: _RefreshToken = self.request.refresh_token
        self._issued = self.server.owner._store(token, old.client_id, old.family, old.scope)
        self._rotated = "refresh_token" in token

    def revoke_old_credential(self, refresh_token: _RefreshToken) -> None:
        if self._rotated:
            self.server.owner._revoke_family(refresh_token, keep=self._issued)


def _client_secret_basic(query_client: Callable[[str], _Client | None], oauth_request: Any) -> _Client | None:
    """authlib's client_secret_basic, reading the Basic credential as authlib's client writes
    it: `client_id:client_secret` in latin-1 (its server reads UTF-8 only, and answers any
    other non-ASCII byte with a 500, UnicodeDecodeError). UTF-8 is still read as such."""
    scheme, _, credential = oauth_request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            raw = base64.b64decode(credential.strip())
        except (binascii.Error, ValueError):
            raw = b""  # authlib's own function says no to it
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            utf8 = base64.b64encode(raw.decode("latin-1").encode("utf-8")).decode("ascii")
            oauth_request = SimpleNamespace(headers={"Authorization": f"Basic {utf8}"})
    return authenticate_client_secret_basic(query_client, oauth_request)


class _QuietHandler(WSGIRequestHandler):
    """No request or error lines on the test output."""

    def log(self, type: str, message: str, *args: Any) -> None:
        pass


class _Server(ThreadedWSGIServer):
    """werkzeug's threaded server (what make_server(threaded=True) builds) with a deep backlog:
    a burst of hundreds of connections must not be refused."""

    request_queue_size = 512


class _Serving:
    """A Flask app on 127.0.0.1 at a free port, in a daemon thread; stopped on exit."""

    _server: _Server
    _thread: threading.Thread
    _tls: TLSMaterial | None

    def _serve(self, app: Flask) -> None:
        context = self._tls.server_context() if self._tls is not None else None
        self._server = _Server(LOOPBACK, 0, app, handler=_QuietHandler, ssl_context=context)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(SHUTDOWN_POLL,), daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return f"{'https' if self._tls is not None else 'http'}://{LOOPBACK}:{self.port}"

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)
        self._server.server_close()


def _loopback_host(app: Callable[..., Any]) -> Callable[..., Any]:
    """WSGI middleware: the Host header becomes the listening address.

    authlib refuses plain-HTTP requests unless the URL (built from Host) is loopback; the
    socket is 127.0.0.1 whatever Host says, and a proxy keeps the name it was asked for
    (api.example.com mapped to loopback), so the check looks at the real address instead.
    """

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ["HTTP_HOST"] = f"{environ['SERVER_NAME']}:{environ['SERVER_PORT']}"
        return app(environ, start_response)

    return wsgi


class AuthorizationServer(_Serving):
    """A real OAuth 2.0 authorization server (authlib's server components) on loopback.

    Token endpoint at `token_url`: client_credentials and refresh_token grants, confidential
    clients authenticating with client_secret_basic or client_secret_post (each client only
    with the method it was registered with). `token_lifetime` may be changed at any time and
    applies to tokens issued afterwards.
    """

    def __init__(
        self, tls: TLSMaterial | None = None, *, token_lifetime: int = 3600, rotate_refresh_tokens: bool = True,
        quote_requests_in_errors: bool = False,
    ) -> None:
        self._tls = tls
        self.token_lifetime = token_lifetime
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.quote_requests_in_errors = quote_requests_in_errors
        self._lock = threading.Lock()
        self._endpoint = threading.Lock()  # one token request at a time: a refresh token is used once
        self._clients: dict[str, _Client] = {}
        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._families = itertools.count(1)
        self._requests: Counter[str] = Counter()
        self._methods: list[str] = []
        self._last_form: dict[str, str] = {}

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    def __enter__(self) -> AuthorizationServer:
        app = Flask("oauth_authorization_server")
        server = _Authlib(app, query_client=self._clients.get, save_token=self._save_token)
        server.owner = self
        server.register_token_generator("default", _Tokens(lambda: self.token_lifetime))
        server.register_grant(_ClientCredentials)
        server.register_grant(_Refresh)
        server.register_client_auth_method("client_secret_basic", _client_secret_basic)

        @app.post(TOKEN_PATH)
        def token() -> Response:
            sent = request.get_data(cache=True).decode()  # the form as it came, before authlib parses it
            self._record()
            with self._endpoint:
                answer = server.create_token_response()
            return self._quoting(answer, sent) if self.quote_requests_in_errors else answer

        app.wsgi_app = _loopback_host(app.wsgi_app)  # type: ignore[method-assign]
        self._serve(app)
        return self

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Token requests wait (counted already) until this ends: a mint kept in flight."""
        with self._endpoint:
            yield

    def _record(self) -> None:
        """Count the token request and note how the client authenticated, before authlib looks."""
        basic = request.headers.get("Authorization", "").lower().startswith("basic ")
        post = "client_secret" in request.form
        method = "+".join(name for name, used in zip(AUTH_METHODS, (basic, post)) if used) or "none"
        with self._lock:
            self._requests[request.form.get("grant_type", "")] += 1
            self._methods.append(method)
            self._last_form = {key: value for key, value in request.form.items() if key != "client_secret"}

    def _quoting(self, answer: Response, sent: str) -> Response:
        """An error answer whose error_description quotes the refused request: its form body
        as sent (percent-encoded) and its Authorization header (a Basic credential in base64)."""
        if answer.status_code < 400:
            return answer
        error = answer.get_json()
        error["error_description"] = f"could not accept request body {sent!r}; Authorization: {request.headers.get('Authorization', '')}"
        answer.set_data(json.dumps(error))
        return answer

    def _save_token(self, token: dict[str, Any], oauth_request: Any) -> None:
        """authlib's save_token for grants without a refresh token (client_credentials)."""
        self._store(token, oauth_request.client.get_client_id(), None, None)

    def _store(self, token: dict[str, Any], client_id: str, family: int | None, refresh_scope: str | None) -> _AccessToken:
        access = _AccessToken(
            token["access_token"], client_id, token.get("scope", ""), time.time(),
            int(token.get("expires_in", 0)), family,
        )
        with self._lock:
            self._access[access.value] = access
            if "refresh_token" in token and family is not None:
                self._refresh[token["refresh_token"]] = _RefreshToken(token["refresh_token"], client_id, refresh_scope or "", family)
        return access

    def _revoke_family(self, refresh_token: _RefreshToken, keep: _AccessToken | None) -> None:
        """Rotation: the used refresh token, and every access token of its grant but the new one."""
        with self._lock:
            refresh_token.revoked = True
            for access in self._access.values():
                if access.family == refresh_token.family and access is not keep:
                    access.revoked = True

    def _refresh_token(self, value: str) -> _RefreshToken | None:
        with self._lock:
            return self._refresh.get(value)

    def _access_token(self, value: str) -> _AccessToken | None:
        with self._lock:
            return self._access.get(value)

    def add_client(
        self, client_id: str, client_secret: str, *, auth_method: str = "client_secret_basic", scope: str = "read write",
        grant_types: Sequence[str] = ("client_credentials", "refresh_token"),
    ) -> None:
        if auth_method not in AUTH_METHODS:
            raise ValueError(f"auth_method must be one of {AUTH_METHODS}")
        with self._lock:
            self._clients[client_id] = _Client(client_id, client_secret, auth_method, scope, tuple(grant_types))

    def revoke_client(self, client_id: str, *, revoke_tokens: bool = False) -> None:
        """Its token requests fail with invalid_client (401) from now on. Tokens already issued
        stay good until they expire unless `revoke_tokens`."""
        with self._lock:
            self._clients[client_id].revoked = True
            if revoke_tokens:
                issued: list[_AccessToken | _RefreshToken] = [*self._access.values(), *self._refresh.values()]
                for credential in issued:
                    if credential.client_id == client_id:
                        credential.revoked = True

    def issue_refresh_token(self, client_id: str, scope: str = "read") -> str:
        """A refresh token as if a user had authorized the client earlier (a new grant)."""
        value = generate_token(48)
        with self._lock:
            if client_id not in self._clients:
                raise KeyError(f"no client {client_id!r}")
            self._refresh[value] = _RefreshToken(value, client_id, scope, next(self._families))
        return value

    def token_requests(self, grant_type: str | None = None) -> int:
        """Requests that reached the token endpoint (all, or with that grant_type), failed ones too."""
        with self._lock:
            return sum(self._requests.values()) if grant_type is None else self._requests[grant_type]

    def auth_methods_seen(self) -> list[str]:
        """Per token request, in order: client_secret_basic (an Authorization: Basic header),
        client_secret_post (client_secret in the form), both joined by "+", or "none"."""
        with self._lock:
            return list(self._methods)

    def last_form(self) -> dict[str, str]:
        """The last token request's form fields, without client_secret."""
        with self._lock:
            return dict(self._last_form)

    def introspect(self, access_token: str) -> dict[str, str] | None:
        """{"client_id", "scope"} for a current access token; None if unknown, revoked or expired."""
        found = self._access_token(access_token)
        if found is None or found.is_revoked() or found.is_expired():
            return None
        return {"client_id": found.client_id, "scope": found.scope}

    def issued(self, access_token: str) -> bool:
        """Whether this server issued `access_token`, current or not (`introspect`: current only)."""
        return self._access_token(access_token) is not None

    def expire_access_tokens(self) -> None:
        """Every access token issued so far counts as expired from now on."""
        with self._lock:
            for access in self._access.values():
                access.expired = True

    def refresh_token_valid(self, refresh_token: str) -> bool:
        found = self._refresh_token(refresh_token)
        return found is not None and not found.is_revoked()


class _Validator(BearerTokenValidator):
    """Access tokens looked up in the authorization server's storage."""

    def __init__(self, authorization: AuthorizationServer) -> None:
        super().__init__()
        self.authorization = authorization

    def authenticate_token(self, token_string: str) -> _AccessToken | None:
        return self.authorization._access_token(token_string)

    def validate_token(self, token: _AccessToken | None, scopes: Any, request: Any) -> None:
        # authlib 1.6 passes extra_attributes on as a header attribute of its own
        # (`Bearer extra_attributes="{}", ...`); both versions agree on a plain InvalidTokenError.
        if token is None or token.is_expired() or token.is_revoked():
            raise InvalidTokenError()


class ResourceServer(_Serving):
    """An API on loopback that accepts only a current access token from `authorization`:
    200 with JSON {"client_id", "scope", "path"} for `Authorization: Bearer <valid token>`, else 401 with
    `WWW-Authenticate: Bearer error="invalid_token"`; it counts requests and 401s."""

    def __init__(self, authorization: AuthorizationServer, tls: TLSMaterial | None = None) -> None:
        self.authorization = authorization
        self._tls = tls
        self.requests = 0
        self.rejected = 0
        self.tokens_seen: list[str] = []
        self._lock = threading.Lock()

    def __enter__(self) -> ResourceServer:
        app = Flask("oauth_resource_server")
        protector = ResourceProtector()
        protector.register_token_validator(_Validator(self.authorization))

        @app.route("/", defaults={"path": ""}, methods=HTTP_METHODS)
        @app.route("/<path:path>", methods=HTTP_METHODS)
        def resource(path: str) -> Response:
            scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
            with self._lock:
                self.requests += 1
                if scheme.lower() == "bearer":
                    self.tokens_seen.append(credential)
            try:
                token: _AccessToken = protector.acquire_token()
            except OAuth2Error:  # missing, not Bearer, unknown, expired or revoked: all invalid_token
                with self._lock:
                    self.rejected += 1
                status, body, headers = InvalidTokenError()()
                return Response(json.dumps(body), status=status, headers=headers)
            return jsonify(client_id=token.client_id, scope=token.scope, path=request.path)

        self._serve(app)
        return self
