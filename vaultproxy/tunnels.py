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
mitmproxy ignores, those are left as the user asked. A server that sends more than
SERVER_FIRST_MAX before its client speaks has the connection closed.

mitmproxy also turns any 101 answer but a WebSocket's into raw TCP, asked for or not: the
addon refuses those (`upgrade_refused`), again unless the host is in `tcp_hosts`.
"""

from __future__ import annotations

import logging
import re
import weakref

from mitmproxy import ctx, http
from mitmproxy.addons.next_layer import NextLayer as LayerDecider  # the addon, not the layer
from mitmproxy.proxy import commands, events, layers, mode_specs
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layer import CommandGenerator, Layer, NextLayer

from vaultproxy.refusal import ERROR_HEADER

logger = logging.getLogger(__name__)

TLS_LAYERS = (layers.ServerTLSLayer, layers.ClientTLSLayer)
SERVER_FIRST_MAX = 16 << 10  # what a server may send before its client speaks (a greeting is a line)
_waiting: weakref.WeakSet[NextLayer] = weakref.WeakSet()  # told in the log to wait, once each


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


def read_as_the_client_speaks(nextlayer: NextLayer, decider: LayerDecider) -> None:
    """After mitmproxy's NextLayer addon (`decider`) has chosen, for a connection whose server
    has spoken: a TLS layer is replaced by a closed connection; raw TCP, chosen only because
    the server spoke first, is chosen again once the client has spoken, as if it had spoken
    first (until then no layer: mitmproxy asks again on more data). Any failure closes the
    connection: the raw layer stands only where it was checked."""
    chosen = nextlayer.layer
    if (
        not nextlayer.data_server()
        or isinstance(nextlayer.context.client.proxy_mode, mode_specs.ReverseMode)  # its layers follow its spec
        or not (isinstance(chosen, TLS_LAYERS) or isinstance(chosen, layers.TCPLayer) and chosen.flow is not None)
    ):
        return
    try:
        instead = _instead(nextlayer, decider)
    except Exception as e:  # its message may quote what came: the type only
        instead = _Closed(nextlayer.context, f"checking who spoke first failed ({type(e).__name__})")
    if instead is not chosen:
        _discard(nextlayer.context, chosen)
        nextlayer.layer = instead


def _instead(nextlayer: NextLayer, decider: LayerDecider) -> Layer | None:
    chosen, context = nextlayer.layer, nextlayer.context
    if isinstance(chosen, TLS_LAYERS):
        return _Closed(context, "the server spoke before the client's TLS handshake, as no TLS server does")
    if raw_by_choice(nextlayer, decider):
        return chosen
    if not nextlayer.data_client():
        if len(nextlayer.data_server()) > SERVER_FIRST_MAX:
            return _Closed(context, f"the server sent more than {SERVER_FIRST_MAX >> 10} KiB before the client spoke")
        if nextlayer not in _waiting:
            _waiting.add(nextlayer)
            logger.info(
                f"vaultproxy: a tunnel to {names_of(context)[0]} waits for its client's first bytes: its server spoke first "
                "(a protocol whose client waits for the server's greeting needs its host in tcp_hosts)"
            )
        return None
    client_first = _ClientFirst(nextlayer)
    decider.next_layer(client_first)  # type: ignore[arg-type]
    return client_first.layer


def _discard(context: Context, layer: Layer | None) -> None:
    """A layer made and not used leaves the connection's stack (each one adds itself to it)."""
    while layer is not None:
        if layer in context.layers:
            context.layers.remove(layer)
        layer = getattr(layer, "child_layer", None)


def raw_by_choice(nextlayer: NextLayer, decider: LayerDecider) -> bool:
    """Whether the user passes this connection on raw: its host is in `tcp_hosts`, or in
    `ignore_hosts` (or not in `allow_hosts`) while `show_ignored_hosts` makes mitmproxy keep a
    flow for it (otherwise an ignored connection's layer has none, and is left alone anyway).
    The ignored ones are told by mitmproxy's own test (a private method, the same in 11 and 12),
    on the same data it was just told on."""
    context = nextlayer.context
    if listed_in_tcp_hosts(*names_of(context)):
        return True
    if not (ctx.options.show_ignored_hosts and (ctx.options.ignore_hosts or ctx.options.allow_hosts)):
        return False
    return bool(decider._ignore_connection(context, nextlayer.data_client(), nextlayer.data_server()))


def names_of(context: Context) -> tuple[str | None, ...]:
    """The names mitmproxy matches `tcp_hosts` against: the server's address, the client's SNI."""
    return context.server.address[0] if context.server.address else None, context.client.sni


def listed_in_tcp_hosts(*names: str | None) -> bool:
    """Whether one of `names` matches `tcp_hosts`, the user's word that raw TCP to that host may
    pass unchecked."""
    return any(re.search(pattern, name, re.IGNORECASE) for pattern in ctx.options.tcp_hosts for name in names if name)


class _Closed(Layer):
    """A tunnel whose server spoke first that cannot be read as its client speaks: closed,
    and the log says why."""

    def __init__(self, context: Context, why: str) -> None:
        super().__init__(context)
        self.why = why

    def _handle_event(self, event: events.Event) -> CommandGenerator[None]:
        if isinstance(event, events.Start):
            logger.warning(f"vaultproxy: closed a tunnel to {names_of(self.context)[0] or 'a server'}: {self.why}")
            yield commands.CloseConnection(self.context.client)


def upgrade_refused(flow: http.HTTPFlow) -> http.Response | None:
    """The proxy's answer in place of a 101 that mitmproxy would follow with raw TCP (anything
    but a WebSocket), unless the host is in `tcp_hosts`; None for any other response. Nothing
    of the server's goes into it, and the log quotes its protocol escaped (it is the server's)."""
    response = flow.response
    if response is None or response.status_code != 101 or flow.websocket is not None or listed_in_tcp_hosts(flow.request.host):
        return None
    logger.warning(f"vaultproxy: refused an upgrade to {response.headers.get('upgrade', '')!r} from {flow.request.host}: what follows it is raw TCP, which is not checked")
    return http.Response.make(
        502,
        b"vaultproxy refused the server's switch to another protocol than WebSocket: what follows it cannot be checked "
        b"for secrets or placeholders. List the host in mitmproxy's tcp_hosts to let it pass unchecked.\n",
        {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff", "Connection": "close", ERROR_HEADER: "upgrade_refused"},
    )
