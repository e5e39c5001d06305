"""The fallback load generator when `wrk` is not installed: keep-alive HTTP/1.1 connections
that send one fixed request (absolute-form, for a forward proxy) back to back for a while.

It runs in its own process, like wrk, so it does not share an interpreter with anything it
measures, and prints the same result line as bench/proxy.lua does for wrk:

    python -m bench.loadgen PORT CONNECTIONS SECONDS REQUEST_HEX
    -> BENCH_RESULT {"requests": ..., "duration_us": ..., "errors": {...}, "p50_us": ..., "p99_us": ...}
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from bench.common import percentile
from bench.upstream import LOOPBACK, content_length

ERRORS = ("connect", "read", "write", "status", "timeout")
TIMEOUT = 10.0


async def connection(port: int, request: bytes, deadline: float, latencies: list[float], errors: dict[str, int]) -> None:
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
    except OSError:
        errors["connect"] += 1
        return
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
                await reader.readexactly(content_length(head))
            except TimeoutError:
                errors["timeout"] += 1
                return
            except (OSError, asyncio.IncompleteReadError):
                errors["read"] += 1
                return
            latencies.append(time.perf_counter() - start)
            if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.1 3")):
                errors["status"] += 1
    finally:
        writer.close()


async def run(port: int, connections: int, seconds: float, request: bytes) -> dict[str, object]:
    latencies: list[float] = []
    errors = dict.fromkeys(ERRORS, 0)
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(connection(port, request, deadline, latencies, errors) for _ in range(connections)))
    duration = time.perf_counter() - start
    return {
        "requests": len(latencies),
        "duration_us": round(duration * 1e6),
        "errors": errors,
        "p50_us": percentile(latencies, 50) * 1e6,
        "p99_us": percentile(latencies, 99) * 1e6,
    }


if __name__ == "__main__":
    port, connections, seconds, request_hex = sys.argv[1:5]
    result = asyncio.run(run(int(port), int(connections), float(seconds), bytes.fromhex(request_hex)))
    print("BENCH_RESULT " + json.dumps(result), flush=True)
