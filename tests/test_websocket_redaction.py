"""End to end: `vault_redact_responses` also covers WebSocket messages a server echoes.

The echoing upstream receives the value (that is where it is allowed to go); the client,
the dumper and the `-w` flow file see the placeholder in the echoed message instead. So in
the reason a server closes the socket with, which mitmproxy relays with no hook.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mitmproxy import io
from websockets.exceptions import ConnectionClosed

from tests.support.net import LOOPBACK
from tests.support.proxy import StartProxy
from tests.support.upstream import WebSocketMessage, WebSocketUpstream
from vaultcore.vault import Vault

VALUE = "sk_live_Zq9WsEcho"
ROTATED = "sk_live_Zq9WsRotated"


@pytest.mark.parametrize("redact", [True, False], ids=["redacted", "not-redacted"])
def test_echoed_websocket_values_are_redacted(
    mitmdump: StartProxy, ws_upstream: WebSocketUpstream, vault_home: Path, tmp_path: Path, redact: bool
) -> None:
    Vault(vault_home).set("ws.echo", VALUE, hosts=[LOOPBACK])
    flows = tmp_path / "flows.mitm"
    proxy = mitmdump(
        options={"vault_home": str(vault_home), "vault_redact_responses": redact, "flow_detail": 4},
        args=["-w", str(flows)],
    )
    with proxy.websocket(ws_upstream.url) as connection:
        connection.send("token <<vault:ws.echo>>")
        echoed = connection.recv(timeout=30)
    assert ws_upstream.wait_for(1) == [f"token {VALUE}"]
    assert echoed == ("token <<vault:ws.echo>>" if redact else f"token {VALUE}")
    proxy.stop()
    (flow,) = list(io.FlowReader(flows.open("rb")).stream())
    server_messages = [m.content for m in flow.websocket.messages if not m.from_client]
    client_messages = [m.content for m in flow.websocket.messages if m.from_client]
    assert client_messages == [b"token <<vault:ws.echo>>"]
    if redact:
        assert server_messages == [b"token <<vault:ws.echo>>"]
        assert VALUE not in proxy.output() and VALUE.encode() not in flows.read_bytes()
    else:
        assert server_messages == [f"token {VALUE}".encode()]


def test_a_value_rotated_while_a_socket_is_open_stays_redacted_in_both_versions(
    mitmdump: StartProxy, vault_home: Path
) -> None:
    """The server echoes everything it was sent, so its last answer holds the value from before
    the rotation beside the one after: a socket's redaction covers every version it carried."""
    vault = Vault(vault_home)
    vault.set("ws.echo", VALUE, hosts=[LOOPBACK])
    heard: list[str] = []

    def everything_so_far(message: WebSocketMessage, count: int) -> str:
        heard.append(message if isinstance(message, str) else message.decode())
        return " | ".join(heard)

    proxy = mitmdump(options={"vault_home": str(vault_home)})
    with WebSocketUpstream(answer=everything_so_far) as upstream, proxy.websocket(upstream.url) as connection:
        connection.send("token <<vault:ws.echo>>")
        assert connection.recv(timeout=30) == "token <<vault:ws.echo>>"
        vault.set("ws.echo", ROTATED, hosts=[LOOPBACK])
        connection.send("again <<vault:ws.echo>>")
        assert connection.recv(timeout=30) == "token <<vault:ws.echo>> | again <<vault:ws.echo>>"
        assert upstream.wait_for(2) == [f"token {VALUE}", f"again {ROTATED}"]


def test_a_close_reason_and_a_ping_are_checked_as_a_message_is(mitmdump: StartProxy, vault_home: Path, tmp_path: Path) -> None:
    """A page's script reads a close frame's reason (CloseEvent.reason): a server's echo of the
    value there, and a placeholder it plants, reached the client and the flow file as sent. A
    ping's payload was printed by mitmproxy's log as it came."""
    Vault(vault_home).set("ws.echo", VALUE, hosts=[LOOPBACK])
    flows = tmp_path / "flows.mitm"
    proxy = mitmdump(options={"vault_home": str(vault_home)}, args=["-w", str(flows)])
    with WebSocketUpstream(closing=lambda message: f"bye {message!s} <<vault:planted>>") as upstream:
        with proxy.websocket(upstream.url) as connection:
            connection.send("<<vault:ws.echo>>")
            with pytest.raises(ConnectionClosed) as closed:
                connection.recv(timeout=30)
        assert upstream.wait_for(1) == [VALUE]
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.reason == "bye <<vault:ws.echo>> <<blocked-vault:planted>>"
    proxy.stop()
    (flow,) = list(io.FlowReader(flows.open("rb")).stream())
    assert flow.websocket.close_reason == "bye <<vault:ws.echo>> <<blocked-vault:planted>>"
    assert VALUE.encode() not in flows.read_bytes()
    pinged = len(f"bye {VALUE} <<vault:planted>>")
    assert f"Received WebSocket ping from server (payload: {pinged} bytes, not shown by vaultproxy)" in proxy.output()
    assert VALUE not in proxy.output()
