"""End to end: WebSocket messages through a real mitmdump with the vaultproxy addon.

Client-to-server messages are resolved (JSON text messages with JSON escaping, other messages
raw) over ws and wss; server-to-client messages are never touched; a message with a refused
key is dropped while the connection lives on; and what mitmproxy records (the dumper's full
output, a `-w` flow file, a HAR file) shows placeholders, never values.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from mitmproxy import io

from tests.support.net import LOOPBACK
from tests.support.proxy import MitmdumpProcess, StartProxy, audit_lines, audit_text
from tests.support.tls import TLSMaterial
from tests.support.upstream import WebSocketMessage, WebSocketUpstream
from vaultcore.vault import Vault

TIMEOUT = 60
VALUE = 'sk_live_Zq9Ws "quoted" \\ ✓'
ELSEWHERE_VALUE = "sk_live_Zq9WsElsewhere"
LEAK_TOKEN = "sk_live_Zq9Ws"  # a prefix of both values, kept by JSON escaping
GREETING = "greeting <<vault:ws.k>>"  # the upstream's first message to each client


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("vault-home")
    vault = Vault(home)
    vault.set("ws.k", VALUE, hosts=[LOOPBACK])
    vault.set("ws.elsewhere", ELSEWHERE_VALUE, hosts=["elsewhere.example.org"])
    return home


def proxy_options(home: Path) -> dict[str, str | int]:
    return {"vault_home": str(home), "flow_detail": 4}  # the dumper prints every message in full


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial, home: Path) -> Iterator[MitmdumpProcess]:
    process = MitmdumpProcess(tmp_path_factory.mktemp("websocket"), upstream_ca=tls_material.ca_cert, options=proxy_options(home))
    with process:
        yield process
    assert LEAK_TOKEN not in process.output()
    assert LEAK_TOKEN not in audit_text(home)


def acknowledge(message: WebSocketMessage, count: int) -> str:
    """The upstream's answer: "ack N", never the message, so that mitmproxy's records of the
    conversation must hold no value at all."""
    return f"ack {count}"


@pytest.fixture(params=["ws", "wss"])
def upstream(request: pytest.FixtureRequest, tls_material: TLSMaterial) -> Iterator[WebSocketUpstream]:
    tls = tls_material if request.param == "wss" else None
    with WebSocketUpstream(tls, answer=acknowledge, greeting=GREETING) as server:
        yield server


def test_client_messages_are_resolved(proxy: MitmdumpProcess, upstream: WebSocketUpstream) -> None:
    with proxy.websocket(f"{upstream.url}/socket?auth=<<vault:ws.k>>") as connection:
        connection.recv(TIMEOUT)
        connection.send("token=<<vault:ws.k>>")
        connection.send(b"binary:<<vault:ws.k>>")
        assert upstream.wait_for(2, TIMEOUT) == [f"token={VALUE}", b"binary:" + VALUE.encode()]
    # The handshake is an HTTP request like any other: its URL is resolved too.
    assert [handshake.path for handshake in upstream.handshakes] == ["/socket?auth=" + quote(VALUE, safe="")]
    proxy.wait_for_output("token=<<vault:ws.k>>")  # the dumper printed the message, as sent


def test_json_text_message_gets_json_escaping(proxy: MitmdumpProcess, upstream: WebSocketUpstream) -> None:
    with proxy.websocket(f"{upstream.url}/json") as connection:
        connection.send('{"auth": "<<vault:ws.k>>", "n": 1}')
        (received,) = upstream.wait_for(1, TIMEOUT)
    assert isinstance(received, str)
    assert json.loads(received) == {"auth": VALUE, "n": 1}
    assert r'\"quoted\" \\' in received  # escaped, not raw: the message is still valid JSON


def test_server_messages_are_never_resolved_and_their_placeholders_are_neutralised(
    proxy: MitmdumpProcess, upstream: WebSocketUpstream
) -> None:
    """A server's placeholder is no request of the client's: it must not come back resolvable."""
    with proxy.websocket(f"{upstream.url}/greeting") as connection:
        assert connection.recv(TIMEOUT) == GREETING.replace("<<vault:", "<<blocked-vault:")
        connection.send("reply <<vault:ws.k>>")  # while the client's own messages are resolved
        assert upstream.wait_for(1, TIMEOUT) == [f"reply {VALUE}"]


def test_message_with_refused_key_is_dropped_and_connection_kept(
    proxy: MitmdumpProcess, upstream: WebSocketUpstream, home: Path
) -> None:
    before = len(audit_lines(home, "/refused", count=0))  # both parameters' lines go to one log
    with proxy.websocket(f"{upstream.url}/refused") as connection:
        connection.recv(TIMEOUT)
        connection.send("a <<vault:ws.elsewhere>>")
        connection.send("b <<vault:no.such.key>>")
        connection.send("c <<VAULT:ws.k>>")
        connection.send("d <<vault:ws.k>>")
        # Messages keep their order on one connection: had a refused one gone through, the
        # upstream would have received it first.
        assert upstream.wait_for(1, TIMEOUT) == [f"d {VALUE}"]
        assert connection.recv(TIMEOUT) == "ack 1"  # the connection still works both ways
    output = proxy.output()
    dropped = "GET 127.0.0.1/refused [{}]: dropped a WebSocket message: {}"
    assert "vaultproxy: refused:host_not_allowed " + dropped.format("ws.elsewhere", "secret 'ws.elsewhere' is not allowed") in output
    assert "vaultproxy: refused:unknown_key " + dropped.format("no.such.key", "unknown key 'no.such.key'") in output
    assert "vaultproxy: refused:malformed_placeholder " + dropped.format("ws.k", "the placeholder for 'ws.k' is malformed") in output
    assert [(line["keys"], line["outcome"]) for line in audit_lines(home, "/refused", count=before + 4)][-4:] == [
        (["ws.elsewhere"], "refused:host_not_allowed"),
        (["no.such.key"], "refused:unknown_key"),
        (["ws.k"], "refused:malformed_placeholder"),
        (["ws.k"], "resolved"),
    ]


@pytest.mark.parametrize("upstream", ["ws"], indirect=True)
def test_saved_flows_show_placeholders_in_messages(
    mitmdump: StartProxy, home: Path, tmp_path: Path, upstream: WebSocketUpstream
) -> None:
    flows_path, har_path = tmp_path / "flows.mitm", tmp_path / "flows.har"
    proxy = mitmdump(options={**proxy_options(home), "hardump": str(har_path)}, args=["-w", str(flows_path)])
    sent = ["one <<vault:ws.k>>", '{"two": "<<vault:ws.k>>"}', "three <<vault:ws.elsewhere>>", "last <<vault:ws.k>>"]
    with proxy.websocket(upstream.url + "/saved?auth=<<vault:ws.k>>") as connection:
        for message in sent:
            connection.send(message)
        assert upstream.wait_for(3, TIMEOUT) == [f"one {VALUE}", json.dumps({"two": VALUE}, ensure_ascii=False), f"last {VALUE}"]
    proxy.wait_for_output("WebSocket connection closed by client")
    assert proxy.stop() == 0  # mitmdump writes the HAR file on exit

    assert LEAK_TOKEN.encode() not in flows_path.read_bytes()
    with flows_path.open("rb") as f:
        (flow,) = [flow for flow in io.FlowReader(f).stream() if flow.websocket is not None]
    assert flow.request.path == "/saved?auth=<<vault:ws.k>>"
    client_messages = [(m.text, m.dropped) for m in flow.websocket.messages if m.from_client]
    assert client_messages == [(sent[0], False), (sent[1], False), (sent[2], True), (sent[3], False)]
    har_text = har_path.read_text()
    assert LEAK_TOKEN not in har_text
    assert "last <<vault:ws.k>>" in har_text  # the HAR file does hold the messages
