"""End to end: `vault_redact_responses` also covers WebSocket messages a server echoes.

The echoing upstream receives the value (that is where it is allowed to go); the client,
the dumper and the `-w` flow file see the placeholder in the echoed message instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mitmproxy import io

from tests.support.net import LOOPBACK
from tests.support.proxy import StartProxy
from tests.support.upstream import WebSocketUpstream
from vaultcore.vault import Vault

VALUE = "sk_live_Zq9WsEcho"


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
