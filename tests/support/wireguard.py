"""A WireGuard peer for tests: a minimal initiator (Noise_IKpsk2 without a pre-shared key)
and a one-shot TCP exchange through the tunnel, in pure Python (cryptography and hashlib).

It sends IPv4/TCP packets with whatever addresses the caller chooses, as any WireGuard peer
may: mitmproxy's WireGuard mode takes a connection's addresses from those packets. It needs
nothing but a UDP socket on loopback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import socket
import struct
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"


def HASH(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def MAC(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def HMAC(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def KDF(key: bytes, data: bytes, n: int) -> list[bytes]:
    t0 = HMAC(key, data)
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = HMAC(t0, prev + bytes([i]))
        out.append(prev)
    return out


def raw_pub(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def aead(key: bytes, counter: int, plain: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(b"\0" * 4 + struct.pack("<Q", counter), plain, ad)


def aead_open(key: bytes, counter: int, sealed: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).decrypt(b"\0" * 4 + struct.pack("<Q", counter), sealed, ad)


def tai64n() -> bytes:
    now = time.time()
    return struct.pack(">QI", (1 << 62) + int(now), int((now % 1) * 1e9))


class Tunnel:
    def __init__(self, endpoint: tuple[str, int], client_private_b64: str, server_public_b64: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(endpoint)
        self.sock.settimeout(5)
        self.si = X25519PrivateKey.from_private_bytes(base64.b64decode(client_private_b64))
        self.sr_pub = base64.b64decode(server_public_b64)
        self.counter = 0
        self.handshake()

    @classmethod
    def to_mitmproxy(cls, endpoint: tuple[str, int], keys: Path) -> Tunnel:
        """A peer of mitmproxy's WireGuard mode, with the keys it wrote (`wireguard.conf` in its confdir)."""
        conf = json.loads(keys.read_text())
        server = X25519PrivateKey.from_private_bytes(base64.b64decode(conf["server_key"]))
        return cls(endpoint, conf["client_key"], base64.b64encode(raw_pub(server)).decode())

    def close(self) -> None:
        self.sock.close()

    def handshake(self) -> None:
        sr = X25519PublicKey.from_public_bytes(self.sr_pub)
        c = HASH(CONSTRUCTION)
        h = HASH(HASH(c + IDENTIFIER) + self.sr_pub)
        ei = X25519PrivateKey.generate()
        ei_pub = raw_pub(ei)
        c = KDF(c, ei_pub, 1)[0]
        h = HASH(h + ei_pub)
        c, k = KDF(c, ei.exchange(sr), 2)
        enc_static = aead(k, 0, raw_pub(self.si), h)
        h = HASH(h + enc_static)
        c, k = KDF(c, self.si.exchange(sr), 2)
        enc_ts = aead(k, 0, tai64n(), h)
        h = HASH(h + enc_ts)
        self.sender = random.getrandbits(32)
        msg = struct.pack("<B3xI", 1, self.sender) + ei_pub + enc_static + enc_ts
        msg += MAC(HASH(LABEL_MAC1 + self.sr_pub), msg) + b"\0" * 16
        self.sock.send(msg)
        resp = self.sock.recv(2048)
        assert resp[0] == 2 and len(resp) == 92, f"unexpected handshake response {resp[:4]!r} len {len(resp)}"
        self.receiver, their_receiver = struct.unpack_from("<II", resp, 4)
        assert their_receiver == self.sender
        er_pub = resp[12:44]
        enc_empty = resp[44:60]
        er = X25519PublicKey.from_public_bytes(er_pub)
        c = KDF(c, er_pub, 1)[0]
        h = HASH(h + er_pub)
        c = KDF(c, ei.exchange(er), 1)[0]
        c = KDF(c, self.si.exchange(er), 1)[0]
        c, t, k = KDF(c, b"\0" * 32, 3)
        h = HASH(h + t)
        aead_open(k, 0, enc_empty, h)
        self.send_key, self.recv_key = KDF(c, b"", 2)

    def send_packet(self, packet: bytes) -> None:
        padded = packet + b"\0" * (-len(packet) % 16)
        msg = struct.pack("<B3xIQ", 4, self.receiver, self.counter) + aead(self.send_key, self.counter, padded, b"")
        self.counter += 1
        self.sock.send(msg)

    def recv_packet(self, timeout: float = 5) -> bytes | None:
        self.sock.settimeout(timeout)
        while True:
            try:
                data = self.sock.recv(65535)
            except socket.timeout:
                return None
            if data[0] != 4:
                continue
            counter = struct.unpack_from("<Q", data, 8)[0]
            plain = aead_open(self.recv_key, counter, data[16:], b"")
            if not plain:
                continue  # keepalive
            total = struct.unpack_from(">H", plain, 2)[0]
            return plain[:total]


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_tcp(src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    s_ip, d_ip = socket.inet_aton(src[0]), socket.inet_aton(dst[0])
    tcp = struct.pack(">HHIIBBHHH", src[1], dst[1], seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    pseudo = s_ip + d_ip + struct.pack(">BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack(">H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.getrandbits(16), 0x4000, 64, 6, 0, s_ip, d_ip)
    ip = ip[:10] + struct.pack(">H", checksum(ip)) + ip[12:]
    return ip + tcp


SYN, ACK, PSH, FIN, RST = 0x02, 0x10, 0x08, 0x01, 0x04


def parse_tcp(packet: bytes) -> tuple[int, int, int, bytes]:
    ihl = (packet[0] & 0xF) * 4
    seq, ack = struct.unpack_from(">II", packet, ihl + 4)
    offset = (packet[ihl + 12] >> 4) * 4
    flags = packet[ihl + 13]
    return seq, ack, flags, packet[ihl + offset:]


def tcp_exchange(tunnel: Tunnel, src: tuple[str, int], dst: tuple[str, int], request: bytes, wait: float = 8) -> bytes:
    """Open a TCP connection src -> dst inside the tunnel, send `request`, return what comes back."""
    isn = random.getrandbits(32)
    tunnel.send_packet(ipv4_tcp(src, dst, isn, 0, SYN))
    pkt = tunnel.recv_packet()
    if pkt is None:
        raise TimeoutError("no SYN-ACK")
    seq, ack, flags, _ = parse_tcp(pkt)
    if not (flags & SYN and flags & ACK):
        raise ConnectionError(f"no SYN-ACK: flags {flags:#x}")
    my_seq, their_seq = isn + 1, seq + 1
    tunnel.send_packet(ipv4_tcp(src, dst, my_seq, their_seq, ACK))
    tunnel.send_packet(ipv4_tcp(src, dst, my_seq, their_seq, PSH | ACK, request))
    my_seq += len(request)
    received = b""
    deadline = time.time() + wait
    while time.time() < deadline:
        pkt = tunnel.recv_packet(timeout=max(0.1, deadline - time.time()))
        if pkt is None:
            break
        seq, ack, flags, payload = parse_tcp(pkt)
        if payload and seq == their_seq:
            received += payload
            their_seq += len(payload)
        if flags & FIN:
            their_seq += 1
        tunnel.send_packet(ipv4_tcp(src, dst, my_seq, their_seq, ACK))
        if flags & (FIN | RST):
            break
    return received
