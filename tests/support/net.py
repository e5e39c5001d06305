"""Loopback port helpers: readiness is detected by polling, never by sleeping a fixed time."""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Callable, Iterator

LOOPBACK = "127.0.0.1"
POLL_INTERVAL = 0.02
TCP_LISTEN = "0A"  # socket state in /proc/net/tcp


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the OS picked it for a bind to :0).

    Another process may take it before the caller binds it; callers that spawn a server
    on it must detect a failed bind and retry with a new port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; TimeoutError naming `what` after `timeout` seconds.

    Polling keeps tests robust on slow shared machines: they wait as long as needed
    (up to a generous limit) instead of guessing a fixed delay.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def port_accepts(port: int, host: str = LOOPBACK) -> bool:
    """True when a TCP connection to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 30.0, host: str = LOOPBACK) -> None:
    """Block until host:port accepts TCP connections."""
    wait_until(lambda: port_accepts(port, host), timeout, f"{host}:{port} to accept connections")


def _listeners(port: int) -> Iterator[tuple[str, str]]:
    """(local address in hex, socket inode) of every TCP socket listening on `port` (Linux /proc/net/tcp{,6})."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)  # column titles
            for row in rows:
                fields = row.split()
                address, local_port = fields[1].rsplit(":", 1)
                if fields[3] == TCP_LISTEN and int(local_port, 16) == port:
                    yield address, fields[9]


def listening_addresses(port: int) -> set[str]:
    """The local addresses of every TCP socket listening on `port` ("0.0.0.0": every interface)."""
    found = set()
    for address, _ in _listeners(port):
        # The kernel prints each 32-bit word of the address in host (little-endian) order.
        raw = bytes.fromhex(address)
        packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
        found.add(str(ipaddress.ip_address(packed)))
    return found


def is_listening(pid: int, port: int) -> bool:
    """True when process `pid` holds a socket listening on TCP `port` (Linux /proc).

    That a port accepts connections is not enough to call a server started: another
    process may have taken the port first, and the server is about to fail its bind.
    """
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    inodes = set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return any(inode in inodes for _, inode in _listeners(port))
