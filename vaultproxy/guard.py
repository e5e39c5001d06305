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

from dataclasses import dataclass
from urllib.parse import urlsplit

from mitmproxy import http
from mitmproxy.net.http import url
from mitmproxy.proxy.mode_specs import ReverseMode, UpstreamMode

from vaultcore.index import Destination, SecretIndex
from vaultcore.placeholders import Context, Lookup, SubstitutionError, contains_placeholder


@dataclass(frozen=True)
class Settings:
    """The proxy options a request's lookup depends on (rebuilt in `configure`)."""

    keep_unknown: bool = False
    allow_plaintext: bool = False
    verify_upstream: bool = True
    max_growth: int = 2 * 1024 * 1024


def same_host(a: str, b: str) -> bool:
    return a.strip("[]").rstrip(".").lower() == b.strip("[]").rstrip(".").lower()


def authority_has_placeholder(request: http.Request) -> bool:
    return contains_placeholder(request.host, Context.URL) or contains_placeholder(request.authority, Context.URL)


def check_authority(request: http.Request) -> None:
    """Secrets never go into scheme, host or port: a host name leaks through DNS before any
    check can run."""
    if authority_has_placeholder(request) or contains_placeholder(request.headers.get("host", ""), Context.URL):
        raise SubstitutionError(
            "placeholder_in_authority", "",
            "placeholders are only resolved in the path, query, headers and body, never in the host or port",
        )


def check_host_agrees(request: http.Request) -> None:
    """Every name the request gives for its host (the HTTP/2 authority and each Host header:
    an HTTP/1 upstream routes on Host even when the client spoke HTTP/2) must be the host the
    proxy connects to."""
    default_port = 443 if request.scheme == "https" else 80
    for claimed in [request.authority, *request.headers.get_all("host")]:
        if not claimed:
            continue
        try:
            host, port = url.parse_authority(claimed, check=False)
        except ValueError:
            host, port = claimed, None
        if not same_host(host, request.host) or (port or default_port) != request.port:
            raise SubstitutionError(
                "host_mismatch", "",
                f"the request names host {claimed!r} but goes to {request.host}:{request.port}; "
                "secrets are only sent where the Host header and authority agree with the destination",
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


def check_unfolded(request: http.Request) -> None:
    """A header folded with obs-fold continuation lines is read differently by different
    parsers: a request carrying a secret must not be ambiguous."""
    if any(b"\n" in value or b"\r" in value for _, value in request.headers.fields):
        raise SubstitutionError(
            "obs_fold", "",
            "a header of this request continues on a folded line (obs-fold); send each header on one line",
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
    return {n.strip("[]").rstrip(".").lower() for n in names}


def client_named_proxy(flow: http.HTTPFlow, client_host: str, configured: tuple[str, ...]) -> bool:
    """Whether the Host a reverse-mode client sent names this proxy (not a page's own name
    rebound to the proxy's address)."""
    try:
        host, _ = url.parse_authority(client_host, check=False)
    except ValueError:
        return False
    return host.strip("[]").rstrip(".").lower() in served_names(flow, configured)


def request_origin(request: http.Request) -> str | None:
    """The web origin that made this request, or None for a non-browser client.

    Browsers send Origin on fetch/XHR/form posts but not on navigations or no-cors loads
    (img, script, iframe). Those carry Sec-Fetch-Site ("none" only for what the user typed or
    bookmarked), except where browsers send no fetch metadata (plain-HTTP hosts, older
    browsers): there a Referer gives the page away. Its origin, or "null", is then the
    request's origin."""
    origin = request.headers.get("origin")
    if origin is not None:
        return origin.strip()
    site = request.headers.get("sec-fetch-site")
    referer = request.headers.get("referer")
    if (site is not None and site.lower() == "none") or (site is None and referer is None):
        return None
    parts = urlsplit(referer or "")
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "null"


def destination(flow: http.HTTPFlow, settings: Settings) -> Destination:
    request = flow.request
    mode = flow.client_conn.proxy_mode
    via = mode.address[0] if isinstance(mode, UpstreamMode) else None
    return Destination(
        request.host, request.scheme, request_origin(request), port=request.port,
        via=via, verified=settings.verify_upstream,
    )


def lookup_for(flow: http.HTTPFlow, index: SecretIndex, settings: Settings, *, unserved: str | None = None) -> Lookup:
    """The request's Lookup. The checks that need no key run at the first key actually
    resolved, so requests that use no secret are never refused by them.
    `unserved`: the name a reverse-mode client used, when it is not one this proxy serves."""
    request = flow.request
    check_authority(request)
    resolve = index.lookup_for(
        destination(flow, settings), keep_unknown=settings.keep_unknown, allow_plaintext=settings.allow_plaintext,
    )
    checked = False

    def lookup(key: str) -> str | bytes | None:
        nonlocal checked
        value = resolve(key)  # first: an unknown key kept literally uses no secret
        if value is None:
            return None
        if not checked:
            if unserved is not None:
                raise SubstitutionError(
                    "name_not_served", key,
                    f"the client reached this reverse proxy as {unserved!r}, a name it does not serve; "
                    "add it with `--set vault_served_names=NAME` if it is yours (DNS rebinding otherwise)",
                )
            check_host_agrees(request)
            check_sni(flow)
            check_unfolded(request)
            checked = True
        return value

    return lookup
