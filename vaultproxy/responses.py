"""What comes back from upstream, before the client or anything that records flows sees it.

Two jobs, in this order, on the status line, headers, trailers, bodies (whole or streamed)
and server-to-client WebSocket messages (see `vaultcore.redaction`):

- every placeholder a server sent is neutralised, in every response: a server that holds no
  secret could otherwise answer `302 Location: https://allowed.test/?t=<<vault:tok>>` (or
  put one in a page an agent reads) and have the client spend the secret for it;
- the values the request used are shown as their placeholders wherever the response echoes
  them (`vault_redact_responses`, on by default).

A body is checked as the client will read it: decoded in full (`decoder`), or, in a coding
the proxy does not know, as it is and without its Content-Encoding. One that does not decode
is not passed on (`withheld`; a stream is cut off where decoding fails).
"""

from __future__ import annotations

import functools
import logging
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import brotli
from mitmproxy import http
from mitmproxy.net import encoding
from mitmproxy.net.http.http1 import expected_http_body_size

from vaultcore.index import SecretIndex
from vaultcore.redaction import Redactor, StreamNeutraliser, StreamRedactor, might_hold_placeholder, neutralise
from vaultproxy.refusal import ERROR_HEADER

logger = logging.getLogger(__name__)

Filter = Callable[[bytes], bytes]
StreamFilter = Callable[[bytes], list[bytes]]


def redactor_for(index: SecretIndex | None, keys: Iterable[str]) -> Redactor | None:
    """A redactor of the values `keys` had in `index` (the index the request was resolved
    with: a value revoked since must still be hidden)."""
    return _redactor(((index, tuple(keys)),)) if index is not None else None


def redactor_across(uses: Mapping[SecretIndex, Iterable[str]]) -> Redactor | None:
    """`redactor_for` each index and its keys together: a WebSocket carries the values of
    every index it was resolved with (a key rotated while it was open has two)."""
    return _redactor(tuple((index, tuple(keys)) for index, keys in uses.items())) if uses else None


@functools.lru_cache(maxsize=256)
def _redactor(uses: tuple[tuple[SecretIndex, tuple[str, ...]], ...]) -> Redactor | None:
    """Cached: the same few key sets come back on every request, and building one is most of
    the cost of redacting a small response. A reload makes a new index, so no stale entry hits."""
    values = [(f"<<vault:{key}>>".encode(), secret.value) for index, keys in uses for key in keys if (secret := index.get(key)) is not None]
    return Redactor(values) if values else None


def cleaned(data: bytes, redactor: Redactor | None) -> bytes:
    """`data` neutralised, then redacted; `data` itself when nothing changed."""
    data = neutralise(data)
    return redactor.redact(data) if redactor is not None else data


def clean_head(response: http.Response, redactor: Redactor | None) -> None:
    """The status line's reason phrase and every header value. Every response comes here: one
    check over all of them is five times cheaper than one each (whatever occurs in one occurs
    in them joined)."""
    joined = b"\n".join([value for _, value in response.headers.fields])
    if not _may_change(joined + b"\n" + response.data.reason, redactor):
        return
    response.data.reason = cleaned(response.data.reason, redactor)
    _clean_fields(response.headers, redactor)


def clean_trailers(response: http.Response, redactor: Redactor | None) -> None:
    """Trailers come after the body (and are sent after the `response` hook)."""
    if response.trailers and _may_change(b"\n".join([value for _, value in response.trailers.fields]), redactor):
        _clean_fields(response.trailers, redactor)


def _may_change(data: bytes, redactor: Redactor | None) -> bool:
    return might_hold_placeholder(data) or (redactor is not None and redactor.redact(data) is not data)


def _clean_fields(headers: http.Headers, redactor: Redactor | None) -> None:
    fields = tuple((name, cleaned(value, redactor)) for name, value in headers.fields)
    if any(new is not old for (_, new), (_, old) in zip(fields, headers.fields)):
        headers.fields = fields


ENCODING_NAME = b"content-encoding"


def clean_body(response: http.Response, redactor: Redactor | None) -> bool:
    """A whole body, checked as the client will read it; False when it is compressed and does
    not decode (cut short, garbage), so that it could not be checked: it must not be passed on
    (`withheld`). One look at the header names tells an encoded body, at a fifth of
    `Headers.get`'s cost."""
    raw = response.raw_content
    if not raw:
        return True
    decode = None
    if ENCODING_NAME in [name.lower() for name, _ in response.headers.fields]:
        decode = decoder(response.headers["content-encoding"])
        if decode is None:  # a coding the proxy does not know: `none`, a charset, `compress`
            del response.headers["content-encoding"]  # no client decodes it otherwise than checked
    if decode is None:
        if (new := cleaned(raw, redactor)) is not raw:
            response.content = new
        return True
    try:
        content = decode(raw) + decode(b"")
    except Exception:  # zlib's, brotli's, zstd's errors, a member cut short: all mean the same
        return False
    # Also re-encoded when the compressed bytes show something in the clear (a gzip header's
    # name or comment field), which a client that does not decode would read.
    if (new := cleaned(content, redactor)) is not content or _may_change(raw, redactor):
        # Re-encoded, Content-Length fixed; a coding mitmproxy cannot encode (x-gzip, stacked
        # codings) is dropped, and the client gets the body as it is.
        response.content = new
    return True


def withheld(response: http.Response) -> http.Response:
    """The proxy's answer in place of a response whose body could not be checked."""
    coding = response.headers.get("content-encoding", "")
    return http.Response.make(
        502,
        f"vaultproxy withheld this response: its body does not decode as its Content-Encoding ({coding}) says, "
        "so it could not be checked for secrets or placeholders\n".encode(),
        {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff", ERROR_HEADER: "undecodable_response"},
    )


# --- undoing Content-Encoding, as clients do ------------------------------------------------


def decoder(content_encoding: str) -> Filter | None:
    """A chunk-by-chunk decoder of a body with this Content-Encoding, every coding undone (the
    last applied first); None when one of them is unknown. It takes `b""` at the end of the
    body, and raises when the body was cut short. Clients decode more than mitmproxy does:
    every member of a gzip body (mitmproxy, the first), `x-gzip`, stacked codings."""
    codings = [coding for coding in (part.strip().lower() for part in content_encoding.split(",")) if coding not in ("", "identity")]
    if any(coding not in _CODINGS for coding in codings):
        return None
    decoders = [_CODINGS[coding]() for coding in reversed(codings)]

    def decode(chunk: bytes) -> bytes:
        if not chunk:
            for each in decoders:
                each(b"")
            return b""
        for each in decoders:
            chunk = each(chunk)
            if not chunk:
                break
        return chunk

    return decode


def _members(start: Callable[[bytes], Any], *, header: int = 1, padding: bool = False) -> Filter:
    """A decoder of a body of one or more compressed members, each undone by a fresh
    decompressor `start(its first bytes)` (zlib's or zstd's: `decompress`, `eof`,
    `unused_data`), once `header` bytes of it have come (a chunk may hold fewer). `padding`:
    NUL bytes between and after members are skipped, as gzip readers do."""
    current: Any = None
    pending = b""  # the start of a member, shorter than `header`

    def decode(chunk: bytes) -> bytes:
        nonlocal current, pending
        if not chunk:
            if pending or (current is not None and not current.eof):
                raise ValueError("the body ends inside a compressed member")
            return b""
        out = []
        while chunk:
            if current is None:
                chunk = (pending + chunk).lstrip(b"\0") if padding else pending + chunk
                pending = b""
                if len(chunk) < header:
                    pending = chunk
                    break
                current = start(chunk)
            out.append(current.decompress(chunk))
            if not current.eof:
                break
            chunk, current = current.unused_data, None
        return b"".join(out)

    return decode


def _brotli() -> Filter:
    brotli_decoder = brotli.Decompressor()
    fed = False

    def decode(chunk: bytes) -> bytes:
        nonlocal fed
        if chunk:
            fed = True
            return brotli_decoder.process(chunk)
        if fed and not brotli_decoder.is_finished():
            raise ValueError("the body ends inside its brotli stream")
        return b""

    return decode


def _zlib_wrapped(first: bytes) -> bool:
    """Whether a deflate body (its first two bytes at least) has the zlib header it should
    have; some servers send raw deflate."""
    return first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0


def _zstd_frame() -> Any:
    """A decompressor of one zstd frame, from the zstd module mitmproxy uses (zstandard on
    mitmproxy 11, compression.zstd or its backport on 12)."""
    made = encoding.zstd.ZstdDecompressor()
    return made.decompressobj() if hasattr(made, "decompressobj") else made


def _gzip() -> Filter:
    return _members(lambda _: zlib.decompressobj(zlib.MAX_WBITS | 32), padding=True)  # a zlib header is read too, as by curl


_CODINGS: dict[str, Callable[[], Filter]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": lambda: _members(lambda first: zlib.decompressobj(zlib.MAX_WBITS if _zlib_wrapped(first) else -zlib.MAX_WBITS), header=2),
    "br": _brotli,
    "zstd": lambda: _members(lambda _: _zstd_frame()),
}


# --- streamed bodies --------------------------------------------------------------------------


def streams_late(flow: http.HTTPFlow, stream_large_bodies: str | None) -> bool:
    """Whether mitmproxy may start streaming this response only after `responseheaders`.

    A body whose size is unknown up front (chunked, or read until the connection closes) is
    buffered, and once it outgrows stream_large_bodies mitmproxy sends it on as it comes, with
    no hook in between: neither neutralised nor redacted. Such a body is streamed through the
    filter from its start instead."""
    if not stream_large_bodies:
        return False
    try:
        size = expected_http_body_size(flow.request, flow.response)
    except ValueError:  # a malformed length: unknown
        return True
    return size is None or size < 0


def _as_it_is(chunk: bytes) -> bytes:
    return chunk


def stream_filter(flow: http.HTTPFlow, redactor: Redactor | None) -> StreamFilter:
    """The filter for a streamed response body, set up in `responseheaders`.

    The body's length may change, so it loses Content-Length (and is re-framed as chunked for
    an HTTP/1 client); a compressed body goes to the client decoded, and one in a coding the
    proxy does not know goes as it is, checked as it is (without its Content-Encoding)."""
    response = flow.response
    assert response is not None
    decode = decoder(response.headers.get("content-encoding", "")) or _as_it_is
    neutraliser = StreamNeutraliser()
    stream_redactor = StreamRedactor(redactor) if redactor is not None else None
    undecodable = False

    def filter_chunk(chunk: bytes) -> list[bytes]:
        nonlocal undecodable
        try:
            data = b"" if undecodable else decode(chunk)
        except Exception as e:  # what came before was checked and sent; nothing after it is
            undecodable, data = True, b""
            logger.warning(
                f"vaultproxy: cut short a streamed response from {flow.request.host}: its body cannot be decoded "
                f"past this point ({type(e).__name__}), so the rest could not be checked"
            )
        out = neutraliser.feed(data) if chunk else neutraliser.feed(data) + neutraliser.flush()  # b"": the end
        if stream_redactor is not None:
            out = stream_redactor.feed(out) if chunk else stream_redactor.feed(out) + stream_redactor.flush()
        # Never an empty chunk: mitmproxy would frame it as "0\r\n\r\n", the end of a chunked body.
        return [out] if out else []

    response.headers.pop("content-length", None)
    response.headers.pop("content-encoding", None)
    if flow.request.http_version == "HTTP/1.1" and "chunked" not in response.headers.get("transfer-encoding", "").lower():
        response.headers["transfer-encoding"] = "chunked"
    return filter_chunk
