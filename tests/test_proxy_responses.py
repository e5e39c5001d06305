"""End to end: what comes back from upstream.

- A server that holds no secret plants placeholders (a redirect's Location, a Refresh header,
  a page or JSON body): curl -L and python-requests follow or re-send them, and the allowed
  host must never receive the value.
- Redaction is on by default: a server echoing the values a request used, in the encodings
  servers use (JSON escapes, percent-encoding, base64, HTML entities), in headers and bodies,
  whole or streamed in small pieces (a value split across chunks, server-sent events,
  gzip), shows the client and the flow file only placeholders.
"""

from __future__ import annotations

import base64
import codecs
import gzip
import html
import io as io_module
import json
import re
import socket
import subprocess
import zlib
from pathlib import Path
from urllib.parse import quote, quote_plus

import brotli
import pytest
from mitmproxy import io
from mitmproxy.net import encoding as mitmproxy_encoding
from mitmproxy.test import tflow, tutils

from tests.support.env import child_env
from tests.support.h2upstream import Http2Upstream
from tests.support.net import LOOPBACK, wait_until
from tests.support.proxy import CLIENT_TIMEOUT, EXAMPLE_HOSTS, MitmdumpProcess, StartProxy, curl
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply
from vaultcore.vault import Vault
from vaultproxy import codings, responses

TOKEN = "sk_live_Zq9Rsp"
VALUE = TOKEN + "Echo/+&<'\"é ok"  # characters every encoding below changes
NAME_VALUE = TOKEN + "Name-0a1b"  # a value a header name can hold
PLANTED = "%3C%3Cvault%3Arsp.tok%3E%3E"


def forms_of(value: str) -> dict[str, str]:
    """How servers echo a value (what the response must not show)."""
    return {
        "json": json.dumps(value)[1:-1],
        "json-utf8": json.dumps(value, ensure_ascii=False)[1:-1],
        "json-go": json.dumps(value, ensure_ascii=False)[1:-1].replace("<", "\\u003c").replace("&", "\\u0026"),
        "json-php": json.dumps(value)[1:-1].replace("/", "\\/"),
        "percent": quote(value, safe=""),
        "percent-lower": re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(value, safe="")),
        "form": quote_plus(value),
        "base64": base64.b64encode(value.encode()).decode(),
        "base64url": base64.urlsafe_b64encode(value.encode()).decode().rstrip("="),
        "html": html.escape(value),
    }


def leaked(data: bytes) -> list[str]:
    text = data.decode("utf-8", "replace")
    found = [name for name, form in forms_of(VALUE).items() if form in text]
    return found + (["token"] if TOKEN in text else [])


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("vault-home")
    Vault(home).set("rsp.tok", VALUE, hosts=[LOOPBACK, "api.example.com"])
    Vault(home).set("rsp.name", NAME_VALUE, hosts=[LOOPBACK])
    return home


# Shared by the tests that need no other options: none changes the vault or the proxy, and
# each has upstreams of its own.
@pytest.fixture(scope="module")
def proxy(module_mitmdump: StartProxy, home: Path) -> MitmdumpProcess:
    return module_mitmdump(options={"vault_home": str(home)}, hosts=EXAMPLE_HOSTS)


@pytest.fixture(scope="module")
def streaming_proxy(module_mitmdump: StartProxy, home: Path) -> MitmdumpProcess:
    return module_mitmdump(options={"vault_home": str(home), "stream_large_bodies": "64"})


# --- placeholders a server plants ---------------------------------------------------------------


def planting_routes(target: RecordingUpstream) -> dict[str, Reply]:
    url = f"{target.url_for('api.example.com')}/spent"
    return {
        "/redirect-percent": Reply(status=302, body=b"", headers=(("Location", f"{url}?t={PLANTED}"),)),
        "/redirect-literal": Reply(status=302, body=b"", headers=(("Location", f"{url}?t=<<vault:rsp.tok>>"),)),
        "/redirect-double": Reply(status=302, body=b"", headers=(("Location", f"{url}?t={PLANTED.replace('%', '%25')}"),)),
        "/refresh": Reply(status=200, body=b"", headers=(("Refresh", f"0; url={url}?t={PLANTED}"),)),
    }


@pytest.mark.parametrize("route", ["/redirect-percent", "/redirect-literal", "/redirect-double", "/refresh"])
def test_a_planted_redirect_never_comes_back_resolved(
    proxy: MitmdumpProcess, tls_upstream: RecordingUpstream, route: str
) -> None:
    with RecordingUpstream(routes=planting_routes(tls_upstream)) as hostile:
        url = f"{hostile.url_for('127.0.0.1')}{route}"
        with proxy.requests_session() as session:
            response = session.get(url, timeout=CLIENT_TIMEOUT)
            location = response.history[0].headers["Location"] if response.history else response.headers["Refresh"]
            if route == "/refresh":  # a client that acts on Refresh requests what it names
                session.get(location.split("url=", 1)[1], timeout=CLIENT_TIMEOUT)
        followed = subprocess.run(
            ["curl", "-sS", "-L", "--proxy", proxy.url, "--noproxy", "", "--cacert", str(proxy.ca_path), url],
            capture_output=True, env=child_env(), timeout=CLIENT_TIMEOUT, check=False,
        )
    assert followed.returncode == 0, followed.stderr
    assert "vault" in location and "blocked-vault" in location
    assert len(tls_upstream.requests) == (1 if route == "/refresh" else 2), "the clients followed"  # curl ignores Refresh
    assert leaked(tls_upstream.all_bytes()) == []


def test_placeholders_planted_in_bodies_are_neutralised(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    """A page or an API answer that an agent reads and acts on: every spelling a client decodes."""
    planted = {
        "/json": (json.dumps({"next": "call /x?t=<<vault:rsp.tok>>"}).replace("<", "\\u003c").encode(), False),
        "/html": (b"<a href='/x?t=&lt;&lt;vault:rsp.tok&gt;&gt;'>next</a>", False),
        "/gzip": (b"token: <<vault:rsp.tok>>", True),
    }
    for path, (body, compressed) in planted.items():
        upstream.route(path, Reply(body=body, gzip=compressed, headers=(("Content-Type", "text/html"),)))
    with proxy.requests_session() as session:
        for path in planted:
            text = session.get(f"{upstream.url}{path}", timeout=CLIENT_TIMEOUT).text
            decoded = html.unescape(json.loads(text)["next"] if path == "/json" else text)
            assert "<<vault:" not in decoded and "blocked-vault:rsp.tok" in decoded, (path, text)


# --- echoed values ------------------------------------------------------------------------------


def received_value(request: RecordedRequest) -> str:
    """The X-Token header as sent (UTF-8; the recorder decodes header bytes as latin-1)."""
    return (request.header("x-token") or "").encode("latin-1").decode("utf-8")


def echo_every_form(request: RecordedRequest) -> tuple[list[tuple[str, str]], bytes]:
    """A server that reflects the X-Token it received in its headers and, in every encoding,
    in its body."""
    value = received_value(request)
    forms = forms_of(value)
    headers = [("Location", f"/next?t={forms['percent']}"), ("Set-Cookie", f"t={forms['base64url']}"), ("X-Echo", value.encode().decode("latin-1"))]
    return headers, "".join(f"{name}: {form}\n" for name, form in forms.items()).encode()


def test_echoed_values_are_redacted_by_default(mitmdump: StartProxy, home: Path, upstream: RecordingUpstream, tmp_path: Path) -> None:
    upstream.route("/echo", Reply(respond=echo_every_form, headers=(("Content-Type", "application/json"),)))
    flows = tmp_path / "flows"
    proxy = mitmdump(options={"vault_home": str(home), "flow_detail": 4}, args=["-w", str(flows)])
    with proxy.requests_session() as session:
        response = session.get(f"{upstream.url}/echo", headers={"X-Token": "<<vault:rsp.tok>>"}, timeout=CLIENT_TIMEOUT)
    assert upstream.requests[-1].header("x-token") == VALUE.encode().decode("latin-1")  # the value went out
    received = b"".join(f"{k}: {v}\n".encode("utf-8", "surrogateescape") for k, v in response.headers.items()) + response.content
    assert leaked(received) == []
    assert response.headers["X-Echo"] == "<<vault:rsp.tok>>"
    assert response.content.count(b"<<vault:rsp.tok>>") >= len(forms_of(VALUE))
    proxy.stop()
    assert leaked(flows.read_bytes()) == [] and leaked(proxy.output().encode()) == []
    with flows.open("rb") as f:
        (flow,) = list(io.FlowReader(f).stream())
    assert leaked(flow.response.content or b"") == []


@pytest.mark.parametrize("kind", ["plain", "sse", "gzip"])
def test_streamed_echoes_split_across_chunks_are_redacted(
    streaming_proxy: MitmdumpProcess, upstream: RecordingUpstream, kind: str
) -> None:
    """The response arrives in 7-byte pieces, so every value straddles chunk boundaries."""

    def respond(request: RecordedRequest) -> tuple[list[tuple[str, str]], bytes]:
        value = received_value(request)
        body = b"".join(f"data: {value} {form}\n\n".encode() for form in forms_of(value).values())
        return [], gzip.compress(body) if kind == "gzip" else body

    content_type = "text/event-stream" if kind == "sse" else "text/plain"
    headers = (("Content-Type", content_type), *((("Content-Encoding", "gzip"),) if kind == "gzip" else ()))
    upstream.route("/stream", Reply(respond=respond, headers=headers, trickle=7))
    with streaming_proxy.requests_session() as session:
        response = session.get(f"{upstream.url}/stream", headers={"X-Token": "<<vault:rsp.tok>>"}, timeout=CLIENT_TIMEOUT)
    assert response.status_code == 200
    assert leaked(response.content) == []
    assert response.content.count(b"<<vault:rsp.tok>>") == 2 * len(forms_of(VALUE))


def test_redaction_can_be_turned_off(mitmdump: StartProxy, home: Path, upstream: RecordingUpstream) -> None:
    upstream.route("/echo", Reply(respond=echo_every_form))
    proxy: MitmdumpProcess = mitmdump(options={"vault_home": str(home), "vault_redact_responses": False})
    with proxy.requests_session() as session:
        response = session.get(f"{upstream.url}/echo", headers={"X-Token": "<<vault:rsp.tok>>"}, timeout=CLIENT_TIMEOUT)
    assert "json" in leaked(response.content)


def test_responses_to_requests_without_secrets_are_left_alone(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    body = b"binary \x00\xff payload " * 1000
    upstream.route("/plain", Reply(body=body, gzip=True, headers=(("Content-Type", "application/octet-stream"),)))
    with proxy.requests_session() as session:
        response = session.get(f"{upstream.url}/plain", timeout=CLIENT_TIMEOUT)
    assert response.content == body and response.headers["Content-Encoding"] == "gzip"


# --- answers that try to slip past the checks ------------------------------------------------
# A hostile server chooses its framing, codings, status line and trailers; whatever it picks,
# the client gets no value and no live placeholder. These servers answer with raw bytes.

PLANT = b"<<vault:rsp.planted>>"


def echo_and_plant(request: RecordedRequest) -> bytes:
    """The value the request carried, twice, and a placeholder for the client to send back."""
    value = received_value(request).encode()
    return b"echo " + value + b" and " + PLANT + b" then " + value + b" " + b"." * 200


def chunked(body: bytes, trailers: bytes = b"", size: int = 50) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n" + trailers + b"\r\n"


def raw_reply(head: str, body: bytes) -> Reply:
    return Reply(raw=lambda request: head.encode() + b"\r\n" + body)


def through(proxy: MitmdumpProcess, url: str, headers: dict[str, str] | None = None) -> bytes:
    """Every byte a client reads for a GET through the proxy (HTTP/1.1: framing, trailers and
    status line included), until the proxy closes the connection."""
    lines = [f"GET {url} HTTP/1.1", f"Host: {url.split('/')[2]}", "Connection: close", "Accept-Encoding: identity",
             *(f"{name}: {value}" for name, value in (headers or {}).items())]
    with socket.create_connection((LOOPBACK, proxy.port), timeout=CLIENT_TIMEOUT) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        received = bytearray()
        while chunk := conn.recv(65536):
            received += chunk
    return bytes(received)


def clean(data: bytes) -> bool:
    return leaked(data) == [] and PLANT not in data and PLANT.replace(b"<", b"%3C") not in data


@pytest.mark.parametrize("framing", ["chunked", "until-close"])
def test_a_body_that_outgrows_stream_large_bodies_unannounced_is_still_cleaned(
    streaming_proxy: MitmdumpProcess, upstream: RecordingUpstream, framing: str,
) -> None:
    """A body whose size is not known up front is buffered, and mitmproxy starts streaming it
    once it outgrows stream_large_bodies, with no hook in between: it must be streamed through
    the checks from its start instead."""
    head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + ("Transfer-Encoding: chunked\r\n" if framing == "chunked" else "Connection: close\r\n")
    upstream.route("/late", Reply(raw=lambda request: head.encode() + b"\r\n" + (
        chunked(echo_and_plant(request)) if framing == "chunked" else echo_and_plant(request))))
    with streaming_proxy.requests_session() as session:
        response = session.get(f"{upstream.url}/late", headers={"X-Token": "<<vault:rsp.tok>>"}, timeout=CLIENT_TIMEOUT)
    assert response.status_code == 200 and b"blocked-vault:rsp.planted" in response.content
    assert clean(response.content), response.content


@pytest.mark.parametrize(("status", "length"), [(204, False), (304, False), (204, True), (304, True)])
def test_a_body_an_http2_server_sends_where_none_belongs_is_still_cleaned(
    mitmdump: StartProxy, home: Path, tls_material: TLSMaterial, status: int, length: bool,
) -> None:
    """HTTP/1 framing allows no body after 204 or 304, but an HTTP/2 server can still send
    DATA frames there, with or without a Content-Length (h2 only holds a server to one it
    gives). mitmproxy buffers them and, past stream_large_bodies, sends them on with no hook."""
    proxy = mitmdump(options={"vault_home": str(home), "stream_large_bodies": "1k"}, hosts=EXAMPLE_HOSTS)

    def answer(headers: dict[bytes, bytes], body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        echo = (b"echo " + headers[b"x-token"] + b" and " + PLANT + b"\n") * 100
        return status, [(b"content-type", b"text/plain"), *([(b"content-length", b"%d" % len(echo))] if length else [])], echo

    with Http2Upstream(tls_material, answer) as upstream, proxy.httpx_client(http2=True) as client:
        response = client.get(f"https://api.example.com:{upstream.port}/none", headers={"X-Token": "<<vault:rsp.tok>>"})
    assert response.http_version == "HTTP/2" and response.status_code == status
    neutralised = b"blocked-vault:rsp.planted" in response.content
    assert neutralised and clean(response.content), leaked(response.content)


def test_an_http2_answer_to_head_keeps_its_content_length(mitmdump: StartProxy, home: Path, tls_material: TLSMaterial) -> None:
    """A HEAD asks for a size: the check above must not take it away (h2 refuses DATA there)."""
    proxy = mitmdump(options={"vault_home": str(home), "stream_large_bodies": "1k"}, hosts=EXAMPLE_HOSTS)
    with Http2Upstream(tls_material, lambda headers, body: (200, [(b"content-length", b"12345")], b"")) as upstream:
        with proxy.httpx_client(http2=True) as client:
            response = client.head(f"https://api.example.com:{upstream.port}/file", headers={"X-Token": "<<vault:rsp.tok>>"})
    assert response.http_version == "HTTP/2" and response.status_code == 200 and response.headers["content-length"] == "12345"


def test_a_binary_download_still_has_its_placeholders_neutralised(streaming_proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    """The server picks the media type: a streamed octet-stream is checked like any other body."""
    body = b"\x00\xff" * 100 + b" run: curl /x?t=" + PLANT + b" " + b"\x00" * 100
    upstream.route("/bin", Reply(body=body, headers=(("Content-Type", "application/octet-stream"),)))
    with streaming_proxy.requests_session() as session:
        content = session.get(f"{upstream.url}/bin", timeout=CLIENT_TIMEOUT).content
    assert PLANT not in content and b"blocked-vault:rsp.planted" in content and content.startswith(b"\x00\xff")


def gzip_members(body: bytes) -> bytes:
    """Two gzip members: clients decode both, mitmproxy's decoder only the first."""
    return gzip.compress(b"harmless ") + gzip.compress(body)


CODED_BODIES = {
    "x-gzip": ("x-gzip", gzip.compress),
    "stacked": ("gzip, gzip", lambda body: gzip.compress(gzip.compress(body))),
    "members": ("gzip", gzip_members),
    "raw-deflate": ("deflate", lambda body: zlib.compress(body)[2:-4]),
}


@pytest.mark.parametrize("coding", list(CODED_BODIES))
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_bodies_in_codings_clients_decode_are_decoded_in_full_before_the_check(
    proxy: MitmdumpProcess, streaming_proxy: MitmdumpProcess, upstream: RecordingUpstream, coding: str, streamed: bool,
) -> None:
    """What urllib3 (requests) decodes, the proxy decodes before it checks: x-gzip, stacked
    codings, every member of a gzip body, deflate without its zlib header."""
    content_encoding, encode = CODED_BODIES[coding]
    upstream.route("/coded", Reply(respond=lambda request: ([("Content-Encoding", content_encoding)], encode(echo_and_plant(request))),
                                   headers=(("Content-Type", "text/plain"),)))
    with (streaming_proxy if streamed else proxy).requests_session() as session:
        response = session.get(f"{upstream.url}/coded", headers={"X-Token": "<<vault:rsp.tok>>"}, timeout=CLIENT_TIMEOUT)
    assert response.status_code == 200 and b"blocked-vault:rsp.planted" in response.content
    assert clean(response.content), response.content
    assert upstream.requests[-1].header("x-token") == VALUE.encode().decode("latin-1")  # the value went out


TRANSFER_CODED = {
    "gzip-chunked": ("gzip, chunked", lambda body: chunked(gzip.compress(body))),
    "deflate-chunked": ("deflate, chunked", lambda body: chunked(zlib.compress(body))),
    "gzip-until-close": ("gzip", gzip.compress),
}


@pytest.mark.parametrize("coding", list(TRANSFER_CODED))
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_a_transfer_coding_is_undone_before_the_check(
    proxy: MitmdumpProcess, streaming_proxy: MitmdumpProcess, upstream: RecordingUpstream, coding: str, streamed: bool,
) -> None:
    """mitmproxy takes only `chunked` off a body and leaves a transfer coding such as gzip on
    it; curl undoes that unasked. A hostile server that answered `Transfer-Encoding: gzip,
    chunked` had the value it echoed, and its planted placeholder, reach the client as they were."""
    transfer_encoding, encode = TRANSFER_CODED[coding]
    head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: {transfer_encoding}\r\nConnection: close\r\n"
    upstream.route("/te", Reply(raw=lambda request: head.encode() + b"\r\n" + encode(echo_and_plant(request))))
    answer = curl(streaming_proxy if streamed else proxy, f"{upstream.url}/te", "--compressed", "--tr-encoding", "-H", "X-Token: <<vault:rsp.tok>>")
    assert answer.returncode == 0 and b"blocked-vault:rsp.planted" in answer.stdout, answer.stderr
    assert clean(answer.stdout), answer.stdout
    assert upstream.requests[-1].header("x-token") == VALUE.encode().decode("latin-1")  # the value went out


@pytest.mark.parametrize(("method", "status", "moved"), [("GET", 200, True), ("HEAD", 200, False), ("GET", 304, False)])
def test_a_transfer_coding_becomes_a_content_coding_only_where_a_body_follows(method: str, status: int, moved: bool) -> None:
    """A 304's headers update a cache's stored response: a Content-Encoding there would be
    taken for the stored body's."""
    flow = tflow.tflow(req=tutils.treq(method=method.encode()), resp=tutils.tresp(status_code=status))
    flow.response.headers["transfer-encoding"] = "gzip, chunked"
    del flow.response.headers["content-length"]
    responses.transfer_codings_as_content(flow)
    assert (flow.response.headers.get("content-encoding"), flow.response.headers["transfer-encoding"]) == (
        ("gzip", "chunked") if moved else (None, "gzip, chunked"))


# How a server may spell its text so that ASCII is not ASCII: (Content-Type fields, the body
# from the text, how its client reads the body, whether a stream is read so too). Most lead
# with a character whose UTF-16 holds no NUL, so that no guess from NULs reads them.
LEAD = "\u4e2d\u4e2d "
CHARSET_BODIES = {
    "utf-16": (["text/plain; charset=utf-16"], lambda text: text.encode("utf-16"), "utf-16", True),
    "utf-16-bom-labelled-utf-8": (["text/html; charset=utf-8"], lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"), "utf-16", True),
    "utf-16-unmarked": (["text/html; charset=utf-16"], lambda text: (LEAD + text).encode("utf-16-le"), "utf-16-le", True),  # as browsers read it
    "utf-16-unmarked-big-endian": (["text/html; charset=utf-16"], lambda text: (LEAD + text).encode("utf-16-be"), "utf-16-be", False),  # as Java does
    "whatwg-unicode": (["text/html; charset=unicode"], lambda text: (LEAD + text).encode("utf-16-le"), "utf-16-le", True),
    "whatwg-unicodefffe": (["text/html; charset=unicodeFFFE"], lambda text: (LEAD + text).encode("utf-16-be"), "utf-16-be", True),
    "quoted-parameter": (['text/html; x="; charset=utf-8"; charset=utf-16le'], lambda text: (LEAD + text).encode("utf-16-le"), "utf-16-le", True),
    "second-content-type": (["text/html; charset=utf-8", "text/html; charset=utf-16le"], lambda text: (LEAD + text).encode("utf-16-le"), "utf-16-le", True),
    "utf-32le": (["text/plain; charset=UTF-32LE"], lambda text: (LEAD + text).encode("utf-32-le"), "utf-32-le", True),
    "utf-7": (["text/plain; charset=utf-7"], lambda text: text.encode("utf-7"), "utf-7", True),
    "ebcdic": (["text/plain; charset=cp037"], lambda text: text.encode("cp037"), "cp037", True),
    "json-utf-16-unlabelled": (["application/json"], lambda text: json.dumps(text).encode("utf-16-le"), "json", False),
    "json-string-utf-16-unlabelled": (["application/json"], lambda text: json.dumps(LEAD + text, ensure_ascii=False).encode("utf-16-be"), "json", False),
}


@pytest.mark.parametrize(("streamed", "charset"), [
    *(pytest.param(False, charset, id=f"whole-{charset}") for charset in CHARSET_BODIES),
    *(pytest.param(True, charset, id=f"streamed-{charset}") for charset, (*_, streams) in CHARSET_BODIES.items() if streams),
])
def test_text_in_a_charset_that_is_not_ascii_is_checked_as_its_client_reads_it(
    proxy: MitmdumpProcess, streaming_proxy: MitmdumpProcess, upstream: RecordingUpstream, charset: str, streamed: bool,
) -> None:
    """The checks read bytes as ASCII: a server that answered in UTF-16 (by a charset, the
    WHATWG's names for it, a byte order mark, which browsers obey first), UTF-32, UTF-7 or
    EBCDIC, or with JSON in UTF-16 that names no charset (json.loads and requests' `.json()`
    guess it from its NULs), had its client read the value it echoed and its planted
    placeholder. (A stream is read in the byte order browsers read and by no guess:
    docs/security.md.)"""
    content_types, encode, read_as, _ = CHARSET_BODIES[charset]
    upstream.route("/text", Reply(respond=lambda request: ([("Content-Type", value) for value in content_types], encode(echo_and_plant(request).decode())),
                                  headers=()))
    with (streaming_proxy if streamed else proxy).requests_session() as session:
        response = session.get(f"{upstream.url}/text", headers={"X-Token": "<<vault:rsp.tok>>"}, timeout=CLIENT_TIMEOUT)
    assert response.status_code == 200
    text = json.loads(response.content) if read_as == "json" else response.content.decode(read_as)
    assert "blocked-vault:rsp.planted" in text and clean(text.encode()), text
    assert upstream.requests[-1].header("x-token") == VALUE.encode().decode("latin-1")  # the value went out


def test_a_charset_is_read_after_an_unknown_coding_was_dropped(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    """The Content-Encoding field before the Content-Type, in a coding the proxy drops."""
    head = "HTTP/1.1 200 OK\r\nContent-Encoding: compress\r\nContent-Type: text/plain; charset=utf-16le\r\nConnection: close\r\n"
    upstream.route("/both", Reply(raw=lambda request: head.encode() + b"\r\n" + (LEAD + echo_and_plant(request).decode()).encode("utf-16-le")))
    with proxy.requests_session() as session:
        response = session.get(f"{upstream.url}/both", headers={"X-Token": "<<vault:rsp.tok>>"}, timeout=CLIENT_TIMEOUT)
    assert response.status_code == 200 and "Content-Encoding" not in response.headers
    text = response.content.decode("utf-16-le")
    assert "blocked-vault:rsp.planted" in text and clean(text.encode()), text


BROKEN_UTF16 = b"\x00\xd8"  # a lone surrogate: browsers read U+FFFD, and the rest as text


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_text_that_does_not_decode_in_its_charset_is_checked_as_read_with_replacements(
    proxy: MitmdumpProcess, streaming_proxy: MitmdumpProcess, upstream: RecordingUpstream, streamed: bool,
) -> None:
    """A body with a broken unit does not decode, but a browser reads the rest all the same:
    what it would read is checked. Whole, such a body that holds something to change is
    withheld (it cannot be encoded back as it was); streamed, it goes on as read."""
    upstream.route("/broken", Reply(respond=lambda request: ([], echo_and_plant(request).decode().encode("utf-16-le") + BROKEN_UTF16 + b"x\x00" * 40),
                                   headers=(("Content-Type", "text/plain; charset=utf-16le"),)))
    active = streaming_proxy if streamed else proxy
    received = through(active, f"{upstream.url}/broken", {"X-Token": "<<vault:rsp.tok>>"})
    status = received.split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 200" if streamed else b"HTTP/1.1 502"), received
    assert clean(received.decode("utf-16-le", "replace").encode()), received
    assert clean(received[1:].decode("utf-16-le", "replace").encode()), received  # the other alignment


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_a_download_that_starts_like_a_byte_order_mark_goes_as_it_came(
    proxy: MitmdumpProcess, streaming_proxy: MitmdumpProcess, upstream: RecordingUpstream, streamed: bool,
) -> None:
    """FF FE opens an MPEG audio frame as well as UTF-16: a binary body that does not decode
    in it, and shows nothing to change read so, is neither withheld nor changed."""
    payload = b"\xff\xfe" + BROKEN_UTF16 + bytes(range(256)) * 4
    upstream.route("/bin", Reply(body=payload, headers=(("Content-Type", "application/octet-stream"),)))
    with (streaming_proxy if streamed else proxy).requests_session() as session:
        response = session.get(f"{upstream.url}/bin", timeout=CLIENT_TIMEOUT)
    assert (response.status_code, response.content) == (200, payload)


# 2 GiB of zeros in 2 MB (gzip) or 68 KB (zstd): members of 16 MiB each, which clients decode
# one after the other. The proxy decodes at most 64 MiB in one step: with its copies of that,
# and mitmdump's own 100 MB, it stays well under this (about 270 MB measured).
BOMB_MEMBERS = 128
MEMORY_BOUND = 512 << 20


def bomb(coding: str) -> bytes:
    return mitmproxy_encoding.encode(b"\0" * (16 << 20), coding) * BOMB_MEMBERS


@pytest.mark.parametrize(("coding", "streamed"), [("gzip", False), ("zstd", False), ("zstd", True)])
def test_a_decompression_bomb_is_not_decoded_past_a_bound(
    proxy: MitmdumpProcess, streaming_proxy: MitmdumpProcess, upstream: RecordingUpstream, coding: str, streamed: bool,
) -> None:
    """A few kilobytes that inflate to gigabytes would take the proxy's memory (every client's
    proxy, from any server one visits): decoding stops at a bound, and what could not be
    decoded in full is not passed on. (A streamed gzip chunk barely can inflate past the
    bound, deflate's ratio being 1032:1 at most: that case is in test_codings.py.)"""
    body = bomb(coding)
    upstream.route("/bomb", Reply(respond=lambda request: ([("Content-Encoding", coding)], body), headers=(("Content-Type", "text/plain"),)))
    active = streaming_proxy if streamed else proxy
    received = through(active, f"{upstream.url}/bomb")
    status = received.split(b"\r\n", 1)[0]
    if streamed:
        assert status.startswith(b"HTTP/1.1 200") and len(received) < 70 << 20, status
        assert not received.endswith(b"0\r\n\r\n"), "the client must see the body cut, not ended"
        wait_until(lambda: "decodes to more than 64 MiB" in active.output(), CLIENT_TIMEOUT, "the log line")
    else:
        assert status.startswith(b"HTTP/1.1 502") and b"response_too_large" in received, received[:500]
        wait_until(lambda: "withheld a response" in active.output(), CLIENT_TIMEOUT, "the log line")
    assert active.peak_memory() < MEMORY_BOUND, active.peak_memory()


def test_a_header_name_is_checked_too(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    """A server can echo a value as a header's name, or spell a placeholder in one (percent
    signs are allowed in names): such a field is dropped. (Trailers go the same way; mitmproxy
    reads them from HTTP/2 and 3 upstreams only.)"""
    def names(request: RecordedRequest) -> tuple[list[tuple[str, str]], bytes]:
        return [(f"X-{request.header('x-token')}", "1"), ("X-%3C%3Cvault%3Arsp.tok%3E%3E", "2"), ("X-Kept", "3")], b"ok"

    upstream.route("/names", Reply(respond=names, headers=(("Content-Type", "text/plain"),)))
    received = through(proxy, f"{upstream.url}/names", {"X-Token": "<<vault:rsp.name>>"})
    head = received.split(b"\r\n\r\n", 1)[0]
    assert NAME_VALUE.encode() not in received
    assert [line for line in head.split(b"\r\n") if line.startswith(b"X-")] == [b"X-Kept: 3"]
    assert upstream.requests[-1].header("x-token") == NAME_VALUE


def test_br_is_asked_for_and_decoded_only_where_brotli_is_bounded(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    """Brotli 1.1, which mitmproxy 11 pins, cannot bound what one call decodes (1,681 bytes of
    br yield 616 MiB at once): there the proxy asks servers for no br, and withholds a br body
    a server sends anyway. mitmproxy 12's Brotli decodes within the bound."""
    text = b"checked " * 100
    upstream.route("/br", Reply(respond=lambda request: ([("Content-Encoding", "br")], brotli.compress(text)), headers=(("Content-Type", "text/plain"),)))
    with proxy.requests_session() as session:
        answer = session.get(f"{upstream.url}/br", headers={"Accept-Encoding": "gzip, br"}, timeout=CLIENT_TIMEOUT)
    asked = upstream.requests[-1].header("accept-encoding")
    if codings.BROTLI_BOUNDED:
        assert (asked, answer.status_code, answer.content) == ("gzip, br", 200, text)
    else:
        assert (asked, answer.status_code, answer.headers.get("X-Vaultproxy-Error")) == ("gzip, br;q=0", 502, "undecodable_response")
        assert "Brotli 1.1" in answer.text


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("coding", ["gzip-cut-short", "gzip-then-garbage"])
def test_a_body_that_does_not_decode_is_not_passed_on(
    proxy: MitmdumpProcess, streaming_proxy: MitmdumpProcess, upstream: RecordingUpstream, coding: str, streamed: bool,
) -> None:
    """A body that does not decode as its Content-Encoding says cannot be checked: whole, it is
    withheld (502); streamed, it is cut off where decoding fails (what came before was
    checked). Never passed on unchecked."""
    encodings = {
        "gzip-cut-short": lambda body: gzip.compress(body)[:-12],
        "gzip-then-garbage": lambda body: gzip.compress(b"harmless") + b"garbage " + body,
    }
    upstream.route("/odd", Reply(respond=lambda request: ([("Content-Encoding", "gzip")], encodings[coding](echo_and_plant(request))),
                                 headers=(("Content-Type", "text/plain"),)))
    active = streaming_proxy if streamed else proxy
    received = through(active, f"{upstream.url}/odd", {"X-Token": "<<vault:rsp.tok>>"})
    assert clean(received) and b"garbage" not in received, received
    status = received.split(b"\r\n", 1)[0]
    if streamed:
        assert status.startswith(b"HTTP/1.1 200") and not received.endswith(b"0\r\n\r\n"), received  # cut, not ended
        wait_until(lambda: "cut short a streamed response" in active.output(), CLIENT_TIMEOUT, "the log line")
    else:
        assert status.startswith(b"HTTP/1.1 502") and b"undecodable_response" in received, received
        wait_until(lambda: "withheld a response" in active.output(), CLIENT_TIMEOUT, "the log line")


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("coding", ["compress", "none", "utf-8"])
def test_a_body_in_a_coding_the_proxy_does_not_know_goes_as_it_was_checked(
    proxy: MitmdumpProcess, streaming_proxy: MitmdumpProcess, upstream: RecordingUpstream, coding: str, streamed: bool,
) -> None:
    """A server may label a body with a coding the proxy cannot undo (or a sloppy one, `none`,
    a charset): it is checked as it is and goes without the label, so no client can read it
    otherwise than it was checked."""
    upstream.route("/odd", Reply(respond=lambda request: ([("Content-Encoding", coding)], echo_and_plant(request)),
                                 headers=(("Content-Type", "text/plain"),)))
    with (streaming_proxy if streamed else proxy).requests_session() as session:
        response = session.get(f"{upstream.url}/odd", headers={"X-Token": "<<vault:rsp.tok>>"}, timeout=CLIENT_TIMEOUT)
    assert response.status_code == 200 and "Content-Encoding" not in response.headers
    assert response.content.startswith(b"echo <<vault:rsp.tok>> and <<blocked-vault:rsp.planted>>"), response.content
    assert clean(response.content)


def test_the_status_line_is_checked_too(mitmdump: StartProxy, home: Path, upstream: RecordingUpstream, tmp_path: Path) -> None:
    """A reason phrase is the server's to fill: an echo there is redacted and a placeholder
    neutralised, for the client and in the flow file. (Trailers are too, but mitmproxy reads
    them from HTTP/2 and 3 upstreams only: tests/test_addon_unit.py.)"""

    def respond(request: RecordedRequest) -> bytes:
        value = received_value(request).encode()
        return b"HTTP/1.1 200 OK " + value + b" " + PLANT + b"\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nbody"

    upstream.route("/line", Reply(raw=respond))
    flows = tmp_path / "flows"
    proxy = mitmdump(options={"vault_home": str(home)}, args=["-w", str(flows)])
    received = through(proxy, f"{upstream.url}/line", {"X-Token": "<<vault:rsp.tok>>"})
    status_line = received.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 200 OK <<vault:rsp.tok>> <<blocked-vault:rsp.planted>>", received
    assert clean(received) and received.endswith(b"body")
    proxy.stop()
    assert leaked(flows.read_bytes()) == []


def test_an_error_that_quotes_the_request_reaches_neither_client_nor_records(
    mitmdump: StartProxy, home: Path, upstream: RecordingUpstream, tmp_path: Path,
) -> None:
    """Something that is not HTTP at an allowed host's port echoes what it got: mitmproxy's
    error ("Bad HTTP response line: b'GET /?t=VALUE ...'") would go to the flow file, the log
    and, as a 502 page, to the client. The client gets no answer instead (its connection is cut); the log
    has the error with the placeholder."""
    upstream.route("/not-http", Reply(raw=lambda request: request.raw.split(b"\r\n", 1)[0] + b"\r\n\r\n"))
    flows = tmp_path / "flows"
    proxy = mitmdump(options={"vault_home": str(home)}, args=["-w", str(flows)])
    received = through(proxy, f"{upstream.url}/not-http?t=<<vault:rsp.tok>>")
    assert clean(received) and b"not-http" not in received, received  # killed: the connection closes with no answer
    proxy.stop()
    output = proxy.output()
    assert leaked(output.encode()) == [] and leaked(flows.read_bytes()) == []
    assert "/not-http?t=<<vault:rsp.tok>>" in output and "the client gets no answer: it would quote this" in output


def test_an_error_that_quotes_a_value_as_python_bytes_reaches_neither_client_nor_records(
    mitmdump: StartProxy, home: Path, upstream: RecordingUpstream, tmp_path: Path,
) -> None:
    """mitmproxy quotes what the server sent as Python's repr of bytes: a value's non-ASCII
    letters become \\xNN there, a quote \\', spellings no redaction looks for. A line-based
    service that complains about the header line it got ("-ERR unknown command 'X-Key: ...'")
    had the value in the flow file, the log and the client's 502."""
    upstream.route("/line-service", Reply(raw=lambda request: b"-ERR unknown command '" + next(
        line for line in request.raw.split(b"\r\n") if line.lower().startswith(b"x-key")) + b"'\r\n\r\n"))
    flows = tmp_path / "flows"
    proxy = mitmdump(options={"vault_home": str(home)}, args=["-w", str(flows)])
    received = through(proxy, f"{upstream.url}/line-service", {"X-Key": "<<vault:rsp.tok>>"})
    assert VALUE.encode() in upstream.requests[-1].raw  # the value went, and came back quoted
    assert clean(received) and b"line-service" not in received, received
    proxy.stop()
    output = proxy.output()
    assert leaked(output.encode()) == [] and leaked(flows.read_bytes()) == []
    assert "the client gets no answer: it would quote this" in output


def test_a_recorded_request_does_not_tell_the_values_length(mitmdump: StartProxy, home: Path, upstream: RecordingUpstream, tmp_path: Path) -> None:
    """A body placeholder changes Content-Length on the wire; the flow file keeps the length of
    the body it records (placeholders), not one that gives away the value's."""
    flows = tmp_path / "flows"
    proxy = mitmdump(options={"vault_home": str(home)}, args=["-w", str(flows)])
    body = json.dumps({"token": "<<vault:rsp.tok>>"}).encode()
    with proxy.requests_session() as session:
        session.post(f"{upstream.url}/post", data=body, headers={"Content-Type": "application/json"}, timeout=CLIENT_TIMEOUT)
    assert upstream.requests[-1].header("content-length") != str(len(body))  # the value went out
    proxy.stop()
    with flows.open("rb") as f:
        (flow,) = list(io.FlowReader(f).stream())
    assert flow.request.content == body and flow.request.headers["content-length"] == str(len(body))


def test_compressed_bytes_that_show_a_placeholder_in_the_clear_are_re_encoded(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    """A gzip header's name field is not compressed: a client that does not decode (curl
    without --compressed) reads it as it is. The body is checked decoded, and the bytes sent
    are checked too."""
    buffer = io_module.BytesIO()
    with gzip.GzipFile(filename=PLANT.decode(), mode="wb", fileobj=buffer, mtime=0) as compressed:
        compressed.write(b"a harmless body")
    assert PLANT in buffer.getvalue()
    upstream.route("/named", Reply(body=buffer.getvalue(), headers=(("Content-Type", "text/plain"), ("Content-Encoding", "gzip"))))
    received = through(proxy, f"{upstream.url}/named")
    assert PLANT not in received and gzip.decompress(received.split(b"\r\n\r\n", 1)[1]) == b"a harmless body"
