"""A real HTTP/2 server (TLS, ALPN h2) on 127.0.0.1, built on the h2 package mitmproxy ships
with: for what only HTTP/2 lets a server do (DATA frames where HTTP/1 framing allows no body).

`answer(headers, body)` gives each request's (status, headers, body); the body goes out in
DATA frames whatever the status. Used as a context manager: stopping joins every thread.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events

from tests.support.net import LOOPBACK
from tests.support.tls import TLSMaterial

Headers = list[tuple[bytes, bytes]]
Answer = Callable[[dict[bytes, bytes], bytes], tuple[int, Headers, bytes]]


class Http2Upstream:
    def __init__(self, tls: TLSMaterial, answer: Answer) -> None:
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(tls.server_cert, tls.server_key)
        self._context.set_alpn_protocols(["h2"])
        self._answer = answer
        self._listener = socket.create_server((LOOPBACK, 0))
        self._threads: list[threading.Thread] = []
        self._connections: list[socket.socket] = []
        self.port: int = self._listener.getsockname()[1]

    def __enter__(self) -> Http2Upstream:
        self._start(self._accept)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(), which close() alone does not
        self._listener.close()
        for conn in list(self._connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed by its thread already
        for thread in list(self._threads):
            thread.join()

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # the listener was closed: stopping
                return
            self._connections.append(conn)
            self._start(self._serve, conn)

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self._context.wrap_socket(raw, server_side=True) as tls:
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
                conn.initiate_connection()
                requests: dict[int, tuple[dict[bytes, bytes], bytearray]] = {}
                while data := tls.recv(65536):
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            requests[event.stream_id] = (dict(event.headers), bytearray())
                        elif isinstance(event, h2.events.DataReceived):
                            requests[event.stream_id][1].extend(event.data)
                            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        elif isinstance(event, h2.events.StreamEnded):
                            self._respond(conn, event.stream_id, *requests.pop(event.stream_id))
                    tls.sendall(conn.data_to_send())
        except (OSError, ssl.SSLError):
            pass  # the peer went away, or stopping

    def _respond(self, conn: h2.connection.H2Connection, stream: int, headers: dict[bytes, bytes], body: bytearray) -> None:
        status, response_headers, response_body = self._answer(headers, bytes(body))
        conn.send_headers(stream, [(b":status", str(status).encode()), *response_headers])
        # Within the peer's initial window (64 KiB): no flow control to wait for.
        for start in range(0, len(response_body), conn.max_outbound_frame_size):
            conn.send_data(stream, response_body[start : start + conn.max_outbound_frame_size])
        conn.end_stream(stream)
