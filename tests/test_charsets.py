"""Which charsets a body is read in (pure), and a streamed reading equal to the whole one."""

from __future__ import annotations

import codecs

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaultcore.redaction import StreamNeutraliser, neutralise
from vaultproxy import charsets
from vaultproxy.codings import Undecodable


@pytest.mark.parametrize(("content_type", "head", "expected"), [
    ("text/html; charset=utf-8", b"<!do", []),
    ("text/plain", codecs.BOM_UTF8 + b"a", []),  # UTF-8 spells ASCII as ASCII
    ("text/plain; charset=latin-1", b"abcd", []),
    ("text/plain; charset=no-such-charset", b"abcd", []),  # clients fall back to an ASCII-like one
    ("text/plain; Charset=\"UTF-16\"", b"a\0b\0", [("utf-16", True), ("utf-16-le", False)]),
    ("text/plain; charset=utf-8", codecs.BOM_UTF32_LE + b"a", [("utf-32", True)]),  # the mark wins, as in browsers
    ("application/json", b"\0\0\0{", [("utf-32-be", False)]),
    ("application/octet-stream", b"\x89PNG", []),
    ("text/plain; charset=cp037", b"abcd", [("cp037", True)]),
])
def test_readings(content_type: str, head: bytes, expected: list[tuple[str, bool]]) -> None:
    assert charsets.readings(content_type, head) == expected


def test_a_body_that_changed_in_no_reading_is_the_same_object() -> None:
    binary = b"\0\xff" * 50  # guessed UTF-16-BE, and it decodes: nothing in it to change
    assert charsets.cleaned_readings(binary, "application/octet-stream", neutralise) is binary


def test_a_guess_that_does_not_decode_is_no_reading_but_a_named_charset_must_decode() -> None:
    lone_surrogate = "ok".encode("utf-16-le") + b"\x00\xd8" + "ok".encode("utf-16-le")
    assert charsets.cleaned_readings(lone_surrogate, "application/json", neutralise) is lone_surrogate
    with pytest.raises(Undecodable, match=r"charset it names \(utf-16-le\)"):
        charsets.cleaned_readings(lone_surrogate, "text/plain; charset=utf-16le", neutralise)


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
    whole = charsets.cleaned_readings(body, f"text/plain; charset={codec}", neutralise)
    assert out.decode(codec) == whole.decode(codec)
