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
        if host.strip("[]").rstrip(".").lower() != request.host.strip("[]").rstrip(".").lower() or (port or default_port) != request.port:
            raise SubstitutionError(
                "host_mismatch", "",
                f"the request names host {claimed!r} but goes to {request.host}:{request.port}; "
                "secrets are only sent where the Host header and authority agree with the destination",
            )


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
