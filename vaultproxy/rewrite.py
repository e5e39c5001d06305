"""Where a request's placeholders are and what a value must look like there.

Thin functions over mitmproxy's `Request` and `WebSocketMessage`: `plan` finds the parts that
may hold placeholders, once, with one cheap check per part (`mentions_placeholder`), and
`rewrite_request` computes the new parts without assigning them, so that a refusal anywhere
(a refused key, or text that is almost a placeholder) leaves the request untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from mitmproxy import connection, http, websocket

from vaultcore.placeholders import (
    Budget,
    Context,
    StreamSubstituter,
    SubstitutionError,
    Text,
    mentions_placeholder,
)
from vaultproxy import codings

LT = ord("<")  # `LT in value` is memchr; `b"<" in value` costs ten times more (see guard.LF)

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


class Rewrite(NamedTuple):
    """The new parts of a request, computed but not yet applied (a tuple: one is built for
    every request that uses a secret)."""

    path: str | None = None
    fields: tuple[tuple[bytes, bytes], ...] | None = None
    content: bytes | None = None
    # Often the very list a guard.Scope keeps for the next request to the same destination:
    # never mutated (Flights copies it).
    keys: Sequence[str] = ()

    def apply(self, request: http.Request) -> None:
        if self.path is not None:
            request.path = self.path
        if self.fields is not None:
            request.headers.fields = self.fields
        if self.content is not None:
            request.content = self.content  # re-encodes a compressed body, fixes Content-Length


def drop_header(request: http.Request, name: str) -> None:
    """Take every `name` field out of the request's headers. For the headers that never go
    upstream and nearly no request carries (the proxy credential, the signing marker): one
    look at the names, lower-casing only those of the same length, costs a fifth of
    `Headers.pop`, which raises and clears a KeyError when there is none."""
    wanted = name.lower().encode()
    for field, _ in request.headers.fields:
        if len(field) == len(wanted) and field.lower() == wanted:
            del request.headers[name]
            return


def decoded_body(request: http.Request) -> bytes | None:
    """The body as the client meant it (decompressed, as the upstream will decode it), or None
    when there is none or none can be searched.

    A body that cannot be decoded (in a coding the proxy does not know, broken, or inflating
    past codings.MAX_DECODED) is passed on as it is, unless it shows a placeholder in the
    clear: then the request is refused rather than half-handled."""
    raw = request.raw_content
    if not raw:
        return None
    if "content-encoding" not in request.headers:
        return raw
    coding = request.headers["content-encoding"]
    try:
        body = codings.decode_whole(raw, coding)
        if body is None:
            raise codings.Undecodable(f"its Content-Encoding ({coding}) is not one the proxy can decode")
    except codings.Undecodable as e:
        if mentions_placeholder(raw):
            raise SubstitutionError("undecodable_body", "", f"the body cannot be read ({e}), so its placeholders cannot be resolved") from None
        return None
    return body


class Plan(NamedTuple):
    """Where a request's placeholders are, found in one pass over its parts: the parts
    `rewrite_request` resolves, and no other."""

    path: bool
    headers: tuple[int, ...]  # positions in the header fields of the values that hold a `<`
    body: bytes | None  # the decoded body, when it holds one


def plan(request: http.Request, body: bytes | None) -> Plan | None:
    """None for a request that mentions no placeholder (nor, in its host or authority, where
    the guard refuses one): it passes untouched. One cheap check per part. Every request has a
    dozen header values and nearly none holds a `<`: a header value is planned when it holds
    one (memchr), and `resolve` looks closer, once (or not at all for a value seen before:
    `guard.Scope`)."""
    headers = tuple([i for i, (_, value) in enumerate(request.headers.fields) if LT in value])
    path = mentions_placeholder(request.path, Context.URL)
    if body is not None and not mentions_placeholder(body, body_context(request.headers.get("content-type", ""))):
        body = None
    # A planned request has its authority checked by the guard; the host and the authority are
    # looked at together, joined by a line break, which no placeholder or opener holds.
    if headers or path or body is not None or mentions_placeholder(f"{request.host}\n{request.authority}", Context.URL):
        return Plan(path, headers, body)
    return None


class Resolver(Protocol):
    """`placeholders.resolve` bound to one request's lookup (`guard.RequestLookup`): of one
    text, and of several at once (header values)."""

    def resolve(self, data: Text, context: Context, budget: Budget) -> tuple[Text, list[str]]: ...

    def resolve_all(self, texts: tuple[Text, ...], context: Context, budget: Budget) -> tuple[tuple[Text, ...], list[str]]: ...


def rewrite_request(request: http.Request, plan: Plan, resolver: Resolver, budget: Budget) -> Rewrite:
    """Resolve the parts `plan` found: URL (path and query), header values and the decoded
    body; together they may grow by `budget` at most."""
    path = fields = content = None
    keys: list[str] = []
    if plan.path:
        resolved_path, used = resolver.resolve(request.path, Context.URL, budget)
        if used:
            path, keys = resolved_path, used
    if plan.headers:
        old_fields = request.headers.fields
        values, used = resolver.resolve_all(tuple([old_fields[i][1] for i in plan.headers]), Context.HEADER, budget)
        if used:
            new_fields = list(old_fields)
            for i, value in zip(plan.headers, values):
                new_fields[i] = (old_fields[i][0], value)
            fields, keys = tuple(new_fields), _merged(keys, used)
    if plan.body is not None:
        resolved_body, used = resolver.resolve(plan.body, body_context(request.headers.get("content-type", "")), budget)
        if used:
            content, keys = resolved_body, _merged(keys, used)
    return Rewrite(path, fields, content, keys)


def _merged(keys: list[str], more: list[str]) -> list[str]:
    """`keys` then those of `more` not among them (each list holds a key once)."""
    return list(dict.fromkeys(keys + more)) if keys else more


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
