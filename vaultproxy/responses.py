"""What comes back from upstream, before the client or anything that records flows sees it.

Two jobs, in this order, on response headers, bodies (whole or streamed) and server-to-client
WebSocket messages (see `vaultcore.redaction`):

- every placeholder a server sent is neutralised, in every response: a server that holds no
  secret could otherwise answer `302 Location: https://allowed.test/?t=<<vault:tok>>` (or
  put one in a page an agent reads) and have the client spend the secret for it;
- the values the request used are shown as their placeholders wherever the response echoes
  them (`vault_redact_responses`, on by default).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Iterable

import brotli
from mitmproxy import http

from vaultcore.index import SecretIndex
from vaultcore.redaction import Redactor, StreamNeutraliser, StreamRedactor, might_hold_placeholder, neutralise
from vaultproxy.rewrite import BINARY_TYPES

Filter = Callable[[bytes], bytes]
StreamFilter = Callable[[bytes], list[bytes]]


def redactor_for(index: SecretIndex | None, keys: Iterable[str]) -> Redactor | None:
    """A redactor of the values `keys` had in `index` (the index the request was resolved
    with: a value revoked since must still be hidden)."""
    return _redactor(index, tuple(keys)) if index is not None else None


@functools.lru_cache(maxsize=256)
def _redactor(index: SecretIndex, keys: tuple[str, ...]) -> Redactor | None:
    """Cached: the same few key sets come back on every request, and building one is most of
    the cost of redacting a small response. A reload makes a new index, so no stale entry hits."""
    values = {f"<<vault:{key}>>".encode(): secret.value for key in keys if (secret := index.get(key)) is not None}
    return Redactor(values) if values else None


def cleaned(data: bytes, redactor: Redactor | None) -> bytes:
    """`data` neutralised, then redacted; `data` itself when nothing changed."""
    data = neutralise(data)
    return redactor.redact(data) if redactor is not None else data


def clean_headers(headers: http.Headers, redactor: Redactor | None) -> None:
    # Every response comes here: one check over all values is five times cheaper than one each
    # (whatever occurs in one value occurs in them joined).
    joined = b"\n".join([value for _, value in headers.fields])
    if not might_hold_placeholder(joined) and (redactor is None or redactor.redact(joined) is joined):
        return
    fields = tuple((name, cleaned(value, redactor)) for name, value in headers.fields)
    if any(new is not old for (_, new), (_, old) in zip(fields, headers.fields)):
        headers.fields = fields


ENCODING_NAME = b"content-encoding"


def clean_body(response: http.Response, redactor: Redactor | None) -> None:
    """A whole body, decoded first when it is compressed (the client decodes it too). One
    look at the header names tells an encoded body, at a fifth of `Headers.get`'s cost."""
    raw = response.raw_content
    if not raw:
        return
    encoded = ENCODING_NAME in [name.lower() for name, _ in response.headers.fields]
    content = response.get_content(strict=False) if encoded else raw
    if content is not None and (new := cleaned(content, redactor)) is not content:
        response.content = new  # re-encodes, and fixes Content-Length


def _stream_decoder(encoding: str) -> Filter | None:
    """A chunk-by-chunk decoder for a streamed body's Content-Encoding (None: identity)."""
    if encoding in ("gzip", "x-gzip", "deflate"):
        decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
        return lambda chunk: decoder.decompress(chunk) if chunk else decoder.flush()
    if encoding == "br":
        brotli_decoder = brotli.Decompressor()
        return lambda chunk: brotli_decoder.process(chunk) if chunk else b""
    return None


def stream_filter(flow: http.HTTPFlow, redactor: Redactor | None) -> StreamFilter | None:
    """The filter for a streamed response body, set up in `responseheaders`; None when this
    body is passed through as it is (a binary download of a request that used no secret, or
    an encoding that cannot be decoded chunk by chunk).

    The body's length changes, so it loses Content-Length (and is re-framed as chunked for an
    HTTP/1 client); a compressed body goes to the client decoded."""
    response = flow.response
    assert response is not None
    media = response.headers.get("content-type", "").lower()
    if redactor is None and media.startswith(BINARY_TYPES):
        return None
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    decode = None if encoding == "identity" else _stream_decoder(encoding)
    if decode is None and encoding != "identity":
        return None
    neutraliser = StreamNeutraliser()
    stream_redactor = StreamRedactor(redactor) if redactor is not None else None

    def filter_chunk(chunk: bytes) -> list[bytes]:
        data = decode(chunk) if decode is not None else chunk
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
