"""A WebSocket's control frames toward the client, checked as its messages are.

mitmproxy relays a server's close frame (whose reason a page's script reads, and the flow
records) and its pings and pongs with no hook: a server's echo of a value the socket carried,
or a placeholder it planted, went to the client as it came. The one place they pass is
`WebsocketConnection.send2` (the same in mitmproxy 11 and 12), which `install` wraps for the
frames it sends to a client. The recorded close reason is cleaned in the addon's
`websocket_end`.
"""

from __future__ import annotations

from collections.abc import Callable

import wsproto.events
from mitmproxy import connection
from mitmproxy.proxy.layers import websocket

CLOSE_REASON_MAX = 123  # bytes of UTF-8 a close frame's reason may hold (RFC 6455, 5.5)
PAYLOAD_MAX = 125  # bytes a ping or pong may carry
CONTROL = (wsproto.events.CloseConnection, wsproto.events.Ping, wsproto.events.Pong)

Clean = Callable[[bytes], bytes]
CleanFor = Callable[[connection.Client], Clean]

_clean_for: CleanFor | None = None
_send2 = websocket.WebsocketConnection.send2


def install(clean_for: CleanFor | None) -> None:
    """Have control frames toward a client cleaned by `clean_for(that client)` (None: not at all,
    as when no vaultproxy runs). mitmproxy's class is wrapped once, whatever the reloads."""
    global _clean_for
    _clean_for = clean_for
    websocket.WebsocketConnection.send2 = _checked_send2  # type: ignore[method-assign]


def _checked_send2(self: websocket.WebsocketConnection, event: wsproto.events.Event) -> object:
    if isinstance(event, CONTROL) and _clean_for is not None and isinstance(self.conn, connection.Client):
        event = cleaned(event, _clean_for(self.conn))
    return _send2(self, event)


def cleaned(event: wsproto.events.Event, clean: Clean) -> wsproto.events.Event:
    """A close frame's reason, a ping's or pong's payload, cleaned and cut to what the frame
    may hold (a cut can only shorten a placeholder the cleaning wrote); any other event as it is."""
    if isinstance(event, wsproto.events.CloseConnection) and event.reason:
        reason = clean(event.reason.encode())[:CLOSE_REASON_MAX].decode("utf-8", "ignore")
        return wsproto.events.CloseConnection(event.code, reason)
    if isinstance(event, (wsproto.events.Ping, wsproto.events.Pong)) and event.payload:
        return type(event)(payload=clean(bytes(event.payload))[:PAYLOAD_MAX])
    return event
