"""OAuth 2.0 token sources: access tokens the proxy mints, so that a client holds nothing
but a placeholder. Pure: the sources file in, dataclasses out; and when a token is due.

The sources live in `$VAULTPROXY_HOME/tokens.yaml`, shareable like a configuration: they name
vault keys, never values. `<<vault:NAME>>` resolves to the source's current access token and
`<<vault:NAME.token_type>>` to its type ("Bearer"), under the source's own hosts and origins
rules; its client secret and refresh token are vault keys (local or a provider's) that must be
allowed for the token endpoint's host, like any secret for the host it goes to.

    tokens:
      - name: billing_api
        hosts: [api.billing.example]            # where the access token may go
        token_url: https://auth.billing.example/oauth/token
        grant: client_credentials               # or refresh_token
        client_id: vaultproxy-dev               # not a secret
        client_secret: billing.client_secret    # a vault key
        refresh_token: billing.refresh_token    # refresh_token grant: a local secret, rewritten on rotation
        auth_method: client_secret_basic        # or client_secret_post
        scope: "invoices:read"
        audience: https://api.billing.example
        refresh_on: [401]                       # default: a 401 mints a new token and retries once
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from vaultcore.index import Destination, Secret, SecretIndex
from vaultcore.profiles import read_statuses
from vaultcore.rulefiles import ANY_HOST, NodeReader, load_named, parse_named

TOKENS_FILE = "tokens.yaml"
GRANTS = ("client_credentials", "refresh_token")
AUTH_METHODS = ("client_secret_basic", "client_secret_post")
TOKEN_TYPE_FIELD = "token_type"
# A token is renewed this share of its lifetime before it expires (at most a minute early), so
# that a request never leaves with one that runs out on its way.
EARLY_SHARE = 0.1
EARLY_CAP_SECONDS = 60.0


class TokenSourceError(ValueError):
    """A tokens.yaml that cannot be used: names the file, the line and the field."""


@dataclass(frozen=True)
class TokenSource:
    name: str
    hosts: tuple[str, ...]
    token_url: str
    client_id: str
    client_secret: str  # vault keys
    refresh_token: str | None = None
    grant: str = "client_credentials"
    auth_method: str = "client_secret_basic"
    scope: str | None = None
    audience: str | None = None
    origins: tuple[str, ...] = ()
    refresh_on: tuple[int, ...] = (401,)

    def credential_keys(self) -> list[str]:
        """The vault keys sent to the token endpoint."""
        return [self.client_secret] + ([self.refresh_token] if self.refresh_token else [])

    def endpoint(self, *, verified: bool = True) -> Destination:
        """Where the credentials go: the token endpoint, checked like any request's host
        (`verified`: whether its certificate is)."""
        parts = urlsplit(self.token_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return Destination(parts.hostname or "", parts.scheme, port=port, verified=verified)

    def keys(self) -> tuple[str, str]:
        """The placeholders the source answers: its access token and its type."""
        return self.name, f"{self.name}.{TOKEN_TYPE_FIELD}"


@dataclass(frozen=True)
class Token:
    """An access token as minted: it goes out until `renew_at`, and never after `expires_at`."""

    access_token: str = field(repr=False)
    token_type: str
    issued_at: float
    expires_at: float  # infinity when the server gave no expires_in
    scope: str | None = None

    @classmethod
    def issued(cls, access_token: str, token_type: str, expires_in: float | None, at: float, scope: str | None = None) -> Token:
        return cls(access_token, token_type, at, at + expires_in if expires_in is not None else math.inf, scope)

    @property
    def renew_at(self) -> float:
        lifetime = self.expires_at - self.issued_at
        return self.expires_at - min(lifetime * EARLY_SHARE, EARLY_CAP_SECONDS)

    def usable(self, at: float) -> bool:
        return at < self.renew_at



def source_secrets(source: TokenSource, token: Token | None) -> list[Secret]:
    """A source's placeholders as the index holds them, under the source's rules. The index
    answers MINT_NEEDED (index.py) for them until a token is minted and from its `renew_at`
    on, so that the proxy mints first and no expired token ever leaves."""
    value, kind, until = (token.access_token, token.token_type, token.renew_at) if token else ("", "", -math.inf)
    origin = f"oauth:{source.name}"
    access, token_type = source.keys()
    return [
        Secret(access, value, source.hosts, source.origins, origin, until),
        Secret(token_type, kind, source.hosts, source.origins, origin, until),
    ]


def reserved_credentials(sources: Iterable[TokenSource], index: SecretIndex) -> list[Secret]:
    """Each source's client secret and refresh token as requests see them: refused. Their
    hosts rule names the token endpoint, for the proxy's mint; a client that sent them there
    itself would get a token back in clear (no value of its request, so nothing redacts it),
    and a rotating refresh token would be spent."""
    return [
        dataclasses.replace(secret, mint_only=source.name)
        for source in sources for key in source.credential_keys() if (secret := index.get(key)) is not None
    ]


def load_sources(home: Path) -> tuple[TokenSource, ...]:
    """The token sources of `home`'s tokens.yaml; none when there is no such file."""
    return load_named(home / TOKENS_FILE, "tokens", read_source, TokenSourceError)


def parse_sources(text: str, source: str) -> tuple[TokenSource, ...]:
    return parse_named(text, source, "tokens", read_source, TokenSourceError)


def read_source(reader: NodeReader, node: yaml.Node, field: str) -> TokenSource:
    fields = (
        "name", "hosts", "origins", "token_url", "grant", "client_id", "client_secret", "refresh_token",
        "auth_method", "scope", "audience", "refresh_on", ANY_HOST,
    )
    e = reader.mapping(node, field, fields, required=("name", "hosts", "token_url", "client_id", "client_secret"))
    name = reader.key(e["name"], f"{field}.name")
    if "." in name:
        raise reader.error(e["name"], f"{field}.name", f"must not contain a dot ({name}.{TOKEN_TYPE_FIELD} is the token's type)")
    grant = reader.choice(e["grant"], f"{field}.grant", GRANTS) if "grant" in e else "client_credentials"
    if grant == "refresh_token" and "refresh_token" not in e:
        raise reader.error(node, f"{field}.refresh_token", "missing: the refresh_token grant needs the vault key of the refresh token")
    optional = {name: reader.string(e[name], f"{field}.{name}") for name in ("scope", "audience") if name in e}
    any_host = reader.flag(e[ANY_HOST], f"{field}.{ANY_HOST}") if ANY_HOST in e else False
    return TokenSource(
        name=name,
        hosts=reader.hosts(e["hosts"], f"{field}.hosts", any_host=any_host),
        token_url=reader.string(e["token_url"], f"{field}.token_url", check_token_url),
        client_id=reader.string(e["client_id"], f"{field}.client_id"),
        client_secret=reader.key(e["client_secret"], f"{field}.client_secret"),
        refresh_token=reader.key(e["refresh_token"], f"{field}.refresh_token") if "refresh_token" in e else None,
        grant=grant,
        auth_method=reader.choice(e["auth_method"], f"{field}.auth_method", AUTH_METHODS) if "auth_method" in e else "client_secret_basic",
        origins=reader.origins(e["origins"], f"{field}.origins", any_host=any_host) if "origins" in e else (),
        refresh_on=read_statuses(e["refresh_on"], f"{field}.refresh_on", reader.error) if "refresh_on" in e else (401,),
        **optional,
    )


def check_token_url(value: str) -> None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (one out of range, or no number, raises here, not at the first mint)
    except ValueError as e:
        raise ValueError(f"must be an http(s) URL such as https://auth.example.com/oauth/token ({e}; got {value!r})") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL such as https://auth.example.com/oauth/token (got {value!r})")
    if parts.username or parts.password:
        raise ValueError("must not hold credentials: name the client secret's vault key in client_secret")
