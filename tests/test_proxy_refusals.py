"""End to end: requests the proxy must not send, through a real mitmdump with the addon.

For each refusal the upstream receives nothing at all (not one byte after TLS), and the
client gets the proxy's own answer: 403 for a host-policy code, 400 otherwise, header
X-Vaultproxy-Error, a plain-text body naming the key and the fix, never a value. The
proxies run with flow_detail=3: their output, which shows the refused requests in full,
must show placeholders only (nothing half-substituted). Text that is almost a placeholder is
refused too, and a web page may read a refusal only when its origin is allowed for the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import requests

from tests.support.net import LOOPBACK
from tests.support.proxy import EXAMPLE_HOSTS, MitmdumpProcess, StartProxy, curl
from tests.support.secret_set import Entry, SecretSet, module_fixtures, proxy_options
from tests.support.upstream import RecordingUpstream

TIMEOUT = 60
CURL_SEPARATOR = "\n--curl-write-out--\n"
# Refusals about where a secret may go are 403; the rest (unknown key, bad value...) are 400.
POLICY_CODES = {
    "host_not_allowed", "no_hosts_rule", "placeholder_in_authority", "host_mismatch",
    "plaintext_not_allowed", "origin_not_allowed",
}
PAGE = "http://localhost:3000"  # the origin web.k and page.k allow

WILDCARD_HOSTS = (LOOPBACK, "*.example.com")  # the hosts rule of most secrets here
SECRETS = SecretSet({
    "ok.k": Entry("sk_live_Zq9Ok", "/+&=", hosts=WILDCARD_HOSTS),
    "bound.k": Entry("sk_live_Zq9Bound", hosts=("billing.example.com",)),
    "nohosts.k": Entry("sk_live_Zq9NoHosts", hosts=()),
    "crlf.k": Entry("sk_live_Zq9Crlf", "\r\nX-Injected: yes", hosts=WILDCARD_HOSTS),
    "lf.k": Entry("sk_live_Zq9Lf", "\nX-Injected: yes", hosts=WILDCARD_HOSTS),
    "nul.k": Entry("sk_live_Zq9Nul", "\x00X-Injected", hosts=WILDCARD_HOSTS),
    "web.k": Entry("sk_live_Zq9Web", hosts=WILDCARD_HOSTS, origins=(PAGE,)),
    "page.k": Entry("sk_live_Zq9Page", hosts=("billing.example.com",), origins=(PAGE,)),
})
home, proxy, h2_proxy = module_fixtures(SECRETS)


@dataclass(frozen=True)
class Answer:
    """What a client got back, whichever client it was."""

    status: int
    headers: Mapping[str, str]  # lower-case names
    body: str
    http_version: str = "HTTP/1.1"

    @classmethod
    def of(cls, response: requests.Response | httpx.Response) -> Answer:
        headers = {name.lower(): text for name, text in response.headers.items()}
        version = response.http_version if isinstance(response, httpx.Response) else "HTTP/1.1"
        return cls(response.status_code, headers, response.text, version)


def curl_answer(proxy: MitmdumpProcess, url: str, *args: str) -> Answer:
    """curl through `proxy`; the final response's status, headers and body."""
    write_out = CURL_SEPARATOR + "%{http_code}" + CURL_SEPARATOR + "%{header_json}"
    result = curl(proxy, url, *args, "--write-out", write_out)
    assert result.returncode == 0, result.stderr.decode()
    body, status, headers = result.stdout.decode().split(CURL_SEPARATOR)
    return Answer(int(status), {name: values[-1] for name, values in json.loads(headers).items()}, body)


def send(proxy: MitmdumpProcess, url: str, headers: Mapping[str, str] | None = None, body: bytes | None = None) -> Answer:
    """requests through `proxy`: GET, or POST when there is a body."""
    with proxy.requests_session() as session:
        response = session.request("POST" if body is not None else "GET", url, headers=headers, data=body, timeout=TIMEOUT)
    return Answer.of(response)


def assert_refused(
    answer: Answer, server: RecordingUpstream, proxy: MitmdumpProcess, marker: str,
    *, code: str, names: tuple[str, ...],
) -> None:
    """The proxy answered `code` itself, naming `names` (key, fix...), and sent nothing upstream.

    `marker` (part of the request's URL) finds the flow in the proxy's output, which must
    show no value, like the answer."""
    assert (answer.status, answer.headers.get("x-vaultproxy-error")) == (403 if code in POLICY_CODES else 400, code)
    assert answer.headers["content-type"].startswith("text/plain")
    for name in names:
        assert name in answer.body
    assert SECRETS.leaked_keys(answer.body) == []
    assert server.requests == []
    assert server.all_bytes() == b""
    SECRETS.assert_logged_without_values(proxy, marker)


# --- keys and hosts -------------------------------------------------------------------------


def test_unknown_key(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    answer = send(proxy, upstream.url + "/unknown", {"Authorization": "Bearer <<vault:missing.k>>"})
    assert_refused(answer, upstream, proxy, "/unknown", code="unknown_key",
                   names=("missing.k", "vaultproxy local set missing.k --hosts"))


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_key_not_allowed_for_the_destination_host(
    proxy: MitmdumpProcess, upstream: RecordingUpstream, tls_upstream: RecordingUpstream, scheme: str
) -> None:
    server = upstream if scheme == "http" else tls_upstream
    answer = send(proxy, f"{server.url}/not-allowed-{scheme}?k=<<vault:bound.k>>")
    assert_refused(answer, server, proxy, f"/not-allowed-{scheme}", code="host_not_allowed",
                   names=("bound.k", "billing.example.com", LOOPBACK))


def test_key_not_allowed_over_http2(h2_proxy: MitmdumpProcess, tls_upstream: RecordingUpstream) -> None:
    with h2_proxy.httpx_client(http2=True) as client:
        answer = Answer.of(client.post(tls_upstream.url + "/not-allowed-h2", content=b'{"k": "<<vault:bound.k>>"}',
                                       headers={"Content-Type": "application/json"}))
    assert answer.http_version == "HTTP/2"
    assert_refused(answer, tls_upstream, h2_proxy, "/not-allowed-h2", code="host_not_allowed",
                   names=("bound.k", "billing.example.com"))


def test_secret_without_hosts_rule_goes_nowhere(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    answer = send(proxy, upstream.url + "/no-hosts", {"X-Key": "<<vault:nohosts.k>>"})
    assert_refused(answer, upstream, proxy, "/no-hosts", code="no_hosts_rule",
                   names=("nohosts.k", f"vaultproxy local set nohosts.k --hosts {LOOPBACK}"))


# --- values that would break the request ----------------------------------------------------


@pytest.mark.parametrize("key", ["crlf.k", "lf.k", "nul.k"])
def test_line_breaking_value_into_a_header(proxy: MitmdumpProcess, upstream: RecordingUpstream, key: str) -> None:
    answer = send(proxy, upstream.url + f"/illegal-header-{key}", {"X-Key": f"<<vault:{key}>>"})
    assert_refused(answer, upstream, proxy, f"/illegal-header-{key}", code="illegal_value",
                   names=(key, f"<<vault:{key}|base64>>"))


@pytest.mark.parametrize("key", ["crlf.k", "nul.k"])
def test_line_breaking_value_into_a_raw_url(proxy: MitmdumpProcess, upstream: RecordingUpstream, key: str) -> None:
    """|raw skips percent-encoding, but a CR/LF there would split the request line into
    injected header lines (as it would in a header)."""
    answer = send(proxy, upstream.url + f"/illegal-url-{key}?k=<<vault:{key}|raw>>")
    assert_refused(answer, upstream, proxy, f"/illegal-url-{key}", code="illegal_value", names=(key,))


# --- where the request really goes ----------------------------------------------------------


def test_placeholder_in_the_host_header(proxy: MitmdumpProcess, tls_upstream: RecordingUpstream) -> None:
    answer = curl_answer(proxy, tls_upstream.url_for("api.example.com") + "/authority",
                         "-H", "Host: <<vault:ok.k>>.example.com")
    assert_refused(answer, tls_upstream, proxy, "/authority", code="placeholder_in_authority",
                   names=("never in the host",))


@pytest.mark.parametrize("claimed", ["other.example.com", "api.example.com:1"], ids=["host", "port"])
def test_host_header_disagreeing_with_the_destination(
    proxy: MitmdumpProcess, tls_upstream: RecordingUpstream, claimed: str
) -> None:
    """ok.k is allowed for both names: the disagreement alone refuses the request."""
    answer = curl_answer(proxy, tls_upstream.url_for("api.example.com") + f"/mismatch-{claimed}",
                         "-H", f"Host: {claimed}", "-H", "X-Key: <<vault:ok.k>>")
    assert_refused(answer, tls_upstream, proxy, f"/mismatch-{claimed}", code="host_mismatch",
                   names=(claimed, "api.example.com"))


def test_plain_http_to_a_non_loopback_host(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    answer = send(proxy, upstream.url_for("api.example.com") + "/plaintext?k=<<vault:ok.k>>")
    assert_refused(answer, upstream, proxy, "/plaintext", code="plaintext_not_allowed",
                   names=("ok.k", "api.example.com", "vault_allow_plaintext=true"))


def test_plain_http_to_a_non_loopback_host_with_allow_plaintext(
    mitmdump: StartProxy, home: Path, upstream: RecordingUpstream
) -> None:
    proxy = mitmdump(options=proxy_options(home, vault_allow_plaintext=True), hosts=EXAMPLE_HOSTS)
    answer = send(proxy, upstream.url_for("api.example.com") + "/plaintext-allowed", {"X-Key": "<<vault:ok.k>>"})
    assert answer.status == 200
    (received,) = upstream.wait_for(1)
    assert received.header("X-Key") == SECRETS.value("ok.k")
    assert received.header("Host") == f"api.example.com:{upstream.port}"
    SECRETS.assert_logged_without_values(proxy, "/plaintext-allowed")


# --- browsers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "origin"), [("ok.k", "https://evil.example.net"), ("web.k", "http://localhost:3001")])
def test_web_origin_not_allowed(proxy: MitmdumpProcess, upstream: RecordingUpstream, key: str, origin: str) -> None:
    answer = send(proxy, upstream.url + f"/origin-{key}", {"Origin": origin, "X-Key": f"<<vault:{key}>>"})
    assert_refused(answer, upstream, proxy, f"/origin-{key}", code="origin_not_allowed",
                   names=(key, f"--origins {origin}"))


CORS_HEADERS = {"access-control-allow-origin": PAGE, "vary": "Origin", "access-control-expose-headers": "X-Vaultproxy-Error"}


def cors_headers(answer: Answer) -> dict[str, str]:
    return {name: text for name, text in answer.headers.items() if name.startswith("access-control-") or name == "vary"}


@pytest.mark.parametrize(("placeholder", "code"), [("<<vault:page.k>>", "host_not_allowed"), ("<<vault:page.k|bas64>>", "malformed_placeholder")])
def test_a_page_whose_origin_the_key_allows_may_read_the_refusal(
    proxy: MitmdumpProcess, upstream: RecordingUpstream, placeholder: str, code: str
) -> None:
    answer = send(proxy, upstream.url + f"/cors-{code}", {"Origin": PAGE, "X-Key": placeholder})
    assert_refused(answer, upstream, proxy, f"/cors-{code}", code=code, names=("page.k",))
    assert cors_headers(answer) == CORS_HEADERS


@pytest.mark.parametrize(("origin", "placeholder"), [
    ("https://evil.example.net", "<<vault:page.k>>"),
    ("https://evil.example.net", "<<vault:page.k|bas64>>"),
    ("https://evil.example.net", "<<vault:no.such.k>>"),
    (PAGE, "<<vault:ok.k>>"),  # a page allowed for other keys
])
def test_other_pages_may_not_read_a_refusal(
    proxy: MitmdumpProcess, upstream: RecordingUpstream, origin: str, placeholder: str
) -> None:
    answer = send(proxy, upstream.url + "/cors-hostile", {"Origin": origin, "X-Key": placeholder})
    assert answer.status in (400, 403) and answer.headers["x-vaultproxy-error"]
    assert cors_headers(answer) == {}
    assert upstream.requests == []


def test_cross_site_navigation(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    """A link on another site carries no Origin; Sec-Fetch-Site and Referer tell who made it."""
    answer = send(proxy, upstream.url + "/navigate?k=<<vault:web.k>>", {
        "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Referer": "https://evil.example.net/page",
    })
    assert_refused(answer, upstream, proxy, "/navigate", code="origin_not_allowed",
                   names=("web.k", "https://evil.example.net"))


# --- bodies and mixed requests --------------------------------------------------------------


def test_broken_gzip_body_with_a_placeholder_in_the_clear(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    answer = send(proxy, upstream.url + "/broken-gzip", {"Content-Type": "application/json", "Content-Encoding": "gzip"},
                  b'{"k": "<<vault:ok.k>>"}')
    assert_refused(answer, upstream, proxy, "/broken-gzip", code="undecodable_body", names=("Content-Encoding (gzip)",))


MIXED = {
    "two-headers": ("/mixed-headers", {"X-A": "<<vault:ok.k>>", "X-B": "<<vault:bound.k>>"}, None),
    "url-allowed-body-refused": ("/mixed-url?a=<<vault:ok.k>>", {"Content-Type": "application/json"}, b'{"b": "<<vault:bound.k>>"}'),
    "body-allowed-header-refused": ("/mixed-body", {"Content-Type": "text/plain", "X-B": "<<vault:bound.k>>"}, b"a=<<vault:ok.k>>"),
}


@pytest.mark.parametrize("case", MIXED)
def test_one_refused_key_stops_the_whole_request(proxy: MitmdumpProcess, upstream: RecordingUpstream, case: str) -> None:
    """ok.k alone would resolve; with bound.k refused, nothing is sent and nothing is
    half-substituted (the output shows the request with both placeholders)."""
    path, headers, body = MIXED[case]
    answer = send(proxy, upstream.url + path, headers, body)
    marker = upstream.url + path.split("?")[0]  # as the dumper prints the flow
    assert_refused(answer, upstream, proxy, marker, code="host_not_allowed", names=("bound.k",))
    flow_printed = proxy.output().split(marker, 1)[1]
    assert "<<vault:ok.k>>" in flow_printed or "%3C%3Cvault:ok.k%3E%3E" in flow_printed


# --- text that is almost a placeholder ----------------------------------------------------------

NEAR_MISSES = {
    "unknown-filter": ("<<vault:ok.k|bas64>>", ("unknown filter 'bas64'", "base64, urlencode and raw")),
    "space-before-key": ("<<vault: ok.k>>", ("spaces", "write <<vault:ok.k>>")),
    "space-after-key": ("<<vault:ok.k >>", ("spaces", "write <<vault:ok.k>>")),
    "upper-case": ("<<VAULT:ok.k>>", ("lower case", "write <<vault:ok.k>>")),
}


def near_miss_request(proxy: MitmdumpProcess, url: str, where: str, text: str) -> Answer:
    """`text` where a client puts a placeholder: requests percent-encodes it in the URL and
    form-encodes it in a form body."""
    if where == "url":
        return send(proxy, f"{url}?k={text}")
    if where == "header":
        return send(proxy, url, {"Authorization": f"Bearer {text}"})
    if where == "form":
        return send(proxy, url, {"Content-Type": "application/x-www-form-urlencoded"}, urlencode({"k": text}).encode())
    return send(proxy, url, {"Content-Type": "application/json"}, json.dumps({"k": text}).encode())


@pytest.mark.parametrize("where", ["url", "header", "form", "json"])
@pytest.mark.parametrize("case", NEAR_MISSES)
def test_near_miss_is_refused_naming_what_is_wrong(proxy: MitmdumpProcess, upstream: RecordingUpstream, case: str, where: str) -> None:
    text, names = NEAR_MISSES[case]
    answer = near_miss_request(proxy, f"{upstream.url}/near-{case}-{where}", where, text)
    assert_refused(answer, upstream, proxy, f"/near-{case}-{where}", code="malformed_placeholder", names=("'ok.k'", *names))


def test_near_miss_written_literally_in_the_url(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    answer = curl_answer(proxy, upstream.url + "/near-literal?k=<<VAULT:ok.k>>")
    assert_refused(answer, upstream, proxy, "/near-literal", code="malformed_placeholder", names=("lower case",))


@pytest.mark.parametrize("where", ["url", "header", "form", "json"])
def test_a_servers_neutralised_placeholder_sent_back_is_harmless_text(
    proxy: MitmdumpProcess, upstream: RecordingUpstream, where: str
) -> None:
    """What the proxy makes of a server's placeholder (a redirect followed, a page an agent
    read and quotes) goes on as the text it is: it resolves nothing, and is no near miss."""
    answer = near_miss_request(proxy, f"{upstream.url}/blocked-{where}", where, "<<blocked-vault:ok.k>>")
    assert answer.status == 200
    (received,) = upstream.wait_for(1)
    assert b"blocked-vault" in received.raw and SECRETS.leaked_keys(received.raw.decode()) == []
