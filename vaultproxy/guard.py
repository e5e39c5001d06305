"""Where a request really goes, and whether that may receive a secret.

The destination is the host mitmproxy connects to (`request.host`, after every other addon
has had its say). Before the first secret goes into a request, everything else that decides
where its bytes end up must agree with that destination:

- every name the request gives for its host (Host headers, the HTTP/2 authority);
- the TLS server name mitmproxy sends upstream (and verifies the certificate against);
- in reverse mode, the name the client used to reach the proxy (DNS rebinding);
- the hops that see the request in clear text (plain HTTP, an upstream proxy, unverified TLS).

Browser requests are recognised by `Origin` (and by `Sec-Fetch-Site` or `Referer` on
navigations and no-cors loads, which carry no Origin) so that a web page cannot spend a secret.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

from mitmproxy import http
from mitmproxy.net.http import url
from mitmproxy.proxy.mode_specs import ReverseMode, UpstreamMode

from vaultcore.hostrules import resolver_name
from vaultcore.index import MINT_NEEDED, Destination, SecretIndex, check_unkeyed
from vaultcore.placeholders import (
    Budget,
    Context,
    Lookup,
    SubstitutionError,
    Text,
    contains_placeholder,
    resolve,
    resolve_each,
)


@dataclass(frozen=True)
class Settings:
    """The proxy options the hooks read on every request, rebuilt in `configure` (reading
    `ctx.options` deep-copies the value each time)."""

    keep_unknown: bool = False
    allow_plaintext: bool = False
    verify_upstream: bool = True
    max_growth: int = 2 * 1024 * 1024
    redact_responses: bool = True
    stream_large_bodies: str | None = None


def plain_name(host: str) -> str:
    """A host as names compare: no IPv6 brackets, no final dot, lower case."""
    return host.strip("[]").rstrip(".").lower()


def same_host(a: str, b: str) -> bool:
    """Whether `a` and `b` name one host: as spelled, or as the resolver sees them (an
    international name: mitmproxy holds the destination in Unicode, where clients send the
    Host header and the TLS server name in punycode)."""
    if plain_name(a) == plain_name(b):
        return True
    resolved = resolver_name(a)
    return resolved is not None and resolved == resolver_name(b)


# The header fields the guard reads, lower-cased.
_READ = frozenset({b"host", b"origin", b"sec-fetch-site", b"referer"})
# Byte values: `10 in value` is memchr, `b"\n" in value` first tries b"\n" as a byte value
# and clears a TypeError (ten times slower on a header value).
LF, CR = ord("\n"), ord("\r")


class Head(NamedTuple):
    """What the guard reads from a request's header fields, in one pass over them (a tuple:
    built for every request that holds a placeholder, at half a frozen dataclass's cost)."""

    hosts: tuple[str, ...]  # every Host header
    origin: str | None  # the web origin that made the request (`request_origin`)
    folded: bool  # some value continues on an obs-fold line

    @classmethod
    def of(cls, request: http.Request) -> Head:
        read: dict[bytes, list[str]] = {}
        folded = False
        for name, value in request.headers.fields:
            if (lowered := name.lower()) in _READ:
                read.setdefault(lowered, []).append(value.decode("utf-8", "surrogateescape"))
            folded = folded or LF in value or CR in value
        first = {name: values[0] for name, values in read.items()}
        return cls(tuple(read.get(b"host", ())), request_origin(first.get(b"origin"), first.get(b"sec-fetch-site"), first.get(b"referer")), folded)


def check_authority(request: http.Request, head: Head) -> None:
    """Secrets never go into scheme, host or port: a host name leaks through DNS before any
    check can run."""
    # One scan of the names joined by a line break, which no placeholder holds: none spans two.
    if contains_placeholder("\n".join((request.host, request.authority, *head.hosts[:1])), Context.URL):
        raise SubstitutionError(
            "placeholder_in_authority", "",
            "placeholders are only resolved in the path, query, headers and body, never in the host or port",
        )


def check_host_agrees(request: http.Request, hosts: tuple[str, ...]) -> None:
    """Every name the request gives for its host (the HTTP/2 authority and each of its Host
    headers `hosts`: an HTTP/1 upstream routes on Host even when the client spoke HTTP/2) must
    be the host the proxy connects to."""
    host, port = request.host, request.port
    default_port = 443 if request.scheme == "https" else 80
    # How clients usually write it, which needs no parsing (an IPv6 host always does).
    spelled = () if ":" in host else (f"{host}:{port}", host) if port == default_port else (f"{host}:{port}",)
    for claimed in [request.authority, *hosts]:
        if not claimed or claimed in spelled:
            continue
        try:
            claimed_host, claimed_port = url.parse_authority(claimed, check=False)
        except ValueError:
            claimed_host, claimed_port = claimed, None
        if not same_host(claimed_host, host) or (claimed_port or default_port) != port:
            raise SubstitutionError(
                "host_mismatch", "",
                f"the request names host {claimed!r} but goes to {host}:{port}; "
                "secrets are only sent where the Host header and authority agree with the destination",
            )


def check_target_is_a_path(request: http.Request) -> None:
    """The request target names no host of its own. An HTTP/2 client's `:path` is taken as
    sent, and an HTTP/1 upstream gets it in its request line, where an absolute URL
    (`https://evil.test/x`) outranks Host (RFC 9112 3.2.2): a shared front (a CDN, virtual
    hosts) would route on it. (`//x/y` is a path, RFC 9112's origin-form: an S3 key may start
    with a slash.)"""
    path = request.data.path
    if not path.startswith(b"/") and not (path == b"*" and request.method == "OPTIONS"):
        raise SubstitutionError(
            "host_mismatch", "",
            "the request target is not a path (an absolute URL); secrets are only sent in requests whose target is "
            "a path, which cannot name another host",
        )


def upstream_sni(flow: http.HTTPFlow) -> str:
    """The TLS server name the request's upstream connection uses (or will use).

    mitmproxy takes it from the client's own ClientHello inside a CONNECT tunnel, and verifies
    the upstream certificate against it, not against the destination: a client could have a
    secret for allowed.test delivered to any server holding a certificate for evil.test."""
    request, server = flow.request, flow.server_conn
    if server.address is None or (request.host, request.port) != tuple(server.address[:2]):
        return request.host  # another addon redirected it: mitmproxy opens a connection named after it
    return server.sni or flow.client_conn.sni or request.host


def check_sni(flow: http.HTTPFlow) -> None:
    if flow.request.scheme == "https" and not same_host(sni := upstream_sni(flow), flow.request.host):
        raise SubstitutionError(
            "sni_mismatch", "",
            f"the TLS server name {sni!r} is not the destination {flow.request.host!r}; "
            "secrets only ride a connection whose certificate is verified for the destination",
        )


def served_names(flow: http.HTTPFlow, configured: tuple[str, ...]) -> set[str]:
    """The host names a client may use for this proxy in reverse mode: the address it
    connected to, localhost for a loopback listener, the reverse target and `configured`."""
    names = {flow.client_conn.sockname[0], *configured}
    mode = flow.client_conn.proxy_mode
    if isinstance(mode, ReverseMode):
        names.add(mode.address[0])
    if any(n in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for n in names):
        names |= {"localhost", "127.0.0.1", "::1"}
    return {plain_name(n) for n in names}


def client_named_proxy(flow: http.HTTPFlow, client_host: str, configured: tuple[str, ...]) -> bool:
    """Whether the Host a reverse-mode client sent names this proxy (not a page's own name
    rebound to the proxy's address)."""
    try:
        host, _ = url.parse_authority(client_host, check=False)
    except ValueError:
        return False
    return plain_name(host) in served_names(flow, configured)


def request_origin(origin: str | None, site: str | None, referer: str | None) -> str | None:
    """The web origin that made a request with these `Origin`, `Sec-Fetch-Site` and
    `Referer` headers, or None for a non-browser client.

    Browsers send Origin on fetch/XHR/form posts but not on navigations or no-cors loads
    (img, script, iframe). Those carry Sec-Fetch-Site ("none" only for what the user typed or
    bookmarked), except where browsers send no fetch metadata (plain-HTTP hosts, older
    browsers): there a Referer gives the page away. Its origin, or "null", is then the
    request's origin."""
    if origin is not None:
        return origin.strip()
    if (site is not None and site.lower() == "none") or (site is None and referer is None):
        return None
    parts = urlsplit(referer or "")
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "null"


class Scope:
    """What one destination may receive, under one index and one set of settings, decided
    once and reused by every request that goes there: each key's check (host, origin and
    plaintext rules) and value, and each short text (a header value, a path) resolved whole.
    Refusals are not kept: they are rare, and raised afresh."""

    # Texts longer than this (bodies) are unlikely to come again: they are not kept.
    TEXT_MAX = 4096
    TEXTS_MAX = 1024

    def __init__(self, index: SecretIndex, destination: Destination, settings: Settings) -> None:
        self._check = index.lookup_for(destination, keep_unknown=settings.keep_unknown, allow_plaintext=settings.allow_plaintext)
        self.check_unkeyed = functools.partial(check_unkeyed, destination=destination, allow_plaintext=settings.allow_plaintext)
        self._values: dict[str, str | bytes | None] = {}
        # (text, context) -> (resolved text, its keys, how much it grew)
        self._texts: dict[tuple[bytes | str, Context], tuple[bytes | str, list[str], int]] = {}
        # (texts, context) -> (resolved texts, their keys, how much they grew, their length)
        self._sets: dict[tuple[tuple[Text, ...], Context], tuple[tuple[Text, ...], list[str], int, int]] = {}

    def value(self, key: str) -> str | bytes | None:
        if key not in self._values:
            if len(self._values) >= self.TEXTS_MAX:  # unknown keys kept literally are a client's to choose
                self._values.clear()
            self._values[key] = self._check(key)
        return self._values[key]

    def resolve(self, data: Text, context: Context, lookup: Lookup, budget: Budget) -> tuple[Text, list[str]]:
        """`placeholders.resolve` through `lookup` (which answers as `value` does), or what it
        returned for the same short text before. A text kept is only reused while `budget`
        holds its whole length, more than it grew by: resolving it again would have fit."""
        kept = self._texts.get((data, context))
        if kept is not None:
            new, keys, grown = kept
            if budget.left >= len(new):
                budget.spend(grown, keys[0] if keys else "")
                return new, keys  # type: ignore[return-value]
        new, keys = resolve(data, context, lookup, budget)
        if len(data) <= self.TEXT_MAX:
            if len(self._texts) >= self.TEXTS_MAX:
                self._texts.clear()
            self._texts[data, context] = (new, keys, len(new) - len(data))
        return new, keys

    def resolve_all(self, texts: tuple[Text, ...], context: Context, lookup: Lookup, budget: Budget) -> tuple[tuple[Text, ...], list[str]]:
        """`resolve` of each of `texts` (a request's header values that hold a `<`), kept as
        one: a client sends the same few again and again, and one lookup for all of them costs
        a third of one for each."""
        kept = self._sets.get((texts, context))
        if kept is not None:
            new, keys, grown, length = kept
            if budget.left >= length:
                budget.spend(grown, keys[0] if keys else "")
                return new, keys
        new, keys = resolve_each(texts, context, lookup, budget, self.resolve)
        length = sum(map(len, new))
        if length <= self.TEXT_MAX:
            if len(self._sets) >= self.TEXTS_MAX:
                self._sets.clear()
            self._sets[texts, context] = (new, keys, length - sum(map(len, texts)), length)
        return new, keys


class Scopes:
    """The Scope of each destination, for the current index and settings (a reload or an
    option change starts afresh)."""

    MAX = 256

    def __init__(self) -> None:
        self._of: tuple[SecretIndex, Settings] | None = None
        self._scopes: dict[tuple[object, ...], Scope] = {}

    def get(self, flow: http.HTTPFlow, head: Head, index: SecretIndex, settings: Settings) -> Scope:
        if self._of is None or self._of[0] is not index or self._of[1] is not settings or len(self._scopes) >= self.MAX:
            self._of, self._scopes = (index, settings), {}
        request = flow.request
        # The proxy the request goes through: the one its connection names (set by upstream
        # mode, by mitmproxy's replay from the mode it routes by, or by another addon), else its
        # listener's.
        if (hop := flow.server_conn.via) is not None:
            via: str | None = hop[1][0]
        else:
            mode = flow.client_conn.proxy_mode
            via = mode.address[0] if isinstance(mode, UpstreamMode) else None
        where = (request.host, request.scheme, request.port, head.origin, via)
        scope = self._scopes.get(where)
        if scope is None:
            destination = Destination(
                request.host, request.scheme, head.origin, port=request.port, via=via, verified=settings.verify_upstream,
            )
            scope = self._scopes[where] = Scope(index, destination, settings)
        return scope


class RequestLookup:
    """One request's Lookup: its destination's Scope, and the checks of the request itself,
    which run at the first key actually resolved (so requests that use no secret are never
    refused by them): its Host headers and SNI, folding, and in reverse mode the name the
    client used (`unserved`: that name, when this proxy does not serve it)."""

    def __init__(self, flow: http.HTTPFlow, scope: Scope, head: Head, unserved: str | None) -> None:
        self._flow, self._scope, self._head, self._unserved = flow, scope, head, unserved
        self._checked = False

    def __call__(self, key: str) -> str | bytes | None:
        try:
            value = self._scope.value(key)  # first: an unknown key kept literally uses no secret
        except SubstitutionError as e:
            if e.code == MINT_NEEDED and not self._checked:
                self.check_request(key)  # a request refused anyway causes no mint
            raise
        if value is not None and not self._checked:
            self.check_request(key)
        return value

    def resolve(self, data: Text, context: Context, budget: Budget) -> tuple[Text, list[str]]:
        new, keys = self._scope.resolve(data, context, self, budget)
        if keys and not self._checked:
            self.check_request(keys[0])
        return new, keys

    def resolve_all(self, texts: tuple[Text, ...], context: Context, budget: Budget) -> tuple[tuple[Text, ...], list[str]]:
        new, keys = self._scope.resolve_all(texts, context, self, budget)
        if keys and not self._checked:
            self.check_request(keys[0])
        return new, keys

    def check_unkeyed(self, name: str) -> None:
        """For credentials that are not the vault's (named by where they come from), which no
        lookup checks: their policy (vaultcore.index.check_unkeyed), then the request's own."""
        self._scope.check_unkeyed(name)
        if not self._checked:
            self.check_request(name)

    def check_request(self, key: str) -> None:
        if self._unserved is not None:
            raise SubstitutionError(
                "name_not_served", key,
                f"the client reached this reverse proxy as {self._unserved!r}, a name it does not serve; "
                "add it with `--set vault_served_names=NAME` if it is yours (DNS rebinding otherwise)",
            )
        check_host_agrees(self._flow.request, self._head.hosts)
        check_target_is_a_path(self._flow.request)
        check_sni(self._flow)
        if self._head.folded:
            raise SubstitutionError(
                "obs_fold", "",
                "a header of this request continues on a folded line (obs-fold); send each header on one line",
            )
        self._checked = True


def lookup_for(flow: http.HTTPFlow, scopes: Scopes, index: SecretIndex, settings: Settings, *, unserved: str | None = None) -> RequestLookup:
    """The request's Lookup; refuses at once a request with a placeholder in its authority."""
    head = Head.of(flow.request)
    check_authority(flow.request, head)
    return RequestLookup(flow, scopes.get(flow, head, index, settings), head, unserved)
