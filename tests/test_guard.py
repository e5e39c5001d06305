"""Unit tests of the proxy's guard: who made a request (browser origin) and which names it
gives for its host, on mitmproxy Request objects without a proxy."""

from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from vaultcore.index import MINT_NEEDED, Destination, Secret, SecretIndex
from vaultcore.placeholders import SubstitutionError
from vaultcore.tokens import TokenSource, source_secrets
from vaultproxy.guard import Head, Scopes, Settings, check_host_agrees, check_target_is_a_path, lookup_for


def request(url: str = "https://api.example.com/v1", headers: dict[str, str] | None = None, http2: bool = False) -> http.Request:
    made = http.Request.make("GET", url)
    made.headers.update(headers or {})  # after make(): setting the URL rewrites Host
    if http2:
        made.http_version = "HTTP/2.0"
        made.authority = made.host
    return made


@pytest.mark.parametrize(
    ("headers", "origin"),
    [
        ({}, None),  # curl, requests, a script
        ({"Origin": "https://app.example"}, "https://app.example"),
        ({"Sec-Fetch-Site": "none"}, None),  # typed into the address bar
        ({"Sec-Fetch-Site": "cross-site", "Referer": "https://evil.example/page"}, "https://evil.example"),
        ({"Sec-Fetch-Site": "cross-site"}, "null"),
        # an <img> on a plain-HTTP host, or a browser without fetch metadata: only the Referer tells
        ({"Referer": "http://evil.example/page.html", "Accept": "image/avif,image/webp"}, "http://evil.example"),
        ({"Referer": "about:blank"}, "null"),
    ],
)
def test_request_origin(headers: dict[str, str], origin: str | None) -> None:
    assert Head.of(request(headers=headers)).origin == origin


def agree(made: http.Request) -> None:
    check_host_agrees(made, Head.of(made).hosts)


def test_host_header_must_agree_with_the_destination() -> None:
    agree(request(headers={"Host": "api.example.com"}))
    agree(request(headers={"Host": "API.example.com:443"}))
    with pytest.raises(SubstitutionError) as caught:
        agree(request(headers={"Host": "evil.example.net"}))
    assert caught.value.code == "host_mismatch"


def test_an_international_name_agrees_in_punycode() -> None:
    """mitmproxy holds the destination in Unicode; curl and browsers send Host in punycode."""
    made = request("https://xn--bcher-kva.example/v1", headers={"Host": "xn--bcher-kva.example"})
    assert made.host == "bücher.example"
    agree(made)
    with pytest.raises(SubstitutionError) as caught:
        agree(request("https://xn--bcher-kva.example/v1", headers={"Host": "xn--bchen-kva.example"}))
    assert caught.value.code == "host_mismatch"


def test_http2_host_header_is_checked_beside_the_authority() -> None:
    # an HTTP/1 upstream routes on Host even when the client spoke HTTP/2
    agree(request(http2=True))
    with pytest.raises(SubstitutionError) as caught:
        agree(request(headers={"Host": "evil.example.net"}, http2=True))
    assert caught.value.code == "host_mismatch"


@pytest.mark.parametrize(("method", "path", "refused"), [
    ("GET", "/v1?x=1", False), ("OPTIONS", "*", False), ("GET", "/a//b", False), ("GET", "//bucket-key/x", False),
    ("GET", "https://evil.test/x", True), ("GET", "HTTP://evil.test/x", True), ("GET", "*", True), ("GET", "evil.test/x", True),
])
def test_the_request_target_must_be_a_path(method: str, path: str, refused: bool) -> None:
    """An HTTP/2 :path is taken as sent: an absolute URL there would outrank Host upstream."""
    made = request(http2=True)
    made.method, made.path = method, path
    if refused:
        with pytest.raises(SubstitutionError, match="not a path"):
            check_target_is_a_path(made)
    else:
        check_target_is_a_path(made)


def test_a_page_cannot_tell_which_keys_exist() -> None:
    index = SecretIndex(local_secrets=[Secret("k", "FAKE-value", ("api.example.com",), ("https://trusted.example",))])
    page = Destination("evil.example.net", "https", "https://evil.example")
    answers = []
    for key in ("k", "no-such-key"):
        with pytest.raises(SubstitutionError) as caught:
            index.check(key, page)
        answers.append((caught.value.code, str(caught.value).replace(key, "KEY")))
    assert answers[0] == answers[1]
    assert answers[0][0] == "origin_not_allowed" and "api.example.com" not in answers[0][1]
    trusted = Destination("evil.example.net", "https", "https://trusted.example")
    with pytest.raises(SubstitutionError) as caught:
        index.check("k", trusted)  # a trusted page gets the detail
    assert caught.value.code == "host_not_allowed"


def test_a_request_refused_anyway_causes_no_mint() -> None:
    """A token placeholder asks for a mint only once the request itself passed its checks
    (Host agreement here; SNI, folding and reverse-mode names alike)."""
    source = TokenSource("billing", ("api.example.com",), "https://auth.example.com/token", "c", "billing.secret")
    index = SecretIndex().overlaid(source_secrets(source, None))
    flow = tflow.tflow()
    flow.request = request(headers={"Authorization": "Bearer <<vault:billing>>"})
    with pytest.raises(SubstitutionError) as error:
        lookup_for(flow, Scopes(), index, Settings())("billing")
    assert error.value.code == MINT_NEEDED
    flow.request.headers["Host"] = "evil.example.com"
    with pytest.raises(SubstitutionError) as error:
        lookup_for(flow, Scopes(), index, Settings())("billing")
    assert error.value.code == "host_mismatch"


@pytest.mark.parametrize(
    ("url", "headers", "refused"),
    [
        ("https://api.example.com/v1", {}, None),
        ("https://api.example.com/v1", {"Origin": "https://app.example"}, "origin_not_allowed"),  # no page, whatever origin
        ("https://api.example.com/v1", {"Sec-Fetch-Site": "cross-site"}, "origin_not_allowed"),
        ("http://api.example.com/v1", {}, "plaintext_not_allowed"),
        ("http://127.0.0.1:8080/v1", {}, None),
        ("https://api.example.com/v1", {"Host": "evil.example.com"}, "host_mismatch"),
    ],
)
def test_credentials_that_are_not_the_vaults_pass_the_same_checks(url: str, headers: dict[str, str], refused: str | None) -> None:
    """AWS keys from a profile have no rules of their own; their signing rule chose the host."""
    flow = tflow.tflow()
    flow.request = request(url, headers)
    lookup = lookup_for(flow, Scopes(), SecretIndex(), Settings())
    if refused is None:
        lookup.check_unkeyed("aws-profile:dev")
        return
    with pytest.raises(SubstitutionError) as error:
        lookup.check_unkeyed("aws-profile:dev")
    assert error.value.code == refused
