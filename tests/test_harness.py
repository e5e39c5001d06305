"""Proves the end-to-end harness is real, using PLAIN mitmdump (no vaultproxy addon).

Requests from requests, httpx (HTTP/1.1 and HTTP/2), curl and websockets go through a
real mitmdump process and arrive at real loopback upstreams byte for byte; every check
that traffic went through the proxy also has a counterpart showing it can fail.
"""

from __future__ import annotations

import gzip
import os
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ClientError

from tests.support.env import child_env, is_isolated
from tests.support.moto import ACCOUNT_ID, MotoServer
from tests.support.net import LOOPBACK, free_port, is_listening, wait_until
from tests.support.proxy import EXAMPLE_HOSTS, MitmdumpProcess, StartProxy, curl
from tests.support.tls import TLSMaterial, make_tls_material
from tests.support.upstream import RecordingUpstream, Reply, WebSocketMessage, WebSocketUpstream

JSON_BODY = '{"name": "café", "nested": {"n": 1, "list": [true, null]}}'.encode()
TIMEOUT = 60


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial) -> Iterator[MitmdumpProcess]:
    """One plain mitmdump shared by this module (starting one per test would be slow)."""
    proxy = MitmdumpProcess(
        tmp_path_factory.mktemp("plain-mitmdump"),
        addon=False,
        upstream_ca=tls_material.ca_cert,
        hosts=EXAMPLE_HOSTS,
    )
    with proxy:
        yield proxy


def token() -> str:
    """A distinctive value per use, so a check cannot pass on another test's traffic."""
    return f"harness-{uuid.uuid4().hex}"


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes to a loopback server and read its answer until it closes the connection."""
    with socket.create_connection((LOOPBACK, port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


# --- requests -------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_requests_through_proxy_arrive_byte_identical(
    plain: MitmdumpProcess, upstream: RecordingUpstream, tls_upstream: RecordingUpstream, scheme: str
) -> None:
    server = upstream if scheme == "http" else tls_upstream
    value = token()
    path = f"/requests/{value}"
    with plain.requests_session() as session:
        response = session.post(
            server.url + path + "?q=1", data=JSON_BODY,
            headers={"Content-Type": "application/json", "X-Harness-Token": value}, timeout=TIMEOUT,
        )
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    (received,) = server.wait_for(1)
    assert received.method == "POST"
    assert received.target == path + "?q=1"
    assert received.body == JSON_BODY
    assert (b"X-Harness-Token", value.encode()) in received.headers  # name case kept
    assert received.header("x-harness-token") == value
    assert received.raw.endswith(b"\r\n\r\n" + JSON_BODY)
    plain.wait_for_output(f"POST {server.url}{path}")


def test_direct_request_does_not_appear_in_proxy_output(plain: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    """The proxy-output check above can fail: a request that bypasses the proxy is not listed."""
    direct, proxied = token(), token()
    with requests.Session() as session:
        session.trust_env = False
        assert session.get(f"{upstream.url}/{direct}", timeout=TIMEOUT).status_code == 200
    with plain.requests_session() as session:
        assert session.get(f"{upstream.url}/{proxied}", timeout=TIMEOUT).status_code == 200
    plain.wait_for_output(proxied)
    assert direct not in plain.output()
    assert [r.path for r in upstream.wait_for(2)] == [f"/{direct}", f"/{proxied}"]


def test_test_host_names_reach_loopback_with_verified_tls(
    plain: MitmdumpProcess, tls_upstream: RecordingUpstream
) -> None:
    with plain.requests_session() as session:
        response = session.get(tls_upstream.url_for("api.example.com") + "/named", timeout=TIMEOUT)
    assert response.status_code == 200
    (received,) = tls_upstream.wait_for(1)
    assert received.header("Host") == f"api.example.com:{tls_upstream.port}"


def test_chunked_request_body_is_decoded_and_flagged(plain: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    with plain.requests_session() as session:
        response = session.post(upstream.url + "/chunked", data=iter([b"first,", b"second"]), timeout=TIMEOUT)
    assert response.status_code == 200
    (received,) = upstream.wait_for(1)
    assert received.chunked
    assert received.body == b"first,second"
    assert received.header("Transfer-Encoding") == "chunked"


def test_configured_replies(plain: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    upstream.route("/echo", Reply(echo=True))
    upstream.route("/gzip", Reply(body=b"compressed body", gzip=True, headers=(("Content-Type", "text/plain"),)))
    upstream.route("/teapot", Reply(status=418, body=b"", headers=(("X-Upstream", "yes"),)))
    with plain.requests_session() as session:
        echoed = session.post(
            upstream.url + "/echo", data=b"a=1&b=2",
            headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=TIMEOUT,
        )
        zipped = session.get(upstream.url + "/gzip", timeout=TIMEOUT)
        teapot = session.get(upstream.url + "/teapot?ignored=query", timeout=TIMEOUT)
    assert echoed.content == b"a=1&b=2"
    assert echoed.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.content == b"compressed body"  # requests decoded what the upstream compressed
    assert teapot.status_code == 418
    assert teapot.headers["X-Upstream"] == "yes"
    assert teapot.content == b""


def test_gzip_reply_is_really_compressed_on_the_wire(upstream: RecordingUpstream) -> None:
    upstream.route("/gz", Reply(body=b"x" * 1000, gzip=True))
    answer = raw_exchange(upstream.port, b"GET /gz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Encoding: gzip" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert gzip.decompress(body) == b"x" * 1000


# --- httpx ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_httpx_http1_through_proxy(
    plain: MitmdumpProcess, upstream: RecordingUpstream, tls_upstream: RecordingUpstream, scheme: str
) -> None:
    server = upstream if scheme == "http" else tls_upstream
    value = token()
    with plain.httpx_client() as client:
        response = client.put(server.url + "/httpx", content=JSON_BODY, headers={"X-Harness-Token": value})
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"
    (received,) = server.wait_for(1)
    assert received.body == JSON_BODY
    assert (b"X-Harness-Token", value.encode()) in received.headers
    plain.wait_for_output(f"PUT {server.url}/httpx")


def test_httpx_http2_client_leg(mitmdump: StartProxy, tls_upstream: RecordingUpstream) -> None:
    """HTTP/2 from client to proxy, HTTP/1.1 from proxy to upstream (lazy: see httpx_client)."""
    proxy = mitmdump(addon=False, options={"connection_strategy": "lazy"})
    value = token()
    with proxy.httpx_client(http2=True) as client:
        response = client.post(tls_upstream.url + "/h2", content=JSON_BODY, headers={"X-Harness-Token": value})
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    (received,) = tls_upstream.wait_for(1)
    assert received.version == "HTTP/1.1"
    assert received.body == JSON_BODY
    assert (b"x-harness-token", value.encode()) in received.headers  # HTTP/2 names are lowercase


# --- curl -----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_curl_through_proxy_ignores_proxy_environment(
    plain: MitmdumpProcess,
    upstream: RecordingUpstream,
    tls_upstream: RecordingUpstream,
    scheme: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy variable pointing at a closed port, and NO_PROXY for loopback: curl would fail
    # or bypass mitmdump if it saw them.
    monkeypatch.setenv("HTTPS_PROXY", f"http://{LOOPBACK}:{free_port()}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = upstream if scheme == "http" else tls_upstream
    value = token()
    result = curl(
        plain, server.url + "/curl",
        "-H", "Content-Type: application/json", "-H", f"X-Harness-Token: {value}",
        "--data-binary", "@-", "--write-out", "\n%{http_code}",
        input=JSON_BODY,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b'{"ok": true}\n200'
    (received,) = server.wait_for(1)
    assert received.body == JSON_BODY
    assert (b"X-Harness-Token", value.encode()) in received.headers
    plain.wait_for_output(f"POST {server.url}/curl")


# --- websockets -----------------------------------------------------------------------


def test_websocket_through_proxy(plain: MitmdumpProcess, ws_upstream: WebSocketUpstream) -> None:
    text = token()
    with plain.websocket(ws_upstream.url + "/chat", additional_headers={"X-Harness-Token": text}) as connection:
        connection.send(text)
        assert connection.recv(timeout=TIMEOUT) == text
        connection.send(b"\x00binary\xff")
        assert connection.recv(timeout=TIMEOUT) == b"\x00binary\xff"
    assert ws_upstream.wait_for(2) == [text, b"\x00binary\xff"]
    (handshake,) = ws_upstream.handshakes
    assert handshake.path == "/chat"
    assert handshake.header("x-harness-token") == text
    plain.wait_for_output(f"GET http://{LOOPBACK}:{ws_upstream.port}/chat")


def test_secure_websocket_through_proxy(plain: MitmdumpProcess, tls_material: TLSMaterial) -> None:
    text = token()
    with WebSocketUpstream(tls=tls_material) as server:
        with plain.websocket(server.url + "/secure") as connection:
            connection.send(text)
            assert connection.recv(timeout=TIMEOUT) == text
        assert server.wait_for(1) == [text]
    plain.wait_for_output(f"GET https://{LOOPBACK}:{server.port}/secure")


@pytest.mark.skipif(sys.version_info < (3, 12, 1), reason="asyncio's Server.wait_closed waits for open connections from 3.12.1 on")
def test_websocket_upstream_stop_is_bounded_by_a_peer_that_holds_on() -> None:
    """A connection that never finishes its opening handshake keeps the server's thread
    waiting (asyncio's server waits for every connection it accepted); `stop` gives up after
    its timeout and says what the server had seen, rather than holding the test until the
    peer lets go (a proxy's idle connection: minutes)."""
    server = WebSocketUpstream().start()
    with socket.create_connection((LOOPBACK, server.port)):  # says nothing: the handshake waits
        with pytest.raises(TimeoutError, match=r"did not stop within 0\.5s: .*0 opening handshake"):
            server.stop(timeout=0.5)


def test_websocket_upstream_answers_as_told(plain: MitmdumpProcess) -> None:
    """Instead of echoing: a greeting first, then each message's answer (None: no answer)."""

    def answer(message: WebSocketMessage, count: int) -> str | None:
        return None if message == "quiet" else f"ack {count}"

    with WebSocketUpstream(answer=answer, greeting="hello") as server:
        with plain.websocket(server.url + "/told") as connection:
            assert connection.recv(timeout=TIMEOUT) == "hello"
            connection.send("quiet")
            connection.send("loud")
            assert connection.recv(timeout=TIMEOUT) == "ack 2"
        assert server.wait_for(2) == ["quiet", "loud"]


# --- the recording upstream itself (raw sockets, no proxy) ----------------------------


def test_upstream_records_raw_framing_trailers_and_expect(upstream: RecordingUpstream) -> None:
    request = (
        b"POST /raw?x=%3C%3C HTTP/1.1\r\n"
        b"hOsT: example\r\n"
        b"X-B: 2\r\n"
        b"x-a:   spaced value  \r\n"
        b"Expect: 100-continue\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    answer = raw_exchange(upstream.port, request)
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\n" + b'{"ok": true}')
    (received,) = upstream.wait_for(1)
    assert received.raw == request
    assert received.target == "/raw?x=%3C%3C"
    assert received.path == "/raw"
    assert received.headers[:3] == [(b"hOsT", b"example"), (b"X-B", b"2"), (b"x-a", b"spaced value")]
    assert received.body == b"hello!"
    assert received.chunked
    assert received.trailers == [(b"X-Trailer", b"t")]


def test_upstream_all_bytes_keeps_partial_requests_and_survives_clear(upstream: RecordingUpstream) -> None:
    complete = b"GET /complete HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    raw_exchange(upstream.port, complete)
    upstream.wait_for(1)
    upstream.clear()
    assert upstream.requests == []
    partial = f"GET /{token()} HTTP/1.1\r\nHost: x\r\n".encode()  # never finished
    with socket.create_connection((LOOPBACK, upstream.port), timeout=TIMEOUT) as sock:
        sock.sendall(partial)
        wait_until(lambda: partial in upstream.all_bytes(), TIMEOUT, "the partial request to arrive")
    assert upstream.all_bytes().startswith(complete)
    assert upstream.requests == []


# --- misbehaving upstreams ------------------------------------------------------------


@pytest.mark.parametrize("use_tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("behaviour", ["reset", "hang", "malformed"])
def test_misbehaving_upstream_fails_the_request_and_proxy_keeps_serving(
    plain: MitmdumpProcess, tls_material: TLSMaterial, behaviour: str, use_tls: bool
) -> None:
    healthy = Reply(body=b"still fine")
    with RecordingUpstream(tls_material if use_tls else None, behaviour=behaviour, routes={"/fine": healthy}) as server:
        with plain.requests_session() as session:
            if behaviour == "hang":
                # The upstream never answers: only the client's own read timeout ends the wait.
                with pytest.raises(requests.ReadTimeout):
                    session.get(server.url + "/bad", timeout=(TIMEOUT, 1))
            else:
                assert session.get(server.url + "/bad", timeout=TIMEOUT).status_code == 502
            (received,) = server.wait_for(1)
            assert received.path == "/bad"
            fine = session.get(server.url + "/fine", timeout=TIMEOUT)
        assert fine.status_code == 200
        assert fine.content == b"still fine"
    assert plain.is_running()


# --- proxy process management ---------------------------------------------------------


def test_upstream_certificate_is_verified_against_the_given_ca(
    mitmdump: StartProxy, tls_upstream: RecordingUpstream, tmp_path: Path
) -> None:
    """ssl_verify_upstream_trusted_ca is in force: trusting another CA breaks the connection."""
    proxy = mitmdump(addon=False, upstream_ca=make_tls_material(tmp_path / "other-ca").ca_cert)
    with proxy.requests_session() as session:
        response = session.get(tls_upstream.url + "/untrusted", timeout=TIMEOUT)
    assert response.status_code == 502
    assert b"certificate verify failed" in response.content.lower()
    assert tls_upstream.requests == []


def test_proxy_that_cannot_listen_reports_its_output(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        proxy = MitmdumpProcess(tmp_path, addon=False, port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="(?i)address already in use"):
            proxy.start()
    assert not proxy.is_running()


def test_stop_ends_the_process_and_frees_the_port(mitmdump: StartProxy) -> None:
    proxy = mitmdump(addon=False)
    pid, port = proxy.pid, proxy.port
    assert is_listening(pid, port)
    assert proxy.ca_path.is_file()
    proxy.stop()
    assert not proxy.is_running()
    assert not is_listening(pid, port)


# --- moto -----------------------------------------------------------------------------


def test_moto_secret_round_trip_and_reset(moto: MotoServer) -> None:
    client = moto.client()
    value = token()
    created = client.create_secret(Name="harness/db", SecretString=value)
    assert created["ARN"].startswith(f"arn:aws:secretsmanager:us-east-1:{ACCOUNT_ID}:secret:harness/db-")
    assert client.get_secret_value(SecretId="harness/db")["SecretString"] == value
    assert moto.client("sts").get_caller_identity()["Account"] == ACCOUNT_ID
    moto.reset()
    with pytest.raises(ClientError) as caught:
        client.get_secret_value(SecretId="harness/db")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_moto_reachable_from_a_child_through_the_default_credential_chain(moto: MotoServer, tmp_path: Path) -> None:
    moto.client().create_secret(Name="harness/child", SecretString=token())
    script = "import boto3; print(boto3.client('secretsmanager').describe_secret(SecretId='harness/child')['Name'])"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=TIMEOUT,
        env=child_env(moto.aws_env(), home=tmp_path), check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "harness/child"


# --- environment isolation ------------------------------------------------------------


def test_environment_is_isolated() -> None:
    """Only the isolation settings themselves remain of *_PROXY, AWS_* and VAULTPROXY_*."""
    remaining = {name for name in os.environ if is_isolated(name)}
    assert remaining == {"AWS_EC2_METADATA_DISABLED", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"}
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
    assert not Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"]).exists()


def test_child_env_drops_proxies_aws_and_vaultproxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("http_proxy", "HTTPS_PROXY", "NO_PROXY", "AWS_PROFILE", "VAULTPROXY_PASSPHRASE"):
        monkeypatch.setenv(name, "inherited")
    env = child_env({"VAULTPROXY_HOME": str(tmp_path)}, home=tmp_path)
    assert not [name for name, value in env.items() if value == "inherited"]
    assert env["VAULTPROXY_HOME"] == str(tmp_path)
    assert env["HOME"] == str(tmp_path)


def test_vault_home(vault_home: Path) -> None:
    assert os.environ["VAULTPROXY_HOME"] == str(vault_home)
    assert vault_home.is_dir() and not any(vault_home.iterdir())
    assert stat.S_IMODE(vault_home.stat().st_mode) == 0o700
