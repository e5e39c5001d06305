"""End to end: requests whose bodies mitmproxy streams (`stream_large_bodies`).

A streamed request's head leaves before the `request` hook, so the addon resolves its URL and
headers in `requestheaders` and substitutes the body chunk by chunk. These tests prove, with
the bytes the upstream received:
- every placeholder of a large body resolves, also where the chunks mitmproxy sees cut it
  (chunked uploads make those cuts deterministic), and the re-framed body is complete;
- a chunked upload, whose size mitmproxy only learns as it arrives, is resolved as well;
- binary uploads pass byte-identical with their Content-Length;
- a refused key in a streamed body stays a literal placeholder (its head has left already);
  a refused key in a streamed head closes the connection and sends nothing upstream;
- an HTTP/2 client's streamed body reaching an HTTP/1 upstream keeps a correct framing;
- `store_streamed_bodies` is refused at startup.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from mitmproxy.addons import proxyserver
from mitmproxy.test import taddons

from tests.support.net import LOOPBACK, wait_until
from tests.support.proxy import MitmdumpProcess, audit_lines, audit_text
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordingUpstream
from vaultcore.vault import Vault

TIMEOUT = 60
STREAM_ABOVE = "1k"
VALUE = 'sk_live_Zq9Strm "quoted" \\ ✓'  # needs JSON escaping
HEADER_VALUE = "sk_live_Zq9StrmHdr"
ELSEWHERE_VALUE = "sk_live_Zq9StrmElsewhere"  # bound to another host: must never be sent
TOKEN = "sk_live_Zq9Strm"  # a prefix of every value, kept by every escaping used here
PLACEHOLDER = b"<<vault:stream.k>>"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("vault-home")
    vault = Vault(home)
    vault.set("stream.k", VALUE, hosts=[LOOPBACK, "api.example.com"])
    vault.set("stream.hdr", HEADER_VALUE, hosts=[LOOPBACK, "api.example.com"])
    vault.set("elsewhere.k", ELSEWHERE_VALUE, hosts=["elsewhere.example.org"])
    return home


def streaming_proxy(
    tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial, home: Path, **options: str
) -> Iterator[MitmdumpProcess]:
    """A module's proxy streaming bodies above STREAM_ABOVE; at teardown its full request dumps
    (flow_detail=4) and the audit log hold no value."""
    process = MitmdumpProcess(
        tmp_path_factory.mktemp("streaming"), upstream_ca=tls_material.ca_cert,
        options={"vault_home": str(home), "stream_large_bodies": STREAM_ABOVE, "flow_detail": 4, **options},
    )
    with process:
        yield process
    assert TOKEN not in process.output()
    assert TOKEN not in audit_text(home)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial, home: Path) -> Iterator[MitmdumpProcess]:
    yield from streaming_proxy(tmp_path_factory, tls_material, home)


@pytest.fixture(scope="module")
def lazy_proxy(tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial, home: Path) -> Iterator[MitmdumpProcess]:
    """Lazy upstream connections: an HTTP/2 client then meets an HTTP/1-only upstream."""
    yield from streaming_proxy(tmp_path_factory, tls_material, home, connection_strategy="lazy")


def large_json(size: int) -> tuple[bytes, int]:
    """A JSON document of about `size` bytes with a placeholder every ~100 bytes, at offsets that
    drift (varying padding), so chunk boundaries fall inside some of them; and their count."""
    items, length = [], 0
    while length < size:
        item = {"n": len(items), "pad": "x" * (len(items) % 89), "token": "<<vault:stream.k>>"}
        items.append(item)
        length += len(json.dumps(item)) + 2
    return json.dumps(items).encode(), len(items)


def test_large_json_body_is_resolved_everywhere_with_its_head(
    proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path
) -> None:
    body, count = large_json(3 * 1024 * 1024)
    with proxy.requests_session() as session:
        response = session.post(
            upstream.url + "/large?q=<<vault:stream.k>>", data=body, timeout=TIMEOUT,
            headers={"Content-Type": "application/json", "Authorization": "Bearer <<vault:stream.hdr>>"},
        )
    assert response.status_code == 200
    (received,) = upstream.wait_for(1)
    # Re-framed, as only a streamed body is: values change the length.
    assert received.chunked and received.header("Content-Length") is None
    assert received.target == "/large?q=" + quote(VALUE, safe="")
    assert received.header("Authorization") == f"Bearer {HEADER_VALUE}"
    items = json.loads(received.body)  # complete, and still valid JSON: values were JSON-escaped
    assert [item["token"] for item in items] == [VALUE] * count
    assert [item["n"] for item in items] == list(range(count))
    assert PLACEHOLDER not in received.body
    (line,) = audit_lines(home, "/large")
    assert line["keys"] == ["stream.k", "stream.hdr"] and line["outcome"] == "resolved"


def split_everywhere() -> tuple[list[bytes], bytes]:
    """Chunks that cut the placeholder at every position (and hold nothing but a piece of it),
    plus the body the upstream must then receive."""
    chunks, expected = [], b""
    filler = b"." * 40
    for cut in range(1, len(PLACEHOLDER)):
        chunks += [filler + PLACEHOLDER[:cut], PLACEHOLDER[cut:] + filler]
        expected += filler + VALUE.encode() + filler
    chunks += [b"<<vau", b"lt:", b"stream.k", b">", b">"]  # one placeholder over five chunks
    expected += VALUE.encode()
    chunks += [b"<<vault:not a key>>", b"<<vault:", b"stream.k>", b"!"]  # not placeholders: untouched
    expected += b"<<vault:not a key>><<vault:stream.k>!"
    return chunks, expected


def test_placeholders_split_across_chunks_resolve(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    # A generator body is sent chunked, one chunk per item, and mitmproxy never merges chunks:
    # the substitution sees exactly these cuts. The body's size is unknown up front.
    chunks, expected = split_everywhere()
    assert sum(map(len, chunks)) > 1024
    with proxy.requests_session() as session:
        response = session.post(
            upstream.url + "/split?q=<<vault:stream.k>>", data=iter(chunks), timeout=TIMEOUT,
            headers={"Content-Type": "text/plain", "X-Key": "<<vault:stream.hdr>>"},
        )
    assert response.status_code == 200
    (received,) = upstream.wait_for(1)
    assert received.chunked
    assert received.body == expected
    assert received.target == "/split?q=" + quote(VALUE, safe="")
    assert received.header("X-Key") == HEADER_VALUE
    # No empty chunk reached the wire: that would have ended the body early.
    assert b"\r\n0\r\n\r\n" not in received.raw[: -len(b"0\r\n\r\n")]


def test_binary_body_passes_byte_identical_with_its_length(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    # Uploads are not requests users write placeholders into: a placeholder in one stays as it is.
    body = os.urandom(100_000) + PLACEHOLDER + os.urandom(100_000)
    streamed_before = proxy.output().count("Streaming request to")
    with proxy.requests_session() as session:
        response = session.put(
            upstream.url + "/upload", data=body, timeout=TIMEOUT,
            headers={"Content-Type": "application/octet-stream", "X-Key": "<<vault:stream.hdr>>"},
        )
    assert response.status_code == 200
    (received,) = upstream.wait_for(1)
    wait_until(lambda: proxy.output().count("Streaming request to") > streamed_before, TIMEOUT, "the streaming log line")
    assert not received.chunked
    assert received.header("Content-Length") == str(len(body))
    assert received.body == body
    assert received.header("X-Key") == HEADER_VALUE  # the head is still resolved


def test_refused_key_in_streamed_body_stays_literal(
    proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path
) -> None:
    # The head has gone upstream when the body shows a refused key: the request cannot be
    # refused any more, so that placeholder goes out as it is, and its value never does.
    body = b"a=<<vault:stream.k>>;b=<<vault:elsewhere.k>>;c=<<vault:no.such.key>>;" + b"." * 4096
    with proxy.requests_session() as session:
        response = session.post(
            upstream.url + "/refused-in-body", data=body, timeout=TIMEOUT, headers={"Content-Type": "text/plain"},
        )
    assert response.status_code == 200  # the upstream's answer
    (received,) = upstream.wait_for(1)
    assert received.body == b"a=" + VALUE.encode() + b";b=<<vault:elsewhere.k>>;c=<<vault:no.such.key>>;" + b"." * 4096
    assert ELSEWHERE_VALUE.encode() not in upstream.all_bytes()
    output = proxy.output()
    assert "left 'elsewhere.k' unresolved in a streamed body to 127.0.0.1" in output
    assert "left 'no.such.key' unresolved" in output
    (line,) = audit_lines(home, "/refused-in-body")
    assert line["outcome"] == "refused:host_not_allowed"
    assert line["keys"] == ["stream.k", "elsewhere.k", "no.such.key"]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_refused_key_in_streamed_head_sends_nothing(
    proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path, framing: str
) -> None:
    # mitmproxy cannot answer a request whose body it streams, so the proxy closes the
    # connection instead of sending its 403; the log and the audit log say why.
    body = b"." * 8192
    path = f"/refused-in-head-{framing}"
    with proxy.requests_session() as session, pytest.raises(requests.ConnectionError):
        session.post(
            upstream.url + path, data=body if framing == "content-length" else iter([body[:4096], body[4096:]]),
            headers={"X-Key": "<<vault:elsewhere.k>>"}, timeout=TIMEOUT,
        )
    assert upstream.all_bytes() == b""
    assert f"vaultproxy: refused:host_not_allowed POST 127.0.0.1{path} [elsewhere.k]: secret 'elsewhere.k' is not allowed" in proxy.output()
    (line,) = audit_lines(home, path)
    assert line["outcome"] == "refused:host_not_allowed" and line["keys"] == ["elsewhere.k"]


def test_http2_streamed_body_keeps_its_framing_to_an_http1_upstream(
    lazy_proxy: MitmdumpProcess, tls_upstream: RecordingUpstream
) -> None:
    # The HTTP/2 client's body has no chunked framing, and with lazy connections nobody knows
    # before it starts whether the upstream speaks HTTP/1: its length must not change, so its
    # placeholders stay literal. Were the Content-Length dropped, the upstream would read the
    # body as the next request (request smuggling).
    body = b'{"token": "<<vault:stream.k>>", "pad": "' + b"x" * 4096 + b'"}'
    with lazy_proxy.httpx_client(http2=True) as client:
        first = client.post(
            tls_upstream.url + "/h2-stream", content=body,
            headers={"Content-Type": "application/json", "X-Key": "<<vault:stream.hdr>>"},
        )
        second = client.post(tls_upstream.url + "/h2-after", content=b"second")
    assert first.http_version == "HTTP/2" and first.status_code == 200 and second.status_code == 200
    streamed, after = tls_upstream.wait_for(2)
    assert streamed.path == "/h2-stream" and after.path == "/h2-after"
    assert streamed.header("X-Key") == HEADER_VALUE
    assert not streamed.chunked and streamed.header("Content-Length") == str(len(body))
    assert streamed.body == body
    assert after.body == b"second"
    assert re.search(r"left 'stream\.k' unresolved in a streamed body to 127\.0\.0\.1: .*streamed HTTP/2 body", lazy_proxy.output())


def store_streamed_bodies_exists() -> bool:
    """mitmproxy 12 added the option (11 never records streamed bodies)."""
    with taddons.context(proxyserver.Proxyserver()) as context:
        return "store_streamed_bodies" in context.options


def test_store_streamed_bodies_is_refused_at_startup(tmp_path: Path, tls_material: TLSMaterial, home: Path) -> None:
    if not store_streamed_bodies_exists():
        pytest.skip("this mitmproxy has no store_streamed_bodies option")
    process = MitmdumpProcess(
        tmp_path, upstream_ca=tls_material.ca_cert,
        options={"vault_home": str(home), "stream_large_bodies": STREAM_ABOVE, "store_streamed_bodies": True},
    )
    # mitmdump may get to listen before the script's error ends it: wait for the exit either way.
    with contextlib.suppress(RuntimeError):
        process.start()
    try:
        wait_until(lambda: not process.is_running(), TIMEOUT, "mitmdump to exit")
    finally:
        status = process.stop()
    assert status != 0
    assert "vaultproxy: store_streamed_bodies would record substituted values; turn it off" in process.output()
