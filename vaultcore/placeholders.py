"""The `<<vault:KEY>>` placeholder engine: grammar, scanning and context-aware substitution.

This module is the proxy's hot path and the one place that decides what a placeholder is,
so it is pure (no I/O, no project imports) and works on the bytes/str it is handed:
- a part without a placeholder costs one substring test and is returned as the same object;
- every value is escaped for the syntax it lands in (URL, header, JSON, form, raw body), so a
  secret can never break, or inject into, the request around it;
- substitution is one left-to-right pass: a value is never scanned again, so a secret whose
  value looks like a placeholder cannot pull in another secret;
- text that is almost a placeholder (`<<VAULT:k>>`, `<<vault: k>>`, `<<vault:k|bas64>>`) is
  told apart from both placeholders and plain text, so that the proxy can refuse it instead
  of sending it as it is (`resolve`).
"""

from __future__ import annotations

import base64
import enum
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, TypeVar, overload
from urllib.parse import quote, quote_from_bytes, quote_plus, unquote_plus

MARKER = b"<<vault:"
MARKER_STR = "<<vault:"

FILTERS = ("base64", "urlencode", "raw")
_KEY_MAX = 256
_KEY_CHARS = r"[A-Za-z0-9_.\-/]"
_KEY = rf"{_KEY_CHARS}{{1,{_KEY_MAX}}}"
_FILTER = "|".join(FILTERS)
_FILTER_MAX = max(map(len, FILTERS))

KEY_RE = re.compile(_KEY)
"""A whole valid key, for `KEY_RE.fullmatch(name)`."""

# Named groups differ per form because `re` forbids duplicate names inside an alternation.
_LITERAL = rf"<<vault:(?P<key>{_KEY})(?:\|(?P<filter>{_FILTER}))?>>"
# Clients percent-encode the brackets in URLs (requests does), and form encoders (requests'
# `data=`, browsers) also `:`, `|` and a key's `/`; the hex digits may be in either case,
# the word `vault` and the rest of the key may not.
_PCT_OPENER = r"%3[cC]%3[cC]vault"
_PCT_KEY = rf"(?:[A-Za-z0-9_.\-/]|%2[fF]){{1,{_KEY_MAX}}}"
_PERCENT = (
    rf"{_PCT_OPENER}(?::|%3[aA])(?P<pkey>{_PCT_KEY})"
    rf"(?:(?:\||%7[cC])(?P<pfilter>{_FILTER}))?%3[eE]%3[eE]"
)

_LITERAL_MAX = len("<<vault:") + _KEY_MAX + len("|") + _FILTER_MAX + len(">>")
_PERCENT_MAX = len("%3C%3Cvault%3A") + 3 * _KEY_MAX + len("%7C") + _FILTER_MAX + len("%3E%3E")
MAX_PLACEHOLDER_LEN: int = max(_LITERAL_MAX, _PERCENT_MAX)


def _nested_prefixes(atoms: Sequence[str], tail: str) -> str:
    """Regex for any non-empty prefix of the sequence of one-character `atoms`, or all of
    them followed by what `tail` matches."""
    rx = tail
    for atom in reversed(atoms):
        rx = f"{atom}(?:{rx})?"
    return rx


# What someone may have meant as a placeholder starts with two brackets and the word vault in
# any case, spaces allowed between; in URLs and forms the brackets may be percent-encoded.
_VAULT_ANY_CASE = "[vV][aA][uU][lL][tT]"
_PCT_BRACKET = "(?:<|%3[cC])"
_PCT_GAP = r"(?:[ \t+]|%20|%09)*"
# Shaped like a placeholder: such an opener, then up to the closing `>>` no bracket and no line
# break. Unclosed text (`<<vault:k`) is not, nor is `<<blocked-vault:` (see vaultcore.redaction).
_SHAPE = rf"<<[ \t]*{_VAULT_ANY_CASE}[^<>\r\n]{{0,{MAX_PLACEHOLDER_LEN}}}>>"
_PCT_SHAPE = (
    rf"{_PCT_BRACKET}{{2}}{_PCT_GAP}{_VAULT_ANY_CASE}(?:(?!%3[cCeE])[^<>\r\n]){{0,{MAX_PLACEHOLDER_LEN}}}(?:>|%3[eE]){{2}}"
)
# Every such opener, found from its first bracket: a literal `<`, or (URLs and forms) `%3`. One
# regex for each, because `re` scans for a literal start at memchr speed and for an alternation
# ten times slower, and most URLs hold a `%3` (`%3A`, `%3D`).
_OPENER_FROM_LT = rf"<{_PCT_BRACKET}{_PCT_GAP}{_VAULT_ANY_CASE}"
_OPENER_FROM_PCT = rf"%3[cC]{_PCT_BRACKET}{_PCT_GAP}{_VAULT_ANY_CASE}"

# What could still become a placeholder once more bytes arrive, up to the end of the buffer.
# It may over-approximate (then a little more is held back), never under-approximate.
_LITERAL_PARTIAL = _nested_prefixes(
    [re.escape(c) for c in MARKER_STR],
    rf"{_KEY_CHARS}{{0,{_KEY_MAX}}}(?:\|[a-z0-9]{{0,{_FILTER_MAX}}}>?|>)?",
)
_PERCENT_PARTIAL = _nested_prefixes(
    ["%", "3", "[cC]", "%", "3", "[cC]", "v", "a", "u", "l", "t"], r"[A-Za-z0-9_.\-/:|%]*"
)


class Context(enum.Enum):
    """Where in a request a placeholder sits, which decides how its value is escaped."""

    URL = "url"  # path/query/fragment: percent-encoded, nothing reserved left raw
    HEADER = "header"  # as is, but CR/LF/NUL refused
    JSON = "json"  # inside a JSON string: JSON-string-escaped, no quotes added
    FORM = "form"  # application/x-www-form-urlencoded: quote_plus
    RAW = "raw"  # as is

    # Members are singletons: hashing by identity is what Enum's own hash (of the name, in
    # Python) decides, five times faster; contexts key dicts on every request.
    __hash__ = object.__hash__


# Contexts whose clients may percent-encode the placeholder itself.
PERCENT_CONTEXTS = frozenset({Context.URL, Context.FORM})


def _compile(pattern: str) -> tuple[re.Pattern[str], re.Pattern[bytes]]:
    return re.compile(pattern), re.compile(pattern.encode("ascii"))


# (is_bytes, percent form accepted) -> pattern
_LITERAL_RE = _compile(_LITERAL)
_ANY_FORM_RE = _compile(f"{_LITERAL}|{_PERCENT}")
_FULL = {
    (False, False): _LITERAL_RE[0],
    (True, False): _LITERAL_RE[1],
    (False, True): _ANY_FORM_RE[0],
    (True, True): _ANY_FORM_RE[1],
}
_PCT_OPENER_RE = _compile(_PCT_OPENER)
_OPENER_FROM_LT_RE = _compile(_OPENER_FROM_LT)
_OPENER_FROM_PCT_RE = _compile(_OPENER_FROM_PCT)
# (is_bytes, percent forms accepted) -> pattern, as _FULL
_SHAPES = {
    (is_bytes, percent): _compile(_PCT_SHAPE if percent else _SHAPE)[is_bytes]
    for is_bytes in (False, True) for percent in (False, True)
}
# Streams are bytes only.
_PARTIAL = {
    False: re.compile(rf"{_LITERAL_PARTIAL}\Z".encode("ascii")),
    True: re.compile(rf"(?:{_LITERAL_PARTIAL}|{_PERCENT_PARTIAL})\Z".encode("ascii")),
}
# What would end or corrupt the line a value lands in, letting it inject lines: CR, LF and
# NUL in a header; in the request line also a space or any other control character.
_ILLEGAL = {
    Context.HEADER: (re.compile(rb"[\r\n\x00]"), "CR, LF or NUL, which cannot go into a header"),
    Context.URL: (re.compile(rb"[\x00-\x20\x7f]"), "a space or control character, which cannot go into a URL unescaped"),
}


def _scan(data: bytes | str, context: Context) -> tuple[list[re.Match], bool]:
    """The placeholders of `data`, left to right, and whether nothing else in it can be
    shaped like one (then `resolve` needs no near-miss scan).

    Outside URLs and forms every placeholder, and everything shaped like one, starts with
    `<`: the scan jumps from one `<` to the next (memchr-fast) and matches there, so a JSON
    body costs little more than `bytes.replace` of its placeholders. After the first `<`
    that starts none, it jumps from marker to marker (`find`), which a page full of tags
    needs. In URLs and forms the percent form needs the regex engine to find it."""
    is_bytes = isinstance(data, bytes)
    if context in PERCENT_CONTEXTS:  # short, and the percent form needs the regex to find it
        return list(_FULL[is_bytes, True].finditer(data)), False
    match_at = _FULL[is_bytes, False].match
    lt, marker = (b"<", MARKER) if is_bytes else ("<", MARKER_STR)
    found: list[re.Match] = []
    clean = True  # every `<` so far started a placeholder
    pos = data.find(lt)
    while pos >= 0:
        match = match_at(data, pos)
        if match is not None:
            found.append(match)
            pos = data.find(lt if clean else marker, match.end())
        else:
            clean = False
            pos = data.find(marker, pos + 1)
    return found, clean


def contains_placeholder(data: bytes | str, context: Context = Context.RAW) -> bool:
    """The fast pre-check that lets a request without placeholders through untouched.

    True when the marker (or, for URL, its percent-encoded opener) occurs; it may be a false
    positive (`<<vault:>>`), never a false negative."""
    if isinstance(data, bytes):  # `find`, not `in`: see mentions_placeholder
        if data.find(MARKER) >= 0:
            return True
        return context in PERCENT_CONTEXTS and data.find(b"%3") >= 0 and _PCT_OPENER_RE[1].search(data) is not None
    if MARKER_STR in data:
        return True
    return context in PERCENT_CONTEXTS and "%3" in data and _PCT_OPENER_RE[0].search(data) is not None


def mentions_placeholder(data: bytes | str, context: Context = Context.RAW) -> bool:
    """The fast pre-check of what the proxy sends: whether `data` may hold a placeholder or
    text that is almost one (two brackets, then `vault` in any case). It may be a false
    positive (`<%3Cvault` in a header), never a false negative for either. Text without a
    `<` (nor, in URLs and forms, a `%3`) costs a memchr-fast scan, less than a search for the
    marker itself. On bytes that scan is `find`: `b"<" in data` first tries `b"<"` as a byte
    value and clears the TypeError, which costs ten times the scan of a header value."""
    if isinstance(data, bytes):
        if data.find(b"<") >= 0 and _OPENER_FROM_LT_RE[1].search(data):
            return True
        return context in PERCENT_CONTEXTS and data.find(b"%3") >= 0 and _OPENER_FROM_PCT_RE[1].search(data) is not None
    if "<" in data and _OPENER_FROM_LT_RE[0].search(data):
        return True
    return context in PERCENT_CONTEXTS and "%3" in data and _OPENER_FROM_PCT_RE[0].search(data) is not None


@dataclass(frozen=True)
class Reference:
    """One placeholder found in an input: `data[start:end]` is its whole text."""

    key: str
    filter: str | None  # "base64" | "urlencode" | "raw" | None
    start: int
    end: int


def _reference(match: re.Match) -> Reference:
    key = match["key"] if match["key"] is not None else match["pkey"]
    flt = match["filter"] if match["key"] is not None else match["pfilter"]
    if isinstance(key, bytes):
        key = key.decode("ascii")
        flt = flt.decode("ascii") if flt is not None else None
    if match["key"] is None:
        key = key.replace("%2F", "/").replace("%2f", "/")
    return Reference(key, flt, match.start(), match.end())


def find_references(data: bytes | str, context: Context = Context.RAW) -> list[Reference]:
    """Every placeholder in `data`, left to right (as `substitute` would see them)."""
    if not contains_placeholder(data, context):
        return []
    return [_reference(m) for m in _scan(data, context)[0]]


class SubstitutionError(Exception):
    """A placeholder that cannot be resolved. Never carries a value.

    `code` is machine-readable (the proxy sends it as X-Vaultproxy-Error): this module raises
    "illegal_value", "not_utf8" and "malformed_placeholder"; lookup callbacks raise their own
    ("unknown_key", "host_not_allowed"...)."""

    def __init__(self, code: str, key: str, message: str) -> None:
        super().__init__(code, key, message)  # all three in args, so the error pickles
        self.code = code
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return self.message


Text = TypeVar("Text", bytes, str)

Lookup = Callable[[str], "str | bytes | None"]
"""Given a key, its value; None means unknown, keep the placeholder literally; raising
SubstitutionError refuses the whole substitution."""

_ESCAPE: dict[Context, Callable[[str], str]] = {
    Context.URL: lambda v: quote(v, safe=""),
    Context.HEADER: lambda v: v,
    Context.JSON: lambda v: json.dumps(v, ensure_ascii=False)[1:-1],
    Context.FORM: lambda v: quote_plus(v, safe=""),
    Context.RAW: lambda v: v,
}


def _not_utf8(key: str) -> SubstitutionError:
    return SubstitutionError(
        "not_utf8", key, f"the value of {key!r} is not UTF-8 text: use <<vault:{key}|base64>>"
    )


def _value_bytes(value: str | bytes, key: str) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate cannot be sent
        raise _not_utf8(key) from None


def encode_value(value: str | bytes, filter: str | None, context: Context, key: str) -> bytes:
    """Apply the filter, then the context's escaping; returns UTF-8 bytes.

    base64: standard base64 of the value's bytes. urlencode: quote(v, safe=""), not escaped
    again in URL context. raw: no context escaping, but the refusal of line-breaking
    characters in headers and URLs still applies (it is a security rule, not escaping). A bytes value that is not UTF-8
    needs |base64, except in RAW context where bytes go in as they are (|urlencode byte-wise)."""
    raw = _value_bytes(value, key)
    if filter == "base64":
        text = base64.b64encode(raw).decode("ascii")
    elif context is Context.RAW:
        return quote_from_bytes(raw, safe="").encode("ascii") if filter == "urlencode" else raw
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _not_utf8(key) from None
    if filter == "urlencode":
        text = quote(text, safe="")
    if filter != "raw" and not (filter == "urlencode" and context is Context.URL):
        text = _ESCAPE[context](text)
    out = text.encode("utf-8")
    illegal = _ILLEGAL.get(context)
    if illegal and illegal[0].search(out):
        raise SubstitutionError(
            "illegal_value",
            key,
            f"the value of {key!r} contains {illegal[1]}"
            f" (use <<vault:{key}|base64>> if the server expects that)",
        )
    return out


class Budget:
    """How many bytes substitution may still add to one request, across all its parts: a
    short request repeating a large value must not become an enormous one."""

    def __init__(self, limit: int) -> None:
        self.limit = self.left = limit

    def take(self, grown: int) -> bool:
        """Spend `grown` if it fits; False, and nothing spent, if it does not."""
        if grown > self.left:
            return False
        self.left -= grown
        return True

    def spend(self, grown: int, key: str) -> None:
        self.left -= grown
        if self.left < 0:
            raise SubstitutionError(
                "too_large", key,
                f"resolving {key!r} grows the request by more than {self.limit} bytes "
                "(the proxy's vault_max_growth option)",
            )


class _Resolver:
    """Renders placeholder matches for one substitution (one call or one stream), remembering
    each rendered placeholder so a repeated one costs a dict lookup."""

    def __init__(self, context: Context, lookup: Lookup, as_str: bool, budget: Budget | None = None) -> None:
        self._context = context
        self._lookup = lookup
        self._as_str = as_str
        self._budget = budget
        # placeholder text -> (key, rendering, growth): a repeated placeholder is neither
        # parsed nor looked up again (bodies may hold thousands of the same one)
        self._rendered: dict[bytes | str, tuple[str, bytes | str | None, int]] = {}
        self.keys_used: dict[str, None] = {}  # an ordered set

    def _render(self, match: re.Match) -> tuple[str, bytes | str | None, int]:
        ref = _reference(match)
        value = self._lookup(ref.key)
        if value is None:
            return ref.key, None, 0
        out: bytes | str = encode_value(value, ref.filter, self._context, ref.key)
        if self._as_str:
            try:
                out = out.decode("utf-8")
            except UnicodeDecodeError:  # RAW bytes cannot go into a str
                raise _not_utf8(ref.key) from None
        return ref.key, out, len(out) - (ref.end - ref.start)

    def replace(self, data: bytes | str, found: list[re.Match], end: int | None = None) -> list:
        """The pieces that spell out `data[:end]` (default: all of it) with the placeholders
        `found` in it (by `_scan`) rendered; [] when none was. Pieces of a bytes `data` are
        memoryviews: the join is its only copy."""
        pieces: list = []
        add = pieces.append  # two appends and match.start/end: a fifth cheaper than span() and +=
        copied = grown = 0
        source = memoryview(data) if isinstance(data, bytes) else data
        rendered = self._rendered
        # The growth is spent once, at the end. The rest of a text can shrink by at most its
        # length, so once `grown + copied` passes `certain` the text is refused whatever
        # follows; checked before each new rendering (each spelling of a placeholder has one of
        # its own): a hostile text is refused before it makes more than a few.
        certain = math.inf if self._budget is None else self._budget.left + (len(data) if end is None else end)
        for match in found:
            entry = rendered.get(match[0])
            if entry is None:
                if grown + copied > certain:
                    self._refuse_growth(found)
                entry = rendered[match[0]] = self._render(match)
                if entry[1] is not None:
                    self.keys_used[entry[0]] = None
            if entry[1] is not None:
                grown += entry[2]
                add(source[copied:match.start()])
                add(entry[1])
                copied = match.end()
        if pieces:
            if self._budget is not None and not self._budget.take(grown):
                self._refuse_growth(found)
            add(source[copied:end])
        return pieces

    def _refuse_growth(self, found: list[re.Match]) -> NoReturn:
        """Past the budget: spend `found`'s placeholders one by one to name the key whose
        value crossed it (the placeholders rendered so far are enough)."""
        assert self._budget is not None
        for match in found:  # the sum up to the last one rendered is past the budget
            entry = self._rendered.get(match[0])
            if entry is not None and entry[1] is not None:
                self._budget.spend(entry[2], entry[0])
        raise AssertionError("unreachable: these placeholders overran the budget")


@overload
def substitute(data: bytes, context: Context, lookup: Lookup, budget: Budget | None = None) -> tuple[bytes, list[str]]: ...
@overload
def substitute(data: str, context: Context, lookup: Lookup, budget: Budget | None = None) -> tuple[str, list[str]]: ...
def substitute(data: bytes | str, context: Context, lookup: Lookup, budget: Budget | None = None) -> tuple[bytes | str, list[str]]:
    """Replace every placeholder in one left-to-right pass.

    Returns (new data, keys substituted in order without repeats). When nothing was replaced
    (no placeholder, or lookup returned None for all), the input object itself comes back, so
    callers can tell by identity that they need not rewrite (and re-compress) a body. If a
    lookup raises, the exception propagates: never a half-substituted result."""
    return _substituted(data, _scan(data, context)[0], context, lookup, budget)


def _substituted(data: Text, found: list[re.Match], context: Context, lookup: Lookup, budget: Budget | None) -> tuple[Text, list[str]]:
    if not found:
        return data, []
    resolver = _Resolver(context, lookup, isinstance(data, str), budget)
    pieces = resolver.replace(data, found)
    return (data[:0].join(pieces), list(resolver.keys_used)) if pieces else (data, [])


# --- near misses ---------------------------------------------------------------------------

_NEAR_MISS_PARTS = re.compile(r"<<(\s*)(vault)(\s*)(:?)(.*)>>", re.IGNORECASE | re.DOTALL)
_SHOWN_FILTER = re.compile(r"[A-Za-z0-9_-]{1,16}")


@dataclass(frozen=True)
class NearMiss:
    """Text shaped like a placeholder that is not one, `data[start:end]`: the key it names
    (when that is a valid key, else "") and what is wrong with it."""

    key: str
    problem: str
    start: int
    end: int

    def error(self) -> SubstitutionError:
        subject = f"the placeholder for {self.key!r}" if self.key else "a placeholder"
        return SubstitutionError("malformed_placeholder", self.key, f"{subject} is malformed: {self.problem}")


def find_near_miss(data: bytes | str, context: Context = Context.RAW) -> NearMiss | None:
    """The first text in `data` shaped like a placeholder (an opener in any case, up to the
    next `>>`) that is not one, as `substitute` sees placeholders in `context`; None if none.

    Sent as it is, such text reaches the server literally and fails there for no visible
    reason. The problem named quotes only a valid key name and a short filter name of the text,
    never anything else of it."""
    is_bytes, percent = isinstance(data, bytes), context in PERCENT_CONTEXTS
    for shape in _SHAPES[is_bytes, percent].finditer(data):
        if _FULL[is_bytes, percent].match(data, shape.start()) is None:
            text = shape[0].decode("utf-8", "replace") if is_bytes else shape[0]
            key, problem = _diagnose(unquote_plus(text) if percent else text)
            return NearMiss(key, problem, shape.start(), shape.end())
    return None


def _diagnose(text: str) -> tuple[str, str]:
    """The key a near miss names and what is wrong with it; `text` is decoded (`<<`, `vault`
    in some case, then no bracket up to the final `>>`)."""
    parts = _NEAR_MISS_PARTS.fullmatch(text)
    assert parts is not None, "a near miss is an opener up to >>"
    lead, word, gap, colon, rest = parts.groups()
    name, bar, filters = rest.partition("|")
    key = name.strip() if KEY_RE.fullmatch(name.strip()) else ""
    flt = filters.strip()
    fix = f"write <<vault:{key or 'KEY'}{'|' + flt if flt in FILTERS else ''}>>"
    filters_are = f"the filters are {', '.join(FILTERS[:-1])} and {FILTERS[-1]}"
    if word != "vault":
        return key, f"vault is not in lower case; {fix}"
    if any(c.isspace() for c in lead + gap + rest):
        return key, f"it holds spaces; {fix}"
    if not colon:
        return key, f"no colon after vault; {fix}"
    if not key:
        return key, "a key is 1 to 256 characters of A-Z a-z 0-9 _ . - /" if name else f"it names no key; {fix}"
    if "|" in filters:
        return key, f"it has more than one filter; {filters_are}"
    if bar and flt not in FILTERS:
        shown = f"unknown filter {flt!r}" if _SHOWN_FILTER.fullmatch(flt) else "unknown filter" if flt else "no filter after |"
        return key, f"{shown}; {filters_are}"
    return key, f"it is percent-encoded in part only; encode all of it or none, or {fix}"


def resolve(data: Text, context: Context, lookup: Lookup, budget: Budget | None = None) -> tuple[Text, list[str]]:
    """`substitute` for what a client sends through the proxy: text that is almost a
    placeholder refuses the whole substitution (malformed_placeholder), before any lookup,
    rather than going out as it is. Text that mentions no placeholder costs
    `mentions_placeholder` only; text whose every `<` starts a placeholder needs no further
    scan for near misses."""
    if not mentions_placeholder(data, context):
        return data, []
    found, clean = _scan(data, context)
    if not clean and (miss := find_near_miss(data, context)) is not None:
        raise miss.error()
    return _substituted(data, found, context, lookup, budget)


def resolve_each(
    texts: tuple[Text, ...], context: Context, lookup: Lookup, budget: Budget | None = None, resolve_one: Callable[..., tuple[Text, list[str]]] = resolve,
) -> tuple[tuple[Text, ...], list[str]]:
    """`resolve_one` (`resolve`, or a caching one with its arguments) of each of `texts`: the
    resolved texts, and every key they used, once each, in order."""
    resolved = [resolve_one(text, context, lookup, budget) for text in texts]
    return tuple([text for text, _ in resolved]), list(dict.fromkeys(key for _, keys in resolved for key in keys))


class StreamSubstituter:
    """Chunk-by-chunk substitution for streamed bodies: a placeholder split across chunks
    still resolves, and the output equals one-shot `substitute` of the whole stream.

    feed(chunk) returns the bytes safe to emit now, holding back at most
    MAX_PLACEHOLDER_LEN-1 trailing bytes that could still become a placeholder; flush()
    returns them at the end of the stream. After a SubstitutionError the stream is dead."""

    def __init__(self, context: Context, lookup: Lookup, budget: Budget | None = None) -> None:
        self._context = context
        self._resolver = _Resolver(context, lookup, as_str=False, budget=budget)
        self._partial = _PARTIAL[context in PERCENT_CONTEXTS]
        self._pending = b""

    @property
    def keys_used(self) -> list[str]:
        return list(self._resolver.keys_used)

    def feed(self, chunk: bytes) -> bytes:
        buf = self._pending + chunk if self._pending else chunk
        found = _scan(buf, self._context)[0]
        # Every complete placeholder ends by the last one found, so one that is still growing
        # starts after it, and within the last MAX_PLACEHOLDER_LEN-1 bytes.
        scanned = found[-1].end() if found else 0
        partial = self._partial.search(buf, max(scanned, len(buf) - (MAX_PLACEHOLDER_LEN - 1)))
        cut = partial.start() if partial else len(buf)
        self._pending = buf[cut:]
        pieces = self._resolver.replace(buf, found, cut)
        if not pieces:
            return buf if cut == len(buf) else buf[:cut]
        return b"".join(pieces)

    def flush(self) -> bytes:
        # What is held back contains no complete placeholder (feed rendered them all).
        rest, self._pending = self._pending, b""
        return rest


def expand_json(alias: str, text: str) -> dict[str, str]:
    """Expand a JSON secret into dot keys, so one AWS secret can feed several placeholders.

    `alias` is the whole text as given; each member is `alias.name` (arrays: `alias.0`);
    objects and arrays are also their compact JSON text, other leaves their JSON text, null
    is "". Member names that would not make a valid key are skipped (with their subtree); on a
    clash between "a.b" and {"a":{"b"}} the first in document order wins.
    Raises ValueError, without the value, when text is not a JSON object."""
    if not KEY_RE.fullmatch(alias):
        raise ValueError(f"{alias!r} is not a valid key name")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError(f"the value of {alias!r} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ValueError(f"the value of {alias!r} is JSON but not a JSON object")
    out = {alias: text}
    _expand_members(alias, doc, out)
    return out


_SEGMENT_RE = re.compile(rf"{_KEY_CHARS}+")


def _expand_members(prefix: str, node: dict | list, out: dict[str, str]) -> None:
    members = node.items() if isinstance(node, dict) else enumerate(node)
    for name, child in members:
        key = f"{prefix}.{name}"
        # Deeper keys are only longer, so an invalid one ends the subtree (and bounds recursion).
        if not _SEGMENT_RE.fullmatch(str(name)) or len(key) > _KEY_MAX:
            continue
        out.setdefault(key, _leaf_text(child))
        if isinstance(child, (dict, list)):
            _expand_members(key, child, out)


def _leaf_text(node: object) -> str:
    if isinstance(node, str):
        return node
    if node is None:
        return ""
    return json.dumps(node, ensure_ascii=False, separators=(",", ":"))
