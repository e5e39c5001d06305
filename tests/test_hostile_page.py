"""A hostile web page seen through the proxy tries to spend a secret.

Browser requests carry `Origin` (fetch, XHR, form posts) or `Sec-Fetch-Site` (navigations).
The page writes `<<vault:guarded>>` into requests of its own: to a host the secret is not
bound to, behind a Host header (or HTTP/2 authority) that lies about the destination, into
the host part of the URL, and through a redirect from an allowed host to another one. Nothing
may resolve: the proxy answers 403 and no upstream receives the value in any encoding.

Each attack also runs as a page whose origin the secret *trusts*: then the origin rule lets the
request through and only the host rules stand between the page and the secret, so a broken
host rule fails the test instead of hiding behind the origin rule. The controls at the end show
that the trusted page does get the secret on an honest request to the allowed host.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests

from tests.support.cli import run_cli
from tests.support.leaks import Needle, hunt_bytes, leak_value, mask, needles_for
from tests.support.net import LOOPBACK
from tests.support.proxy import CLIENT_TIMEOUT, EXAMPLE_HOSTS, MitmdumpProcess
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordingUpstream, Reply

TRUSTED = "https://app.example"
EVIL = "https://evil.example"
PLACEHOLDER = "<<vault:guarded>>"
PERCENT_PLACEHOLDER = "%3C%3Cvault:guarded%3E%3E"

# How a page's request looks to the proxy, and whether the secret trusts that page.
PAGES: dict[str, tuple[dict[str, str], bool]] = {
    "evil-origin": ({"Origin": EVIL}, False),
    "opaque-origin": ({"Origin": "null"}, False),
    "cross-site-navigation": ({"Sec-Fetch-Site": "cross-site", "Referer": f"{EVIL}/page"}, False),
    "trusted-origin": ({"Origin": TRUSTED}, True),
    "navigation-from-trusted": ({"Sec-Fetch-Site": "cross-site", "Referer": f"{TRUSTED}/page"}, True),
}
QUICK_PAGES = ("evil-origin", "cross-site-navigation", "trusted-origin")  # the rest: --stress
# Attacks on the authority are refused before any origin rule: the trusted page is the hard case.
TRUSTED_PAGE_ONLY = pytest.mark.parametrize("scene", ["trusted-origin"], indirect=True)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Needle]]:
    """A vault home holding `guarded`: bound to api.example.com and 127.0.0.1, trusting
    TRUSTED. Returns the home and the needles of its value."""
    token, value = leak_value(' "x"&y=/z')
    home = tmp_path_factory.mktemp("hostile-vault")
    run_cli(home, "local", "set", "guarded", "--hosts", f"api.example.com,{LOOPBACK}", "--origins", TRUSTED,
            stdin=value.encode(), user_home=home, check=True)
    return home, needles_for("guarded", value, token)


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial, guarded: tuple[Path, list[Needle]]
) -> Iterator[MitmdumpProcess]:
    """One proxy for the module (one per test would be slow); upstreams are per test."""
    process = MitmdumpProcess(
        tmp_path_factory.mktemp("hostile-mitmdump"),
        upstream_ca=tls_material.ca_cert,
        env={"VAULTPROXY_HOME": str(guarded[0])},
        hosts=EXAMPLE_HOSTS,
        options={"connection_strategy": "lazy"},  # lets httpx speak HTTP/2 to the proxy
    )
    with process:
        yield process
    assert not hunt_bytes("proxy output", process.output().encode(), guarded[1])


class Scene:
    """The page, the proxy and every upstream of one test."""

    def __init__(self, proxy: MitmdumpProcess, needles: list[Needle], page: str, *, http: RecordingUpstream,
                 https: RecordingUpstream, forbidden_http: RecordingUpstream, forbidden_tls: RecordingUpstream) -> None:
        self.proxy = proxy
        self.needles = needles
        self.headers, self.trusted = PAGES[page]
        self.http, self.https = http, https  # 127.0.0.1 and api.example.com: in the secret's hosts
        self.forbidden_http, self.forbidden_tls = forbidden_http, forbidden_tls  # localhost, other.example.com

    @property
    def api(self) -> str:
        return self.https.url_for("api.example.com")

    @property
    def other(self) -> str:
        return self.forbidden_tls.url_for("other.example.com")

    @property
    def localhost(self) -> str:
        return self.forbidden_http.url_for("localhost")

    def get(self, url: str, headers: dict[str, str] | None = None) -> requests.Response:
        """A GET from the page (its headers added) through the proxy, following redirects."""
        with self.proxy.requests_session() as session:
            return session.get(url, headers={**self.headers, **(headers or {})}, timeout=CLIENT_TIMEOUT)

    def h2_get(self, url: str, headers: dict[str, str]) -> httpx.Response:
        with self.proxy.httpx_client(http2=True) as client:
            response = client.get(url, headers={**self.headers, **headers})
        assert response.http_version == "HTTP/2"
        return response

    def assert_refused(self, response: requests.Response | httpx.Response, code: str, *, also: tuple[str, ...] = ()) -> None:
        """403 with `code` (or one of `also`, or, for an untrusted page, the origin refusal),
        no value in the answer, nothing at any forbidden upstream and no value anywhere."""
        codes = {code, *also} | (set() if self.trusted else {"origin_not_allowed"})
        got = (response.status_code, response.headers.get("x-vaultproxy-error"))
        assert got[0] == 403 and got[1] in codes, (got, mask(response.content, self.needles))
        assert not hunt_bytes("proxy's answer", response.content, self.needles)
        self.assert_nothing_sent()

    def assert_nothing_sent(self) -> None:
        contacted = len(self.forbidden_http.requests) + len(self.forbidden_tls.requests)
        assert not contacted, f"{contacted} requests reached a forbidden host"
        self.assert_no_value_sent()

    def assert_no_value_sent(self) -> None:
        servers = (self.http, self.https, self.forbidden_http, self.forbidden_tls)
        leaks = [hit for server in servers for hit in hunt_bytes(server.url, server.all_bytes(), self.needles)]
        assert not leaks, "\n".join(map(str, leaks))


@pytest.fixture(params=[page if page in QUICK_PAGES else pytest.param(page, marks=pytest.mark.stress) for page in PAGES])
def scene(
    request: pytest.FixtureRequest, proxy: MitmdumpProcess, guarded: tuple[Path, list[Needle]],
    tls_material: TLSMaterial, upstream: RecordingUpstream, tls_upstream: RecordingUpstream,
) -> Iterator[Scene]:
    """The forbidden upstreams are reached as localhost (loopback, so no plaintext rule is in
    the way) and other.example.com: neither is in the secret's hosts."""
    with RecordingUpstream() as forbidden_http, RecordingUpstream(tls=tls_material) as forbidden_tls:
        yield Scene(proxy, guarded[1], request.param, http=upstream, https=tls_upstream,
                    forbidden_http=forbidden_http, forbidden_tls=forbidden_tls)


# --- attacks ---------------------------------------------------------------------------------


def test_placeholder_to_a_host_not_allowed(scene: Scene) -> None:
    response = scene.get(f"{scene.other}/steal?k={PLACEHOLDER}", headers={"X-Key": PLACEHOLDER})
    scene.assert_refused(response, "host_not_allowed")


@pytest.mark.parametrize("lie", ["host-names-forbidden", "host-names-allowed"])
@pytest.mark.parametrize("protocol", ["https", "http", "http2"])
def test_host_header_that_lies(scene: Scene, protocol: str, lie: str) -> None:
    """Destination allowed but the Host header (HTTP/2: the authority) names another host,
    and the reverse: a forbidden destination behind a Host header naming the allowed host."""
    if protocol == "http":  # plain HTTP on loopback: no plaintext rule muddles the outcome
        allowed_url, forbidden_url = scene.http.url, scene.localhost
    else:
        allowed_url, forbidden_url = scene.api, scene.other
    url, lying_url = (allowed_url, forbidden_url) if lie == "host-names-forbidden" else (forbidden_url, allowed_url)
    headers = {"Host": lying_url.split("//")[1], "X-Key": PLACEHOLDER}
    target = f"{url}/steal?k={PLACEHOLDER}"
    response = scene.h2_get(target, headers) if protocol == "http2" else scene.get(target, headers=headers)
    scene.assert_refused(response, "host_mismatch", also=("host_not_allowed",) if lie == "host-names-allowed" else ())


@pytest.mark.parametrize("host", [
    f"{PERCENT_PLACEHOLDER}.example.com:{{port}}",
    f"{PLACEHOLDER}.example.com:{{port}}",
    f"api.example.com:{PERCENT_PLACEHOLDER}",
    f"{PLACEHOLDER}@api.example.com:{{port}}",
])
@pytest.mark.parametrize("protocol", ["https", "http"])
@TRUSTED_PAGE_ONLY
def test_placeholder_in_the_host_header(scene: Scene, protocol: str, host: str) -> None:
    """The authority a server routes by: a value there would leak through DNS and SNI."""
    server, url = (scene.https, scene.api) if protocol == "https" else (scene.http, scene.http.url)
    response = scene.get(f"{url}/steal?k={PLACEHOLDER}", headers={"Host": host.format(port=server.port)})
    scene.assert_refused(response, "placeholder_in_authority")


@TRUSTED_PAGE_ONLY
def test_placeholder_in_the_http2_authority(scene: Scene) -> None:
    """An HTTP/2 authority holding a placeholder is not even a valid request: the proxy
    ends the connection, and nothing goes anywhere."""
    authority = f"{PERCENT_PLACEHOLDER}.example.com:{scene.https.port}"
    with pytest.raises(httpx.RemoteProtocolError):
        scene.h2_get(f"{scene.api}/steal?k={PLACEHOLDER}", {"Host": authority})
    assert not scene.https.requests
    scene.assert_nothing_sent()


@pytest.mark.parametrize("request_line", [
    "GET http://{placeholder}.example.com:{port}/steal HTTP/1.1",
    "GET http://api.example.com:{placeholder}/steal HTTP/1.1",
    "CONNECT {placeholder}.example.com:{port} HTTP/1.1",
])
@pytest.mark.parametrize("placeholder", [PERCENT_PLACEHOLDER, PLACEHOLDER])
@TRUSTED_PAGE_ONLY
def test_placeholder_in_the_url_authority(scene: Scene, request_line: str, placeholder: str) -> None:
    """A URL whose host or port holds a placeholder, in absolute form (as a client sends it
    to a proxy) or as a CONNECT target. mitmproxy rejects these request lines itself with
    400, before any addon runs: the request goes nowhere and nothing is resolved."""
    port = scene.http.port
    line = request_line.format(placeholder=placeholder, port=port)
    head = "".join(f"{name}: {value}\r\n" for name, value in scene.headers.items())
    with socket.create_connection((LOOPBACK, scene.proxy.port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(f"{line}\r\nHost: api.example.com:{port}\r\n{head}\r\n".encode())
        status_line = sock.makefile("rb").readline()
    assert status_line.split()[1] in (b"400", b"403"), status_line
    assert not scene.http.requests
    scene.assert_nothing_sent()


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_redirect_to_a_host_not_allowed(scene: Scene, scheme: str) -> None:
    """An allowed host answers 302 with a Location on another host that carries the
    placeholder; the client follows it through the proxy. The server's placeholder is
    neutralised before the client sees it, so what the client follows resolves nothing."""
    start, start_url, elsewhere = (scene.https, scene.api, scene.other) if scheme == "https" else (
        scene.http, scene.http.url, scene.localhost)
    start.route("/redirect", Reply(status=302, headers=(("Location", f"{elsewhere}/steal?k={PLACEHOLDER}"),)))
    response = scene.get(f"{start_url}/redirect")
    assert [r.status_code for r in response.history] == [302]
    assert "blocked-vault" in response.history[0].headers["Location"]
    assert [r.target for r in start.requests] == ["/redirect"]
    (followed,) = scene.forbidden_http.requests + scene.forbidden_tls.requests
    assert "blocked-vault" in followed.target
    assert not hunt_bytes("the answer", response.content, scene.needles)
    scene.assert_no_value_sent()


# --- control: the attacks above fail because of the rules, not by accident -----------------------


def test_page_on_the_allowed_host(scene: Scene) -> None:
    """An honest request to the allowed host: a trusted page gets the secret, any other
    page is refused by the origin rule."""
    response = scene.get(f"{scene.api}/honest?k={PLACEHOLDER}", headers={"X-Key": PLACEHOLDER})
    if not scene.trusted:
        scene.assert_refused(response, "origin_not_allowed")
        return
    assert response.status_code == 200
    (received,) = scene.https.requests
    forms = {hit.needle.form for hit in hunt_bytes("request", received.raw, scene.needles)}
    assert {"percent", "raw"} <= forms, "the value in the URL (percent-encoded) and in the header (as is)"
