"""A tunnel is read as its client speaks, whatever its server sends first.

mitmproxy decides what a connection carries, where its mode does not say (inside a CONNECT
tunnel, in transparent modes), from the first bytes that come through it. When the server's come
first, it passes the connection on as raw TCP, which no hook sees. HTTP and TLS clients always
speak first, and skip what such a server can send before its answer: a TLS warning alert before
the handshake (mitmproxy then passed the whole TLS session through, unread), an empty line before
a status line. So a hostile server's answers reached the client unchecked, placeholders it
planted intact, for the client to send back through the proxy to a host that has a secret.

Here the decision waits for the client's first bytes, and is the one mitmproxy makes when the
client speaks first: an HTTP client's tunnel is read as HTTP (mitmproxy drops a server's bytes
that come before a request, and connects again), an SSH client's (whose banner goes out at once)
stays raw. A TLS client's is closed: no TLS server speaks first, and mitmproxy's TLS layer cannot
take a server's bytes before its own handshake. A protocol whose client waits for the server's
greeting (SMTP, FTP) waits too, unless its host is in mitmproxy's `tcp_hosts`: like the hosts
mitmproxy ignores, those are left as the user asked.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from mitmproxy import ctx
from mitmproxy.proxy import commands, events, layers, mode_specs
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layer import CommandGenerator, Layer, NextLayer

logger = logging.getLogger(__name__)


class _ClientFirst:
    """What mitmproxy's own next-layer decision is shown of a connection: all but the server's
    bytes (its `next_layer` reads the layer set so far, the context, and the data of each side)."""

    def __init__(self, nextlayer: NextLayer) -> None:
        self.context = nextlayer.context
        self.layer: Layer | None = None
        self._data_client = nextlayer.data_client()

    def data_client(self) -> bytes:
        return self._data_client

    def data_server(self) -> bytes:
        return b""


def read_as_the_client_speaks(nextlayer: NextLayer, decide: Callable[[_ClientFirst], None]) -> None:
    """After mitmproxy's NextLayer addon has chosen (`decide` is its `next_layer`), for a
    connection whose server has spoken: a TLS layer is replaced by a closed connection; raw TCP,
    chosen only because the server spoke first, is chosen again once the client has spoken, as
    if it had spoken first (until then no layer: mitmproxy asks again on more data)."""
    if not nextlayer.data_server() or isinstance(nextlayer.context.client.proxy_mode, mode_specs.ReverseMode):
        return  # a reverse proxy's layers follow its spec
    chosen = nextlayer.layer
    if isinstance(chosen, (layers.ServerTLSLayer, layers.ClientTLSLayer)):
        nextlayer.layer = _Closed(nextlayer.context)
    elif isinstance(chosen, layers.TCPLayer) and chosen.flow is not None and not listed_in_tcp_hosts(nextlayer.context):
        if not nextlayer.data_client():
            nextlayer.layer = None
            return
        client_first = _ClientFirst(nextlayer)
        decide(client_first)
        nextlayer.layer = client_first.layer


def listed_in_tcp_hosts(context: Context) -> bool:
    """Whether the destination matches `tcp_hosts`, as mitmproxy matches it (address or SNI)."""
    names = [name for name in (context.server.address and context.server.address[0], context.client.sni) if name]
    return any(re.search(pattern, name, re.IGNORECASE) for pattern in ctx.options.tcp_hosts for name in names)


class _Closed(Layer):
    """A TLS client's tunnel whose server spoke first: closed, and said why."""

    def _handle_event(self, event: events.Event) -> CommandGenerator[None]:
        if isinstance(event, events.Start):
            address = self.context.server.address
            logger.warning(
                f"vaultproxy: closed a tunnel to {address[0] if address else 'a server'}: the server spoke before the client's "
                "TLS handshake, as no TLS server does (a hostile one does, to pass its answers on unchecked)"
            )
            yield commands.CloseConnection(self.context.client)
