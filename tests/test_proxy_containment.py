"""End to end: secret values reach the upstream and nothing else.

One proxy run sends a mix of traffic that uses the vault: resolved requests (URL, headers,
cookies, JSON, form and gzip bodies, HTTP/1.1 and HTTP/2, a streamed body), a request whose
upstream resets the connection, refused requests (host, origin, unknown key, illegal header
value), and one request that uses no secret. Everything mitmproxy records of that run is then
read back: the `-w` flow file (raw bytes and every decoded part through FlowReader), the HAR
file, mitmdump's full dump of every request (flow_detail=4) and the audit log. The upstreams'
recordings show the values went out, so their absence from the records means something.
Finally `vault_redact_responses` is checked with an upstream that echoes the request.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from mitmproxy import http, io

from tests.support.net import LOOPBACK
from tests.support.proxy import EXAMPLE_HOSTS, MitmdumpProcess, StartProxy, audit_lines
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply
from vaultcore.vault import Vault

TIMEOUT = 60
ALLOWED = [LOOPBACK, "api.example.com"]
SECRETS = {
    "c.url": ("sk_live_Zq9CtUrl/&=?", ALLOWED),
    "c.hdr": ("sk_live_Zq9CtHdr", ALLOWED),
    "c.cookie": ("sk_live_Zq9CtCookie", ALLOWED),
    "c.json": ('sk_live_Zq9CtJson "quoted"', ALLOWED),
    "c.form": ("sk_live_Zq9CtForm &=+", ALLOWED),
    "c.gzip": ("sk_live_Zq9CtGzip", ALLOWED),
    "c.stream": ("sk_live_Zq9CtStream", ALLOWED),
    "c.h2": ("sk_live_Zq9CtHttp2", ALLOWED),
    "c.reset": ("sk_live_Zq9CtReset", ALLOWED),
    "c.elsewhere": ("sk_live_Zq9CtElsewhere", ["elsewhere.example.org"]),
    "c.multiline": ("sk_live_Zq9CtMulti\r\nX-Injected: 1", ALLOWED),
}
TOKEN = "sk_live_Zq9Ct"  # a prefix of every value that survives every escaping used here
FORBIDDEN = (TOKEN, *(base64.b64encode(value.encode()).decode()[:16] for value, _ in SECRETS.values()))
STREAMED_PAD = b"." * 100_000  # above stream_large_bodies


def leaks(data: bytes | str) -> list[str]:
    """The forbidden forms found in `data` (a token, not the value, so failures print no value)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return [form for form in FORBIDDEN if form in text]


@dataclass
class Run:
    """What one proxy run sent, what the upstreams received, and everything mitmproxy recorded."""

    upstream: list[RecordedRequest]
    tls_upstream: list[RecordedRequest]
    reset_upstream_bytes: bytes
    responses: dict[str, requests.Response]
    flows: list[http.HTTPFlow]
    flow_bytes: bytes
    har: dict[str, Any]
    har_text: str
    output: str
    audit: list[dict[str, Any]]

    def flow(self, path: str) -> http.HTTPFlow:
        (found,) = [f for f in self.flows if f.request.path.split("?")[0] == path]
        return found


def send_traffic(
    proxy: MitmdumpProcess, plain: RecordingUpstream, tls: RecordingUpstream, reset: RecordingUpstream
) -> dict[str, requests.Response]:
    """Every kind of request the records must hold without values; the HTTP/1.1 responses by path."""
    responses = {}
    with proxy.requests_session() as session:

        def send(method: str, base: str, path: str, **kwargs: Any) -> None:
            responses[path.split("?")[0]] = session.request(method, base + path, timeout=TIMEOUT, **kwargs)

        send("GET", plain.url, "/url/<<vault:c.url>>?q=<<vault:c.url>>&plain=1")
        send("POST", tls.url_for("api.example.com"), "/headers-json", headers={
            "Authorization": "Bearer <<vault:c.hdr>>", "Cookie": "session=<<vault:c.cookie>>",
            "Content-Type": "application/json",
        }, data=b'{"secret": "<<vault:c.json>>"}')
        send("POST", plain.url, "/form", data=b"password=<<vault:c.form>>",
             headers={"Content-Type": "application/x-www-form-urlencoded"})
        send("POST", plain.url, "/gzip", data=gzip.compress(b'{"secret": "<<vault:c.gzip>>"}'),
             headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        send("POST", plain.url, "/streamed", data=b"secret=<<vault:c.stream>>;" + STREAMED_PAD,
             headers={"Content-Type": "text/plain", "X-Key": "<<vault:c.hdr>>"})
        send("GET", reset.url, "/reset?q=<<vault:c.reset>>", headers={"X-Key": "<<vault:c.reset>>"})
        send("GET", plain.url, "/refused-host", headers={"X-Key": "<<vault:c.elsewhere>>"})
        send("GET", plain.url, "/refused-unknown", headers={"X-Key": "<<vault:no.such.key>>"})
        send("POST", plain.url, "/refused-origin", headers={"Origin": "https://evil.example", "X-Key": "<<vault:c.hdr>>"})
        send("GET", plain.url, "/refused-illegal", headers={"X-Key": "<<vault:c.multiline>>"})
        send("GET", plain.url, "/no-secret", headers={"X-Plain": "nothing to resolve"})
    with proxy.httpx_client(http2=True) as client:
        response = client.get(tls.url + "/http2", headers={"X-Key": "<<vault:c.h2>>"})
    assert (response.http_version, response.status_code) == ("HTTP/2", 200)
    return responses


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial) -> Iterator[Run]:
    home = tmp_path_factory.mktemp("vault-home")
    vault = Vault(home)
    for key, (value, hosts) in SECRETS.items():
        vault.set(key, value, hosts=hosts)
    records = tmp_path_factory.mktemp("records")
    flows_path, har_path = records / "flows.mitm", records / "flows.har"
    proxy = MitmdumpProcess(
        tmp_path_factory.mktemp("containment"), upstream_ca=tls_material.ca_cert, hosts=EXAMPLE_HOSTS,
        options={
            "vault_home": str(home), "flow_detail": 4, "hardump": str(har_path),
            "stream_large_bodies": "64k", "connection_strategy": "lazy",  # lazy: HTTP/2 to the proxy
        },
        args=["-w", str(flows_path)],
    )
    with (
        RecordingUpstream() as plain,
        RecordingUpstream(tls=tls_material) as tls,
        RecordingUpstream(behaviour="reset") as reset,
    ):
        with proxy:
            responses = send_traffic(proxy, plain, tls, reset)
            proxy.wait_for_output(f"GET {tls.url}/http2")  # the last flow was dumped: all of them were
        assert proxy.stop() == 0  # mitmdump writes the HAR file and flushes -w on exit
        with flows_path.open("rb") as f:
            flows = [flow for flow in io.FlowReader(f).stream() if isinstance(flow, http.HTTPFlow)]
        har_text = har_path.read_text()
        yield Run(
            upstream=plain.requests, tls_upstream=tls.requests, reset_upstream_bytes=reset.all_bytes(),
            responses=responses, flows=flows, flow_bytes=flows_path.read_bytes(),
            har=json.loads(har_text), har_text=har_text, output=proxy.output(),
            audit=audit_lines(home),
        )


def received(run: Run, path: str) -> RecordedRequest:
    (request,) = [r for r in run.upstream + run.tls_upstream if r.path == path]
    return request


def test_values_did_reach_the_upstreams(run: Run) -> None:
    # Without this, finding no value in the records below would prove nothing.
    url = quote(SECRETS["c.url"][0], safe="")
    assert received(run, f"/url/{url}").target == f"/url/{url}?q={url}&plain=1"
    headers_json = received(run, "/headers-json")
    assert headers_json.header("Authorization") == f"Bearer {SECRETS['c.hdr'][0]}"
    assert headers_json.header("Cookie") == f"session={SECRETS['c.cookie'][0]}"
    assert headers_json.json() == {"secret": SECRETS["c.json"][0]}
    assert received(run, "/form").body == b"password=" + quote(SECRETS["c.form"][0], safe="").encode().replace(b"%20", b"+")
    assert gzip.decompress(received(run, "/gzip").body) == b'{"secret": "sk_live_Zq9CtGzip"}'
    assert received(run, "/streamed").body == b"secret=sk_live_Zq9CtStream;" + STREAMED_PAD
    assert received(run, "/http2").header("X-Key") == SECRETS["c.h2"][0]
    assert SECRETS["c.reset"][0].encode() in run.reset_upstream_bytes  # sent, then the connection was reset
    assert run.responses["/reset"].status_code == 502  # mitmproxy's answer to the failed upstream


def test_refused_requests_got_the_proxys_answer_and_sent_nothing(run: Run) -> None:
    expected = {
        "/refused-host": (403, "host_not_allowed", "c.elsewhere"),
        "/refused-unknown": (400, "unknown_key", "no.such.key"),
        "/refused-origin": (403, "origin_not_allowed", "c.hdr"),
        "/refused-illegal": (400, "illegal_value", "c.multiline"),
    }
    for path, (status, code, key) in expected.items():
        response = run.responses[path]
        assert (response.status_code, response.headers["X-Vaultproxy-Error"]) == (status, code), path
        assert repr(key) in response.text and not leaks(response.text)
    assert not [r for r in run.upstream if r.path.startswith("/refused")]


def flow_texts(flow: http.HTTPFlow) -> list[str]:
    """Every part of a flow a viewer could show, decoded (a gzip body would hide a value from a grep)."""
    parts = [flow.request.url, *flow.request.headers.values(), flow.request.get_text(strict=False) or ""]
    if flow.response is not None:
        parts += [*flow.response.headers.values(), flow.response.get_text(strict=False) or ""]
    if flow.error is not None:
        parts.append(flow.error.msg)
    return parts


def test_flow_file_holds_placeholders_and_no_value(run: Run) -> None:
    assert leaks(run.flow_bytes) == []
    assert len(run.flows) == 12
    for flow in run.flows:
        assert leaks("\n".join(flow_texts(flow))) == [], flow.request.path
    assert run.flow("/url/%3C%3Cvault:c.url%3E%3E").request.query["q"] == "<<vault:c.url>>"
    headers_json = run.flow("/headers-json").request
    assert headers_json.headers["Authorization"] == "Bearer <<vault:c.hdr>>"
    assert headers_json.headers["Cookie"] == "session=<<vault:c.cookie>>"
    assert headers_json.json() == {"secret": "<<vault:c.json>>"}
    assert run.flow("/form").request.urlencoded_form["password"] == "<<vault:c.form>>"
    gzipped = run.flow("/gzip").request
    assert gzipped.headers["Content-Encoding"] == "gzip" and gzipped.get_content() == b'{"secret": "<<vault:c.gzip>>"}'
    streamed = run.flow("/streamed").request
    assert streamed.headers["X-Key"] == "<<vault:c.hdr>>" and streamed.raw_content is None  # streamed: not recorded
    assert run.flow("/http2").request.headers["X-Key"] == "<<vault:c.h2>>"
    reset = run.flow("/reset")
    assert reset.error is not None and reset.response is None
    assert reset.request.headers["X-Key"] == "<<vault:c.reset>>" and reset.request.query["q"] == "<<vault:c.reset>>"
    refused = run.flow("/refused-host")
    assert refused.request.headers["X-Key"] == "<<vault:c.elsewhere>>"
    assert refused.response is not None and refused.response.headers["X-Vaultproxy-Error"] == "host_not_allowed"


def har_strings(node: Any) -> Iterator[str]:
    """Every string in a HAR document, base64 content decoded as well."""
    if isinstance(node, dict):
        if node.get("encoding") == "base64" and isinstance(node.get("text"), str):
            yield base64.b64decode(node["text"]).decode("utf-8", "replace")
        for child in node.values():
            yield from har_strings(child)
    elif isinstance(node, list):
        for child in node:
            yield from har_strings(child)
    elif isinstance(node, str):
        yield node


def test_har_file_holds_placeholders_and_no_value(run: Run) -> None:
    assert leaks(run.har_text) == []
    assert leaks("\n".join(har_strings(run.har))) == []
    entries = {entry["request"]["url"].split("?")[0].rsplit("/", 1)[-1]: entry for entry in run.har["log"]["entries"]}
    assert len(entries) == 12
    headers_json = entries["headers-json"]["request"]
    assert {"name": "Authorization", "value": "Bearer <<vault:c.hdr>>"} in headers_json["headers"]
    assert {"name": "session", "value": "<<vault:c.cookie>>"} in headers_json["cookies"]
    assert headers_json["postData"]["text"] == '{"secret": "<<vault:c.json>>"}'
    assert entries["gzip"]["request"]["postData"]["text"] == '{"secret": "<<vault:c.gzip>>"}'
    assert {"name": "q", "value": "<<vault:c.reset>>"} in entries["reset"]["request"]["queryString"]
    assert entries["reset"]["response"]["_error"]


def test_full_dump_of_every_request_holds_no_value(run: Run) -> None:
    assert leaks(run.output) == []
    # flow_detail=4 did print requests in full: the placeholders are there.
    shown_parts = (
        "Authorization: Bearer <<vault:c.hdr>>", '"secret": "<<vault:c.json>>"', "password: <<vault:c.form>>",
        '"secret": "<<vault:c.gzip>>"', "X-Key: <<vault:c.reset>>", "x-key: <<vault:c.h2>>",
    )
    for shown in shown_parts:
        assert shown in run.output
    refused = "vaultproxy: refused:illegal_value GET 127.0.0.1/refused-illegal [c.multiline]: the value of 'c.multiline' contains CR, LF or NUL"
    assert refused in run.output


def test_audit_log_has_one_line_per_vault_request_without_values(run: Run) -> None:
    assert leaks(json.dumps(run.audit)) == []
    for line in run.audit:
        assert set(line) == {"time", "method", "host", "path", "keys", "outcome"}
        assert datetime.fromisoformat(line["time"]).tzinfo is not None
        assert "?" not in line["path"]  # the query is where values go
    summary = [(line["method"], line["host"], line["path"], line["keys"], line["outcome"]) for line in run.audit]
    assert sorted(summary) == sorted([
        ("GET", LOOPBACK, "/url/%3C%3Cvault:c.url%3E%3E", ["c.url"], "resolved"),
        ("POST", "api.example.com", "/headers-json", ["c.hdr", "c.cookie", "c.json"], "resolved"),
        ("POST", LOOPBACK, "/form", ["c.form"], "resolved"),
        ("POST", LOOPBACK, "/gzip", ["c.gzip"], "resolved"),
        ("POST", LOOPBACK, "/streamed", ["c.hdr", "c.stream"], "resolved"),
        ("GET", LOOPBACK, "/reset", ["c.reset"], "resolved"),  # resolved and sent; the upstream failed after
        ("GET", LOOPBACK, "/refused-host", ["c.elsewhere"], "refused:host_not_allowed"),
        ("GET", LOOPBACK, "/refused-unknown", ["no.such.key"], "refused:unknown_key"),
        ("POST", LOOPBACK, "/refused-origin", ["c.hdr"], "refused:origin_not_allowed"),
        ("GET", LOOPBACK, "/refused-illegal", ["c.multiline"], "refused:illegal_value"),
        ("GET", LOOPBACK, "/http2", ["c.h2"], "resolved"),
    ])  # and none for /no-secret


@pytest.mark.parametrize("redact", [True, False])
def test_redact_responses_hides_an_echoed_value_from_the_client(
    mitmdump: StartProxy, upstream: RecordingUpstream, tmp_path: Path, redact: bool
) -> None:
    home = tmp_path / "home"
    Vault(home).set("c.echo", "sk_live_Zq9CtEcho", hosts=[LOOPBACK])
    upstream.route("/echo", Reply(echo=True))
    proxy = mitmdump(options={"vault_home": str(home), "vault_redact_responses": redact})
    with proxy.requests_session() as session:
        response = session.post(
            upstream.url + "/echo", data=b"token=<<vault:c.echo>>", headers={"Content-Type": "text/plain"}, timeout=TIMEOUT,
        )
    (sent,) = upstream.wait_for(1)
    assert sent.body == b"token=sk_live_Zq9CtEcho"  # the wire always carries the value
    assert response.content == (b"token=<<vault:c.echo>>" if redact else b"token=sk_live_Zq9CtEcho")
    assert response.headers["Content-Length"] == str(len(response.content))
