"""A small, fast HTTP/1.1 keep-alive upstream for the proxy benchmarks, run as its own process.

tests/support's RecordingUpstream records every byte and runs a thread per connection:
right for tests, but under load it would be the bottleneck, not the proxy. This one is an
asyncio Protocol that answers each request with a fixed 200 as soon as its body (framed by
Content-Length; the bench sends nothing else) has arrived. `/echo` answers with the request
head instead (in hex, which the proxy's redaction leaves alone), so the bench can check what
the proxy really sent.

    python -m bench.upstream    prints its port, serves 127.0.0.1 until stdin closes or SIGTERM
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading

LOOPBACK = "127.0.0.1"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def answer(head: bytes) -> bytes:
    if head.split(b" ", 2)[1].endswith(b"/echo"):
        # In hex: the proxy redacts values a response echoes, and the bench must see them.
        body = head.hex().encode()
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    return OK


class Http11(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: bytes | None = None
        self.body_left = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while True:
            if self.head is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                self.head = bytes(self.buffer[:end])
                del self.buffer[: end + 4]
                self.body_left = content_length(self.head)
            taken = min(self.body_left, len(self.buffer))
            del self.buffer[:taken]
            self.body_left -= taken
            if self.body_left:
                return
            self.transport.write(answer(self.head))
            self.head = None


async def serve() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The parent holds our stdin: EOF means it is gone, so we never outlive the bench.
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), loop.call_soon_threadsafe(stop.set)), daemon=True).start()
    server = await loop.create_server(Http11, LOOPBACK, 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve())
