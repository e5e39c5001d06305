"""Recording upstream servers on 127.0.0.1 that keep exactly what they received.

`RecordingUpstream` is a hand-written HTTP/1.1 server (on socketserver) rather than
http.server, because tests must see the bytes as they arrived: header order and case,
chunked framing, and everything any connection ever sent (for leak checks).
`WebSocketUpstream` records WebSocket messages and echoes them (or answers as told).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http
import json
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .net import LOOPBACK
from .tls import TLSMaterial

Behaviour = Literal["ok", "reset", "hang", "malformed"]
DEFAULT_BODY = b'{"ok": true}'
# Not HTTP at all: mitmproxy must fail the flow with a protocol error.
MALFORMED_RESPONSE = b"HTTP/1.1 two hundred\r\nthis line is not a header\r\n\r\n"
MAX_LINE = 256 * 1024
READ_SIZE = 65536
DEFAULT_WAIT = 30.0
SHUTDOWN_POLL = 0.05  # how often serve_forever checks for stop(): keeps teardown quick
TRICKLE_PAUSE = 0.002  # between the pieces of a `trickle` reply

T = TypeVar("T")
WebSocketMessage = str | bytes
# How a WebSocketUpstream answers a message, given the message and how many it has received
# (this one included): the answer to send, or None to send nothing.
Answer = Callable[[WebSocketMessage, int], WebSocketMessage | None]


def echo(message: WebSocketMessage, count: int) -> WebSocketMessage:
    """WebSocketUpstream's default answer: the message itself."""
    return message


def _find_header(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    """First value of header `name` (case-insensitive), decoded as latin-1 like HTTP/1.1 does."""
    wanted = name.lower().encode("latin-1")
    for key, value in headers:
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


@dataclass(frozen=True)
class RecordedRequest:
    """One request exactly as the upstream received it."""

    method: str
    target: str  # the raw request target, e.g. "/path?q=1"
    version: str
    headers: list[tuple[bytes, bytes]]  # (name, value) per header line, order and case kept
    body: bytes  # chunked bodies are decoded (see `chunked`); content codings are not
    chunked: bool
    trailers: list[tuple[bytes, bytes]]
    raw: bytes  # the request's bytes on the wire (after TLS), framing included

    def header(self, name: str) -> str | None:
        """First value of header `name`, case-insensitive; None when absent."""
        return _find_header(self.headers, name)

    @property
    def path(self) -> str:
        """The target's path, without query (the key used for per-path replies)."""
        return urlsplit(self.target).path

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """How the upstream answers requests for a path.

    `echo` sends the request body back with the request's Content-Type and
    Content-Encoding; `gzip` compresses the body and sets Content-Encoding: gzip.
    `behaviour` other than "ok" misbehaves instead of answering: "reset" aborts the
    connection (TCP RST), "hang" never answers (until the upstream stops), "malformed"
    answers with bytes that are not a valid HTTP response. `early` answers as soon as the
    request head has arrived (as servers do with 401 or 413), then reads the body as framed
    and goes on with the next request on the connection. `respond` computes (extra headers,
    body) from the request, for servers that reflect what they received in their own way.
    `trickle` sends the response in pieces of that many bytes, pausing between them, so a
    proxy reads it in many chunks. `raw` computes the whole answer's bytes from the request,
    then closes the connection: for a hostile server that breaks the rules (its own framing,
    trailers, status line, codings, or no HTTP at all).
    """

    status: int = 200
    body: bytes = DEFAULT_BODY
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    echo: bool = False
    gzip: bool = False
    behaviour: Behaviour = "ok"
    early: bool = False
    respond: Callable[[RecordedRequest], tuple[list[tuple[str, str]], bytes]] | None = None
    trickle: int = 0
    raw: Callable[[RecordedRequest], bytes] | None = None


def headers_echo(padding: int = 0) -> Callable[[RecordedRequest], tuple[list[tuple[str, str]], bytes]]:
    """A `Reply.respond` that reflects the request's header fields, as httpbin's /headers and
    debug pages do: each as a response header `X-Echo-NAME`, and all as a JSON body (after
    `padding` spaces, for a body large enough to be streamed)."""

    def respond(request: RecordedRequest) -> tuple[list[tuple[str, str]], bytes]:
        fields = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers]
        body = b" " * padding + json.dumps(dict(fields)).encode()
        return [(f"X-Echo-{name}", value) for name, value in fields], body

    return respond


class _Recorder(Generic[T]):
    """A thread-safe list that tests can wait on."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._changed = threading.Condition()

    def append(self, item: T) -> int:
        """Add `item`; returns how many items there are now."""
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()
            return len(self._items)

    def snapshot(self) -> list[T]:
        with self._changed:
            return list(self._items)

    def clear(self) -> None:
        with self._changed:
            self._items.clear()

    def wait_for(self, count: int, timeout: float, what: str) -> list[T]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._items) >= count, timeout):
                raise TimeoutError(f"got {len(self._items)} of {count} {what} within {timeout}s")
            return list(self._items)


class _Reader:
    """Buffered reads from a socket that keep every byte: per request, and in a global log."""

    def __init__(self, conn: socket.socket, log: Callable[[bytes], None]) -> None:
        self._conn = conn
        self._log = log
        self._buffer = bytearray()
        self.raw = bytearray()

    def start_request(self) -> None:
        self.raw = bytearray()

    def _fill(self) -> None:
        data = self._conn.recv(READ_SIZE)
        if not data:
            raise EOFError("peer closed the connection")
        self._log(data)
        self._buffer += data

    def _take(self, size: int) -> bytes:
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        self.raw += chunk
        return chunk

    def readline(self) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_LINE:
                raise ValueError("line too long")
            self._fill()
        return self._take(end + 1)

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        return self._take(size)


def _read_fields(reader: _Reader) -> list[tuple[bytes, bytes]]:
    """Header (or trailer) lines up to the empty line."""
    fields = []
    while (line := reader.readline().rstrip(b"\r\n")) != b"":
        name, _, value = line.partition(b":")
        fields.append((name, value.strip(b" \t")))
    return fields


def _read_chunked(reader: _Reader) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Decode a chunked body; returns (body, trailers)."""
    body = bytearray()
    while True:
        size = int(reader.readline().split(b";", 1)[0].strip(), 16)
        if size == 0:
            return bytes(body), _read_fields(reader)
        body += reader.read(size)
        reader.read(2)  # CRLF after the chunk data


def _read_request(
    reader: _Reader, send: Callable[[bytes], None], early_answer: Callable[[str], bytes | None] = lambda target: None
) -> RecordedRequest | None:
    """Read one request; None when the peer closed the connection between requests.
    `early_answer(target)`: bytes to send before reading the body, if any."""
    reader.start_request()
    try:
        line = reader.readline()
        while line in (b"\r\n", b"\n"):  # tolerated before a request line (RFC 9112 2.2)
            line = reader.readline()
    except EOFError:
        return None
    method, target, version = line.rstrip(b"\r\n").decode("latin-1").split(" ", 2)
    headers = _read_fields(reader)
    if (_find_header(headers, "expect") or "").lower() == "100-continue":
        send(b"HTTP/1.1 100 Continue\r\n\r\n")
    if (early := early_answer(target)) is not None:
        send(early)
    body, trailers, chunked = b"", [], False
    if "chunked" in (_find_header(headers, "transfer-encoding") or "").lower():
        body, trailers = _read_chunked(reader)
        chunked = True
    elif (length := _find_header(headers, "content-length")) is not None:
        body = reader.read(int(length))
    return RecordedRequest(
        method=method, target=target, version=version, headers=headers,
        body=body, chunked=chunked, trailers=trailers, raw=bytes(reader.raw),
    )


def _response(request: RecordedRequest, reply: Reply) -> tuple[bytes, bool]:
    """The response bytes for `request`, and whether the connection stays open after it."""
    headers = list(reply.headers)
    body = reply.body
    if reply.respond is not None:
        extra, body = reply.respond(request)
        headers += extra
    if reply.echo:
        body = request.body
        copied = ("content-type", "content-encoding")
        headers = [(k, v) for k, v in headers if k.lower() not in copied]
        headers += [(k, v) for k in copied if (v := request.header(k)) is not None]
    if reply.gzip:
        body = gzip.compress(body)
        headers.append(("Content-Encoding", "gzip"))
    keep_alive = request.version == "HTTP/1.1" and (request.header("connection") or "").lower() != "close"
    bodiless = request.method == "HEAD" or reply.status in (204, 304)
    if reply.status != 204:
        headers.append(("Content-Length", str(len(body))))
    headers.append(("Connection", "keep-alive" if keep_alive else "close"))
    try:
        reason = http.HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Unknown"
    head = f"HTTP/1.1 {reply.status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("latin-1") + b"\r\n" + (b"" if bodiless else body), keep_alive


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        upstream = self.server.upstream
        conn: socket.socket = self.request
        if upstream.greeting:
            conn.sendall(upstream.greeting)
        if upstream.ssl_context is not None:
            conn = upstream.ssl_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        # Closed here: after wrap_socket, the socket socketserver closes is a detached shell.
        with upstream._track(conn), conn:
            if isinstance(conn, ssl.SSLSocket):
                conn.do_handshake()
            reader = _Reader(conn, upstream._log_received)
            while (request := _read_request(reader, conn.sendall, upstream.early_answer)) is not None:
                upstream._requests.append(request)
                reply = upstream.reply_for(request)
                if not reply.early and not self._answer(conn, request, reply):
                    return

    def _answer(self, conn: socket.socket, request: RecordedRequest, reply: Reply) -> bool:
        """Answer (or misbehave); True when the connection can carry another request."""
        if reply.behaviour == "reset":
            # SO_LINGER 0 makes close() send RST instead of FIN.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return False
        if reply.behaviour == "hang":
            self.server.upstream._stopping.wait()
            return False
        if reply.behaviour == "malformed":
            conn.sendall(MALFORMED_RESPONSE)
            return False
        if reply.raw is not None:
            conn.sendall(reply.raw(request))
            return False
        data, keep_alive = _response(request, reply)
        pieces = [data[i : i + reply.trickle] for i in range(0, len(data), reply.trickle)] if reply.trickle else [data]
        for piece in pieces:
            conn.sendall(piece)
            if reply.trickle:
                time.sleep(TRICKLE_PAUSE)
        return keep_alive


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    request_queue_size = 128  # load tests connect 50 clients at once; the default backlog is 5
    block_on_close = True  # server_close() joins handler threads, after stop() unblocked them

    def __init__(self, upstream: RecordingUpstream) -> None:
        self.upstream = upstream
        super().__init__(upstream.address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Peers dropping connections (and stop() closing them) is normal here; anything
        # else is a harness bug and is printed by the default handler.
        if isinstance(sys.exc_info()[1], (OSError, EOFError)):
            return
        super().handle_error(request, client_address)


class RecordingUpstream:
    """A threaded HTTP/1.1 (optionally HTTPS) server on 127.0.0.1 (or `address`) that records every request.

    Answers 200 with a small JSON body unless a per-path `Reply` says otherwise;
    `behaviour` sets how every other path is answered. `greeting`: bytes sent the moment a
    connection is accepted, before TLS and before the request (a server that speaks first).
    """

    def __init__(
        self,
        tls: TLSMaterial | None = None,
        behaviour: Behaviour = "ok",
        routes: Mapping[str, Reply] | None = None,
        greeting: bytes = b"",
        address: tuple[str, int] = (LOOPBACK, 0),
    ) -> None:
        self.ssl_context = tls.server_context() if tls is not None else None
        self.address = address  # another loopback address (127.0.0.2), or a given port: one a hostile resolver names
        self.connections_accepted = 0
        self.greeting = greeting
        self._default = Reply(behaviour=behaviour)
        self._routes: dict[str, Reply] = dict(routes or {})
        self._requests: _Recorder[RecordedRequest] = _Recorder()
        self._received = bytearray()
        self._received_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("upstream not started")
        return self._server.server_address[1]

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    @property
    def url(self) -> str:
        return self.url_for(LOOPBACK)

    def url_for(self, host: str) -> str:
        """The base URL under another name, e.g. https://api.example.com:PORT (see MitmdumpProcess hosts)."""
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        return self._requests.snapshot()

    def route(self, path: str, reply: Reply) -> None:
        """Answer requests whose path (query ignored) is `path` with `reply`."""
        self._routes[path] = reply

    def reply_for(self, request: RecordedRequest) -> Reply:
        return self._routes.get(request.path, self._default)

    def early_answer(self, target: str) -> bytes | None:
        """The response to send before a request's body is read, for `early` routes."""
        reply = self._routes.get(urlsplit(target).path, self._default)
        if not reply.early:
            return None
        head = RecordedRequest("POST", target, "HTTP/1.1", [], b"", False, [], b"")
        return _response(head, reply)[0]

    def clear(self) -> None:
        """Forget recorded requests (all_bytes() keeps everything)."""
        self._requests.clear()

    def wait_for(self, count: int, timeout: float = DEFAULT_WAIT) -> list[RecordedRequest]:
        """Block until at least `count` requests were recorded; returns them."""
        return self._requests.wait_for(count, timeout, "requests")

    def all_bytes(self) -> bytes:
        """Every byte any connection ever sent to this upstream (decrypted), for leak checks."""
        with self._received_lock:
            return bytes(self._received)

    def _log_received(self, data: bytes) -> None:
        with self._received_lock:
            self._received += data

    @contextlib.contextmanager
    def _track(self, conn: socket.socket) -> Iterator[None]:
        """Keep `conn` known while it is served, so stop() can unblock its handler."""
        with self._connections_lock:
            self._connections.add(conn)
            self.connections_accepted += 1
        try:
            yield
        finally:
            with self._connections_lock:
                self._connections.discard(conn)

    def start(self) -> RecordingUpstream:
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(SHUTDOWN_POLL,), name="recording-upstream", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, end hanging and idle connections, and join every thread."""
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._stopping.set()
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by its handler
        self._server.server_close()
        self._thread.join()
        self._server = None

    def __enter__(self) -> RecordingUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass(frozen=True)
class WebSocketHandshake:
    """The opening handshake request a WebSocketUpstream accepted."""

    path: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


class WebSocketUpstream:
    """A WebSocket server on 127.0.0.1 (optionally TLS) that records every message and echoes it.

    `answer` replaces the echo (see Answer): an upstream that never sends a received value
    back keeps values out of mitmproxy's records of the conversation, which an echo would
    legitimately put there. `greeting`: a message sent to each client as it connects.
    `closing`: given the first message, a text to ping with, then close the connection with.
    `echo_handshake`: each message is answered with the handshake's header fields as a JSON
    object instead (as a debug endpoint reflects what it received, as `headers_echo` does).
    Runs the `websockets` asyncio server on its own event loop in a background thread.
    """

    def __init__(
        self, tls: TLSMaterial | None = None, *, answer: Answer = echo, greeting: str | None = None,
        closing: Callable[[WebSocketMessage], str] | None = None, echo_handshake: bool = False,
    ) -> None:
        self._ssl_context = tls.server_context() if tls is not None else None
        self._answer = answer
        self._echo_handshake = echo_handshake
        self._greeting = greeting
        self._closing = closing
        self._messages: _Recorder[WebSocketMessage] = _Recorder()
        self._handshakes: _Recorder[WebSocketHandshake] = _Recorder()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        scheme = "wss" if self._ssl_context is not None else "ws"
        return f"{scheme}://{LOOPBACK}:{self._port}"

    @property
    def messages(self) -> list[WebSocketMessage]:
        return self._messages.snapshot()

    @property
    def handshakes(self) -> list[WebSocketHandshake]:
        return self._handshakes.snapshot()

    def wait_for(self, count: int, timeout: float = DEFAULT_WAIT) -> list[WebSocketMessage]:
        """Block until at least `count` messages were received; returns them."""
        return self._messages.wait_for(count, timeout, "websocket messages")

    async def _handle(self, connection: ServerConnection) -> None:
        request = connection.request
        if request is not None:
            self._handshakes.append(WebSocketHandshake(request.path, list(request.headers.raw_items())))
        try:
            if self._greeting is not None:
                await connection.send(self._greeting)
            async for message in connection:
                if self._closing is not None:
                    self._messages.append(message)
                    await connection.ping((text := self._closing(message)).encode())
                    await connection.close(reason=text)
                    return
                if self._echo_handshake and request is not None:
                    self._messages.append(message)
                    await connection.send(json.dumps(dict(request.headers.raw_items())))
                    continue
                reply = self._answer(message, self._messages.append(message))
                if reply is not None:
                    await connection.send(reply)
        except ConnectionClosed:
            pass  # the client or proxy went away mid-conversation: nothing left to answer

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with serve(self._handle, LOOPBACK, 0, ssl=self._ssl_context) as server:
            self._port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the starting thread
            self._failure = exc
        finally:
            self._ready.set()

    def start(self, timeout: float = DEFAULT_WAIT) -> WebSocketUpstream:
        self._thread = threading.Thread(target=self._run, name="websocket-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"websocket upstream did not start within {timeout}s")
        if self._failure is not None:
            raise RuntimeError("websocket upstream failed to start") from self._failure
        return self

    def stop(self, timeout: float = DEFAULT_WAIT) -> None:
        """Close the server and its connections, and join the thread. Bounded: the server
        waits for every connection it accepted to close, and a peer that holds one open
        (a proxy keeps an idle connection for minutes) would hold the test with it."""
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(timeout)
        thread, self._thread = self._thread, None
        if thread.is_alive():  # a daemon thread: it goes with the test process
            raise TimeoutError(
                f"the websocket upstream did not stop within {timeout:g}s: a connection stayed open "
                f"({len(self.handshakes)} opening handshake(s) and {len(self.messages)} message(s) received)"
            )

    def __enter__(self) -> WebSocketUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
