"""Connections to a name under .localhost go to `localhost`, whatever a resolver says.

The plaintext rule lets a secret go over plain HTTP to loopback, and counts `app.localhost`
and `localhost.` as loopback names (RFC 6761, as curl and browsers do) on the proxy's own
connections (`Destination.pinned`). A resolver may still ask DNS about them (glibc with
`hosts: files dns` does), and a hostile DNS server would then be sent that secret. mitmproxy
connects to a server by the name in its address, so the name is swapped for `localhost`,
which every system answers from /etc/hosts, as the connection opens (from the last addon of
the chain, after any other's `server_connect`), and put back once it is open (or failed): a
later request for the name finds the connection and reuses it, and flows show the name the
client used. A connection through an upstream proxy is the next proxy's to resolve: it is
left alone, and the plaintext rule does not count such a name as loopback there.
"""

from __future__ import annotations

import weakref

from mitmproxy import connection

from vaultcore.index import LOCALHOST, pinned_to_localhost

Address = tuple[str, int]


class LocalhostPins:
    def __init__(self) -> None:
        self._names: weakref.WeakKeyDictionary[connection.Server, Address] = weakref.WeakKeyDictionary()

    def pin(self, server: connection.Server) -> None:
        if server.via is None and server.address is not None and pinned_to_localhost(server.address[0]):
            self._names[server] = server.address
            server.address = (LOCALHOST, server.address[1])

    def unpin(self, server: connection.Server) -> None:
        if (named := self._names.pop(server, None)) is not None:
            # Past Server.__setattr__, which refuses any change of an open connection's address
            # (it would not move the connection): this one only gives it its name back.
            object.__setattr__(server, "address", named)
