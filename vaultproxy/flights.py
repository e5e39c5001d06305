"""Requests in flight whose parts were substituted, and the originals to put back.

Values must reach the wire but nothing that records or shows a flow (save, HAR export, the
dumper, the flow views): once a request has gone upstream its original parts, which hold
placeholders, are put back. Only originals and key names are kept here, never a value, and
never in `flow.metadata` (which is serialised).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mitmproxy import http, websocket

from vaultcore.placeholders import StreamSubstituter, SubstitutionError
from vaultproxy.rewrite import Rewrite


@dataclass
class Original:
    flow: http.HTTPFlow
    path: str | None = None
    fields: tuple[tuple[bytes, bytes], ...] | None = None
    raw_content: bytes | None = None
    keys: list[str] = field(default_factory=list)
    restored: bool = False
    stream: StreamSubstituter | None = None
    refusals: list[SubstitutionError] = field(default_factory=list)


class Flights:
    def __init__(self) -> None:
        self._requests: dict[str, Original] = {}
        self._messages: dict[str, list[tuple[websocket.WebSocketMessage, bytes]]] = {}
        self._websocket_keys: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._requests) + len(self._messages)

    def _original(self, flow: http.HTTPFlow) -> Original:
        if flow.id not in self._requests:
            self._requests[flow.id] = Original(flow)
        return self._requests[flow.id]

    def remember(self, flow: http.HTTPFlow, rewrite: Rewrite, *, streamed_body: bool = False) -> None:
        """Keep the parts `rewrite` (or, for a streamed body, the re-framing) will change."""
        request = flow.request
        original = self._original(flow)
        if rewrite.path is not None and original.path is None:
            original.path = request.path
        if (rewrite.fields is not None or streamed_body) and original.fields is None:
            original.fields = request.headers.fields
        if rewrite.content is not None and original.raw_content is None:
            original.raw_content = request.raw_content
        original.keys.extend(k for k in rewrite.keys if k not in original.keys)

    def track_stream(self, flow: http.HTTPFlow, substituter: StreamSubstituter) -> None:
        self._original(flow).stream = substituter

    def add_refusal(self, flow: http.HTTPFlow, error: SubstitutionError) -> None:
        self._original(flow).refusals.append(error)

    def stream_outcome(self, flow: http.HTTPFlow) -> tuple[list[str], list[SubstitutionError]]:
        """Keys a streamed request used (head and body) and the refusals in its body."""
        original = self._requests.get(flow.id)
        if original is None:
            return [], []
        if original.stream is not None:
            original.keys.extend(k for k in original.stream.keys_used if k not in original.keys)
        return original.keys, original.refusals

    def original_path(self, flow: http.HTTPFlow) -> str:
        original = self._requests.get(flow.id)
        return original.path if original and original.path is not None else flow.request.path

    def restore(self, flow: http.HTTPFlow) -> None:
        """Put the placeholders back into the request (it has gone upstream)."""
        original = self._requests.get(flow.id)
        if original is None or original.restored:
            return
        if original.path is not None:
            flow.request.path = original.path
        if original.fields is not None:
            flow.request.headers.fields = original.fields
        if original.raw_content is not None:
            flow.request.raw_content = original.raw_content
        original.restored = True

    def restore_all(self) -> None:
        """At shutdown: flows still in flight are about to be saved as they are."""
        for original in list(self._requests.values()):
            self.restore(original.flow)
        for flow_id in list(self._messages):
            self._restore_messages(flow_id)

    def finish(self, flow: http.HTTPFlow) -> list[str]:
        """Restore and forget the flow; returns the keys it used (for response redaction)."""
        self.restore(flow)
        original = self._requests.pop(flow.id, None)
        return original.keys if original else []

    def remember_message(self, flow: http.HTTPFlow, message: websocket.WebSocketMessage, keys: list[str]) -> None:
        self._messages.setdefault(flow.id, []).append((message, message.content))
        self.add_websocket_keys(flow, keys)

    def add_websocket_keys(self, flow: http.HTTPFlow, keys: list[str]) -> None:
        if keys:
            self._websocket_keys.setdefault(flow.id, set()).update(keys)

    def websocket_keys(self, flow: http.HTTPFlow) -> set[str]:
        """Keys injected into this WebSocket so far (its handshake and its messages)."""
        return self._websocket_keys.get(flow.id, set())

    def end_websocket(self, flow: http.HTTPFlow) -> None:
        self._restore_messages(flow.id)
        self._websocket_keys.pop(flow.id, None)

    def restore_messages(self, flow: http.HTTPFlow) -> None:
        """Messages are sent right after the hook that substituted them; the next hook of the
        flow (a later message, the end, an error) puts their placeholders back."""
        self._restore_messages(flow.id)

    def _restore_messages(self, flow_id: str) -> None:
        for message, content in self._messages.pop(flow_id, []):
            message.content = content
