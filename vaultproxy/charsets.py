"""Text in a charset that does not spell ASCII as ASCII: UTF-16, UTF-32, UTF-7, EBCDIC.

The checks look for placeholders and values as UTF-8 bytes; a body its client reads as
UTF-16 hides both from them. Clients choose the charset from a byte order mark (browsers,
before anything else), the Content-Type's `charset` (requests' `.text`; browsers without a
BOM), or, for JSON that names none, from where its first bytes hold NULs (requests'
`.json()`, RFC 4627). Each such reading is checked too: decoded strictly, checked as UTF-8,
and, only when the check changed something, encoded back in the same charset, so that
nothing else about the body changes (a binary body that happens to decode is left as it was).

A body that does not decode in the charset it names (by BOM or Content-Type) is
`codings.Undecodable`: its client reads it with replacement characters, and what the check
could not read could still spell a value.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Callable

from vaultproxy.codings import Undecodable

Check = Callable[[bytes], bytes]  # data checked; `data` itself when nothing changed

PROBE = "<<vault:k>> %3C \\u003c &lt;"  # what the checks look for, in ASCII
_CHARSET = re.compile(r";\s*charset\s*=\s*\"?([^\s;\"]+)", re.IGNORECASE)
_BYTE_ORDER_MARKS = (  # UTF-32's first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)


@functools.lru_cache(maxsize=64)
def _declared(content_type: str) -> str | None:
    """The Content-Type's charset, when it is one that does not spell ASCII as ASCII."""
    match = _CHARSET.search(content_type)
    if match is None:
        return None
    try:
        name = codecs.lookup(match[1]).name
        ascii_like = PROBE.encode(name) == PROBE.encode("ascii")
    except (LookupError, UnicodeError):  # unknown: clients fall back to an ASCII-like one
        return None
    return None if ascii_like else name


def _marked(head: bytes) -> str | None:
    return next((codec for mark, codec in _BYTE_ORDER_MARKS if head.startswith(mark)), None)


def _guessed(head: bytes) -> str | None:
    """JSON's charset from the NULs among its first four bytes (RFC 4627, as requests guesses)."""
    if len(head) < 4:
        return None
    nuls = tuple(byte == 0 for byte in head[:4])
    return {
        (True, True, True, False): "utf-32-be", (False, True, True, True): "utf-32-le",
        (True, False, True, False): "utf-16-be", (False, True, False, True): "utf-16-le",
    }.get(nuls)


def readings(content_type: str, head: bytes) -> list[tuple[str, bool]]:
    """(codec, required) for each way a client may read a body that starts with `head` (four
    bytes are enough) other than as ASCII-like text: none for nearly every body. A reading
    is required when the body says it (a BOM, its charset): a client reads it whatever it
    holds, with replacement characters where it does not decode. A guessed one (JSON's NULs)
    is read strictly (requests' `.json()` fails otherwise)."""
    declared = _declared(content_type)
    if declared is None and 0 not in head[:4] and head[:1] not in (b"\xff", b"\xfe"):
        return []  # nearly every body: no NUL, so no BOM or guess (this look is 15 times cheaper)
    found: dict[str, bool] = {}
    for codec, required in ((_marked(head), True), (declared, True), (_guessed(head), False)):
        if codec is not None:
            found[codec] = found.get(codec, False) or required
    return list(found.items())


def _undecodable(codec: str) -> Undecodable:
    return Undecodable(f"it does not decode in the charset it names ({codec})")


def cleaned_readings(data: bytes, content_type: str, check: Check) -> bytes:
    """`data` with each of its readings checked; `data` itself when nothing changed. Raises
    Undecodable for a body that does not decode in a required reading."""
    for codec, required in readings(content_type, data[:4]):
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            if required:
                raise _undecodable(codec) from None
            continue
        as_utf8 = text.encode("utf-8", "surrogatepass")
        if (new := check(as_utf8)) is not as_utf8:
            data = new.decode("utf-8", "surrogatepass").encode(codec, "surrogatepass")
    return data


StreamCheck = Callable[[bytes, bool], bytes]  # (data, whether the body ends) -> what is decided


class StreamReading:
    """A required reading of a streamed body: chunks decoded (strictly) as `codec`, checked
    as UTF-8 by `check`, and encoded back. (A stream is read only as it says: a guess from
    its first bytes would cut off a binary download that merely starts with NULs.)"""

    def __init__(self, codec: str, check: StreamCheck) -> None:
        self._codec = codec
        self._decode = codecs.getincrementaldecoder(codec)("strict")
        self._from_utf8 = codecs.getincrementaldecoder("utf-8")("surrogatepass")
        self._encode = codecs.getincrementalencoder(codec)("surrogatepass")
        self._check = check

    def feed(self, chunk: bytes, end: bool) -> bytes:
        try:
            text = self._decode.decode(chunk, final=end)
        except UnicodeDecodeError:
            raise _undecodable(self._codec) from None
        checked = self._check(text.encode("utf-8", "surrogatepass"), end)
        return self._encode.encode(self._from_utf8.decode(checked, final=end), final=end)
