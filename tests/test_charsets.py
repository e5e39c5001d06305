"""Which charsets a body is read in (pure), and a streamed reading equal to the whole one."""

from __future__ import annotations

import codecs

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaultcore.redaction import StreamNeutraliser, neutralise
from vaultproxy import charsets
from vaultproxy.codings import Undecodable


@pytest.mark.parametrize(("content_types", "head", "expected"), [
    ([b"text/html; charset=utf-8"], b"<!do", []),
    ([b"text/plain"], codecs.BOM_UTF8 + b"a", []),  # UTF-8 spells ASCII as ASCII
    ([b"text/plain; charset=latin-1"], b"abcd", []),
    ([b"text/plain; charset=no-such-charset"], b"abcd", []),  # clients fall back to an ASCII-like one
    ([b"text/plain; Charset=\"UTF-16\""], b"a\0b\0", ["utf-16-le", "utf-16-be"]),  # no mark: either byte order
    ([b"text/plain; charset=ucs-2"], b"abcd", ["utf-16-le"]),  # the WHATWG's name
    ([b"text/plain; charset=utf-8"], codecs.BOM_UTF32_LE + b"a", ["utf-32"]),  # a mark, whatever the charset says
    ([b"text/plain; charset=utf-16"], codecs.BOM_UTF16_BE + b"ab", ["utf-16"]),  # the mark tells the byte order
    ([b"text/html; charset=utf-8", b"text/html; charset=utf-16le"], b"abcd", ["utf-16-le"]),  # any field's
    ([b'text/html; x="; charset=utf-16le"'], b"abcd", ["utf-16-le"]),  # and within a quoted value
    ([b"application/json"], b"\0\0\0{", ["utf-32-be"]),
    ([b"application/json"], b'\0"N-', ["utf-16-be"]),  # json.loads' guess (requests' sees no pattern)
    ([b"application/octet-stream"], b"\x89PNG", []),
    ([b"text/plain; charset=cp037"], b"abcd", ["cp037"]),
])
def test_readings(content_types: list[bytes], head: bytes, expected: list[str]) -> None:
    assert charsets.readings(tuple(content_types), head) == expected


@pytest.mark.parametrize(("content_types", "head", "expected"), [
    ([b"text/plain; charset=utf-16"], b"a\0b\0", ["utf-16-le"]),  # as browsers read it
    ([b"application/json"], b"\0\0\0{", []),  # no guess: a download may start with NULs
    ([b"application/octet-stream"], codecs.BOM_UTF16_LE + b"ab", []),  # nothing says it is text
    ([b"text/plain"], codecs.BOM_UTF16_LE + b"ab", ["utf-16"]),
    ([], codecs.BOM_UTF16_LE + b"ab", ["utf-16"]),  # nor that it is not
])
def test_streamed_readings(content_types: list[bytes], head: bytes, expected: list[str]) -> None:
    assert charsets.readings(tuple(content_types), head, streamed=True) == expected


def test_a_body_that_changed_in_no_reading_is_the_same_object() -> None:
    binary = b"\0\xff" * 50  # guessed UTF-16-BE, and it decodes: nothing in it to change
    assert charsets.cleaned_readings(binary, (b"application/octet-stream",), neutralise) is binary


def test_a_body_that_does_not_decode_is_checked_as_read_with_replacement_characters() -> None:
    broken = "ok".encode("utf-16-le") + b"\x00\xd8" + "ok".encode("utf-16-le")
    assert charsets.cleaned_readings(broken, (b"text/plain; charset=utf-16le",), neutralise) is broken  # nothing to change
    planted = broken + "<<vault:k>>".encode("utf-16-le")
    with pytest.raises(Undecodable, match=r"charset it is read in \(utf-16-le\)"):
        charsets.cleaned_readings(planted, (b"text/plain; charset=utf-16le",), neutralise)


def _stream_neutraliser() -> charsets.StreamCheck:
    stream = StreamNeutraliser()
    return lambda data, end: stream.feed(data) + (stream.flush() if end else b"")


@given(st.text(alphabet="ab<>:vault é\u20ac\U0001F600", max_size=60), st.lists(st.integers(0, 300), max_size=6),
       st.sampled_from(["utf-16", "utf-16-be", "utf-32-le", "utf-7", "cp037"]))
def test_a_streamed_reading_equals_the_whole_one(text: str, cuts: list[int], codec: str) -> None:
    """Split anywhere (inside a character too), read as a stream, the body comes out as
    the whole body's reading does."""
    if codec == "cp037":
        text = text.replace("\u20ac", "").replace("\U0001F600", "")  # not in EBCDIC
    body = text.encode(codec)
    reading = charsets.StreamReading(codec, _stream_neutraliser())
    points = sorted({0, *(min(cut, len(body)) for cut in cuts), len(body)})
    out = b"".join(reading.feed(body[a:b], False) for a, b in zip(points, points[1:])) + reading.feed(b"", True)
    whole = charsets.cleaned_readings(body, (f"text/plain; charset={codec}".encode(),), neutralise)
    assert out.decode(codec) == whole.decode(codec)
