"""Who owns a TCP connection on this machine, asked of the kernel over netlink (sock_diag,
as `ss` asks it): one exact lookup of the connection's addresses and ports.

The other way, reading /proc/net/tcp and tcp6, walks every socket of the network namespace:
4 ms per table on an idle 2-core machine and tens of ms under load, and the proxy's event
loop, every other client's requests with it, waits for that on each new connection. It is
read where netlink cannot be asked (socket_uid), and by the CLI, once per command, for the
sockets that listen on an address (listening_inodes).
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import socket
import struct
import sys
from collections.abc import Iterable, Iterator
from typing import Literal

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
TCP_ESTABLISHED = 1
NO_COOKIE = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE: look the socket up by its addresses alone

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_REQUEST = struct.Struct("=BBBxI")  # inet_diag_req_v2 up to its socket id: family, protocol, extensions, states
_SOCKET_ID = struct.Struct("!HH16s16s")  # inet_diag_sockid: ports and addresses, in network order
_SOCKET_TAIL = struct.Struct("=III")  # and its interface and cookie
_MESSAGE = struct.Struct("=BBBB")  # inet_diag_msg up to its socket id: family, state, timer, retransmits
_MESSAGE_TAIL = struct.Struct("=IIIII")  # expires, receive queue, send queue, uid, inode
_ERROR = struct.Struct("=i")

_sequence = itertools.count(1)

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
# A row's state: only live connections count (a closed socket lingers as a TIME_WAIT row with
# uid 0, whoever owned it), and listeners.
ESTABLISHED = "01"
LISTEN = "0A"
UID_COLUMN = 7
INODE_COLUMN = 9
IPV4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def plain_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """`host`'s IP address; an IPv4-mapped IPv6 address (a dual-stack listener's view of an
    IPv4 client) is the IPv4 address: the kernel keeps such a connection under its IPv4
    addresses."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def request(local: tuple[str, int], remote: tuple[str, int], sequence: int) -> bytes:
    """The netlink message asking for the TCP socket from `local` to `remote`."""
    local_ip, remote_ip = plain_ip(local[0]), plain_ip(remote[0])
    if local_ip.version != remote_ip.version:
        raise ValueError("the two ends of a connection are of one IP version")
    family = socket.AF_INET if local_ip.version == 4 else socket.AF_INET6
    body = (
        _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 1 << TCP_ESTABLISHED)
        + _SOCKET_ID.pack(local[1], remote[1], local_ip.packed.ljust(16, b"\0"), remote_ip.packed.ljust(16, b"\0"))
        + _SOCKET_TAIL.pack(0, NO_COOKIE, NO_COOKIE)
    )
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, sequence, 0) + body


def owner(reply: bytes, local_port: int, remote_port: int, sequence: int) -> int | None:
    """The uid in the kernel's `reply`; None when the socket it found is not a live
    connection between these ports (a listener, or one closing: TIME_WAIT rows carry uid 0,
    whoever owned them). Raises OSError when the kernel gave no answer about the socket (a
    missing one included: a kernel without the tcp_diag module says ENOENT too), or one this
    cannot read."""
    try:
        _, kind, _, answered, _ = _HEADER.unpack_from(reply)
        if answered != sequence:
            raise OSError(errno.EPROTO, "sock_diag answered another request")
        if kind == NLMSG_ERROR:
            code = -_ERROR.unpack_from(reply, _HEADER.size)[0]
            raise OSError(code, os.strerror(code))
        if kind != SOCK_DIAG_BY_FAMILY:
            raise OSError(errno.EPROTO, f"unexpected sock_diag message type {kind}")
        offset = _HEADER.size
        _, state, _, _ = _MESSAGE.unpack_from(reply, offset)
        offset += _MESSAGE.size
        source_port, destination_port, *_ = _SOCKET_ID.unpack_from(reply, offset)
        offset += _SOCKET_ID.size + _SOCKET_TAIL.size
        uid = _MESSAGE_TAIL.unpack_from(reply, offset)[3]
    except struct.error:
        raise OSError(errno.EPROTO, "sock_diag answered with a message too short") from None
    if state != TCP_ESTABLISHED or (source_port, destination_port) != (local_port, remote_port):
        return None
    return uid


def tcp_owner(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The uid that owns the live TCP socket from `local` to `remote` on this machine; None
    when there is no live connection between them. Raises OSError where the kernel cannot be
    asked (another OS, netlink refused, no tcp_diag module)."""
    try:
        return _ask(local, remote)
    except OSError as e:
        if e.errno == errno.ENOENT and finds_live_connections():
            # Gone (a client that reset its connection): nobody's. Asking /proc now would take
            # milliseconds, in which another user's new connection could take the same port.
            return None
        raise


_kernel_answers = False  # once the kernel has answered for a live connection of the proxy's own


def finds_live_connections() -> bool:
    """Whether this kernel answers for live connections (a kernel without tcp_diag says
    ENOENT for every socket), asked of a loopback connection of the proxy's own until it has
    said yes (a failure, out of file descriptors say, is asked again the next time)."""
    global _kernel_answers
    if not _kernel_answers:
        _kernel_answers = _asked_of_own_connection()
    return _kernel_answers


def _asked_of_own_connection() -> bool:
    try:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            with socket.create_connection(server.getsockname(), timeout=5) as client:
                accepted, _ = server.accept()
                with accepted:
                    return _ask(client.getsockname(), server.getsockname()) == os.geteuid()
    except OSError:
        return False


def _ask(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    if not hasattr(socket, "AF_NETLINK"):  # not Linux: an OSError, as every way this cannot be asked
        raise OSError(errno.EAFNOSUPPORT, "netlink is Linux's")
    sequence = next(_sequence)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as diag:
        diag.send(request(local, remote, sequence))
        reply = diag.recv(65536, socket.MSG_DONTWAIT)  # the kernel answers within send(): never wait on the loop
    return owner(reply, local[1], remote[1], sequence)


# --- /proc/net/tcp and tcp6 -------------------------------------------------------------------


def kernel_forms(address: tuple[str, int], byteorder: Literal["little", "big"] = sys.byteorder) -> set[str]:
    """`address` as /proc/net/tcp{,6} print it: each 32-bit word of the IP as a native-endian
    hex number, a colon, the port in hex. An IPv4 address is in tcp, or IPv4-mapped
    (::ffff:127.0.0.1) in tcp6 for an IPv6 socket; a mapped one is the same IPv4 address."""
    ip = plain_ip(address[0])
    packed_forms = [ip.packed, IPV4_MAPPED_PREFIX + ip.packed] if ip.version == 4 else [ip.packed]
    return {
        "".join(f"{int.from_bytes(packed[i : i + 4], byteorder):08X}" for i in range(0, len(packed), 4))
        + f":{address[1]:04X}"
        for packed in packed_forms
    }


def _rows(table: str, state: str, local_forms: set[str]) -> Iterator[list[str]]:
    """The fields of each row of `table` in `state` whose local address is one of `local_forms`."""
    for row in table.splitlines():
        fields = row.split()
        if len(fields) > INODE_COLUMN and fields[3] == state and fields[1] in local_forms:
            yield fields


def socket_uid(table: str, local: tuple[str, int], remote: tuple[str, int], byteorder: Literal["little", "big"] = sys.byteorder) -> int | None:
    """The uid that owns the live TCP socket from `local` to `remote`, found in `table` (the
    text of /proc/net/tcp or tcp6); None when no row matches."""
    remote_forms = kernel_forms(remote, byteorder)
    for fields in _rows(table, ESTABLISHED, kernel_forms(local, byteorder)):
        if fields[2] in remote_forms:
            return int(fields[UID_COLUMN])
    return None


def listening_inodes(tables: Iterable[str], address: tuple[str, int], byteorder: Literal["little", "big"] = sys.byteorder) -> set[int]:
    """The inodes of the sockets in `tables` (the texts of /proc/net/tcp and tcp6) that may
    take a new connection to `address`, as the kernel picks a listener: those on that very
    address (or its IPv4-mapped form) if any, else those on a wildcard (0.0.0.0, and :: which
    takes IPv4 too unless it is IPV6_V6ONLY, which these tables do not say). Among them the
    kernel prefers by what the tables do not show either (a bound device, the CPU): any of
    them may get it."""
    ip, port = plain_ip(address[0]), address[1]
    wildcards = ["0.0.0.0", "::"] if ip.version == 4 else ["::"]
    texts = list(tables)
    for forms in (kernel_forms(address, byteorder), set().union(*(kernel_forms((w, port), byteorder) for w in wildcards))):
        if inodes := {int(fields[INODE_COLUMN]) for table in texts for fields in _rows(table, LISTEN, forms)}:
            return inodes
    return set()
