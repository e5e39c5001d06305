"""Two loopback servers for the freshness tests, each counting what it sees.

`ProviderTap` sits between vaultcore and moto's server: it forwards every call and counts the
Secrets Manager operations by name (with their times), so a test can count the fetches a
separate mitmdump process makes; `down` answers 503 instead, as an outage of the provider.

`Gatekeeper` is an HTTPS API that accepts only the current credential: 200 for
`Authorization: Bearer <current>`, 401 for anything else, recording each credential it was
shown (the test's own record, never printed).
"""

from __future__ import annotations

import http.server
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from types import TracebackType
from typing import Any

from .net import LOOPBACK

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # a burst of hundreds of connections must not be refused


class _Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Running:
    """Start on a free port in a thread; stop on exit."""

    _server: _Server

    def _serve(self, handler: type[http.server.BaseHTTPRequestHandler], context: ssl.SSLContext | None = None) -> None:
        self._server = _Server((LOOPBACK, 0), handler)
        if context is not None:
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()


class ProviderTap(_Running):
    def __init__(self, target: str):
        self.target = target
        self.down = False
        self.calls: Counter[str] = Counter()
        self.times: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def fetches(self) -> int:
        """GetSecretValue and BatchGetSecretValue calls so far (each try of one, retries included)."""
        return self.calls["GetSecretValue"] + self.calls["BatchGetSecretValue"]

    def __enter__(self) -> ProviderTap:
        tap = self

        class Handler(_Quiet):
            def do_POST(self) -> None:
                operation = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2] or "other"
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with tap._lock:
                    tap.calls[operation] += 1
                    tap.times.append((time.monotonic(), operation))
                if tap.down:
                    self.reply(503, b'{"__type": "ServiceUnavailable", "message": "down for the test"}')
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                request = urllib.request.Request(tap.target + self.path, data=body, headers=headers, method="POST")
                try:
                    with _DIRECT.open(request, timeout=30) as answer:
                        status, payload, kind = answer.status, answer.read(), answer.headers.get("Content-Type", "")
                except urllib.error.HTTPError as e:
                    status, payload, kind = e.code, e.read(), e.headers.get("Content-Type", "")
                self.reply(status, payload, {"Content-Type": kind})

        self._serve(Handler)
        return self


class Gatekeeper(_Running):
    def __init__(self, context: ssl.SSLContext, current: str):
        self.context = context
        self.current = current
        self.shown: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __enter__(self) -> Gatekeeper:
        gate = self

        class Handler(_Quiet):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.do_GET()

            def do_GET(self) -> None:
                credential = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                with gate._lock:
                    gate.shown[credential] += 1
                if credential == gate.current:
                    self.reply(200, b'{"ok": true}', {"Content-Type": "application/json"})
                else:
                    self.reply(401, b'{"error": "invalid token"}', {"Content-Type": "application/json"})

        self._serve(Handler, self.context)
        return self
