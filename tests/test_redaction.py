"""Tests for vaultcore.redaction: the forms a server echoes a value in, redaction whole and
streamed, and neutralising the placeholder openers a server sends, in every spelling a
client could decode back into one."""

from __future__ import annotations

import base64
import html
import itertools
import json
import re
from collections.abc import Callable
from urllib.parse import quote, quote_from_bytes, quote_plus, unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from requests.exceptions import InvalidURL
from requests.utils import requote_uri

from vaultcore.placeholders import Context, contains_placeholder
from vaultcore.redaction import (
    BLOCKED,
    Redactor,
    StreamNeutraliser,
    StreamRedactor,
    might_hold_placeholder,
    neutralise,
    neutralise_text,
    value_forms,
)

FAST = settings(max_examples=200, deadline=None)

# Every character some encoder escapes: `/` (PHP, paths), `<>&` (Go, HTML), quotes, space,
# `~` (PHP), JavaScript's unescaped `!*'()`, non-ASCII.
VALUE = "S3CRET/p@ss w\u00f6rd<&>'\"~!*()"
TOKEN = "sk_live_Zq9WsEcho"
P_VALUE = b"<<vault:value>>"
P_TOKEN = b"<<vault:token>>"


def go_json(text: str) -> str:
    """encoding/json's string escaping: HTML-safe, non-ASCII as it is."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c in "<>&\u2028\u2029" or ord(c) < 0x20:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


def php_json(text: str) -> str:
    """json_encode's default: `\\/`, non-ASCII as lower-case `\\u` escapes."""
    out = []
    for c in text:
        if c in '"\\/':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) > 0x7E:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


def lower_hex(encoded: str) -> str:
    return re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), encoded)


ENCODERS: dict[str, Callable[[str], bytes]] = {
    "raw": lambda v: v.encode(),
    "json": lambda v: json.dumps(v)[1:-1].encode(),
    "json-unicode": lambda v: json.dumps(v, ensure_ascii=False)[1:-1].encode(),
    "go": lambda v: go_json(v).encode(),
    "php": lambda v: php_json(v).encode(),
    "php-hex-apos": lambda v: php_json(v).replace("'", "\\u0027").encode(),
    "url": lambda v: quote(v, safe="").encode(),
    "url-lower": lambda v: lower_hex(quote(v, safe="")).encode(),
    "form": lambda v: quote_plus(v, safe="").encode(),
    "form-lower": lambda v: lower_hex(quote_plus(v, safe="")).encode(),
    "path": lambda v: quote(v, safe="/").encode(),
    "js-uri-component": lambda v: quote(v, safe="!~*'()").encode(),
    "base64": lambda v: base64.b64encode(v.encode()),
    "base64-unpadded": lambda v: base64.b64encode(v.encode()).rstrip(b"="),
    "base64url": lambda v: base64.urlsafe_b64encode(v.encode()),
    "base64url-unpadded": lambda v: base64.urlsafe_b64encode(v.encode()).rstrip(b"="),
    "html": lambda v: html.escape(v).encode(),
    "html-39": lambda v: html.escape(v).replace("&#x27;", "&#39;").encode(),
    "html-text": lambda v: html.escape(v, quote=False).encode(),
}


# --- value_forms ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ENCODERS.values(), ids=ENCODERS.keys())
def test_every_encoders_form_is_known_and_redacted(encoder: Callable[[str], bytes]) -> None:
    form = encoder(VALUE)
    assert form in value_forms(VALUE)
    redactor = Redactor({P_VALUE: VALUE})
    assert redactor.redact(b'{"echo": "' + form + b'"}') == b'{"echo": "' + P_VALUE + b'"}'


def test_forms_are_few_for_a_token_and_cached() -> None:
    # A token no encoder touches: itself and its base64 forms.
    assert value_forms(TOKEN) == {
        TOKEN.encode(),
        *(ENCODERS[k](TOKEN) for k in ENCODERS if k.startswith("base64")),
    }
    assert value_forms(TOKEN) is value_forms(TOKEN)


def test_short_empty_and_binary_values() -> None:
    assert value_forms("abc") == {b"abc"}  # `YWJj`, `%61` would be everywhere
    assert value_forms("") == frozenset()
    blob = b"S3CRET\xff\xfe\x00/"
    assert {blob, quote_from_bytes(blob, safe="").encode(), base64.b64encode(blob)} <= value_forms(blob)
    assert b"" not in value_forms(blob)


# --- Redactor ------------------------------------------------------------------------------


def test_an_httpbin_echo_keeps_no_form_of_any_value() -> None:
    redactor = Redactor({P_VALUE: VALUE, P_TOKEN: TOKEN})
    echo = {
        "args": {"t": VALUE},
        "headers": {"Authorization": f"Bearer {TOKEN}", "X-Blob": base64.b64encode(VALUE.encode()).decode()},
        "form": {"v": VALUE},
        "data": quote_plus(VALUE),
        "url": f"https://httpbin.org/anything/{quote(VALUE)}?t={quote(VALUE, safe='')}",
    }
    for body in (json.dumps(echo).encode(), json.dumps(echo, ensure_ascii=False).encode()):
        out = redactor.redact(body)
        assert not [form for form in value_forms(VALUE) | value_forms(TOKEN) if form in out]
        assert out.count(P_VALUE) == 6 and out.count(P_TOKEN) == 1


def test_the_longest_form_wins_and_a_written_placeholder_is_not_scanned_again() -> None:
    redactor = Redactor(
        {b"<<vault:a>>": "S3CRET-alpha", b"<<vault:b>>": "S3CRET-alpha-beta", b"<<vault:c>>": "vault:a>"}
    )
    assert (
        redactor.redact(b"x S3CRET-alpha-beta S3CRET-alpha vault:a>")
        == b"x <<vault:b>> <<vault:a>> <<vault:c>>"
    )


def test_a_form_two_values_share_shows_the_first_placeholder() -> None:
    redactor = Redactor({b"<<vault:one>>": "S3CRET-same", b"<<vault:two>>": "S3CRET-same"})
    assert redactor.redact(b"S3CRET-same") == b"<<vault:one>>"


def test_a_placeholder_with_several_values_redacts_each() -> None:
    """A key rotated while a WebSocket was open: the socket carried both of its values."""
    redactor = Redactor([(P_TOKEN, "S3CRET-before"), (P_TOKEN, "S3CRET-after")])
    assert redactor.redact(b"S3CRET-before S3CRET-after") == P_TOKEN + b" " + P_TOKEN


def test_nothing_to_redact_returns_the_same_object() -> None:
    body = b"nothing secret here " * 1000
    assert Redactor({P_TOKEN: TOKEN}).redact(body) is body
    assert Redactor({}).redact(body) is body


def test_a_value_holding_an_opener_is_redacted_after_neutralising() -> None:
    value = "S3CRET<<vault:b>>"
    echoed = b'{"a": "' + value.encode() + b'"}'
    assert Redactor({b"<<vault:nested>>": value}).redact(neutralise(echoed)) == b'{"a": "<<vault:nested>>"}'


def test_redaction_is_one_scan_per_anchor() -> None:
    """Performance sanity, not timing: a body that echoes nothing costs about one scan per
    value and one per its base64 forms, and comes back as it is."""

    class Counting(bytes):
        finds = 0

        def find(self, *args: object) -> int:  # type: ignore[override]
            Counting.finds += 1
            return super().find(*args)  # type: ignore[arg-type]

    body = Counting(json.dumps({"headers": {f"X-{i}": "value" * 10 for i in range(16000)}}).encode())
    assert len(body) > 1_000_000
    redactor = Redactor({P_TOKEN: TOKEN, P_VALUE: VALUE, b"<<vault:c>>": "S3CRET-charlie"})
    assert redactor.redact(body) is body
    assert Counting.finds <= 6


# --- StreamRedactor ------------------------------------------------------------------------

REDACTOR = Redactor(
    {P_VALUE: VALUE, P_TOKEN: TOKEN, b"<<vault:a>>": "S3CRET-alpha", b"<<vault:b>>": "S3CRET-alpha-beta"}
)
STREAM_PIECES = [
    *(encoder(VALUE) for encoder in ENCODERS.values()),
    TOKEN.encode(),
    b"S3CRET-alpha",
    b"S3CRET-alpha-beta",
    b"S3CRET-al",
    b"S3",
    b"-beta",
    b"sk_live_",
    b" ",
    b"x",
    b"%",
    b"&lt;",
]


def feed_all(stream: StreamRedactor | StreamNeutraliser, chunks: list[bytes]) -> bytes:
    out = [stream.feed(chunk) for chunk in chunks]
    return b"".join(out) + stream.flush()


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(body)]
    return [body[i:j] for i, j in itertools.pairwise(bounds)]


@FAST
@given(st.lists(st.sampled_from(STREAM_PIECES), max_size=12), st.data())
def test_stream_redaction_equals_one_shot(pieces: list[bytes], data: st.DataObject) -> None:
    body = b"".join(pieces)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=8))
    assert feed_all(StreamRedactor(REDACTOR), split(body, cuts)) == REDACTOR.redact(body)


def test_stream_redaction_at_every_split_and_byte_by_byte() -> None:
    body = (
        b"a "
        + b" ".join(encoder(VALUE) for encoder in ENCODERS.values())
        + b" S3CRET-alpha-beta "
        + TOKEN.encode()
    )
    expected = REDACTOR.redact(body)
    for i in range(len(body) + 1):
        assert feed_all(StreamRedactor(REDACTOR), [body[:i], body[i:]]) == expected, i
    assert feed_all(StreamRedactor(REDACTOR), [body[i : i + 1] for i in range(len(body))]) == expected


def test_the_stream_holds_back_only_what_could_become_a_form() -> None:
    stream = StreamRedactor(REDACTOR)
    assert stream.feed(b"hello world") == b"hello world"
    assert stream.feed(b" S3CRET-al") == b" "  # may become S3CRET-alpha(-beta)
    assert stream.feed(b"pha") == b""  # S3CRET-alpha may still become S3CRET-alpha-beta
    assert stream.feed(b"!") == b"<<vault:a>>!"
    assert stream.feed(b"S3CRET-alpha-beta") == b"<<vault:b>>"
    assert stream.flush() == b""


# --- neutralise ----------------------------------------------------------------------------

OPENERS = {
    "literal": rb"<<vault:tok>>",
    "percent": rb"%3C%3Cvault%3Atok%3E%3E",
    "percent-lower": rb"%3c%3cvault%3atok%3e%3e",
    "percent-mixed": rb"%3c%3Cvault:tok%3E%3e",
    "percent-twice": rb"%253C%253Cvault%253Atok%253E%253E",
    "percent-twice-lower": rb"%253c%253cvault%253atok",
    "percent-thrice": rb"%25253C%25253Cvault%25253Atok",
    "literal-and-percent": rb"<%3Cvault:tok>>",
    "html-named": rb"&lt;&lt;vault:tok&gt;&gt;",
    "html-named-upper": rb"&LT;&LT;vault:tok",
    "html-no-semicolon": rb"&lt&ltvault:tok",
    "html-decimal": rb"&#60;&#60;vault&#58;tok",
    "html-zero-padded": rb"&#0000060;&#x00003C;vault:tok",
    "html-hex": rb"&#x3c;&#X3C;vault:tok",
    "html-twice": rb"&amp;lt;&amp;lt;vault:tok",
    "json": rb"\u003c\u003cvault:tok\u003e\u003e",
    "json-upper": rb"\u003C\u003Cvault:tok",
    "json-twice": rb"\\u003c\\u003cvault:tok",
    "html-of-percent": rb"&#37;3C&#37;3Cvault%3Atok",
    "json-of-percent": rb"\u00253C\u00253Cvault%3Atok",
    "percent-of-html": rb"%26lt%3B%26lt%3Bvault:tok",
    "json-of-html": rb"\u0026#60;\u0026lt;vault:tok",
    # A client decodes escaped letters too: requests turns %76 into v, %3%43 into %3C.
    "escaped-letter": rb"%3C%3C%76ault%3Atok%3E%3E",
    "escaped-letters": rb"%3C%3C%76%61%75%6C%74%3Atok",
    "escaped-hex-digit": rb"%3%43%3%43vault%3Atok",
    "json-letters": rb"\u003c\u003c\u0076\u0061ult:tok",
    "html-letter": rb"&lt;&lt;&#118;ault:tok",
    "letter-twice": rb"%3C%3C%2576ault%3Atok",
    "letter-digit-escaped": rb"%3C%3C%7%36ault%3Atok",
}


def _json_unescape(data: bytes) -> bytes:
    """What a JSON parser makes of the escapes in a string."""
    short = {
        b'"': b'"',
        b"\\": b"\\",
        b"/": b"/",
        b"b": b"\b",
        b"f": b"\f",
        b"n": b"\n",
        b"r": b"\r",
        b"t": b"\t",
    }

    def one(m: re.Match[bytes]) -> bytes:
        if m[1].startswith(b"u"):
            return chr(int(m[1][1:], 16)).encode("utf-8", "surrogatepass")
        return short[m[1]]

    return re.sub(rb'\\(u[0-9a-fA-F]{4}|["\\/bfnrt])', one, data)


def _requests(data: bytes) -> bytes:
    """What requests does to a URL it is given (Location included) before sending it."""
    try:
        return requote_uri(data.decode("latin-1")).encode("latin-1")
    except (InvalidURL, UnicodeEncodeError):
        return data


DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "none": lambda d: d,
    "percent": unquote_to_bytes,
    "requests": _requests,
    "html": lambda d: html.unescape(d.decode("latin-1")).encode("utf-8", "surrogatepass"),
    "json": _json_unescape,
}


def decodings(data: bytes) -> list[tuple[str, str, bytes]]:
    """`data` after every client decoding of up to two steps."""
    return [(n1, n2, d2(d1(data))) for (n1, d1), (n2, d2) in itertools.product(DECODERS.items(), repeat=2)]


def assert_no_placeholder_survives_decoding(data: bytes) -> None:
    for first, second, decoded in decodings(data):
        for context in Context:
            assert not contains_placeholder(decoded, context), (first, second, context, decoded)


@pytest.mark.parametrize("opener", OPENERS.values(), ids=OPENERS.keys())
def test_every_opener_spelling_is_neutralised(opener: bytes) -> None:
    assert any(contains_placeholder(decoded, Context.URL) for _, _, decoded in decodings(opener))
    body = b'<a href="/next?t=' + opener + b'">next</a> and "vault" text'
    assert might_hold_placeholder(body)
    out = neutralise(body)
    assert out.count(BLOCKED) == 1
    assert out.replace(BLOCKED, b"") == body  # only the insertion: the text around survives
    assert_no_placeholder_survives_decoding(out)
    assert neutralise(out) is out


def test_the_replacement_fits_every_context() -> None:
    assert re.fullmatch(rb"[a-z-]+", BLOCKED)
    out = neutralise(b"<<vault:tok>>")
    assert out == b"<<blocked-vault:tok>>"
    for context in Context:
        assert not contains_placeholder(out, context)
    assert quote(out.decode(), safe="<>:") == out.decode()
    assert json.loads(json.dumps(out.decode())) == out.decode()
    assert html.unescape(html.escape(out.decode())) == out.decode()


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"the vault is open",
        b"<vault> and </vault>",
        b"&lt;vault&gt;",
        b"a << b; vaults",
        b"%3Cvault",
        b"<<Vault:x>>",
        b"< <vault",
        b"<<blocked-vault:tok>>",
    ],
)
def test_text_without_an_opener_is_untouched(text: bytes) -> None:
    assert neutralise(text) is text


def test_the_fast_path_rejects_ordinary_bodies() -> None:
    """Performance sanity, not timing: everyday bodies (escapes included) are let through
    by the pre-check, as the same object."""
    bodies = [
        json.dumps(
            [{"name": "caf\u00e9", "path": "C:\\tmp\\x", "html": "<b>&amp;</b>", "u": "a%2Fb%7B%7D"}] * 20000
        ).encode(),
        b'<p class="x">Fish &amp; chips &#39;n&#39; <a href="?a=1&amp;b=%20">more</a>&nbsp;&#8217;</p>\n'
        * 12000,
    ]
    for body in bodies:
        assert not might_hold_placeholder(body)
        assert neutralise(body) is body


def test_neutralise_text_round_trips_header_values() -> None:
    assert (
        neutralise_text("https://allowed.test/echo?t=%3C%3Cvault%3Atok%3E%3E")
        == "https://allowed.test/echo?t=%3C%3Cblocked-vault%3Atok%3E%3E"
    )
    text = "caf\udce9 no placeholder"
    assert neutralise_text(text) is text


# Random spellings: each character as it is or escaped, and an escape's characters escaped again.
ESCAPES: list[Callable[[str], str]] = [
    lambda c: f"%{ord(c):02X}",
    lambda c: f"%{ord(c):02x}",
    lambda c: f"&#{ord(c)};",
    lambda c: f"&#x{ord(c):x};",
    lambda c: f"&#X{ord(c):02X};",
    lambda c: f"\\u{ord(c):04x}",
    lambda c: f"\\u{ord(c):04X}",
    lambda c: {"<": "&lt;", "&": "&amp;", "%": "&percnt;", "\\": "\\\\"}.get(c, c),
]


@st.composite
def spelled(draw: st.DrawFn, text: str, depth: int = 2) -> str:
    out = []
    for c in text:
        choice = draw(st.integers(-1, len(ESCAPES) - 1)) if depth else -1
        out.append(c if choice < 0 else draw(spelled(ESCAPES[choice](c), depth - 1)))
    return "".join(out)


openers = st.sampled_from(["<<vault:", "%3C%3Cvault%3A", "%3c%3cvault:"]).flatmap(spelled)
noise = st.text(alphabet="<>%&#;:\\/ux3cCvault0-", max_size=8)


@FAST
@given(noise, openers, noise)
def test_no_spelling_survives_neutralising(before: str, opener: str, after: str) -> None:
    body = f"{before}{opener}tok>>{after}".encode()
    assert might_hold_placeholder(body)
    out = neutralise(body)
    assert out.replace(BLOCKED, b"") == body
    assert_no_placeholder_survives_decoding(out)


# --- StreamNeutraliser ---------------------------------------------------------------------


@FAST
@given(
    st.lists(st.one_of(openers, noise, st.sampled_from(["tok>>", " ", "&amp;", "<div>"])), max_size=8),
    st.data(),
)
def test_stream_neutralising_equals_one_shot(pieces: list[str], data: st.DataObject) -> None:
    body = "".join(pieces).encode()
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=8))
    assert feed_all(StreamNeutraliser(), split(body, cuts)) == neutralise(body)


def test_stream_neutralising_at_every_split() -> None:
    body = b"<p>" + b" x ".join(OPENERS.values()) + b"</p>"
    expected = neutralise(body)
    assert expected.count(BLOCKED) == len(OPENERS)
    for i in range(len(body) + 1):
        assert feed_all(StreamNeutraliser(), [body[:i], body[i:]]) == expected, i
    assert feed_all(StreamNeutraliser(), [body[i : i + 1] for i in range(len(body))]) == expected


def test_the_neutralising_stream_holds_back_only_a_possible_opener() -> None:
    stream = StreamNeutraliser()
    assert stream.feed(b"a <div> b") == b"a <div> b"
    assert stream.feed(b" <") == b" "
    assert stream.feed(b"%3") == b""
    assert stream.feed(b"Cva") == b""
    assert stream.feed(b"ult:x>>") == b"<%3Cblocked-vault:x>>"
    assert stream.feed(b"&amp; ok") == b"&amp; ok"
    assert stream.flush() == b""


def test_an_absurdly_padded_opener() -> None:
    padded = b"<<&#" + b"0" * 70_000
    whole = padded + b"118;ault:tok>>"
    assert neutralise(whole) == b"<<" + BLOCKED + whole[2:]
    # A stream holds an unfinished opener back up to 64 KiB, then lets it out broken.
    stream = StreamNeutraliser()
    out = stream.feed(padded) + stream.feed(b"118;ault:tok>>") + stream.flush()
    assert out == padded + BLOCKED + b"118;ault:tok>>"
    assert neutralise(out) is out  # no longer an opener
