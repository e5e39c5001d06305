"""Tests for vaultcore.placeholders: grammar, contexts, filters, near misses, streaming, JSON
expansion, and hypothesis properties of the substitution (host and origin rules:
test_hostrules.py)."""

from __future__ import annotations

import base64
import json
import pickle
import re
from urllib.parse import parse_qs, quote, quote_plus, unquote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultcore.placeholders import (
    FILTERS,
    KEY_RE,
    MARKER,
    MARKER_STR,
    MAX_PLACEHOLDER_LEN,
    PERCENT_CONTEXTS,
    Budget,
    Context,
    Reference,
    StreamSubstituter,
    SubstitutionError,
    contains_placeholder,
    encode_value,
    expand_json,
    find_near_miss,
    find_references,
    mentions_placeholder,
    resolve,
    substitute,
)

# Distinctive fake secrets: they must never show up in an error message.
SECRETS: dict[str, str | bytes] = {
    "a": "S3CRET-alpha",
    "b": "S3CRET-bravo",
    "db.user": "S3CRET-user",
    "svc/token-1": "S3CRET-tok",
    "evil": "S3CRET\r\nX-Injected: 1",
    "nested": "S3CRET<<vault:b>>",
    "blob": b"S3CRET\xff\xfe\x00",
}
PCT_OPENER_RE = re.compile(r"%3c%3cvault", re.IGNORECASE)
FAST = settings(max_examples=60, deadline=None)


def lookup(key: str) -> str | bytes | None:
    return SECRETS.get(key)


def must_not_lookup(key: str) -> None:
    raise AssertionError("lookup called for a text without placeholders")


# --- grammar -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "flt"),
    [
        ("<<vault:a>>", "a", None),
        ("<<vault:A-z_0.9/x>>", "A-z_0.9/x", None),
        ("<<vault:a|base64>>", "a", "base64"),
        ("<<vault:a|urlencode>>", "a", "urlencode"),
        ("<<vault:a|raw>>", "a", "raw"),
        ("<<vault:" + "k" * 256 + ">>", "k" * 256, None),
    ],
)
def test_valid_placeholders_are_found(text: str, key: str, flt: str | None) -> None:
    expected = [Reference(key, flt, 1, 1 + len(text))]
    assert find_references("x" + text) == expected
    assert find_references(b"x" + text.encode()) == expected


@pytest.mark.parametrize(
    "text",
    [
        "<<vault:>>",
        "<< vault:x >>",
        "<<vault: a>>",
        "<<vault:a b>>",
        "<<vault:a|foo>>",
        "<<vault:a|>>",
        "<<vault:a|BASE64>>",
        "<<vault:a|raw|raw>>",
        "<<Vault:a>>",
        "<vault:a>",
        "<<vault:a>",
        "<<vault:a",
        "<<vault:a>>"[:-1] + " >",
        "<<vault:é>>",
        "<<vault:" + "k" * 257 + ">>",
    ],
)
def test_non_placeholders_pass_through(text: str) -> None:
    for context in Context:
        for data in (text, text.encode()):
            assert find_references(data, context) == []
            out, keys = substitute(data, context, lookup)
            assert out is data and keys == []


def test_the_growth_budget_counts_what_a_text_grows_by_in_all() -> None:
    """Values shorter than their placeholders make room for longer ones; past the budget the
    refusal names the key whose value crossed it, and the text is not substituted."""
    values = {"short": b"x" * 5, "long": b"y" * 50}
    text = b"<<vault:short>> <<vault:long>> <<vault:short>>"  # grows by -10 + 36 - 10 = 16
    budget = Budget(16)
    assert resolve(text, Context.RAW, values.get, budget) == (b"xxxxx " + b"y" * 50 + b" xxxxx", ["short", "long"])
    assert budget.left == 0
    with pytest.raises(SubstitutionError) as refused:
        resolve(text, Context.RAW, values.get, Budget(15))
    assert refused.value.code == "too_large" and refused.value.key == "long"


def test_a_text_past_the_budget_is_refused_before_the_rest_is_looked_up() -> None:
    """Each spelling of a placeholder (percent-encoded in any case) is rendered on its own: a
    hostile form body of many spellings must not make a copy of the value for each before the
    budget refuses it."""
    spellings = [f"{a}{b}vault{colon}big{c}{d}" for a in ("%3C", "%3c") for b in ("%3C", "%3c")
                 for colon in ("%3A", "%3a") for c in ("%3E", "%3e") for d in ("%3E", "%3e")]
    looked_up: list[str] = []

    def lookup(key: str) -> str:
        looked_up.append(key)
        return "v" * 1000

    with pytest.raises(SubstitutionError) as refused:
        resolve("&".join(f"f{i}={s}" for i, s in enumerate(spellings)), Context.FORM, lookup, Budget(1500))
    assert refused.value.code == "too_large" and refused.value.key == "big"
    assert len(spellings) == 32 and len(looked_up) <= 3  # the third is past any shrinking the rest could do


def test_a_streamed_body_spends_one_budget_across_its_chunks() -> None:
    stream = StreamSubstituter(Context.RAW, {"long": b"y" * 50}.get, Budget(60))
    assert stream.feed(b"a <<vault:long>> b ") == b"a " + b"y" * 50 + b" b "  # +36 of 60
    with pytest.raises(SubstitutionError) as refused:
        stream.feed(b"<<vault:long>> c")  # +36 more: the same placeholder, rendered before
    assert refused.value.code == "too_large" and refused.value.key == "long"


def test_nested_placeholder_inner_is_valid_outer_is_literal() -> None:
    data = "<<vault:<<vault:a>>>>"
    assert find_references(data) == [Reference("a", None, 8, 19)]
    assert substitute(data, Context.RAW, lookup) == ("<<vault:S3CRET-alpha>>", ["a"])


def test_unterminated_placeholder_is_literal_and_does_not_swallow_the_next_one() -> None:
    assert substitute("<<vault:a <<vault:b>>", Context.RAW, lookup) == ("<<vault:a S3CRET-bravo", ["b"])
    assert substitute("<<<vault:a>>>", Context.RAW, lookup) == ("<S3CRET-alpha>", ["a"])


@pytest.mark.parametrize(
    "text",
    [
        "%3C%3Cvault:a%3E%3E",
        "%3c%3cvault:a%3e%3e",
        "%3C%3cvault%3Aa%3e%3E",
        "%3C%3Cvault%3aa%3E%3E",
    ],
)
def test_percent_encoded_form_is_a_placeholder_in_urls_and_forms_only(text: str) -> None:
    url = "/p/" + text + "?q=1"
    assert find_references(url, Context.URL) == [Reference("a", None, 3, 3 + len(text))]
    assert substitute(url, Context.URL, lookup) == ("/p/S3CRET-alpha?q=1", ["a"])
    assert substitute(url.encode(), Context.URL, lookup) == (b"/p/S3CRET-alpha?q=1", ["a"])
    form = "a=1&token=" + text
    assert substitute(form, Context.FORM, lookup) == ("a=1&token=S3CRET-alpha", ["a"])
    for context in set(Context) - PERCENT_CONTEXTS:
        assert substitute(url, context, lookup)[0] is url


def test_form_encoded_placeholder_with_a_slash_in_its_key() -> None:
    # what requests' data={"k": "<<vault:prod/db|base64>>"} sends
    form = urlencode({"k": "<<vault:prod/db|raw>>"})
    assert "%2F" in form
    assert find_references(form, Context.FORM) == [Reference("prod/db", "raw", 2, len(form))]


@pytest.mark.parametrize("sep", ["|", "%7C", "%7c"])
def test_percent_encoded_form_with_filter(sep: str) -> None:
    url = f"/p?x=%3C%3Cvault%3Aa{sep}base64%3E%3E"
    expected = "/p?x=" + base64.b64encode(b"S3CRET-alpha").decode().replace("=", "%3D")
    assert substitute(url, Context.URL, lookup) == (expected, ["a"])


@pytest.mark.parametrize(
    "text", ["%3C%3CVAULT:a%3E%3E", "%3C%3Cvault:a%3E", "%3C%3Cvault:%3E%3E", "%253C%253Cvault:a%253E%253E"]
)
def test_percent_encoded_near_misses_are_literal(text: str) -> None:
    assert substitute(text, Context.URL, lookup)[0] is text


def test_key_re_validates_whole_names() -> None:
    for good in ["a", "db.user", "svc/token-1", "A_b-0", "k" * 256]:
        assert KEY_RE.fullmatch(good)
    for bad in ["", "a b", "a|b", "a>", "é", "k" * 257, "a\n"]:
        assert not KEY_RE.fullmatch(bad)


def test_max_placeholder_len_covers_the_longest_form() -> None:
    key = "k" * 256
    longest_literal = f"<<vault:{key}|urlencode>>"
    longest_percent = f"%3C%3Cvault%3A{'%2F' * 256}%7Curlencode%3E%3E"  # a key of 256 slashes, form-encoded
    assert find_references(longest_literal) and find_references(longest_percent, Context.URL)
    assert find_references(longest_percent + "x", Context.FORM)[0].key == "/" * 256
    assert MAX_PLACEHOLDER_LEN == max(len(longest_literal), len(longest_percent))
    assert MARKER == MARKER_STR.encode()


def test_contains_placeholder_is_the_marker_check() -> None:
    assert contains_placeholder(b"x <<vault:")
    assert contains_placeholder("<<vault:")
    assert not contains_placeholder(b"x <<vault")
    assert not contains_placeholder("%3C%3Cvault:a%3E%3E")
    assert contains_placeholder("%3c%3Cvault:a%3E%3E", Context.URL)
    assert contains_placeholder(b"%3c%3Cvault", Context.URL)
    assert not contains_placeholder("%3C%3Dvault", Context.URL)


# --- substitution: contexts and filters ----------------------------------------------------

VALUE = "a b&c=d/é+\"\\\t%"


@pytest.mark.parametrize(
    ("context", "flt", "expected"),
    [
        (Context.URL, None, "a%20b%26c%3Dd%2F%C3%A9%2B%22%5C%09%25"),
        (Context.URL, "urlencode", "a%20b%26c%3Dd%2F%C3%A9%2B%22%5C%09%25"),
        (Context.HEADER, None, VALUE),
        (Context.HEADER, "urlencode", "a%20b%26c%3Dd%2F%C3%A9%2B%22%5C%09%25"),
        (Context.JSON, None, 'a b&c=d/é+\\"\\\\\\t%'),
        (Context.JSON, "raw", VALUE),
        (Context.FORM, None, "a+b%26c%3Dd%2F%C3%A9%2B%22%5C%09%25"),
        (Context.FORM, "urlencode", "a%2520b%2526c%253Dd%252F%25C3%25A9%252B%2522%255C%2509%2525"),
        (Context.FORM, "raw", VALUE),
        (Context.RAW, None, VALUE),
        (Context.RAW, "urlencode", "a%20b%26c%3Dd%2F%C3%A9%2B%22%5C%09%25"),
    ],
)
def test_context_and_filter_escaping(context: Context, flt: str | None, expected: str) -> None:
    assert encode_value(VALUE, flt, context, "k") == expected.encode()
    assert encode_value(VALUE.encode(), flt, context, "k") == expected.encode()


def test_raw_url_values_pass_unescaped_but_never_break_the_request_line() -> None:
    assert encode_value("a&b=c/d%20", "raw", Context.URL, "k") == b"a&b=c/d%20"
    for bad in ("a b", "a\tb", "a\rb", "a\nb", "a\x00b", "a\x7fb"):
        with pytest.raises(SubstitutionError) as caught:
            encode_value(bad, "raw", Context.URL, "k")
        assert caught.value.code == "illegal_value"


def test_base64_filter_then_context_escaping() -> None:
    value = b"\xfb\xff\xbf"  # base64 "+/+/" uses both + and /
    assert base64.b64encode(value) == b"+/+/"
    assert encode_value(value, "base64", Context.RAW, "k") == b"+/+/"
    assert encode_value(value, "base64", Context.HEADER, "k") == b"+/+/"
    assert encode_value(value, "base64", Context.JSON, "k") == b"+/+/"
    assert encode_value(value, "base64", Context.URL, "k") == b"%2B%2F%2B%2F"
    assert encode_value(value, "base64", Context.FORM, "k") == b"%2B%2F%2B%2F"
    assert encode_value("é", "base64", Context.RAW, "k") == base64.b64encode("é".encode())


def test_json_context_escapes_control_and_quote_characters() -> None:
    body = b'{"k": "Bearer <<vault:k>>"}'
    value = 'x"y\\z\n\x00\u2028'
    out, keys = substitute(body, Context.JSON, lambda key: value)
    assert json.loads(out) == {"k": "Bearer " + value} and keys == ["k"]


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00"])
@pytest.mark.parametrize("flt", [None, "raw"])
def test_header_refuses_cr_lf_nul_even_with_raw(bad: str, flt: str | None) -> None:
    with pytest.raises(SubstitutionError) as info:
        encode_value("S3CRET" + bad + "x", flt, Context.HEADER, "k")
    assert info.value.code == "illegal_value" and info.value.key == "k"


def test_header_error_never_carries_the_value() -> None:
    with pytest.raises(SubstitutionError) as info:
        substitute(b"Bearer <<vault:evil>>", Context.HEADER, lookup)
    err = info.value
    assert (err.code, err.key) == ("illegal_value", "evil")
    for text in (str(err), repr(err), repr(err.args), err.message):
        assert "S3CRET" not in text
    assert "evil" in str(err)
    assert pickle.loads(pickle.dumps(err)).code == "illegal_value"


def test_header_base64_of_value_with_newline_is_fine() -> None:
    assert substitute(b"<<vault:evil|base64>>", Context.HEADER, lookup)[0] == base64.b64encode(
        b"S3CRET\r\nX-Injected: 1"
    )


@pytest.mark.parametrize("context", [Context.URL, Context.HEADER, Context.JSON, Context.FORM])
@pytest.mark.parametrize("flt", [None, "raw", "urlencode"])
def test_non_utf8_bytes_need_base64_outside_raw(context: Context, flt: str | None) -> None:
    with pytest.raises(SubstitutionError) as info:
        substitute(b"<<vault:blob" + (b"|" + flt.encode() if flt else b"") + b">>", context, lookup)
    assert info.value.code == "not_utf8" and "S3CRET" not in str(info.value)
    out, _ = substitute(b"<<vault:blob|base64>>", context, lookup)
    assert base64.b64decode(unquote(out.decode())) == SECRETS["blob"]


def test_non_utf8_bytes_go_as_is_into_raw_bytes_but_not_into_str() -> None:
    assert substitute(b"x<<vault:blob>>y", Context.RAW, lookup) == (b"xS3CRET\xff\xfe\x00y", ["blob"])
    assert substitute(b"<<vault:blob|urlencode>>", Context.RAW, lookup)[0] == b"S3CRET%FF%FE%00"
    with pytest.raises(SubstitutionError) as info:
        substitute("<<vault:blob>>", Context.RAW, lookup)
    assert info.value.code == "not_utf8"


def test_lone_surrogate_is_refused_not_crashed() -> None:
    for context in Context:
        with pytest.raises(SubstitutionError) as info:
            substitute("<<vault:k>>", context, lambda key: "x\ud800")
        assert info.value.code == "not_utf8"


def test_output_type_follows_input_type() -> None:
    assert substitute("<<vault:a>>", Context.RAW, lookup) == ("S3CRET-alpha", ["a"])
    assert substitute(b"<<vault:a>>", Context.RAW, lookup) == (b"S3CRET-alpha", ["a"])
    assert substitute("é<<vault:a>>", Context.URL, lambda k: "é") == ("é%C3%A9", ["a"])


def test_no_placeholder_returns_the_same_object_without_lookup() -> None:
    for data in (b"plain body", "plain", b"", "", b"<<vault:>>"):
        out, keys = substitute(data, Context.RAW, must_not_lookup)
        assert out is data and keys == []


def test_keys_in_order_without_repeats_and_one_lookup_per_placeholder_kind() -> None:
    calls: list[str] = []

    def counting(key: str) -> str | bytes | None:
        calls.append(key)
        return lookup(key)

    data = "<<vault:b>> <<vault:a>> <<vault:b>> <<vault:b|base64>> <<vault:a>>"
    out, keys = substitute(data, Context.RAW, counting)
    assert keys == ["b", "a"]
    assert out == "S3CRET-bravo S3CRET-alpha S3CRET-bravo {} S3CRET-alpha".format(
        base64.b64encode(b"S3CRET-bravo").decode()
    )
    assert calls == ["b", "a", "b"]


def test_missing_key_with_none_is_kept_literally() -> None:
    data = b"<<vault:nope>> <<vault:a>> <<vault:nope|raw>>"
    assert substitute(data, Context.RAW, lookup) == (b"<<vault:nope>> S3CRET-alpha <<vault:nope|raw>>", ["a"])
    only_missing = b"x <<vault:nope>> y"
    assert substitute(only_missing, Context.RAW, lookup)[0] is only_missing


def test_refusing_lookup_propagates_and_nothing_is_returned() -> None:
    def refuse_b(key: str) -> str | bytes | None:
        if key == "b":
            raise SubstitutionError("host_not_allowed", key, f"{key!r} is not allowed for this host")
        return lookup(key)

    with pytest.raises(SubstitutionError) as info:
        substitute("<<vault:a>> <<vault:b>>", Context.HEADER, refuse_b)
    assert (info.value.code, info.value.key) == ("host_not_allowed", "b")


def test_value_looking_like_a_placeholder_is_not_resolved_again() -> None:
    assert substitute("<<vault:nested>>", Context.RAW, lookup) == ("S3CRET<<vault:b>>", ["nested"])


def test_find_references_offsets_match_the_input() -> None:
    data = "é <<vault:a|raw>> %3C%3Cvault%3Ab%3E%3E"
    refs = find_references(data, Context.URL)
    assert [data[r.start : r.end] for r in refs] == ["<<vault:a|raw>>", "%3C%3Cvault%3Ab%3E%3E"]
    raw = data.encode()
    assert [raw[r.start : r.end] for r in find_references(raw, Context.URL)] == [
        b"<<vault:a|raw>>",
        b"%3C%3Cvault%3Ab%3E%3E",
    ]
    assert [(r.key, r.filter) for r in refs] == [("a", "raw"), ("b", None)]


# --- near misses -----------------------------------------------------------------------------

# Text almost a placeholder: the key it names and what the refusal must say.
NEAR_MISSES = {
    "<<vault:tdemo|bas64>>": ("tdemo", ["unknown filter 'bas64'", "base64, urlencode and raw"]),
    "<<vault: tdemo>>": ("tdemo", ["spaces", "write <<vault:tdemo>>"]),
    "<<vault:tdemo >>": ("tdemo", ["spaces", "write <<vault:tdemo>>"]),
    "<<VAULT:tdemo>>": ("tdemo", ["lower case", "write <<vault:tdemo>>"]),
    "<<Vault:a|raw>>": ("a", ["lower case", "write <<vault:a|raw>>"]),
    "<< vault:a |base64>>": ("a", ["spaces", "write <<vault:a|base64>>"]),
    "<<vault:a b>>": ("", ["spaces", "write <<vault:KEY>>"]),
    "<<vaulta>>": ("a", ["no colon after vault"]),
    "<<vault:>>": ("", ["names no key"]),
    "<<vault:a|>>": ("a", ["no filter after |"]),
    "<<vault:a|BASE64>>": ("a", ["unknown filter 'BASE64'"]),
    "<<vault:a|raw|raw>>": ("a", ["more than one filter"]),
    "<<vault:é>>": ("", ["A-Z a-z 0-9 _ . - /"]),
    "<<vault:" + "k" * 257 + ">>": ("", ["1 to 256 characters"]),
}
# Clients percent-encode placeholders in URLs and forms, near misses too.
PERCENT_NEAR_MISSES = {
    "%3C%3CVAULT:a%3E%3E": ("a", "lower case"),
    "%3c%3cvault%3a%20a%3e%3e": ("a", "spaces"),
    "%3C%3Cvault%3Aa+%3E%3E": ("a", "spaces"),
    "%3C%3Cvault%3Aa%7Cbas64%3E%3E": ("a", "unknown filter 'bas64'"),
    "%3C%3Cvault:%3E%3E": ("", "names no key"),
    "<<vault%3Aa>>": ("a", "percent-encoded in part only"),
}
# Neither placeholders nor near misses: unclosed, one bracket, nested, broken by a line, other
# words, encoded twice, and what the proxy makes of a server's placeholders.
NOT_NEAR_MISSES = [
    "<vault:a>", "<<vault:a", "<<vault:a>", "<<vault:a> >", "<<vaul:a>>", "vault:a>>", "<<vault:a\n>>",
    "<<vault:a <<vault:b>>", "<<vault:<<vault:a>>>>", "%253C%253Cvault:a%253E%253E",
    "<<blocked-vault:a>>", "%3C%3Cblocked-vault%3Aa%3E%3E", "&lt;&lt;blocked-vault:a&gt;&gt;",
]


def assert_refused_as_near_miss(data: str | bytes, context: Context, key: str, words: list[str]) -> None:
    """`resolve` refuses all of `data` (a valid placeholder in it too) before any lookup."""
    with pytest.raises(SubstitutionError) as info:
        resolve(data, context, must_not_lookup)
    assert (info.value.code, info.value.key) == ("malformed_placeholder", key)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_are_refused_naming_what_is_wrong(text: str) -> None:
    key, words = NEAR_MISSES[text]
    data = f"x {text} y <<vault:a>>"
    for context in Context:
        miss = find_near_miss(data, context)
        assert miss is not None and (miss.key, data[miss.start : miss.end]) == (key, text)
        assert_refused_as_near_miss(data, context, key, words)
        assert_refused_as_near_miss(data.encode(), context, key, words)


@pytest.mark.parametrize("text", PERCENT_NEAR_MISSES)
def test_percent_encoded_near_misses_are_refused_in_urls_and_forms(text: str) -> None:
    key, word = PERCENT_NEAR_MISSES[text]
    for context in PERCENT_CONTEXTS:
        assert_refused_as_near_miss(f"/p?a=1&k={text}&b=<<vault:a>>", context, key, [word])


@pytest.mark.parametrize("text", NOT_NEAR_MISSES)
def test_what_is_not_almost_a_placeholder_passes(text: str) -> None:
    for context in Context:
        for data in (text, text.encode()):
            assert find_near_miss(data, context) is None
            assert resolve(data, context, lookup) == substitute(data, context, lookup)


def test_resolve_substitutes_like_substitute_and_skips_text_without_placeholders() -> None:
    assert resolve("a=<<vault:a>>&b=%3C%3Cvault:b%3E%3E", Context.URL, lookup) == ("a=S3CRET-alpha&b=S3CRET-bravo", ["a", "b"])
    for plain in ("x < y >> z", b"vault: a>>", "%3C%3E"):
        assert resolve(plain, Context.URL, must_not_lookup)[0] is plain


def test_a_near_miss_after_placeholders_or_a_stray_bracket_is_still_refused() -> None:
    # `resolve` skips its near-miss scan only when every `<` starts a placeholder.
    for data in ("<<vault:a>> <<vault:b>> <<VAULT:a>>", "<<<vault:a>> <<vault :a>>", "<p> <<vault:a>> <<Vault:b>>"):
        for context in (Context.JSON, Context.RAW, Context.HEADER):
            assert_refused_as_near_miss(data, context, "a" if "VAULT:a" in data or "vault :a" in data else "b", [])
    assert resolve(b"<<<vault:a>> <b> <<vault:b", Context.JSON, lookup) == (b"<S3CRET-alpha <b> <<vault:b", ["a"])


def test_mentions_placeholder_sees_every_opener_in_any_case() -> None:
    for text in ["<<vault:", "<<VAULT", "<< \tVauLt", "x<<vault"]:
        assert mentions_placeholder(text) and mentions_placeholder(text.encode())
    assert mentions_placeholder("%3c%3CVault", Context.URL) and mentions_placeholder(b"%3C<vault", Context.FORM)
    for text in ["<vault:a>", "<<blocked-vault:a>>", "<<vau", "plain"]:
        assert not mentions_placeholder(text) and not mentions_placeholder(text.encode())
    assert not mentions_placeholder("%3C%3Cvault:a%3E%3E", Context.HEADER)


# --- streams -------------------------------------------------------------------------------


def stream(chunks: list[bytes], context: Context = Context.RAW, lk=lookup) -> tuple[bytes, list[str]]:
    sub = StreamSubstituter(context, lk)
    out = b"".join(sub.feed(c) for c in chunks) + sub.flush()
    return out, sub.keys_used


@pytest.mark.parametrize(
    ("data", "context"),
    [
        (b'{"k":"Bearer <<vault:svc/token-1>>","n":"<<vault:a|base64>>"}', Context.JSON),
        (b"x=<<vault:" + b"k" * 256 + b"|urlencode>>&y=1", Context.FORM),
        (b"/p/%3c%3Cvault%3A" + b"k" * 256 + b"%7curlencode%3E%3E?q=<<vault:a>>", Context.URL),
        (b"<<vault:<<vault:a>>>> <<vault:a <<vault:nope>><", Context.RAW),
    ],
)
def test_stream_split_at_every_position(data: bytes, context: Context) -> None:
    lk = lambda key: "S3CRET-long" if key.startswith("kkk") else lookup(key)  # noqa: E731
    expected = substitute(data, context, lk)
    assert expected[0] is not data
    for i in range(len(data) + 1):
        assert stream([data[:i], data[i:]], context, lk) == expected, i


def test_stream_many_tiny_chunks() -> None:
    data = b"<p><<vault:a>></p>" * 50 + b"<<vault:b|base64>><<"
    expected = substitute(data, Context.RAW, lookup)
    assert stream([data[i : i + 1] for i in range(len(data))]) == expected
    assert stream([data[i : i + 3] for i in range(0, len(data), 3)]) == expected


def test_stream_emits_plain_data_at_once_and_holds_back_only_a_possible_start() -> None:
    sub = StreamSubstituter(Context.RAW, lookup)
    assert sub.feed(b"<html> a < b and c >> d") == b"<html> a < b and c >> d"
    assert sub.feed(b"text <<vau") == b"text "
    assert sub.feed(b"lt:a") == b""
    assert sub.feed(b">> done <") == b"S3CRET-alpha done "
    assert sub.flush() == b"<"
    assert sub.keys_used == ["a"]


def test_stream_refusal_propagates() -> None:
    sub = StreamSubstituter(Context.HEADER, lookup)
    with pytest.raises(SubstitutionError):
        sub.feed(b"<<vault:evil>>")


# --- JSON expansion ------------------------------------------------------------------------


def test_expand_json_full_example() -> None:
    text = '{"user":"a","conn":{"host":"h"},"hosts":["x","y"],"port":5432,"ok":true,"n":null}'
    assert expand_json("db", text) == {
        "db": text,
        "db.user": "a",
        "db.conn": '{"host":"h"}',
        "db.conn.host": "h",
        "db.hosts": '["x","y"]',
        "db.hosts.0": "x",
        "db.hosts.1": "y",
        "db.port": "5432",
        "db.ok": "true",
        "db.n": "",
    }


def test_expand_json_deep_nesting_arrays_and_non_string_leaves() -> None:
    text = '{ "a": [[1, {"b": false}], []], "f": 1.5, "u": "é", "e": {} }'
    assert expand_json("s", text) == {
        "s": text,
        "s.a": '[[1,{"b":false}],[]]',
        "s.a.0": '[1,{"b":false}]',
        "s.a.0.0": "1",
        "s.a.0.1": '{"b":false}',
        "s.a.0.1.b": "false",
        "s.a.1": "[]",
        "s.f": "1.5",
        "s.u": "é",
        "s.e": "{}",
    }


def test_expand_json_skips_invalid_member_names_with_their_subtree() -> None:
    doc = {"ok": "1", "a b": {"c": "2"}, "": "3", "é": "4", "x|y": "5", "k" * 300: "6", "d-1/2": "7"}
    text = json.dumps(doc)
    assert expand_json("s", text) == {"s": text, "s.ok": "1", "s.d-1/2": "7"}


def test_expand_json_keys_stay_within_the_key_length() -> None:
    deep = {"k" * 100: {"k" * 100: {"k" * 100: "v"}}}
    keys = expand_json("s", json.dumps(deep))
    assert sorted(keys) == ["s", "s." + "k" * 100, "s." + "k" * 100 + "." + "k" * 100]
    assert all(KEY_RE.fullmatch(k) for k in keys)


@pytest.mark.parametrize(
    "text", ["S3CRET not json", '["S3CRET"]', '"S3CRET"', "42", "null", '{"a": S3CRET}', "[" * 100000]
)
def test_expand_json_refuses_non_objects_without_the_value(text: str) -> None:
    with pytest.raises(ValueError) as info:
        expand_json("db", text)
    assert "S3CRET" not in str(info.value) and "db" in str(info.value)
    # The JSON parser's error (whose .doc is the value) must not ride along in a traceback.
    err = info.value
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_expand_json_refuses_an_invalid_alias() -> None:
    with pytest.raises(ValueError):
        expand_json("a b", "{}")


# --- properties ----------------------------------------------------------------------------

unicode_chars = st.characters(exclude_categories=["Cs"])  # what a str value can hold as UTF-8
# Text biased towards the characters of placeholders, so near misses are common.
near_miss_text = st.text(
    alphabet=st.sampled_from(list("<>vault:%3CcEeAa7|b ")) | unicode_chars, max_size=60
)
near_miss_bytes = near_miss_text.map(lambda s: s.encode()) | st.binary(max_size=60)
values = st.text(max_size=40)
keys = st.text(alphabet=st.sampled_from(list("abcXYZ019_.-/")), min_size=1, max_size=12)


@FAST
@given(data=near_miss_text | near_miss_bytes, context=st.sampled_from(Context))
def test_prop_text_without_marker_is_returned_identical(data: str | bytes, context: Context) -> None:
    marker = MARKER if isinstance(data, bytes) else MARKER_STR
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    if marker in data or (context is Context.URL and PCT_OPENER_RE.search(text)):
        lk = lambda key: None  # noqa: E731  (placeholders, if any, are all kept)
    else:
        lk = must_not_lookup
    out, used = substitute(data, context, lk)
    assert out is data and used == []


@FAST
@given(data=near_miss_text | near_miss_bytes, context=st.sampled_from(Context))
def test_prop_resolve_refuses_exactly_what_find_near_miss_finds(data: str | bytes, context: Context) -> None:
    try:
        resolve(data, context, lambda key: None)
    except SubstitutionError as e:
        assert e.code == "malformed_placeholder" and find_near_miss(data, context) is not None
    else:
        assert find_near_miss(data, context) is None


@FAST
@given(value=values, percent=st.booleans())
def test_prop_url_value_round_trips_and_leaves_nothing_reserved(value: str, percent: bool) -> None:
    placeholder = "%3C%3Cvault%3Ak%3E%3E" if percent else "<<vault:k>>"
    out, _ = substitute("/x?q=" + placeholder + "&z=1", Context.URL, lambda key: value)
    assert out.startswith("/x?q=") and out.endswith("&z=1")
    encoded = out[len("/x?q=") : -len("&z=1")]
    assert re.fullmatch(r"[A-Za-z0-9_.\-~%]*", encoded)
    assert unquote(encoded) == value


@FAST
@given(value=st.binary(max_size=40), context=st.sampled_from(Context))
def test_prop_any_bytes_survive_base64_in_every_context(value: bytes, context: Context) -> None:
    out, _ = substitute(b"<<vault:k|base64>>", context, lambda key: value)
    text = out.decode()
    if context in (Context.URL, Context.FORM):
        text = unquote(text)
    assert base64.b64decode(text, validate=True) == value


@FAST
@given(value=values)
def test_prop_json_value_round_trips(value: str) -> None:
    out, _ = substitute(b'{"k": "Bearer <<vault:k>>!", "o": 1}', Context.JSON, lambda key: value)
    assert json.loads(out) == {"k": "Bearer " + value + "!", "o": 1}


@FAST
@given(value=values)
def test_prop_form_value_round_trips(value: str) -> None:
    out, _ = substitute(b"a=1&k=<<vault:k>>&b=2", Context.FORM, lambda key: value.encode())
    assert parse_qs(out.decode(), keep_blank_values=True, strict_parsing=True) == {
        "a": ["1"],
        "k": [value],
        "b": ["2"],
    }


@FAST
@given(value=st.text(alphabet=st.sampled_from(list("ab\r\n\x00\t é")) | unicode_chars, max_size=20))
def test_prop_header_refuses_exactly_cr_lf_nul(value: str) -> None:
    bad = any(c in value for c in "\r\n\x00")
    try:
        out, _ = substitute(b"Bearer <<vault:k>>", Context.HEADER, lambda key: value)
    except SubstitutionError as err:
        assert bad and err.code == "illegal_value"
    else:
        assert not bad and out == b"Bearer " + value.encode()


# A template is a list of literal fillers (never containing the marker) and placeholder keys.
fillers = st.text(alphabet=st.sampled_from(list("<>vault:|a x")), max_size=8).filter(
    lambda s: MARKER_STR not in s
)
templates = st.tuples(st.lists(st.tuples(fillers, keys), max_size=6), fillers)


def secret_for(key: str) -> str:
    # Every value holds a placeholder of another key, which must stay literal.
    return f"[{key}:<<vault:{key}x>>]"


@FAST
@given(template=templates)
def test_prop_n_placeholders_give_exactly_n_replacements(template: tuple[list[tuple[str, str]], str]) -> None:
    parts, tail = template
    data = "".join(f"{filler}<<vault:{key}>>" for filler, key in parts) + tail
    expected = "".join(filler + secret_for(key) for filler, key in parts) + tail
    out, used = substitute(data, Context.RAW, secret_for)
    assert out == expected
    assert used == list(dict.fromkeys(key for _, key in parts))


# Stream input: fragments of both placeholder forms, complete or not, among arbitrary bytes.
fragments = st.sampled_from(
    [b"<", b"<<vault:", b"%3C%3Cvault%3A", b"%3c%3cvault:", b"a", b"nope", b"k" * 250]
    + [b"|raw", b"%7C", b"base64", b">", b">>", b"%3E%3E"]
)
stream_data = st.lists(fragments | st.binary(max_size=5), max_size=30).map(b"".join)


def found_unless_n(key: str) -> str | None:
    return None if key.startswith("n") else secret_for(key)


@settings(max_examples=150, deadline=None)
@given(
    data=stream_data,
    context=st.sampled_from([Context.RAW, Context.JSON, Context.FORM, Context.URL]),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=10),
)
def test_prop_stream_equals_one_shot(data: bytes, context: Context, cuts: list[int]) -> None:
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[i:j] for i, j in zip(bounds, bounds[1:])]
    expected, used = substitute(data, context, found_unless_n)
    assert stream(chunks, context, found_unless_n) == (expected, used)


@FAST
@given(data=stream_data, cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=10))
def test_prop_stream_holds_back_less_than_a_placeholder(data: bytes, cuts: list[int]) -> None:
    sub = StreamSubstituter(Context.URL, lambda key: None)  # nothing replaced: lengths comparable
    fed = emitted = 0
    for cut in sorted({min(c, len(data)) for c in cuts}):
        chunk = data[fed:cut]
        fed, emitted = cut, emitted + len(sub.feed(chunk))
        assert fed - emitted <= MAX_PLACEHOLDER_LEN - 1
    assert emitted + len(sub.feed(data[fed:]) + sub.flush()) == len(data)


# Near misses: one thing wrong with a valid placeholder.
@st.composite
def near_misses(draw: st.DrawFn) -> str:
    key, flt = draw(keys), draw(st.sampled_from(["", *FILTERS]))
    inner = f"vault:{key}" + (f"|{flt}" if flt else "")
    kind = draw(st.sampled_from(["case", "space", "filter", "key", "colon"]))
    if kind == "case":
        upper = draw(st.lists(st.booleans(), min_size=5, max_size=5).filter(any))
        inner = "".join(c.upper() if up else c for c, up in zip("vault", upper)) + inner[5:]
    elif kind == "space":
        at = draw(st.just(0) | st.integers(5, len(inner)))  # not inside the word vault
        inner = inner[:at] + draw(st.sampled_from([" ", "\t", "  "])) + inner[at:]
    elif kind == "filter":
        inner = f"vault:{key}|" + draw(st.text(alphabet=st.sampled_from(list("abelrsuw64AB_-")), max_size=10).filter(lambda f: f not in FILTERS))
    elif kind == "key":
        at = draw(st.integers(6, len(inner)))
        inner = inner[:at] + draw(st.sampled_from(list("é#!?*=&,;\"'~"))) + inner[at:]
    else:
        inner = inner.replace(":", "", 1)
    return f"<<{inner}>>"


placeholder_texts = st.builds("<<vault:{}{}>>".format, keys, st.sampled_from(["", *(f"|{f}" for f in FILTERS)]))
plain_fillers = st.text(alphabet=st.sampled_from(list("ab <>|:%3Cv")), max_size=8).filter(lambda s: not mentions_placeholder(s, Context.URL))


@FAST
@given(text=placeholder_texts, percent=st.booleans(), before=plain_fillers, after=plain_fillers)
def test_prop_valid_placeholders_are_never_near_misses(text: str, percent: bool, before: str, after: str) -> None:
    context = Context.URL if percent else Context.RAW
    data = before + (quote(text, safe="") if percent else text) + after
    assert find_near_miss(data, context) is None and find_near_miss(data.encode(), context) is None
    assert resolve(data, context, secret_for) == substitute(data, context, secret_for)
    assert resolve(data, context, secret_for)[1] == [find_references(text)[0].key]


@FAST
@given(miss=near_misses(), context=st.sampled_from(Context), encode=st.sampled_from([None, quote, quote_plus]))
def test_prop_near_misses_never_resolve(miss: str, context: Context, encode) -> None:
    if encode is not None:
        if context not in PERCENT_CONTEXTS:
            return
        miss = encode(miss, safe="")
    data = f"a={miss}&b=<<vault:a>>"
    assert find_near_miss(data, context) is not None
    with pytest.raises(SubstitutionError) as info:
        resolve(data.encode(), context, must_not_lookup)
    assert info.value.code == "malformed_placeholder"
    assert substitute(miss, context, must_not_lookup)[0] is miss  # no placeholder in it either


@FAST
@given(data=near_miss_text | near_miss_bytes | stream_data, context=st.sampled_from(Context))
def test_prop_near_misses_and_placeholders_never_overlap(data: str | bytes, context: Context) -> None:
    miss = find_near_miss(data, context)
    references = find_references(data, context)
    if miss is not None or references:
        assert mentions_placeholder(data, context)  # the pre-check never hides either
    if miss is not None:
        assert not [r for r in references if r.start < miss.end and miss.start < r.end]
