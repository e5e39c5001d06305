"""Requests in flight whose parts were substituted, and the originals to put back.

Values must reach the wire but nothing that records or shows a flow (save, HAR export, the
dumper, the flow views): once a request has gone upstream its original parts, which hold
placeholders, are put back. Only originals, key names and the index their values came from,
and the signatures the proxy added, are kept here (to redact echoes of them), never in
`flow.metadata` (which is serialised).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mitmproxy import http, websocket

from vaultcore.index import SecretIndex
from vaultcore.placeholders import StreamSubstituter, SubstitutionError
from vaultproxy.responses import Signatures, Uses
from vaultproxy.rewrite import Rewrite


# How a request's body is delimited on the wire. mitmproxy's HTTP/1 client reads these from the
# live request for every chunk it sends, so they must not change while a body is streaming.
FRAMING_HEADERS = (b"content-length", b"transfer-encoding")


@dataclass(slots=True)
class Original:
    flow: http.HTTPFlow
    path: str | None = None
    fields: tuple[tuple[bytes, bytes], ...] | None = None
    raw_content: bytes | None = None
    keys: list[str] = field(default_factory=list)
    index: SecretIndex | None = None  # what the keys resolved with
    restored: bool = False
    stream: StreamSubstituter | None = None
    refusals: list[SubstitutionError] = field(default_factory=list)
    audited: bool = False
    # What the request this one sends again used (a retry): an upstream may echo the rejected
    # values into the retry's answer, and they may still be good.
    earlier: Uses = ()
    # The signatures the proxy added (and a retried request's), to redact from the answer.
    signatures: Signatures = ()

    def keys_so_far(self) -> list[str]:
        """The keys the request used: its head's, then those its streamed body used so far."""
        if self.stream is None:
            return self.keys
        return self.keys + [k for k in self.stream.keys_used if k not in self.keys]

    def uses(self) -> Uses:
        """The keys used so far under the index they resolved with, and those used earlier."""
        return self.earlier if self.index is None else ((self.index, tuple(self.keys_so_far())), *self.earlier)


def body_streaming(flow: http.HTTPFlow) -> bool:
    """Whether the request's body is still going out (an upstream may answer before it ends)."""
    return bool(flow.request.stream) and flow.request.timestamp_end is None


def keep_framing(original: tuple[tuple[bytes, bytes], ...], current: http.Headers) -> tuple[tuple[bytes, bytes], ...]:
    """The original header fields, but with the framing headers the body is being sent with."""
    framing = tuple((n, v) for n, v in current.fields if n.lower() in FRAMING_HEADERS)
    return tuple((n, v) for n, v in original if n.lower() not in FRAMING_HEADERS) + framing


class Flights:
    def __init__(self) -> None:
        self._requests: dict[str, Original] = {}
        self._answered_midway: dict[str, Original] = {}  # see `abandoned`
        self._messages: dict[str, list[tuple[websocket.WebSocketMessage, bytes]]] = {}
        self._websocket_keys: dict[str, dict[SecretIndex, set[str]]] = {}
        self._websocket_signatures: dict[str, Signatures] = {}

    def __len__(self) -> int:
        return len(self._requests) + len(self._messages)

    def _original(self, flow: http.HTTPFlow) -> Original:
        original = self._requests.get(flow.id)
        if original is None:
            original = self._requests[flow.id] = Original(flow)
        return original

    def remember(
        self, flow: http.HTTPFlow, rewrite: Rewrite, index: SecretIndex, *, streamed_body: bool = False, signatures: Signatures = (),
    ) -> None:
        """Keep the parts `rewrite` (or, for a streamed body, the re-framing) will change, and
        the `signatures` it adds."""
        request = flow.request
        original = self._requests.get(flow.id)
        if original is None:  # the common case: one change per request, kept in one step
            self._requests[flow.id] = Original(
                flow,
                path=request.path if rewrite.path is not None else None,
                # A new body changes Content-Length, which would tell the value's length.
                fields=request.headers.fields if rewrite.fields is not None or rewrite.content is not None or streamed_body else None,
                raw_content=request.raw_content if rewrite.content is not None else None,
                keys=list(rewrite.keys),
                index=index,
                signatures=signatures,
            )
            return
        original.index = index
        if original.restored:  # put back already (by an instance a reload retired): kept afresh
            original.path = original.fields = original.raw_content = None
            original.restored = False
        if rewrite.path is not None and original.path is None:
            original.path = request.path
        if (rewrite.fields is not None or rewrite.content is not None or streamed_body) and original.fields is None:
            original.fields = request.headers.fields
        if rewrite.content is not None and original.raw_content is None:
            original.raw_content = request.raw_content
        original.keys.extend(k for k in rewrite.keys if k not in original.keys)
        original.signatures += signatures

    def replaying(self, flow: http.HTTPFlow, earlier: Original) -> None:
        """`flow` sends again the request of `earlier`: its answer is redacted for both (the
        values, and the signature `earlier` went with; `flow` is signed afresh)."""
        replay = self._original(flow)
        replay.earlier, replay.signatures = earlier.uses(), earlier.signatures

    def track_stream(self, flow: http.HTTPFlow, substituter: StreamSubstituter) -> None:
        self._original(flow).stream = substituter

    def add_refusal(self, flow: http.HTTPFlow, error: SubstitutionError) -> None:
        self._original(flow).refusals.append(error)

    def stream_outcome(self, flow: http.HTTPFlow) -> tuple[list[str], list[SubstitutionError]]:
        """Keys a streamed request used (head and body) and the refusals in its body."""
        original = self._requests.get(flow.id)
        if original is None:
            return [], []
        return original.keys_so_far(), original.refusals

    def original_path(self, flow: http.HTTPFlow) -> str:
        original = self._requests.get(flow.id)
        return original.path if original and original.path is not None else flow.request.path

    def restore(self, flow: http.HTTPFlow) -> None:
        """Put the placeholders back into the request (it has gone upstream).

        A streamed request keeps the headers that frame its body as they were sent: an
        upstream may answer before the body ends, and mitmproxy reads them again for every
        chunk and for the body's end; changed mid-body, the rest would go out unframed and an
        upstream would read it as further requests (smuggling)."""
        original = self._requests.get(flow.id)
        if original is None or original.restored:
            return
        if original.path is not None:
            flow.request.path = original.path
        if original.fields is not None:
            streamed = bool(flow.request.stream)
            flow.request.headers.fields = keep_framing(original.fields, flow.request.headers) if streamed else original.fields
        if original.raw_content is not None:
            flow.request.raw_content = original.raw_content
        original.restored = True

    def restore_all(self) -> None:
        """At shutdown: flows still in flight are about to be saved as they are."""
        for original in list(self._requests.values()):
            self.restore(original.flow)
        for flow_id in list(self._messages):
            self._restore_messages(flow_id)

    def finish(self, flow: http.HTTPFlow) -> Original | None:
        """Restore and forget the flow; returns what it used (for response redaction).

        A request whose body is still streaming is kept until its body ends (`forget_answered`)."""
        self.restore(flow)
        original = self._requests.get(flow.id)
        if original is None:
            return None
        if body_streaming(flow) and flow.error is None:
            self._answered_midway[flow.id] = original
        else:
            del self._requests[flow.id]
            self._answered_midway.pop(flow.id, None)
        return original

    def used(self, flow: http.HTTPFlow) -> Original | None:
        """What the request used so far (keys, and the index they resolved with)."""
        return self._requests.get(flow.id)

    def abandoned(self) -> list[http.HTTPFlow]:
        """Requests answered while their body was still going out, whose client then hung up
        or reset the stream. mitmproxy fires no hook for them (their response is done), only
        marks them no longer live; a body that ends fires `request` before that."""
        return [o.flow for o in self._answered_midway.values() if not o.flow.live]

    def forget_answered(self, flow: http.HTTPFlow) -> None:
        """A streamed body has ended, or never will: forget the flow if its response has come."""
        if self._answered_midway.pop(flow.id, None) is not None:
            self._requests.pop(flow.id, None)

    def take_audit(self, flow: http.HTTPFlow) -> bool:
        """True once per flow: whoever audits a streamed request first (its end, or an error)."""
        original = self._requests.get(flow.id)
        if original is None or original.audited:
            return False
        original.audited = True
        return True

    def remember_message(self, flow: http.HTTPFlow, message: websocket.WebSocketMessage, keys: list[str], index: SecretIndex) -> None:
        self._messages.setdefault(flow.id, []).append((message, message.content))
        self.add_websocket_keys(flow, keys, index)

    def add_websocket_keys(self, flow: http.HTTPFlow, keys: list[str], index: SecretIndex | None) -> None:
        """Each key goes under an index the socket holds already that gives it the same value:
        every reload and token renewal makes a new index of every secret, and a socket open
        for days keeps only those that gave one of its keys another value."""
        if not keys or index is None:
            return
        uses = self._websocket_keys.setdefault(flow.id, {})
        for key in keys:
            if (secret := index.get(key)) is None:
                continue
            held = next((known for known in uses if (same := known.get(key)) is not None and same.value == secret.value), index)
            uses.setdefault(held, set()).add(key)

    def websocket_keys(self, flow: http.HTTPFlow) -> dict[SecretIndex, set[str]]:
        """Keys injected into this WebSocket so far (its handshake and its messages), under
        each index they resolved with (a reload while it is open adds one)."""
        return self._websocket_keys.get(flow.id, {})

    def add_websocket_signatures(self, flow: http.HTTPFlow, signatures: Signatures) -> None:
        """The signatures the proxy added to a WebSocket's handshake (and to the handshake a
        retry replaced): the socket is the handshake's answer, and its server may echo them in
        any message or control frame while it is open."""
        if signatures:
            self._websocket_signatures[flow.id] = self._websocket_signatures.get(flow.id, ()) + signatures

    def websocket_signatures(self, flow: http.HTTPFlow) -> Signatures:
        return self._websocket_signatures.get(flow.id, ())

    def end_websocket(self, flow: http.HTTPFlow) -> None:
        self._restore_messages(flow.id)
        self._websocket_keys.pop(flow.id, None)
        self._websocket_signatures.pop(flow.id, None)

    def restore_messages(self, flow: http.HTTPFlow) -> None:
        """Messages are sent right after the hook that substituted them; the next hook of the
        flow (a later message, the end, an error) puts their placeholders back."""
        self._restore_messages(flow.id)

    def _restore_messages(self, flow_id: str) -> None:
        for message, content in self._messages.pop(flow_id, []):
            message.content = content
