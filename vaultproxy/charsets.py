"""Text in a charset that does not spell ASCII as ASCII: UTF-16, UTF-32, UTF-7, EBCDIC.

The checks look for placeholders and values as UTF-8 bytes; a body its client reads as
UTF-16 hides both from them. Clients choose the charset from a byte order mark (browsers,
before anything else), a Content-Type's `charset` (requests' `.text`, browsers without a
BOM; the WHATWG names some UTF-16 labels Python does not know), or, for JSON, from where its
first bytes hold NULs (Python's `json.loads` of bytes, httpx and requests' `.json()`). Each
such reading is checked too: decoded, checked as UTF-8, and, only when the check changed
something, encoded back in the same charset, so that nothing else about the body changes.

A body that does not decode in a reading is still read so by a client that puts replacement
characters where it does not (browsers, requests' `.text`): it is read so here too, and
when that shows something to change, the body cannot be passed on (`codings.Undecodable`);
otherwise it goes as it came (a binary download that starts with FF FE, say).
"""

from __future__ import annotations

import codecs
import functools
import json
import re
from collections.abc import Callable

from vaultproxy.codings import Undecodable

Check = Callable[[bytes], bytes]  # data checked; `data` itself when nothing changed
StreamCheck = Callable[[bytes, bool], bytes]  # (data, whether the body ends) -> what is decided

PROBE = "<<vault:k>> %3C \\u003c &lt;"  # what the checks look for, in ASCII
_CHARSET = re.compile(rb"charset\s*=\s*\"?([^\s;\",]+)", re.IGNORECASE)
# Labels the WHATWG Encoding Standard reads as UTF-16 (browsers) that Python does not know.
_WHATWG_UTF16 = {
    **dict.fromkeys(("unicode", "ucs-2", "csunicode", "iso-10646-ucs-2", "unicodefeff"), "utf-16-le"),
    "unicodefffe": "utf-16-be",
}
_BYTE_ORDER_MARKS = (  # UTF-32's first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)
# Textual media types: a stream of another type is read by its BOM only when it names a charset.
_TEXTUAL = re.compile(rb"^\s*(?:text/|[^;]*(?:json|xml|javascript|ecmascript|html))", re.IGNORECASE)


@functools.lru_cache(maxsize=64)
def _not_ascii(label: bytes) -> tuple[str, ...]:
    """The codecs a charset label is read in, when they do not spell ASCII as ASCII: UTF-16
    and UTF-32 without a byte order mark, in both byte orders (browsers and Python take
    little-endian, Java big-endian), the endianness browsers read first."""
    name = label.decode("ascii", "replace").lower()
    if name in _WHATWG_UTF16:
        name = _WHATWG_UTF16[name]
    try:
        name = codecs.lookup(name).name
        if PROBE.encode(name) == PROBE.encode("ascii"):
            return ()
    except (LookupError, UnicodeError, ValueError):  # unknown: clients fall back to an ASCII-like one
        return ()
    return {"utf-16": ("utf-16-le", "utf-16-be"), "utf-32": ("utf-32-le", "utf-32-be")}.get(name, (name,))


@functools.lru_cache(maxsize=256)
def _named(content_types: tuple[bytes, ...], streamed: bool) -> tuple[str, ...]:
    """The codecs of every charset the Content-Type fields name that does not spell ASCII as
    ASCII (for a stream, in the byte order browsers read). Cached: the same few values come
    with nearly every response."""
    return tuple(
        codec for value in content_types for label in _CHARSET.findall(value)
        for codec in _not_ascii(label)[: 1 if streamed else None]
    )


def _marked(head: bytes) -> str | None:
    return next((codec for mark, codec in _BYTE_ORDER_MARKS if head.startswith(mark)), None)


def _guessed(head: bytes) -> str | None:
    """JSON's charset as Python's json.loads tells it from the first bytes (a superset of
    requests' guess)."""
    codec = json.detect_encoding(head)
    return None if codec.startswith("utf-8") else codec


def readings(content_types: tuple[bytes, ...], head: bytes, *, streamed: bool = False) -> list[str]:
    """The codecs a client may read a body in, other than as ASCII-like text, from its
    Content-Type fields (every charset any of them names: clients differ in which they take)
    and its first four bytes: none for nearly every body. A stream is read in the byte order
    browsers read, by no guess (it would read binary downloads that start with NULs), and by
    its byte order mark only when something says it is text."""
    named = _named(content_types, streamed)
    if not named and 0 not in head[:4] and head[:1] not in (b"\xff", b"\xfe"):
        return []  # nearly every body: no NUL, so no mark and no guess (this look is cheap)
    marked = _marked(head)
    if marked is not None:
        if streamed and not named and content_types and not any(map(_TEXTUAL.match, content_types)):
            marked = None  # a download's first bytes, not a mark
        else:
            named = tuple(codec for codec in named if not codec.startswith(marked))  # the mark tells the byte order
    guessed = None if streamed else _guessed(head[:4])
    return list(dict.fromkeys(codec for codec in (marked, *named, guessed) if codec))


def cleaned_readings(data: bytes, content_types: tuple[bytes, ...], check: Check) -> bytes:
    """`data` with each of its readings checked; `data` itself when nothing changed. Raises
    Undecodable when a reading that does not decode, read with replacement characters as
    its client reads it, shows something to change."""
    for codec in readings(content_types, data[:4]):
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            as_read = data.decode(codec, "replace").encode("utf-8", "surrogatepass")
            if check(as_read) is not as_read:
                raise Undecodable(f"it does not decode in a charset it is read in ({codec})") from None
            continue
        as_utf8 = text.encode("utf-8", "surrogatepass")
        if (new := check(as_utf8)) is not as_utf8:
            data = new.decode("utf-8", "surrogatepass").encode(codec, "surrogatepass")
    return data


class StreamReading:
    """A reading of a streamed body: chunks decoded as `codec` (what does not decode becomes
    a replacement character, as its client reads it), checked as UTF-8 by `check`, and
    encoded back."""

    def __init__(self, codec: str, check: StreamCheck) -> None:
        self._decode = codecs.getincrementaldecoder(codec)("replace")
        self._from_utf8 = codecs.getincrementaldecoder("utf-8")("surrogatepass")
        self._encode = codecs.getincrementalencoder(codec)("surrogatepass")
        self._check = check

    def feed(self, chunk: bytes, end: bool) -> bytes:
        checked = self._check(self._decode.decode(chunk, final=end).encode("utf-8", "surrogatepass"), end)
        return self._encode.encode(self._from_utf8.decode(checked, final=end), final=end)
