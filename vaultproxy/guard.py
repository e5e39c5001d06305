"""Where a request really goes, and whether that may receive a secret.

The destination is the host mitmproxy connects to (`request.host`, after every other addon
has had its say). A request whose Host header or HTTP/2 authority names another host is
refused: a secret bound to one host must not ride a request that a server will route as
another. Browser requests are recognised by `Origin` (and by `Sec-Fetch-Site` on
navigations, which carry no Origin) so that a web page cannot spend a secret.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from mitmproxy import http
from mitmproxy.net.http import url

from vaultcore.index import Destination, SecretIndex
from vaultcore.placeholders import Context, Lookup, SubstitutionError, contains_placeholder


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
    """The Host header / authority must name the host the proxy connects to."""
    claimed = request.host_header
    if not claimed:
        return
    try:
        host, port = url.parse_authority(claimed, check=False)
    except ValueError:
        host, port = claimed, None
    default_port = 443 if request.scheme == "https" else 80
    if host.strip("[]").rstrip(".").lower() != request.host.strip("[]").rstrip(".").lower() or (port or default_port) != request.port:
        raise SubstitutionError(
            "host_mismatch", "",
            f"the Host header names {claimed!r} but the request goes to {request.host}:{request.port}; "
            "secrets are only sent where the Host header agrees with the destination",
        )


def request_origin(request: http.Request) -> str | None:
    """The web origin that made this request, or None for a non-browser client.

    Browsers send Origin on fetch/XHR/form posts but not on navigations; those carry
    Sec-Fetch-Site, which is "none" only for what the user typed or bookmarked."""
    origin = request.headers.get("origin")
    if origin is not None:
        return origin.strip()
    site = request.headers.get("sec-fetch-site")
    if site is None or site.lower() == "none":
        return None
    referer = urlsplit(request.headers.get("referer", ""))
    return f"{referer.scheme}://{referer.netloc}" if referer.scheme and referer.netloc else "null"


def lookup_for(request: http.Request, index: SecretIndex, *, keep_unknown: bool, allow_plaintext: bool) -> Lookup:
    """The request's Lookup. The Host agreement check runs at the first key actually
    resolved, so requests that use no secret are never refused by it."""
    check_authority(request)
    resolve = index.lookup_for(
        Destination(request.host, request.scheme, request_origin(request)),
        keep_unknown=keep_unknown, allow_plaintext=allow_plaintext,
    )
    checked = False

    def lookup(key: str) -> str | bytes | None:
        nonlocal checked
        value = resolve(key)  # first: an unknown key kept literally uses no secret
        if value is not None and not checked:
            check_host_agrees(request)
            checked = True
        return value

    return lookup
