"""What comes back from upstream, before the client or anything that records flows sees it.

Two jobs, in this order, on the status line, headers, trailers, bodies (whole or streamed)
and server-to-client WebSocket messages (see `vaultcore.redaction`):

- every placeholder a server sent is neutralised, in every response: a server that holds no
  secret could otherwise answer `302 Location: https://allowed.test/?t=<<vault:tok>>` (or
  put one in a page an agent reads) and have the client spend the secret for it;
- the values the request used are shown as their placeholders wherever the response echoes
  them (`vault_redact_responses`, on by default).

A body is checked as the client will read it: decoded in full (`vaultproxy.codings`), or, in
a coding the proxy does not know, as it is and without its Content-Encoding. One that does
not decode, or decodes to too much, is not passed on (`withheld`; a stream is cut off there).
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple
from collections.abc import Callable, Iterable, Mapping

from mitmproxy import http
from mitmproxy.net.http.http1 import expected_http_body_size

from vaultcore.index import SecretIndex
from vaultcore.redaction import Redactor, StreamNeutraliser, StreamRedactor, might_hold_placeholder, neutralise
from vaultproxy import charsets, codings
from vaultproxy.refusal import ERROR_HEADER

logger = logging.getLogger(__name__)

StreamFilter = Callable[[bytes], list[bytes]]


# Keys, each under the index it was resolved with (a value revoked or rotated since must still
# be hidden): a request's, and those of the request a retry sends again.
Uses = tuple[tuple[SecretIndex, tuple[str, ...]], ...]


class Signature(NamedTuple):
    """A form of a signature the proxy added to a request (`signing.signatures`), under the
    marker a response shows in its place: a new one for every request, made with a key the
    client does not hold. `exact`: found only as written (Redactor's `exact`)."""

    marker: bytes
    form: bytes
    exact: bool


Signatures = tuple[Signature, ...]


def redactor_for(uses: Uses, signatures: Signatures = ()) -> Redactor | None:
    """A redactor of the values the keys of `uses` had in their index, and of `signatures`.
    Those of a signed request are new every time: its redactor is built for it alone, and
    the cache is for the key sets that do come back."""
    if signatures:
        return Redactor(
            [*_values(uses), *((s.marker, s.form) for s in signatures if not s.exact)],
            exact=[(s.marker, s.form) for s in signatures if s.exact],
        )
    return _redactor(uses) if uses else None


def redactor_across(uses: Mapping[SecretIndex, Iterable[str]], signatures: Signatures = ()) -> Redactor | None:
    """`redactor_for` a WebSocket's keys: it carries the values of every index it was
    resolved with (a key rotated while it was open has two); and of its handshake's signatures."""
    return _socket_redactor(tuple((index, tuple(sorted(keys))) for index, keys in uses.items()), signatures)


@functools.lru_cache(maxsize=64)
def _socket_redactor(uses: Uses, signatures: Signatures) -> Redactor | None:
    """Cached apart from `_redactor`: every server message of a socket asks again, with the
    same keys and signatures until it uses another key; a signed handshake's redactor (a new
    one for every socket) costs about 30 µs to build. A signed request's, asked for once,
    stays out of both caches."""
    return redactor_for(uses, signatures)


@functools.lru_cache(maxsize=256)
def _redactor(uses: Uses) -> Redactor | None:
    """Cached: the same few key sets come back on every request, and building one is most of
    the cost of redacting a small response. A reload makes a new index, so no stale entry hits."""
    values = _values(uses)
    return Redactor(values) if values else None


def _values(uses: Uses) -> list[tuple[bytes, str | bytes]]:
    """Each value of `uses` under its placeholder."""
    return [(f"<<vault:{key}>>".encode(), secret.value) for index, keys in uses for key in keys if (secret := index.get(key)) is not None]


def cleaned(data: bytes, redactor: Redactor | None) -> bytes:
    """`data` neutralised, then redacted; `data` itself when nothing changed."""
    data = neutralise(data)
    return redactor.redact(data) if redactor is not None else data


def clean_head(response: http.Response, redactor: Redactor | None) -> None:
    """The status line's reason phrase and every header field. Every response comes here: one
    check over all of them is five times cheaper than one each (whatever occurs in one occurs
    in them joined)."""
    if not _may_change(_joined(response.headers) + b"\n" + response.data.reason, redactor):
        return
    response.data.reason = cleaned(response.data.reason, redactor)
    _clean_fields(response.headers, redactor)


def clean_trailers(response: http.Response, redactor: Redactor | None) -> None:
    """Trailers come after the body (and are sent after the `response` hook)."""
    if response.trailers and _may_change(_joined(response.trailers), redactor):
        _clean_fields(response.trailers, redactor)


def _joined(headers: http.Headers) -> bytes:
    """Names and values, a line each: no placeholder or value spans two (neither holds a line break)."""
    return b"\n".join([part for field in headers.fields for part in field])


def _may_change(data: bytes, redactor: Redactor | None) -> bool:
    return might_hold_placeholder(data) or (redactor is not None and redactor.redact(data) is not data)


def _clean_fields(headers: http.Headers, redactor: Redactor | None) -> None:
    """Each value cleaned; a field whose name would change is dropped (a name is a token: it
    cannot hold the placeholder that would stand for a value, nor a neutralised opener)."""
    fields = tuple((name, cleaned(value, redactor)) for name, value in headers.fields if cleaned(name, redactor) is name)
    if len(fields) != len(headers.fields) or any(new is not old for (_, new), (_, old) in zip(fields, headers.fields)):
        headers.fields = fields


ENCODING_NAME = b"content-encoding"
TRANSFER_ENCODING_NAME = b"transfer-encoding"


def transfer_codings_as_content(flow: http.HTTPFlow) -> None:
    """A transfer coding other than chunked (`Transfer-Encoding: gzip, chunked`, or `gzip` to
    the connection's close) stays on the body mitmproxy hands over, and clients undo it
    (curl, asked with --tr-encoding): checked as it came, a value the server echoed went
    through compressed. It becomes the outermost Content-Encoding instead, which the checks
    undo; the body keeps its framing (chunked, or to the connection's close). Not where no
    body follows (HEAD, 304): a cache would take the Content-Encoding for its stored body's."""
    response = flow.response
    assert response is not None
    if TRANSFER_ENCODING_NAME not in [name.lower() for name, _ in response.headers.fields] or _no_body(flow):
        return  # (a look at the names costs a fifth of `Headers.get`)
    transfer = response.headers["transfer-encoding"]
    parts = [part.strip() for part in transfer.split(",")]
    applied = [part for part in parts if part.lower() not in ("", "chunked", "identity")]
    if not applied:
        return
    response.headers["content-encoding"] = ", ".join([*response.headers.get_all("content-encoding"), *applied])
    if "chunked" in (part.lower() for part in parts):
        response.headers["transfer-encoding"] = "chunked"
    else:
        del response.headers["transfer-encoding"]


def clean_body(response: http.Response, redactor: Redactor | None) -> None:
    """A whole body, checked as the client will read it. Raises codings.Undecodable for a
    compressed body that does not decode in full (cut short, garbage, a bomb), which so could
    not be checked: it must not be passed on (`withheld`). One look at the header names tells
    an encoded body, at a fifth of `Headers.get`'s cost."""
    raw = response.raw_content
    if not raw:
        return
    content = None
    names = [name.lower() for name, _ in response.headers.fields]
    content_types = _content_types(response.headers, names)  # (before a field is dropped below)
    if ENCODING_NAME in names:
        content = codings.decode_whole(raw, response.headers["content-encoding"])
        if content is None:  # a coding the proxy does not know: `none`, a charset, `compress`
            del response.headers["content-encoding"]  # no client decodes it otherwise than checked
    if content is None:
        if (new := _cleaned_text(raw, content_types, redactor)) is not raw:
            response.content = new
        return
    # Also re-encoded when the compressed bytes show something in the clear (a gzip header's
    # name or comment field), which a client that does not decode would read.
    if (new := _cleaned_text(content, content_types, redactor)) is not content or _may_change(raw, redactor):
        # Re-encoded, Content-Length fixed; a coding mitmproxy cannot encode (x-gzip, stacked
        # codings) is dropped, and the client gets the body as it is.
        response.content = new


CONTENT_TYPE_NAME = b"content-type"


def _content_types(headers: http.Headers, names: list[bytes] | None = None) -> tuple[bytes, ...]:
    """The Content-Type fields' values (`names`: the fields' names in lower case, if known)."""
    names = [name.lower() for name, _ in headers.fields] if names is None else names
    if CONTENT_TYPE_NAME not in names:
        return ()
    if names.count(CONTENT_TYPE_NAME) == 1:  # nearly always: a third of the loop below
        return (headers.fields[names.index(CONTENT_TYPE_NAME)][1],)
    return tuple(value for name, (_, value) in zip(names, headers.fields) if name == CONTENT_TYPE_NAME)


def _cleaned_text(data: bytes, content_types: tuple[bytes, ...], redactor: Redactor | None) -> bytes:
    """`cleaned`, as UTF-8 and in each charset a client may read `data` in (`charsets`)."""
    return charsets.cleaned_readings(cleaned(data, redactor), content_types, lambda text: cleaned(text, redactor))


def withheld(why: codings.Undecodable) -> http.Response:
    """The proxy's answer in place of a response whose body could not be checked."""
    code = "response_too_large" if isinstance(why, codings.TooLarge) else "undecodable_response"
    return http.Response.make(
        502,
        f"vaultproxy withheld this response: {why}, so it could not be checked for secrets or placeholders\n".encode(),
        {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff", ERROR_HEADER: code},
    )


# --- streamed bodies --------------------------------------------------------------------------


def _no_body(flow: http.HTTPFlow) -> bool:
    return _body_size(flow) == 0


def _body_size(flow: http.HTTPFlow) -> int | None:
    """As mitmproxy reads the response body: its length, None for chunked, -1 to the
    connection's close (or a malformed length: unknown)."""
    try:
        return expected_http_body_size(flow.request, flow.response)
    except ValueError:
        return -1


def streams_late(flow: http.HTTPFlow) -> bool:
    """Whether mitmproxy may start streaming this response only after `responseheaders` (with
    stream_large_bodies set).

    A body whose size is unknown up front (chunked, or read until the connection closes) is
    buffered, and once it outgrows stream_large_bodies mitmproxy sends it on as it comes, with
    no hook in between: neither neutralised nor redacted. Such a body is streamed through the
    filter from its start instead. So is one an HTTP/2 or HTTP/3 server sends after a 204 or
    304, which HTTP/1 reads as none: h2 lets a server send DATA there (holding it only to a
    Content-Length it gives, which it may give). To a HEAD, h2 refuses DATA itself, and the
    head (its Content-Length the size asked for) goes as it came."""
    size = _body_size(flow)
    if size is None or size < 0:
        return True
    response = flow.response
    assert response is not None
    return response.status_code in (204, 304) and (response.is_http2 or response.is_http3)


def _as_it_is(chunk: bytes) -> bytes:
    return chunk


def _stream_check(redactor: Redactor | None) -> charsets.StreamCheck:
    """A streamed body's neutraliser, then redactor, as one stage."""
    neutraliser = StreamNeutraliser()
    stream_redactor = StreamRedactor(redactor) if redactor is not None else None

    def check(data: bytes, end: bool) -> bytes:
        out = neutraliser.feed(data) + (neutraliser.flush() if end else b"")
        if stream_redactor is not None:
            out = stream_redactor.feed(out) + (stream_redactor.flush() if end else b"")
        return out

    return check


def stream_filter(flow: http.HTTPFlow, redactor: Redactor | None) -> StreamFilter:
    """The filter for a streamed response body, set up in `responseheaders`.

    The body's length may change, so it loses Content-Length (and is re-framed as chunked for
    an HTTP/1 client); a compressed body goes to the client decoded, and one in a coding the
    proxy does not know goes as it is, checked as it is (without its Content-Encoding). Its
    first four bytes (with its Content-Type) tell which charsets it is read in, too."""
    response = flow.response
    assert response is not None
    decode = codings.decoder(response.headers.get("content-encoding", "")) or _as_it_is
    content_types = _content_types(response.headers)
    stages: list[charsets.StreamCheck] = []  # set once the body's first four bytes are in
    head = b""
    cut = False

    def filter_chunk(chunk: bytes) -> list[bytes]:
        nonlocal stages, head, cut
        end = not chunk  # b"": the end
        if cut:
            return []
        try:
            data = decode(chunk)
            if not stages:
                head += data
                if len(head) < 4 and not end:
                    return []
                data, head = head, b""
                readings = [charsets.StreamReading(codec, _stream_check(redactor)).feed
                            for codec in charsets.readings(content_types, data[:4], streamed=True)]
                stages = [_stream_check(redactor), *readings]
            for stage in stages:
                data = stage(data, end)
        except Exception as e:  # what came before was checked and sent; nothing after it is
            cut = True
            why = e if isinstance(e, codings.Undecodable) else f"it cannot be decoded past this point ({type(e).__name__})"
            logger.warning(f"vaultproxy: cut short a streamed response from {flow.request.host}: {why}, so the rest could not be checked")
            # Killed, mitmproxy cuts the client off at the body's end instead of ending it as a
            # complete one (it checks after the response hook; raising here would hang the
            # client). Not killable: killed already (a refused streamed upload).
            if flow.killable:
                flow.kill()
            return []
        # Never an empty chunk: mitmproxy would frame it as "0\r\n\r\n", the end of a chunked body.
        return [data] if data else []

    response.headers.pop("content-length", None)
    response.headers.pop("content-encoding", None)
    if flow.request.http_version == "HTTP/1.1" and "chunked" not in response.headers.get("transfer-encoding", "").lower():
        response.headers["transfer-encoding"] = "chunked"
    return filter_chunk
