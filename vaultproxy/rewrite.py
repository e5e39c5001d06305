"""Where a request's placeholders are and what a value must look like there.

Thin functions over mitmproxy's `Request` and `WebSocketMessage`: each finds the parts that
hold placeholders with one substring check per part, and computes the new parts without
assigning them, so that a refusal anywhere leaves the request untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mitmproxy import http, websocket

from vaultcore.placeholders import MARKER, Context, Lookup, StreamSubstituter, SubstitutionError, contains_placeholder, substitute

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
    """One substring check per part: path, each header value, host and authority."""
    return (
        contains_placeholder(request.path, Context.URL)
        or any(MARKER in v for _, v in request.headers.fields)
        or contains_placeholder(request.host, Context.URL)
        or contains_placeholder(request.authority, Context.URL)
    )


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
        if MARKER in raw:
            raise SubstitutionError(
                "undecodable_body", "",
                f"the body's Content-Encoding ({request.headers['content-encoding']}) cannot be decoded, "
                "so its placeholders cannot be resolved",
            ) from None
        return None


def rewrite_request(request: http.Request, lookup: Lookup, body: bytes | None) -> Rewrite:
    """Resolve the URL (path and query), every header value and `body` (the decoded body,
    None when it is streamed or absent)."""
    rewrite = Rewrite()
    if contains_placeholder(request.path, Context.URL):
        path, keys = substitute(request.path, Context.URL, lookup)
        if keys:
            rewrite.path = path
            rewrite._add(keys)
    if any(MARKER in value for _, value in request.headers.fields):
        fields = []
        for name, value in request.headers.fields:
            if MARKER in value:
                value, keys = substitute(value, Context.HEADER, lookup)
                rewrite._add(keys)
            fields.append((name, value))
        rewrite.fields = tuple(fields)
    if body is not None and MARKER in body:
        new, keys = substitute(body, body_context(request.headers.get("content-type", "")), lookup)
        if keys:
            rewrite.content = new
            rewrite._add(keys)
    return rewrite


def streamable(request: http.Request) -> bool:
    """Whether a streamed body is substituted chunk by chunk (text, not compressed)."""
    media = request.headers.get("content-type", "").lower()
    return "content-encoding" not in request.headers and not media.startswith(BINARY_TYPES)


def prepare_streamed_body(request: http.Request, substituter: StreamSubstituter) -> None:
    """Stream the body through `substituter`. Values change the body's length, so a body
    framed by Content-Length is re-framed: chunked for HTTP/1.1, by DATA frames for HTTP/2."""
    if "content-length" in request.headers:
        del request.headers["content-length"]
        if not (request.is_http2 or request.is_http3):
            request.headers["transfer-encoding"] = "chunked"

    def stream(chunk: bytes) -> bytes:
        return substituter.feed(chunk) if chunk else substituter.flush()

    request.stream = stream


def websocket_context(message: websocket.WebSocketMessage) -> Context:
    """JSON messages (the common case for APIs) get JSON escaping; anything else is raw."""
    return Context.JSON if message.is_text and message.content.lstrip()[:1] in (b"{", b"[") else Context.RAW
