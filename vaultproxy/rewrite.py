"""Where a request's placeholders are and what a value must look like there.

Thin functions over mitmproxy's `Request` and `WebSocketMessage`: each finds the parts that
may hold placeholders with one cheap check per part (`mentions_placeholder`), and computes the
new parts without assigning them, so that a refusal anywhere (a refused key, or text that is
almost a placeholder) leaves the request untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mitmproxy import connection, http, websocket

from vaultcore.placeholders import Budget, Context, Lookup, StreamSubstituter, SubstitutionError, mentions_placeholder, resolve

# Streamed bodies of these types are passed through untouched: they are uploads, not requests
# a user writes placeholders into, and chunked re-framing would cost them their Content-Length.
BINARY_TYPES = ("application/octet-stream", "image/", "audio/", "video/", "application/zip", "application/gzip", "application/pdf")


def body_context(content_type: str) -> Context:
    """The escaping a value needs inside a body of this media type."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return Context.JSON
    if media == "application/x-www-form-urlencoded":
        return Context.FORM
    return Context.RAW


@dataclass
class Rewrite:
    """The new parts of a request, computed but not yet applied."""

    path: str | None = None
    fields: tuple[tuple[bytes, bytes], ...] | None = None
    content: bytes | None = None
    keys: list[str] = field(default_factory=list)

    def _add(self, keys: list[str]) -> None:
        self.keys.extend(k for k in keys if k not in self.keys)

    def apply(self, request: http.Request) -> None:
        if self.path is not None:
            request.path = self.path
        if self.fields is not None:
            request.headers.fields = self.fields
        if self.content is not None:
            request.content = self.content  # re-encodes a compressed body, fixes Content-Length


def head_has_placeholder(request: http.Request) -> bool:
    """One cheap check per part: path, each header value, host and authority."""
    return (
        mentions_placeholder(request.path, Context.URL)
        or any(header_mentions_placeholder(v) for _, v in request.headers.fields)
        or mentions_placeholder(request.host, Context.URL)
        or mentions_placeholder(request.authority, Context.URL)
    )


def header_mentions_placeholder(value: bytes) -> bool:
    """Every request has a dozen header values and nearly none holds a `<`: testing for it
    first (memchr) keeps the check as cheap as a bare substring test."""
    return b"<" in value and mentions_placeholder(value, Context.HEADER)


def decoded_body(request: http.Request) -> bytes | None:
    """The body as the client meant it (decompressed), or None when there is none.

    A body whose Content-Encoding cannot be decoded is passed on as it is, unless it shows a
    placeholder in the clear: then the request is refused rather than half-handled."""
    raw = request.raw_content
    if not raw:
        return None
    if "content-encoding" not in request.headers:
        return raw
    try:
        return request.get_content(strict=True)
    except ValueError:
        if mentions_placeholder(raw):
            raise SubstitutionError(
                "undecodable_body", "",
                f"the body's Content-Encoding ({request.headers['content-encoding']}) cannot be decoded, "
                "so its placeholders cannot be resolved",
            ) from None
        return None


def body_has_placeholder(request: http.Request, body: bytes | None) -> bool:
    """One cheap check (form bodies: also the percent-encoded form a form encoder makes)."""
    return body is not None and mentions_placeholder(body, body_context(request.headers.get("content-type", "")))


def rewrite_request(request: http.Request, lookup: Lookup, body: bytes | None, budget: Budget) -> Rewrite:
    """Resolve the URL (path and query), every header value and `body` (the decoded body,
    None when it is streamed or absent); together they may grow by `budget` at most."""
    rewrite = Rewrite()
    if mentions_placeholder(request.path, Context.URL):
        path, keys = resolve(request.path, Context.URL, lookup, budget)
        if keys:
            rewrite.path = path
            rewrite._add(keys)
    if any(header_mentions_placeholder(value) for _, value in request.headers.fields):
        fields = []
        for name, value in request.headers.fields:
            if header_mentions_placeholder(value):
                value, keys = resolve(value, Context.HEADER, lookup, budget)
                rewrite._add(keys)
            fields.append((name, value))
        rewrite.fields = tuple(fields)
    if body_has_placeholder(request, body):
        new, keys = resolve(body, body_context(request.headers.get("content-type", "")), lookup, budget)
        if keys:
            rewrite.content = new
            rewrite._add(keys)
    return rewrite


def streamable(request: http.Request) -> bool:
    """Whether a streamed body is substituted chunk by chunk (text, not compressed)."""
    media = request.headers.get("content-type", "").lower()
    return "content-encoding" not in request.headers and not media.startswith(BINARY_TYPES)


def streams_late(request: http.Request, stream_large_bodies: str | None) -> bool:
    """Whether mitmproxy may decide to stream this body only after `requestheaders`.

    A chunked body's size is unknown up front: mitmproxy buffers it and, once it outgrows
    stream_large_bodies, streams it without another hook, so its URL, headers and body
    would leave unresolved. Such a request is streamed from the start instead."""
    return bool(stream_large_bodies) and "chunked" in request.headers.get("transfer-encoding", "").lower()


def streamed_framing(request: http.Request, server: connection.Server) -> str | None:
    """How a streamed body whose length changes is framed upstream: "chunked" (HTTP/1),
    "frames" (HTTP/2 and 3, whose DATA frames need no length), or None when the upstream's
    protocol is not known before the body starts (a connection not yet made), so the
    length must not change.

    The client's protocol is not necessarily the upstream's: mitmproxy translates an HTTP/2
    request for an HTTP/1 server, which would read a body with neither Content-Length nor
    chunked framing as the next request (request smuggling)."""
    if not (request.is_http2 or request.is_http3) or request.scheme == "http":
        return "chunked"
    if not server.connected:
        return None
    return "frames" if server.alpn in (b"h2", b"h3") else "chunked"


def prepare_streamed_body(request: http.Request, substituter: StreamSubstituter, framing: str | None) -> None:
    """Stream the body through `substituter`. Values change the body's length, so a body
    framed by Content-Length is re-framed as `framing` says (None: the length stays, and
    `substituter` must not change it)."""
    if framing is not None and "content-length" in request.headers:
        del request.headers["content-length"]
    if framing == "chunked" and "chunked" not in request.headers.get("transfer-encoding", "").lower():
        request.headers["transfer-encoding"] = "chunked"

    def stream(chunk: bytes) -> list[bytes]:
        out = substituter.feed(chunk) if chunk else substituter.flush()
        # Never an empty chunk: mitmproxy would frame it as "0\r\n\r\n", the end of a chunked body.
        return [out] if out else []

    request.stream = stream


def websocket_context(message: websocket.WebSocketMessage) -> Context:
    """JSON messages (the common case for APIs) get JSON escaping; anything else is raw."""
    return Context.JSON if message.is_text and message.content.lstrip()[:1] in (b"{", b"[") else Context.RAW
