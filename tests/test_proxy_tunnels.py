"""End to end: a hostile server cannot turn a connection into raw TCP, which no check sees.

- mitmproxy decides what a CONNECT tunnel carries from the first bytes that come through it.
  When the server's came first, it passed the connection on as raw TCP; and HTTP and TLS
  clients skip what such a server can send first (a TLS warning alert, an empty line).
- mitmproxy turns any 101 answer that is not a WebSocket's into raw TCP, asked for or not.

Either way a hostile server's bytes reached the client unchecked: placeholders planted in them
intact, values echoed. Each test here is such a server, on loopback, and a real client
through mitmdump.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.net import LOOPBACK
from tests.support.proxy import CLIENT_TIMEOUT, StartProxy
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply
from vaultcore.vault import Vault
from vaultproxy import tunnels

PLANTED = "<<vault:tunnel.tok>>"
# A TLS record clients skip before the handshake (a warning alert: user_canceled).
TLS_WARNING_ALERT = b"\x15\x03\x01\x00\x02\x01\x5a"
GREETING_SETTLES = 0.5  # seconds for a greeting sent as the tunnel opened to reach the proxy
SSH_BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    Vault(home).set("tunnel.tok", "sk_live_Zq9Tunnel", hosts=[LOOPBACK])
    return home


def planting(upstream: RecordingUpstream) -> RecordingUpstream:
    upstream.route("/", Reply(headers=(("Content-Type", "text/plain"), ("X-Planted", PLANTED)), body=f"follow {PLANTED}\n".encode()))
    return upstream


def tunnel(proxy_port: int, server_port: int) -> socket.socket:
    """A CONNECT tunnel through the proxy to the server, its 200 read (a byte at a time: what
    follows it is the server's, for the test to read)."""
    sock = socket.create_connection((LOOPBACK, proxy_port), timeout=CLIENT_TIMEOUT)
    sock.sendall(f"CONNECT {LOOPBACK}:{server_port} HTTP/1.1\r\nHost: {LOOPBACK}:{server_port}\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1) or b"(closed)\r\n\r\n"
    assert head.startswith(b"HTTP/1.1 200 "), head
    return sock


def test_a_tls_server_that_speaks_first_is_not_passed_through(
    mitmdump: StartProxy, tls_material: TLSMaterial, home: Path, tmp_path: Path
) -> None:
    """OpenSSL clients skip a warning alert sent before the handshake; mitmproxy took it for a
    server greeting and passed the whole TLS session through, unread. The client here trusts
    the server's CA, as a client trusts a public site's certificate: passed through, its
    handshake would succeed. No TLS server speaks first: the tunnel is closed, at once, and the
    log says why. The client starts its handshake a moment after the tunnel opens, once the
    greeting the server sent as it opened has reached the proxy (with requests, the client's
    hello sometimes came first under load: then mitmproxy reads the tunnel as TLS and
    intercepts it, no passthrough either, but not the case this test is for)."""
    with planting(RecordingUpstream(tls=tls_material, greeting=TLS_WARNING_ALERT)) as server:
        proxy = mitmdump(options={"vault_home": str(home)})
        client = ssl.create_default_context(cafile=str(tls_material.ca_cert))
        with tunnel(proxy.port, server.port) as sock:
            time.sleep(GREETING_SETTLES)
            with pytest.raises(OSError):  # ssl.SSLError among them: the tunnel closed under the handshake
                client.wrap_socket(sock, server_hostname=LOOPBACK).close()
    proxy.wait_for_output(f"vaultproxy: closed a tunnel to {LOOPBACK}: the server spoke before the client's TLS handshake")
    assert not server.requests


def test_a_plain_server_that_speaks_first_is_still_read_as_http(mitmdump: StartProxy, home: Path) -> None:
    """HTTP clients skip empty lines before a status line: a server that sends one as soon as
    the tunnel opens made mitmproxy pass the tunnel on as raw TCP."""
    with planting(RecordingUpstream(greeting=b"\r\n")) as server:
        proxy = mitmdump(options={"vault_home": str(home)})
        with tunnel(proxy.port, server.port) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {LOOPBACK}:{server.port}\r\nConnection: close\r\n\r\n".encode())
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        proxy.wait_for_output(f"GET {server.url}/")
    # (mitmproxy may log the early line as a server's stray bytes, or skip it before the answer)
    assert "Unexpected data from server: b" not in proxy.output()
    assert PLANTED.encode() not in received
    # Read as HTTP: mitmproxy drops the server's early line and connects again, and the answer
    # comes checked; or, when the line comes again ahead of the answer, mitmproxy refuses it.
    assert received == b"" or received.startswith(b"HTTP/1.1 200 "), received


def test_a_servers_bytes_past_the_end_of_its_answer_are_logged_without_them(mitmdump: StartProxy, home: Path) -> None:
    """mitmproxy's log quoted what a server sends after its answer ("Unexpected data from
    server: b'...'"), which may echo the request's value."""
    with RecordingUpstream() as server:
        server.route("/stray", Reply(raw=lambda request: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                                     + b"echo " + (request.header("x-token") or "").encode()))
        proxy = mitmdump(options={"vault_home": str(home)})
        with proxy.requests_session() as session:
            assert session.get(f"{server.url}/stray", headers={"X-Token": "<<vault:tunnel.tok>>"}, timeout=CLIENT_TIMEOUT).text == "ok"
        proxy.wait_for_output("Unexpected data from server: 22 bytes, not shown by vaultproxy")
    assert "sk_live_Zq9Tunnel" not in proxy.output()


def test_a_tunnel_whose_client_speaks_another_protocol_stays_raw(mitmdump: StartProxy, home: Path) -> None:
    """SSH through CONNECT: both sides send their banners at once. The tunnel is raw TCP, as
    before, once the client's banner shows what it is; the server's is then passed on."""
    with RecordingUpstream(greeting=SSH_BANNER) as server:
        proxy = mitmdump(options={"vault_home": str(home)})
        with tunnel(proxy.port, server.port) as sock:
            sock.sendall(b"SSH-2.0-client\r\n")
            assert sock.recv(len(SSH_BANNER)) == SSH_BANNER


def test_a_server_that_keeps_talking_to_a_silent_client_has_the_tunnel_closed(mitmdump: StartProxy, home: Path) -> None:
    """While the decision waits for the client, what the server sends is held: past a bound,
    the tunnel is closed rather than held for ever."""
    with RecordingUpstream(greeting=b"x" * (tunnels.SERVER_FIRST_MAX + 1)) as server:
        proxy = mitmdump(options={"vault_home": str(home)})
        with tunnel(proxy.port, server.port) as sock, contextlib.suppress(ConnectionResetError):
            assert sock.recv(1) == b""
    proxy.wait_for_output(f"vaultproxy: closed a tunnel to {LOOPBACK}: the server sent more than 16 KiB before the client spoke")


@pytest.mark.parametrize("listed", ["tcp_hosts", "ignore_hosts, shown", "not in allow_hosts, shown"])
def test_a_server_first_protocol_the_user_passes_raw_is_raw_at_once(mitmdump: StartProxy, home: Path, listed: str) -> None:
    """A protocol whose client waits for the server's greeting (SMTP, FTP) waits for the
    client's first bytes too, unless the user passes its host on raw: in mitmproxy's tcp_hosts,
    or ignored (ignore_hosts, allow_hosts), also when show_ignored_hosts keeps flows of those."""
    host = LOOPBACK.replace(".", r"\.")
    options: dict[str, object] = {
        "tcp_hosts": {"tcp_hosts": [host]},
        "ignore_hosts, shown": {"ignore_hosts": [host], "show_ignored_hosts": True},
        "not in allow_hosts, shown": {"allow_hosts": ["allowed\\.example"], "show_ignored_hosts": True},
    }[listed]
    with RecordingUpstream(greeting=b"220 mail.example ESMTP\r\n") as server:
        proxy = mitmdump(options={"vault_home": str(home), **options})
        with tunnel(proxy.port, server.port) as sock:
            assert sock.recv(1024) == b"220 mail.example ESMTP\r\n"


def test_a_reverse_tcp_proxy_passes_a_server_greeting_at_once(mitmdump: StartProxy, home: Path) -> None:
    """A reverse proxy's layers follow its spec: `reverse:tcp://` is raw TCP from the start."""
    with RecordingUpstream(greeting=b"220 mail.example ESMTP\r\n") as server:
        proxy = mitmdump(options={"vault_home": str(home)}, args=["--mode", f"reverse:tcp://{LOOPBACK}:{server.port}"])
        with socket.create_connection((LOOPBACK, proxy.port), timeout=CLIENT_TIMEOUT) as sock:
            assert sock.recv(1024) == b"220 mail.example ESMTP\r\n"


def switching_to(protocol: bytes) -> Callable[[RecordedRequest], bytes]:
    """A 101 to `protocol`, then bytes that plant a placeholder and echo the request's value."""
    def answer(request: RecordedRequest) -> bytes:
        return (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + protocol + b"\r\nConnection: Upgrade\r\n\r\n"
            + f"raw: {PLANTED} echo={request.header('authorization')}\n".encode()
        )

    return answer


def upgrade(proxy_port: int, server: RecordingUpstream) -> bytes:
    """Everything the client receives for an `Upgrade: tcp` request with a placeholder."""
    with socket.create_connection((LOOPBACK, proxy_port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(
            f"GET {server.url}/attach HTTP/1.1\r\nHost: {LOOPBACK}:{server.port}\r\nAuthorization: Bearer <<vault:tunnel.tok>>\r\n"
            "Upgrade: tcp\r\nConnection: Upgrade\r\n\r\n".encode()
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize("protocol", [b"tcp", b"tcp\xff\x1b]0;pwned\x07"], ids=["tcp", "not UTF-8, with a terminal escape"])
def test_an_upgrade_to_another_protocol_than_websocket_is_refused(
    mitmdump: StartProxy, upstream: RecordingUpstream, home: Path, protocol: bytes
) -> None:
    """What follows a 101 to raw TCP (Docker's `Upgrade: tcp`, SPDY) cannot be checked: the
    client gets a 502 that says so, and none of the server's raw bytes. A protocol name that
    is not UTF-8 made the refusal itself fail, and the 101 went through; one with a terminal
    escape reached the operator's terminal."""
    upstream.route("/attach", Reply(raw=switching_to(protocol)))
    proxy = mitmdump(options={"vault_home": str(home)})
    received = upgrade(proxy.port, upstream)
    assert received.startswith(b"HTTP/1.1 502 "), received
    assert b"X-Vaultproxy-Error: upgrade_refused" in received
    assert PLANTED.encode() not in received and b"sk_live_Zq9Tunnel" not in received
    proxy.wait_for_output(f"vaultproxy: refused an upgrade to {protocol.decode('utf-8', 'surrogateescape')!r} from {LOOPBACK}")
    assert "\x1b" not in proxy.output()


def test_an_upgrade_to_a_host_in_tcp_hosts_is_passed_on_raw(mitmdump: StartProxy, upstream: RecordingUpstream, home: Path) -> None:
    """tcp_hosts is the user's word that raw TCP to that host may pass unchecked."""
    upstream.route("/attach", Reply(raw=switching_to(b"tcp")))
    proxy = mitmdump(options={"vault_home": str(home), "tcp_hosts": [LOOPBACK.replace(".", r"\.")]})
    received = upgrade(proxy.port, upstream)
    assert received.startswith(b"HTTP/1.1 101 ") and b"raw: " in received
