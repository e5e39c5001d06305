"""Who may use the proxy: by default only the OS user who runs it.

The proxy hands a secret to whoever sends its placeholder, and any local user can connect to
127.0.0.1. So on Linux each loopback client is identified, once per connection, by the uid
that owns its end of the TCP connection (asked of the kernel by sock_diag, or read from
/proc/net/tcp and tcp6 where that cannot be asked); a client of the proxy's own uid is let
in. Every other client must present the proxy credential (vaultcore.credential) as the
password of Proxy-Authorization Basic: another local user the owner gave it to, a remote
client, any client on another OS, and every client of a proxy that listens beyond loopback
(there a connection of the owner's uid may be forwarded for someone else, by ssh -R or a
container runtime). Modes without Proxy-Authorization (socks5, reverse...) only let the owner
in; WireGuard, local and tun modes let nobody in, since their addresses are whatever a peer's
packets say. The model is mitmproxy's proxyauth: a verdict per connection, kept for the
requests in a CONNECT tunnel, and the header never goes upstream.
"""

from __future__ import annotations

import hmac
import logging
import os
import weakref
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from mitmproxy import connection, ctx, http
from mitmproxy.addons.proxyauth import parse_http_basic_auth
from mitmproxy.connection import Address
from mitmproxy.proxy import mode_specs
from mitmproxy.utils.human import format_address

from vaultcore.credential import CREDENTIAL_FILE, new_token
from vaultcore.index import is_loopback
from vaultcore.sockdiag import TCP_TABLES, socket_uid, tcp_owner
from vaultcore.vault import home_from_option
from vaultproxy.rewrite import drop_header

logger = logging.getLogger(__name__)

AUTH_HEADER = "Proxy-Authorization"
# The modes whose clients talk to mitmproxy as to a proxy, and so can send Proxy-Authorization.
PROXY_MODES = (mode_specs.RegularMode, mode_specs.UpstreamMode)
# The modes whose connections the kernel accepted on the proxy's own socket, so that their
# addresses are the kernel's. In WireGuard, local and tun modes mitmproxy reads them from the
# packets a peer sends, which may name any connection of the owner's: nobody there is the owner.
KERNEL_ACCEPTED_MODES = (*PROXY_MODES, mode_specs.Socks5Mode, mode_specs.ReverseMode, mode_specs.TransparentMode)


# --- who is at the other end of a loopback connection (Linux) -------------------------------


def client_uid(client: connection.Client) -> int | None:
    """The uid of the local process at the other end of `client`: the owner of the socket
    whose local address is the client's peername and whose remote address is the proxy's
    sockname. None for a client that is not on loopback TCP, on another OS, no longer
    connected, or in a mode whose addresses the kernel did not give: such a client needs the
    credential."""
    if client.transport_protocol != "tcp" or not is_loopback(client.peername[0]) or not isinstance(client.proxy_mode, KERNEL_ACCEPTED_MODES):
        return None
    try:
        return tcp_owner(client.peername, client.sockname)
    except ValueError:
        return None  # a sockname that is no IP address
    except OSError:
        pass  # sock_diag cannot be asked here: /proc is
    for path in TCP_TABLES:
        try:
            uid = socket_uid(Path(path).read_text(), client.peername, client.sockname)
        except OSError:
            continue  # no /proc (another OS), or no IPv6
        except ValueError:
            return None  # a sockname that is no IP address is in no table
        if uid is not None:
            return uid
    return None


def exposed_addresses() -> list[Address]:
    """The addresses the proxy really listens on that are not loopback (0.0.0.0, :: ...),
    however they were asked for (--listen-host, --mode regular@HOST:PORT, ...)."""
    return [address for address in ctx.master.addons.get("proxyserver").listen_addrs() if not is_loopback(address[0])]


# --- the addon ------------------------------------------------------------------------------


@dataclass
class Peer:
    """One client connection, as the gate sees it."""

    uid: int | None  # the local user at the other end; None when unknown
    admitted: bool  # in without (more) credentials: the owner, or a CONNECT that presented it


def credential_required() -> http.Response:
    """The answer to a request without the credential: 407, so that clients that have it
    (curl, requests...) send it."""
    return http.Response.make(
        407,
        b"vaultproxy: this proxy needs its credential: run the client with `vaultproxy exec`, "
        b"or use the proxy URL that `vaultproxy env` prints\n",
        {"Proxy-Authenticate": 'Basic realm="vaultproxy"', "Content-Type": "text/plain; charset=utf-8",
         "X-Vaultproxy-Error": "proxy_credential_required"},
    )


class ClientGate:
    """An addon of its own in tests; the proxy runs it inside VaultProxy's hooks (one addon
    fewer for mitmproxy to dispatch every event to)."""

    def __init__(self) -> None:
        # This proxy's own (vaultcore.credential), made in running() (a script reload's new
        # instance is handed its predecessor's: the same proxy): until then only the owner gets
        # in. The proxy publishes it in its home with its record (vaultcore.proxyenv).
        self.credential: str | None = None
        self.peers: MutableMapping[connection.Client, Peer] = weakref.WeakKeyDictionary()

    def running(self) -> None:
        if self.credential is None:
            self.credential = new_token()
        home = home_from_option(ctx.options.vault_home)
        if exposed := exposed_addresses():
            where = ", ".join(map(format_address, exposed))
            logger.warning(
                f"vaultproxy: warning: listening on {where}: every client must present the proxy credential "
                f"({home / CREDENTIAL_FILE}; `vaultproxy env` and `vaultproxy exec` pass it on)"
            )

    def client_connected(self, client: connection.Client) -> None:
        peer = self._meet(client)
        if not peer.admitted and not isinstance(client.proxy_mode, PROXY_MODES):
            self._log_refusal(client, peer)
            client.error = "vaultproxy: not the proxy's user"  # closes the connection

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self._admits(flow):
            self.peers[flow.client_conn].admitted = True  # for the requests in the tunnel
        drop_header(flow.request, AUTH_HEADER)  # the credential never goes upstream

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not flow.is_replay:  # replays are the owner's own (mitmproxy's replay commands)
            self._admits(flow)
        drop_header(flow.request, AUTH_HEADER)  # the credential never goes upstream

    def _meet(self, client: connection.Client) -> Peer:
        """Identify a connection, once: the answer holds for its every request. Any failure
        makes it a stranger's: an exception out of the gate's hooks would only be logged by
        mitmproxy, and the client would go on unchecked."""
        try:
            uid = client_uid(client)
        except Exception:
            logger.exception("vaultproxy: could not tell who is at the other end of a connection; it needs the credential")
            uid = None
        peer = self.peers[client] = Peer(uid, uid == os.geteuid() and not exposed_addresses())
        return peer

    def _admits(self, flow: http.HTTPFlow) -> bool:
        """Whether the flow may go on; when not, the proxy answers it (or kills it)."""
        client = flow.client_conn
        # A connection this instance did not see open (the script was reloaded) is met now.
        peer = self.peers.get(client) or self._meet(client)
        if peer.admitted or self._has_credential(flow.request):
            return True
        self._log_refusal(client, peer)
        # (mitmproxy cannot answer a request whose body it already streams: cut off too)
        if isinstance(client.proxy_mode, PROXY_MODES) and not flow.request.stream:
            flow.response = credential_required()
        else:
            flow.kill()
        return False

    def _has_credential(self, request: http.Request) -> bool:
        if self.credential is None:
            return False
        try:
            _, _, password = parse_http_basic_auth(request.headers.get(AUTH_HEADER, ""))
        except ValueError:
            return False
        return hmac.compare_digest(password.encode(), self.credential.encode())

    @staticmethod
    def _log_refusal(client: connection.Client, peer: Peer) -> None:
        who = "of unknown uid" if peer.uid is None else f"of uid {peer.uid}"
        logger.warning(
            f"vaultproxy: refused a client {who} at {format_address(client.peername)}: "
            "it did not present the proxy credential"
        )
