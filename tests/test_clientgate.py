"""End to end: only the OS user who runs the proxy may use it, and whoever they give the proxy
credential to.

The attack: another local user (here `nobody`, which needs the tests to run as root, as they
do in CI) points curl at the proxy on 127.0.0.1 with a placeholder and a listener of their
own as the destination, and gets the owner's secret. Each test runs a real mitmdump with the
addon, a real upstream on 127.0.0.1 and the real curl; the uid lookup's parser is also tested
on sample /proc text and sample sock_diag replies, and both ways of asking on real loopback
connections.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from tests.support.env import child_env
from tests.support.leaks import fail_on, hunt_bytes, leak_value, needles_for, read_process
from tests.support.net import LOOPBACK, free_port, listening_addresses, wait_until
from tests.support.proxy import CLIENT_TIMEOUT, STARTUP_TIMEOUT, MitmdumpProcess, StartProxy, curl
from tests.support.secret_set import Entry, SecretSet, proxy_options
from tests.support.tls import TLSMaterial
from tests.support import wireguard
from tests.support.upstream import RecordedRequest, RecordingUpstream
from tests.support.users import NOBODY, another_user
from vaultcore.credential import CREDENTIAL_FILE, read_credential
from vaultcore.proxyenv import proxy_url
from vaultcore import sockdiag
from vaultcore.sockdiag import kernel_forms, socket_uid, tcp_owner
from vaultproxy import clientgate
from vaultproxy.clientgate import client_uid

SECRETS = SecretSet({"gate.loc": Entry(leak_value()[0])})
PLACEHOLDER_HEADER = "X-Token: <<vault:gate.loc>>"

as_another_user = another_user("runs curl as the user nobody, which needs root and that user")


def curl_as_nobody(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """The real curl as `nobody`, another local user than the proxy's. Its working directory is
    / (nobody cannot enter the tests' 0700 temp dirs); -q: no ~/.curlrc. A proxy URL with the
    credential goes in `env`, as `vaultproxy exec` passes it, never in argv."""
    assert NOBODY is not None
    return subprocess.run(
        ["curl", "-q", "--silent", "--show-error", "--noproxy", "", *args, url],
        user=NOBODY.pw_uid, group=NOBODY.pw_gid, extra_groups=[], cwd="/",
        env={"PATH": os.environ["PATH"], **(env or {})}, capture_output=True, timeout=CLIENT_TIMEOUT, check=False,
    )


def wait_for_credential(home: Path) -> str:
    """The proxy publishes its credential with its record, a moment after its port listens."""
    wait_until((home / CREDENTIAL_FILE).exists, STARTUP_TIMEOUT, "the proxy credential")
    token = read_credential(home)
    assert token is not None
    return token


def delivered(request: RecordedRequest) -> bool:
    """Whether the upstream got the secret (a bool: a failed assert must not print the value)."""
    return request.header("x-token") == SECRETS.value("gate.loc")


def new_output(proxy: MitmdumpProcess, start: int) -> list[str]:
    return proxy.output()[start:].splitlines()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return SECRETS.fill(tmp_path_factory.mktemp("vault-home"))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial, home: Path) -> Iterator[MitmdumpProcess]:
    """One proxy for the module: an HTTP proxy on 127.0.0.1, and a SOCKS5 one on a port of
    its choosing. At teardown its output holds neither a value nor the credential."""
    process = MitmdumpProcess(
        tmp_path_factory.mktemp("vaultproxy"), upstream_ca=tls_material.ca_cert,
        options=proxy_options(home, mode=["regular", f"socks5@{LOOPBACK}:0"]),
    )
    with process:
        token = wait_for_credential(home)
        yield process
    output = process.output()
    assert SECRETS.leaked_keys(output) == []
    fail_on(hunt_bytes("proxy output", output.encode(), needles_for("credential", token, token)))


@pytest.fixture(scope="module")
def socks_port(proxy: MitmdumpProcess) -> int:
    pattern = re.compile(rf"SOCKS v5 proxy listening at {re.escape(LOOPBACK)}:(\d+)")
    wait_until(lambda: pattern.search(proxy.output()) is not None, STARTUP_TIMEOUT, "the SOCKS5 listener")
    match = pattern.search(proxy.output())
    assert match is not None
    return int(match[1])


# --- the uid lookup --------------------------------------------------------------------------

# /proc/net/tcp on a little-endian host: the proxy listens on 127.0.0.1:8080 (1F90); uid 65534's
# client (port 8A6E) is connected, as the proxy's own socket (uid 0) on the other side shows;
# a closed connection from port 8A70 lingers in TIME_WAIT (06), where the kernel shows uid 0.
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1567 1 0000000037639367 100 0 0 10 0
   1: 0100007F:8A6E 0100007F:1F90 01 00000000:00000000 00:00000000 00000000 65534        0 40012 1 0000000011111111 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:8A6E 01 00000000:00000000 00:00000000 00000000     0        0 40013 1 0000000022222222 20 4 30 10 -1
   3: 0100007F:8A70 0100007F:1F90 06 00000000:00000000 03:00000A18 00000000     0        0 0 3 0000000095924d87
"""
# /proc/net/tcp6: an IPv6 client socket on an IPv4-mapped address (uid 1000), one on ::1 (uid 1001).
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:8A72 0000000000000000FFFF00000100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 2002 1 0000000000000000 20 4 30 10 -1
   2: 00000000000000000000000001000000:8A74 00000000000000000000000001000000:1F90 01 00000000:00000000 00:00000000 00000000  1001        0 2003 1 0000000000000000 20 4 30 10 -1
"""
PROXY = (LOOPBACK, 0x1F90)


@pytest.mark.parametrize(("table", "client", "proxy_side", "uid"), [
    pytest.param(PROC_NET_TCP, (LOOPBACK, 0x8A6E), PROXY, 65534, id="ipv4"),
    # A proxy on a dual-stack socket sees the same client as ::ffff:127.0.0.1.
    pytest.param(PROC_NET_TCP, ("::ffff:127.0.0.1", 0x8A6E), ("::ffff:127.0.0.1", 0x1F90), 65534, id="mapped-peer"),
    pytest.param(PROC_NET_TCP, PROXY, (LOOPBACK, 0x8A6E), 0, id="direction-matters"),
    pytest.param(PROC_NET_TCP, (LOOPBACK, 0x8A70), PROXY, None, id="time-wait-is-nobody"),
    pytest.param(PROC_NET_TCP, (LOOPBACK, 0x9999), PROXY, None, id="no-such-connection"),
    pytest.param(PROC_NET_TCP6, (LOOPBACK, 0x8A72), PROXY, 1000, id="mapped-socket-in-tcp6"),
    pytest.param(PROC_NET_TCP6, ("::1", 0x8A74), ("::1", 0x1F90), 1001, id="ipv6"),
    pytest.param(PROC_NET_TCP6, (LOOPBACK, 0x8A74), PROXY, None, id="ipv4-is-not-ipv6"),
])
def test_socket_uid_reads_proc_net_tcp(table: str, client: tuple[str, int], proxy_side: tuple[str, int], uid: int | None) -> None:
    assert socket_uid(table, client, proxy_side, "little") == uid


def test_kernel_forms_follow_the_hosts_byte_order() -> None:
    assert kernel_forms((LOOPBACK, 8080), "little") == {"0100007F:1F90", "0000000000000000FFFF00000100007F:1F90"}
    assert kernel_forms((LOOPBACK, 8080), "big") == {"7F000001:1F90", "00000000000000000000FFFF7F000001:1F90"}
    assert kernel_forms(("::1", 80), "little") == {"00000000000000000000000001000000:0050"}


@pytest.fixture
def crowd() -> Iterator[None]:
    """A hundred more loopback connections, so that /proc/net/tcp is longer than one read
    (the kernel hands it out a page at a time)."""
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen(128)
        clients = [socket.create_connection(server.getsockname()) for _ in range(100)]
        try:
            yield
        finally:
            for client in clients:
                client.close()


def without_sock_diag(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a kernel that cannot be asked over netlink: /proc is read."""

    def refused(local: object, remote: object) -> int | None:
        raise OSError(errno.EPROTONOSUPPORT, "no sock_diag")

    monkeypatch.setattr(clientgate, "tcp_owner", refused)


def without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """As where /proc/net is not mounted: only sock_diag can answer."""
    monkeypatch.setattr(clientgate, "TCP_TABLES", ("/nonexistent/tcp", "/nonexistent/tcp6"))


def not_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on an OS without netlink (macOS, Windows): the lookup must fail as an OSError, or the
    gate's hooks would raise, mitmproxy would log it and carry on, and the client go unchecked."""
    monkeypatch.delattr(socket, "AF_NETLINK")


@pytest.mark.parametrize("asking", [without_sock_diag, without_proc, not_on_linux], ids=["proc", "sock_diag", "no-netlink"])
@pytest.mark.parametrize(("family", "listen_on", "connect_to"), [
    pytest.param(socket.AF_INET, LOOPBACK, LOOPBACK, id="ipv4"),
    pytest.param(socket.AF_INET6, "::1", "::1", id="ipv6"),
    pytest.param(socket.AF_INET6, "::ffff:127.0.0.1", LOOPBACK, id="dual-stack-listener"),
    # The client's own socket is IPv6 here, connected to an IPv4-mapped address.
    pytest.param(socket.AF_INET6, "::ffff:127.0.0.1", "::ffff:127.0.0.1", id="mapped-client-socket"),
])
def test_client_uid_finds_the_owner_of_a_real_connection(
    family: socket.AddressFamily, listen_on: str, connect_to: str, asking: Callable[[pytest.MonkeyPatch], None],
    crowd: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    asking(monkeypatch)
    with socket.socket(family) as server:
        if family == socket.AF_INET6:
            server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            server.bind((listen_on, 0))
        except OSError as e:
            pytest.skip(f"cannot listen on {listen_on}: {e.strerror}")
        server.listen()
        with socket.create_connection((connect_to, server.getsockname()[1])), server.accept()[0] as accepted:
            client = tflow.tclient_conn()
            client.peername, client.sockname = accepted.getpeername(), accepted.getsockname()
            assert client_uid(client) == os.geteuid()
            client.peername = ("10.1.2.3", client.peername[1])
            assert client_uid(client) is None  # not on loopback: nobody to look up


@pytest.mark.parametrize("mode", ["wireguard", "local", "tun"])
def test_no_client_is_taken_for_the_owner_in_a_mode_whose_addresses_it_chooses(mode: str) -> None:
    """In WireGuard, local and tun modes mitmproxy reads a connection's addresses from the
    packets its peer sends: a peer that names the two ends of any live connection of the
    owner's (/proc/net/tcp lists them for everyone) was let in as the owner, and had the
    owner's secrets sent to a port it listened on."""
    with socket.create_server((LOOPBACK, 0)) as server, socket.create_connection(server.getsockname()), server.accept()[0] as accepted:
        client = tflow.tclient_conn()
        client.peername, client.sockname = accepted.getpeername(), accepted.getsockname()
        assert client_uid(client) == os.geteuid()  # the same addresses, from the kernel (regular mode)
        client.proxy_mode = ProxyMode.parse(mode)
        assert client_uid(client) is None


def test_a_wireguard_peer_that_names_the_owners_connection_gets_no_secret(
    tmp_path: Path, home: Path, upstream: RecordingUpstream,
) -> None:
    """End to end, with a WireGuard peer on loopback (any peer with the client key: a VM, a
    phone, a local user who can read the confdir): its connection claims to come from the
    owner's idle connection to the upstream. It got the owner's secret sent upstream."""
    port = free_port()  # for UDP: a port free for TCP a moment ago is as likely free for UDP
    proxy = MitmdumpProcess(tmp_path / "mitmdump", options=proxy_options(home, mode=["regular", f"wireguard@{LOOPBACK}:{port}"]))
    with proxy, socket.create_connection((LOOPBACK, upstream.port)) as owners:
        # Modes start one by one: the regular one listening says nothing of the WireGuard one.
        proxy.wait_for_output("WireGuard server listening", STARTUP_TIMEOUT)
        tunnel = wireguard.Tunnel.to_mitmproxy((LOOPBACK, port), proxy.confdir / "wireguard.conf")
        try:
            request = f"GET /tunnelled HTTP/1.1\r\nHost: {LOOPBACK}:{upstream.port}\r\n{PLACEHOLDER_HEADER}\r\nConnection: close\r\n\r\n"
            answer = wireguard.tcp_exchange(tunnel, owners.getsockname(), owners.getpeername(), request.encode(), wait=5)
        finally:
            tunnel.close()
        assert not answer.startswith(b"HTTP/1.1 200")
        assert not upstream.requests
        wait_until(lambda: "refused" in proxy.output(), STARTUP_TIMEOUT, "the gate's refusal")


@as_another_user
def test_sock_diag_names_another_users_connection() -> None:
    """The kernel's answer is the uid of the client's end, not of the proxy's (root's) end."""
    assert NOBODY is not None
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen()
        server.settimeout(CLIENT_TIMEOUT)
        host, port = server.getsockname()
        holder = subprocess.Popen(  # curl as nobody, waiting for an answer that never comes
            ["curl", "-q", "--silent", "--noproxy", "*", "--max-time", str(CLIENT_TIMEOUT), f"http://{host}:{port}/"],
            user=NOBODY.pw_uid, group=NOBODY.pw_gid, extra_groups=[], cwd="/", env={"PATH": os.environ["PATH"]},
        )
        try:
            accepted, _ = server.accept()
            with accepted:
                client, proxy_side = accepted.getpeername(), accepted.getsockname()
                assert tcp_owner(client, proxy_side) == NOBODY.pw_uid
                assert tcp_owner(proxy_side, client) == os.geteuid()  # the other end is the proxy's
                assert socket_uid(Path("/proc/net/tcp").read_text(), client, proxy_side) == NOBODY.pw_uid  # both ways agree
        finally:
            holder.kill()
            holder.wait()


def test_sock_diag_takes_no_closed_or_listening_socket_for_a_client() -> None:
    """A connection its client closed lingers in TIME_WAIT with uid 0 whoever owned it: were
    that taken for the owner, a proxy run as root would admit any closed-and-gone client. A
    listener found at the address is no client either."""
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen()
        connecting = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        client, proxy_side = accepted.getpeername(), accepted.getsockname()
        connecting.close()
        accepted.close()
        wait_until(lambda: lookup_fails_or_is_none(client, proxy_side), 5, "the closed connection not to count as a client")
        assert lookup_fails_or_is_none(server.getsockname(), (LOOPBACK, 0))


def test_a_connection_gone_from_the_kernel_is_nobodys_whatever_proc_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that resets its connection right after its request is gone from the kernel.
    Reading /proc then would take milliseconds, in which a new connection of another user
    (here the owner's) could take the same port and be read as the client's: the gate asks
    no slower source once the kernel has said the socket is gone."""
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen()
        connecting = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with accepted:
            peer, proxy_side = accepted.getpeername(), accepted.getsockname()
            connecting.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connecting.close()  # a reset: no TIME_WAIT, the socket is gone at once
            table = tmp_path / "tcp"  # /proc as it would read had the owner taken the port meanwhile
            ipv4_form = lambda address: min(kernel_forms(address), key=len)  # noqa: E731
            table.write_text(PROC_NET_TCP.splitlines()[0] + f"\n   1: {ipv4_form(peer)} {ipv4_form(proxy_side)} 01 "
                             f"00000000:00000000 00:00000000 00000000 {os.geteuid()} 0 40012 1 0 20 4 30 10 -1\n")
            assert socket_uid(table.read_text(), peer, proxy_side) == os.geteuid()
            monkeypatch.setattr(clientgate, "TCP_TABLES", (str(table), "/nonexistent/tcp6"))
            client = tflow.tclient_conn()
            client.peername, client.sockname = peer, proxy_side
            assert client_uid(client) is None


def test_the_kernel_is_asked_again_until_it_has_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe that failed (out of file descriptors, say) is no verdict for good: until it
    succeeds, a socket the kernel does not know goes on to /proc, as before."""
    answers = iter([False, True])
    asked: list[bool] = []
    monkeypatch.setattr(sockdiag, "_kernel_answers", False)
    monkeypatch.setattr(sockdiag, "_asked_of_own_connection", lambda: asked.append(True) or next(answers))
    assert [sockdiag.finds_live_connections() for _ in range(3)] == [False, True, True]
    assert len(asked) == 2


def test_the_gate_fails_closed_when_it_cannot_tell_who_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception out of the gate's hooks would only be logged by mitmproxy, and the client
    would go on unchecked: a lookup that fails in any way leaves it a stranger."""

    def broken(client: object) -> int | None:
        raise RuntimeError("a bug in the lookup")

    monkeypatch.setattr(clientgate, "client_uid", broken)
    gate = clientgate.ClientGate()
    assert gate._meet(tflow.tclient_conn()) == clientgate.Peer(None, False)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_stranger_is_answered_407_or_cut_off_when_its_body_already_streams(streamed: bool) -> None:
    """mitmproxy decides to stream a body past stream_large_bodies before the hooks run, and
    cannot answer such a request (it crashed the connection handler on the 407): a stranger's
    streamed upload is cut off instead."""
    gate = clientgate.ClientGate()
    flow = tflow.tflow()
    gate.peers[flow.client_conn] = clientgate.Peer(None, False)
    flow.request.stream = streamed
    gate.requestheaders(flow)
    if streamed:
        assert flow.response is None and flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE
    else:
        assert flow.response is not None and flow.response.status_code == 407


def lookup_fails_or_is_none(local: tuple[str, int], remote: tuple[str, int]) -> bool:
    try:
        return tcp_owner(local, remote) is None
    except OSError:
        return True  # not known: client_uid then reads /proc, which holds no live row either


SOCK_DIAG_SEQUENCE = 7


def sock_diag_reply(kind: int = sockdiag.SOCK_DIAG_BY_FAMILY, state: int = sockdiag.TCP_ESTABLISHED, ports: tuple[int, int] = (40000, 8080),
                    uid: int = 1000, sequence: int = SOCK_DIAG_SEQUENCE, error: int = 0) -> bytes:
    """A netlink message as the kernel answers a sock_diag request."""
    if kind == sockdiag.NLMSG_ERROR:
        body = struct.pack("=i", -error) + bytes(16)
    else:
        body = struct.pack("=BBBB", socket.AF_INET, state, 0, 0) + struct.pack("!HH16s16s", *ports, bytes(16), bytes(16))
        body += struct.pack("=III", 0, 0, 0) + struct.pack("=IIIII", 0, 0, 0, uid, 1234)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, sequence, 0) + body


@pytest.mark.parametrize(("reply", "answer"), [
    pytest.param(sock_diag_reply(), 1000, id="established"),
    pytest.param(sock_diag_reply(state=10), None, id="a-listener"),
    pytest.param(sock_diag_reply(state=6, uid=0), None, id="time-wait"),
    pytest.param(sock_diag_reply(ports=(40001, 8080)), None, id="another-connection"),
    pytest.param(sock_diag_reply(kind=sockdiag.NLMSG_ERROR, error=errno.ENOENT), OSError, id="unknown-socket"),
    pytest.param(sock_diag_reply(sequence=SOCK_DIAG_SEQUENCE + 1), OSError, id="another-request"),
    pytest.param(sock_diag_reply(kind=3), OSError, id="another-message"),
    pytest.param(sock_diag_reply()[:40], OSError, id="cut-short"),
])
def test_sock_diag_reply_is_read_strictly(reply: bytes, answer: int | type[OSError] | None) -> None:
    if answer is OSError:
        with pytest.raises(OSError):
            sockdiag.owner(reply, 40000, 8080, SOCK_DIAG_SEQUENCE)
    else:
        assert sockdiag.owner(reply, 40000, 8080, SOCK_DIAG_SEQUENCE) == answer


# --- the gate --------------------------------------------------------------------------------


def test_the_proxy_makes_its_credential_for_its_user_alone(proxy: MitmdumpProcess, home: Path) -> None:
    token = read_credential(home)
    assert token is not None
    info = (home / CREDENTIAL_FILE).stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, os.geteuid())
    seen = read_process(proxy.pid)
    assert seen is not None
    cmdline, environ = seen
    assert token.encode() not in cmdline and token.encode() not in environ


def test_the_owner_needs_no_credential_and_proxy_authorization_never_goes_upstream(
    proxy: MitmdumpProcess, upstream: RecordingUpstream
) -> None:
    result = curl(proxy, f"{upstream.url}/owner", "-H", PLACEHOLDER_HEADER, "-H", "Proxy-Authorization: Basic dXNlcjpwYXNz")
    assert result.returncode == 0, result.stderr.decode()
    (received,) = upstream.wait_for(1)
    assert delivered(received)
    assert received.header("proxy-authorization") is None


@as_another_user
def test_another_user_without_the_credential_gets_no_secret(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    start = len(proxy.output())
    plain = curl_as_nobody(f"{upstream.url}/stolen", "--include", "-x", proxy.url, "-H", PLACEHOLDER_HEADER)
    assert plain.stdout.startswith(b"HTTP/1.1 407 "), plain.stderr.decode()
    assert b'Proxy-Authenticate: Basic realm="vaultproxy"' in plain.stdout
    tunnel = curl_as_nobody(f"https://{LOOPBACK}:{upstream.port}/stolen", "--verbose", "-x", proxy.url, "-H", PLACEHOLDER_HEADER)
    assert tunnel.returncode != 0 and b"CONNECT tunnel failed, response 407" in tunnel.stderr
    assert b"< Proxy-Authenticate: Basic" in tunnel.stderr
    wrong = curl_as_nobody(f"{upstream.url}/stolen", "--include", "-H", PLACEHOLDER_HEADER,
                           env={"http_proxy": proxy_url(LOOPBACK, proxy.port, "not-the-credential-" + "x" * 20)})
    assert wrong.stdout.startswith(b"HTTP/1.1 407 ")

    assert upstream.requests == [] and upstream.all_bytes() == b""  # nothing left the proxy
    assert NOBODY is not None
    proxy.wait_for_output(f"refused a client of uid {NOBODY.pw_uid}")
    refusals = [line for line in new_output(proxy, start) if "vaultproxy: refused a client" in line]
    assert len(refusals) == 3 and all(f"of uid {NOBODY.pw_uid} at 127.0.0.1:" in line for line in refusals), refusals


@as_another_user
def test_another_user_with_the_credential_is_served(proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path) -> None:
    """The owner gave them the credential: they get the secret, and the upstream never sees the credential."""
    token = read_credential(home)
    assert token is not None
    result = curl_as_nobody(f"{upstream.url}/given", "-H", PLACEHOLDER_HEADER,
                            env={"http_proxy": proxy_url(LOOPBACK, proxy.port, token)})
    assert result.returncode == 0, result.stderr.decode()
    (received,) = upstream.wait_for(1)
    assert delivered(received)
    assert received.header("proxy-authorization") is None
    fail_on(hunt_bytes("upstream", upstream.all_bytes(), needles_for("credential", token, token)))


def test_socks5_serves_the_owner(proxy: MitmdumpProcess, socks_port: int, upstream: RecordingUpstream) -> None:
    result = subprocess.run(
        ["curl", "-q", "--silent", "--show-error", "--noproxy", "", "-x", f"socks5h://{LOOPBACK}:{socks_port}",
         "-H", PLACEHOLDER_HEADER, f"{upstream.url}/socks"],
        capture_output=True, env=child_env(), timeout=CLIENT_TIMEOUT, check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    (received,) = upstream.wait_for(1)
    assert delivered(received)


@as_another_user
def test_socks5_closes_the_connection_of_another_user(proxy: MitmdumpProcess, socks_port: int, upstream: RecordingUpstream) -> None:
    """SOCKS5 has no Proxy-Authorization: a client that is not the owner is cut off."""
    start = len(proxy.output())
    result = curl_as_nobody(f"{upstream.url}/socks", "-x", f"socks5h://{LOOPBACK}:{socks_port}", "-H", PLACEHOLDER_HEADER)
    assert result.returncode != 0
    assert upstream.requests == [] and upstream.all_bytes() == b""
    assert NOBODY is not None
    proxy.wait_for_output(f"refused a client of uid {NOBODY.pw_uid}")
    assert sum("vaultproxy: refused a client" in line for line in new_output(proxy, start)) == 1


def test_beyond_loopback_every_client_needs_the_credential(
    mitmdump: StartProxy, tmp_path: Path, upstream: RecordingUpstream, tls_upstream: RecordingUpstream
) -> None:
    """Listening on 0.0.0.0 (here as a mode's address): a warning, and the owner's own uid is
    not enough any more (a loopback connection may be forwarded for someone else)."""
    home = SECRETS.fill(tmp_path / "home")
    port = free_port()
    proxy = mitmdump(options={"vault_home": str(home), "mode": [f"regular@0.0.0.0:{port}"]}, port=port)
    token = wait_for_credential(home)
    assert listening_addresses(port) == {"0.0.0.0"}
    proxy.wait_for_output(f"vaultproxy: warning: listening on *:{port}: every client must present the proxy credential")
    servers = {"http": upstream, "https": tls_upstream}

    def get(scheme: str, credential: str | None) -> requests.Response:
        with proxy.requests_session() as session:
            session.proxies = {s: proxy_url(LOOPBACK, port, credential) for s in servers}
            return session.get(f"{servers[scheme].url}/far", headers={"X-Token": "<<vault:gate.loc>>"}, timeout=CLIENT_TIMEOUT)

    assert get("http", None).status_code == 407
    with pytest.raises(requests.exceptions.ProxyError, match="407"):  # the CONNECT is refused
        get("https", None)
    assert upstream.all_bytes() == b"" and tls_upstream.all_bytes() == b""
    for scheme, server in servers.items():
        assert get(scheme, token).status_code == 200
        (received,) = server.requests
        assert delivered(received)
        assert received.header("proxy-authorization") is None
    proxy.stop()
    fail_on(hunt_bytes("proxy output", proxy.output().encode(), needles_for("credential", token, token)))
