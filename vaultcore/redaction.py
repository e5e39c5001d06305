"""Keeping secrets, and placeholders a server plants, out of what comes back from upstream.

Pure (no mitmproxy, no I/O), on bytes:

- `Redactor` shows each value a request used as its placeholder wherever a response (and so
  the client, a flow file or a log) echoes it: as sent, or escaped the way an encoder on the
  server's side may have escaped it (`value_forms`).
- `neutralise` breaks every placeholder opener in a response, in any spelling a client could
  decode back into one: otherwise a server that holds no secret answers
  `302 Location: https://allowed.test/echo?t=%3C%3Cvault%3Atok%3E%3E`, curl -L follows, and
  the proxy resolves the placeholder for the allowed host.

The addon neutralises what the server sent first, then redacts, so the placeholders the
redactor writes stay. Both have a streaming variant whose output equals the one-shot one.
Text a peer sent that the proxy holds as str (decoded as UTF-8 with surrogateescape, as
mitmproxy shows header values): `neutralise_text` round-trips through that.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote_from_bytes

# --- the forms an echoed value takes -------------------------------------------------------

# Values this short (a PIN, "abc") keep only their raw form: `YQ` or `%2F` are everywhere.
_MIN_ENCODED = 4
# Bytes no encoder below escapes: a run of them common to all forms of a value is their anchor.
_UNESCAPED_RUN = re.compile(rb"[A-Za-z0-9._-]+")
# Shorter anchors would be found in nearly every body and save nothing.
_MIN_ANCHOR = 4

_PCT_ESCAPE = re.compile(r"%[0-9A-F]{2}")
_JSON_ESCAPE = re.compile(r"\\(?:u[0-9a-f]{4}|.)")


def _variants(forms: Iterable[str], *rewrites: Callable[[str], str]) -> set[str]:
    """`forms` with every subset of `rewrites` applied: each rewrite is one choice some
    encoder makes, and encoders combine them."""
    out = set(forms)
    for rewrite in rewrites:
        out |= {rewrite(form) for form in out}
    return out


def _percent_forms(raw: bytes) -> set[str]:
    # Python's quote, a path encoder's (keeps `/`), JavaScript's encodeURIComponent.
    bases = {quote_from_bytes(raw, safe=safe) for safe in ("", "/", "!'()*")}
    return _variants(
        bases,
        lambda s: s.replace("%20", "+"),  # form encoding
        lambda s: s.replace("~", "%7E"),  # PHP's urlencode
        lambda s: _PCT_ESCAPE.sub(lambda m: m[0].lower(), s),  # lower-case hex (.NET)
    )


def _json_forms(text: str) -> set[str]:
    bases = {json.dumps(text, ensure_ascii=ascii_only)[1:-1] for ascii_only in (True, False)}
    return _variants(
        bases,
        lambda s: s.replace("/", "\\/"),  # PHP
        lambda s: s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"),  # Go, Rails
        lambda s: s.replace("'", "\\u0027"),  # PHP's JSON_HEX_APOS, JavaScript serialisers
        lambda s: _JSON_ESCAPE.sub(lambda m: m[0][:2] + m[0][2:].upper(), s),  # Jackson, PHP's JSON_HEX_TAG
    )


def _html_forms(text: str) -> set[str]:
    return _variants(
        {html.escape(text, quote=quote) for quote in (False, True)},  # text, attribute value
        lambda s: s.replace("&#x27;", "&#39;"),  # Go, Jinja
        lambda s: s.replace("&#x27;", "&#039;"),  # PHP
        lambda s: s.replace("&quot;", "&#34;"),  # Go
    )


def _base64_forms(raw: bytes) -> set[bytes]:
    # Also what a client's `|base64` filter sent.
    padded = {base64.b64encode(raw), base64.urlsafe_b64encode(raw)}
    return padded | {form.rstrip(b"=") for form in padded}


def _anchored(forms: frozenset[bytes]) -> list[tuple[bytes, frozenset[bytes]]]:
    """`forms` under an anchor: the longest run of unescaped bytes they all contain, so that
    one scan for it finds every occurrence of any of them. Without a run worth scanning for,
    each form is its own anchor."""
    shortest = min(forms, key=len)
    for run in sorted(_UNESCAPED_RUN.findall(shortest), key=len, reverse=True):
        if len(run) < _MIN_ANCHOR:
            break
        if all(run in form for form in forms):
            return [(run, forms)]
    return [(form, frozenset({form})) for form in forms]


@functools.lru_cache(maxsize=1024)
def _families(value: str | bytes) -> tuple[tuple[bytes, frozenset[bytes]], ...]:
    """The forms of `value` as (anchor, forms) groups. Cached: the proxy asks for the same
    few values on every request."""
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    if len(raw) < _MIN_ENCODED:
        return ((raw, frozenset({raw})),) if raw else ()
    text = {raw} | {form.encode("ascii") for form in _percent_forms(raw)}
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:  # bytes only go out as they are, percent-encoded or base64
        pass
    else:
        text |= {form.encode("utf-8") for form in _json_forms(decoded) | _html_forms(decoded)}
    # The addon neutralises before it redacts: a value holding `<<vault:` is echoed broken.
    text |= {neutralise(form) for form in text}
    return (*_anchored(frozenset(text)), *_anchored(frozenset(_base64_forms(raw))))


@functools.lru_cache(maxsize=1024)
def value_forms(value: str | bytes) -> frozenset[bytes]:
    """Every form in which a server may echo `value`: raw (UTF-8); JSON-escaped as Python (with
    and without ensure_ascii), PHP (`\\/`), Go (`\\u003c`...), with `\\u0027` or upper-case
    hex; percent-encoded with upper- or lower-case hex, `+` for space, `/` or JavaScript's
    `!'()*` kept, `~` escaped; base64 and base64url with and without padding; HTML-escaped
    (`&lt; &gt; &amp; &quot; &#39; &#x27;`...); and each with its placeholder openers
    neutralised. Values under 4 bytes: only the raw form."""
    return frozenset().union(*(forms for _, forms in _families(value)))


# --- rewriting data, whole or as a stream ---------------------------------------------------

_Span = tuple[int, int, bytes]  # data[start:end] is to be replaced by the bytes


class _Rewriter(Protocol):
    def spans(self, data: bytes) -> Iterator[_Span]:
        """What to replace in `data`, left to right, not overlapping."""

    def hold(self, data: bytes) -> int:
        """Where the tail of `data` that could still grow into a span begins (len(data): none)."""


def _rewrite(rewriter: _Rewriter, data: bytes, stop: int) -> tuple[list[bytes], int]:
    """Pieces spelling out `data[:end]` with every span that starts before `stop` replaced,
    and `end`, where the last of them ends (0 if none)."""
    pieces: list[bytes] = []
    end = 0
    for start, span_end, replacement in rewriter.spans(data):
        if start >= stop:
            break
        pieces += (data[end:start], replacement)
        end = span_end
    return pieces, end


def _rewrite_all(rewriter: _Rewriter, data: bytes) -> bytes:
    """`data` rewritten; `data` itself when nothing matched, so callers can tell by identity."""
    pieces, end = _rewrite(rewriter, data, len(data))
    return b"".join([*pieces, data[end:]]) if pieces else data


def _on_text(rewrite: Callable[[bytes], bytes], text: str) -> str:
    data = text.encode("utf-8", "surrogateescape")
    out = rewrite(data)
    return text if out is data else out.decode("utf-8", "surrogateescape")


class _Stream:
    """Chunk-by-chunk rewriting whose output equals the one-shot rewrite of the whole stream.

    feed() returns what is decided and holds back only the tail that could still grow into a
    span (b"" when that is all there is); flush() returns the rest at the end of the stream."""

    def __init__(self, rewriter: _Rewriter) -> None:
        self._rewriter = rewriter
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        hold = self._rewriter.hold(data)
        pieces, end = _rewrite(self._rewriter, data, hold)
        cut = max(hold, end)
        self._pending = data[cut:]
        return b"".join([*pieces, data[end:cut]]) if pieces else data[:cut]

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return _rewrite_all(self._rewriter, rest)


# --- redacting values ----------------------------------------------------------------------

# Prefix length under which `Redactor.hold` looks up the forms a tail could continue.
_HEAD = 8


class Redactor:
    """Shows the values a request used as their placeholders, in every form of `value_forms`.

    Built from {placeholder: value}, e.g. {b"<<vault:token>>": "s3cret"}, or (placeholder,
    value) pairs where a placeholder had several values (a key rotated while a WebSocket was
    open). One left-to-right pass: at each position the longest form wins (a form containing
    another is replaced whole) and a written placeholder is never scanned again. A form two
    values share shows the first one's placeholder. Works on bytes.

    Cost: one scan per anchor (about two per value: its text forms share a run of unescaped
    characters, its base64 forms another), then only a look at where an anchor was found."""

    def __init__(
        self, values: Mapping[bytes, str | bytes] | Iterable[tuple[bytes, str | bytes]], exact: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """`exact`: (placeholder, form) pairs found only as written: forms already chosen (a
        signature's other encodings), whose every escaping would cost more than it finds."""
        self._placeholders: dict[bytes, bytes] = {}
        # anchor -> (form, where the anchor first occurs in it)
        self._anchors: dict[bytes, set[tuple[bytes, int]]] = {}
        pairs = values.items() if isinstance(values, Mapping) else values
        families = [(placeholder, _families(value)) for placeholder, value in pairs]
        families += [(placeholder, ((form, frozenset({form})),)) for placeholder, form in exact if form]
        for placeholder, groups in families:
            for anchor, forms in groups:
                self._anchors.setdefault(anchor, set()).update((form, form.find(anchor)) for form in forms)
                for form in forms:
                    self._placeholders.setdefault(form, placeholder)
        self._longest = max(map(len, self._placeholders), default=0)
        # Every form under each of its first 1.._HEAD bytes, for `hold`.
        self._by_head: dict[bytes, list[bytes]] = {}
        for form in self._placeholders:
            for n in range(1, min(len(form), _HEAD) + 1):
                self._by_head.setdefault(form[:n], []).append(form)

    def _occurrences(self, data: bytes) -> Iterator[tuple[int, int]]:
        """(start, -length) of every occurrence of every form, overlapping ones included."""
        for anchor, forms in self._anchors.items():
            at = data.find(anchor)
            while at >= 0:
                for form, offset in forms:
                    start = at - offset
                    if start >= 0 and data.startswith(form, start):
                        yield start, -len(form)
                at = data.find(anchor, at + 1)

    def spans(self, data: bytes) -> Iterator[_Span]:
        end = 0
        for start, negative_length in sorted(self._occurrences(data)):
            if start >= end:
                end = start - negative_length
                yield start, end, self._placeholders[data[start:end]]

    def hold(self, data: bytes) -> int:
        for start in range(max(0, len(data) - self._longest + 1), len(data)):
            tail = data[start:]
            if any(
                len(form) > len(tail) and form.startswith(tail)
                for form in self._by_head.get(tail[:_HEAD], ())
            ):
                return start
        return len(data)

    def redact(self, data: bytes) -> bytes:
        """`data` with every form of every value replaced; `data` itself when none occurs.
        Nearly all data echoes no value: a look for each anchor tells, at a third of the cost
        of the spans' machinery on a short response (the look stops at the first anchor found)."""
        for anchor in self._anchors:
            if data.find(anchor) >= 0:
                return _rewrite_all(self, data)
        return data


class StreamRedactor(_Stream):
    """`Redactor.redact` for a streamed body: a form split across chunks is still replaced.
    Holds back at most the longest form's length - 1 bytes, and only while they could still
    grow into a form."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__(redactor)


# --- the spellings of a placeholder opener -------------------------------------------------
#
# A client may decode what a server sent before sending it back: a JSON parser decodes
# `\u003c`, an HTML parser `&lt;`, requests normalises `%76` to `v` (and `%3%43` to `%3C`).
# So an opener is two brackets (`<`, or the proxy's percent form `%3C` in either case) and
# the word `vault`, each character as itself or escaped by up to two decoding steps in any
# mix of percent, HTML and JSON escapes (`%253C`, `&amp;lt;`, `\\u003c`, `&#37;3C`,
# `\u0026#60;`, `%7%36`...). That language is built as a regular expression tree below, from
# which come the scanning regex, the fast pre-check and the stream's hold-back test.


@dataclass(frozen=True, eq=False)
class _Node:
    """A regular expression over bytes. Interned by `_node`: identity is equality, which keeps
    the cached derivatives cheap to look up."""

    kind: str  # "lit" | "seq" | "alt" | "star" | "opt"
    chars: bytes = b""  # lit: the bytes it matches, any one of them
    parts: tuple[_Node, ...] = ()  # seq, alt: the children; star, opt: the one child


_INTERNED: dict[tuple[str, bytes, tuple[_Node, ...]], _Node] = {}


def _node(kind: str, chars: bytes = b"", parts: tuple[_Node, ...] = ()) -> _Node:
    key = (kind, chars, parts)
    if key not in _INTERNED:
        _INTERNED[key] = _Node(kind, chars, parts)
    return _INTERNED[key]


def _lit(chars: str) -> _Node:
    return _node("lit", chars.encode("ascii"))


def _seq(*parts: _Node | None) -> _Node | None:
    """Concatenation; None (matches nothing) when a part is None."""
    flat: list[_Node] = []
    for part in parts:
        if part is None:
            return None
        flat += part.parts if part.kind == "seq" else (part,)
    return flat[0] if len(flat) == 1 else _node("seq", parts=tuple(flat))


_EMPTY = _node("seq")


def _alt(*parts: _Node | None) -> _Node | None:
    """Alternation without repeats; None when no part matches anything."""
    flat: dict[_Node, None] = {}
    for part in parts:
        if part is not None:
            flat.update(dict.fromkeys(part.parts if part.kind == "alt" else (part,)))
    if len(flat) <= 1:
        return next(iter(flat), None)
    return _node("alt", parts=tuple(flat))


def _some(node: _Node | None) -> _Node:
    """For the combinations that cannot come out empty."""
    assert node is not None
    return node


def _repeat(node: _Node, quantifier: str) -> _Node:
    return node if not quantifier else _node("star" if quantifier == "*" else "opt", parts=(node,))


@functools.cache
def _nullable(node: _Node) -> bool:
    if node.kind == "lit":
        return False
    if node.kind == "seq":
        return all(map(_nullable, node.parts))
    if node.kind == "alt":
        return any(map(_nullable, node.parts))
    return True


@functools.cache
def _first(node: _Node) -> frozenset[int]:
    """The bytes a match can start with."""
    if node.kind == "lit":
        return frozenset(node.chars)
    if node.kind != "seq":
        return frozenset().union(*map(_first, node.parts))
    out: frozenset[int] = frozenset()
    for part in node.parts:
        out |= _first(part)
        if not _nullable(part):
            break
    return out


@functools.cache
def _alphabet(node: _Node) -> frozenset[int]:
    """Every byte a match can hold."""
    return frozenset(node.chars).union(*map(_alphabet, node.parts))


@functools.cache
def _deriv(node: _Node, byte: int) -> _Node | None:
    """What must follow `byte` for `node` to match (its Brzozowski derivative); None if nothing."""
    if node.kind == "lit":
        return _EMPTY if byte in node.chars else None
    if node.kind == "alt":
        return _alt(*(_deriv(part, byte) for part in node.parts))
    if node.kind == "opt":
        return _deriv(node.parts[0], byte)
    if node.kind == "star":
        return _seq(_deriv(node.parts[0], byte), node)
    if not node.parts:
        return None
    head, rest = node.parts[0], _seq(_EMPTY, *node.parts[1:])
    return _alt(_seq(_deriv(head, byte), rest), _deriv(rest, byte) if _nullable(head) else None)


@functools.cache
def _render(node: _Node) -> bytes:
    if node.kind == "lit":
        escaped = [re.escape(bytes([c])) for c in node.chars]
        return escaped[0] if len(escaped) == 1 else b"[" + b"".join(escaped) + b"]"
    if node.kind == "seq":
        return b"".join(map(_render, node.parts))
    if node.kind == "alt":
        return b"(?:" + b"|".join(map(_render, node.parts)) + b")"
    inner = _render(node.parts[0])
    if node.parts[0].kind == "seq":
        inner = b"(?:" + inner + b")"
    return inner + (b"*" if node.kind == "star" else b"?")


def _byte(byte: int) -> _Node:
    return _node("lit", bytes([byte]))


def _dispatch(node: _Node, depth: int) -> _Node:
    """`node` as one branch per first byte, `depth` bytes deep: `re` leaves a wrong branch
    after one byte instead of trying every alternative below it."""
    if depth == 0:
        return node
    branches = (_seq(_byte(b), _dispatch(_some(_deriv(node, b)), depth - 1)) for b in sorted(_first(node)))
    return _some(_alt(*branches, _EMPTY if _nullable(node) else None))


# Named references for the characters escape syntax uses; `;` optional as parsers allow.
_NAMED = {
    "<": ("lt", "LT"),
    "&": ("amp", "AMP"),
    "%": ("percnt",),
    "#": ("num",),
    ";": ("semi",),
    "\\": ("bsol",),
}

_Atom = tuple[str, str]  # (characters, any one of which fits; quantifier "", "*" or "?")


def _escapes(char: str) -> list[list[_Atom]]:
    """How one decoding step may spell `char`: percent, HTML decimal or hex (zero-padded at
    will, `;` optional), HTML named, JSON `\\u` or short escape; hex digits in either case."""
    code = ord(char)
    hex_digits = [(d + d.upper() if d.isalpha() else d, "") for d in f"{code:02x}"]
    end = [(";", "?")]
    spellings = [
        [("%", ""), *hex_digits],
        [("&", ""), ("#", ""), ("0", "*"), *((d, "") for d in str(code)), *end],
        [("&", ""), ("#", ""), ("xX", ""), ("0", "*"), *hex_digits, *end],
        [("\\", ""), ("u", ""), ("0", ""), ("0", ""), *hex_digits],
    ]
    spellings += [[("&", ""), *((c, "") for c in name), *end] for name in _NAMED.get(char, ())]
    if char in '\\"/':
        spellings.append([("\\", ""), (char, "")])
    return spellings


@functools.cache
def _escaped(chars: str, depth: int) -> _Node:
    """Any of `chars` escaped by one step, whose own characters may be escaped by `depth - 1`
    more steps."""
    spellings = (
        _seq(*(_repeat(_spell(c, depth - 1), q) for c, q in spelling))
        for char in chars
        for spelling in _escapes(char)
    )
    return _some(_alt(*spellings))


@functools.cache
def _spell(chars: str, depth: int) -> _Node:
    """Any of `chars`, as itself or escaped by up to `depth` decoding steps."""
    return _some(_alt(_lit(chars), _escaped(chars, depth) if depth else None))


_BRACKET = _some(_alt(_spell("<", 2), _seq(_spell("%", 2), _spell("3", 2), _spell("cC", 2))))
_WORD = _some(_seq(*(_spell(c, 2) for c in "vault")))
_OPENER = _some(_seq(_BRACKET, _BRACKET, _WORD))


def _escaped_letter() -> _Node:
    """How every spelling of a letter of `vault` other than the letter itself begins: the
    atoms of one escape as they are up to the first escaped one, and that one escaped (when it
    is the first, the whole spelling: an escaped `%` or `&` alone is common). An escaped
    optional `;` follows a complete escape already."""
    branches: list[_Node | None] = []
    for letter in "vault":
        for spelling in _escapes(letter):
            as_is = [_repeat(_lit(c), q) for c, q in spelling]
            branches.append(_seq(*as_is))
            for i, (chars, quantifier) in enumerate(spelling):
                if quantifier == "?":
                    continue
                head = as_is[: i + 1] if quantifier == "*" else as_is[:i]
                tail = [_repeat(_spell(c, 1), q) for c, q in spelling[1:]] if i == 0 else []
                branches.append(_seq(*head, _escaped(chars, 1), *tail))
    return _some(_alt(*branches))


@functools.cache
def _opener_regex() -> re.Pattern[bytes]:
    """The two brackets of an opener, when its word follows. Compiled when first needed (a
    fifth of a second): only data that `might_hold_placeholder` needs it."""
    brackets = _render(_dispatch(_BRACKET, 1))
    return re.compile(brackets + brackets + b"(?=" + _render(_WORD) + b")")


def _escaped_letter_patterns() -> tuple[tuple[bytes, bytes], ...]:
    """One regex per first byte (`%`, `&`, `\\`), with that byte: `re` scans for a literal
    first byte several times faster than for a set of them, and `find` (memchr) for the byte
    alone several times faster still, so the regex only runs where the byte occurs."""
    node = _escaped_letter()
    return tuple((bytes([b]), _render(_some(_seq(_byte(b), _dispatch(_some(_deriv(node, b)), 3))))) for b in sorted(_first(node)))


@functools.cache
def _escaped_letter_regex(first: bytes) -> re.Pattern[bytes]:
    """Compiled when first needed: the three take a fifth of a second to compile, and most
    processes (the CLI, a proxy whose responses hold no `%`, `&` or `\\` near `ault`) never
    need them."""
    return re.compile(_ESCAPED_LETTER_PATTERNS[first])


# --- neutralising openers ------------------------------------------------------------------

BLOCKED = b"blocked-"
"""Written between an opener's brackets and its word: `<<vault:tok>>` becomes
`<<blocked-vault:tok>>`, `%3C%3Cvault%3A` becomes `%3C%3Cblocked-vault%3A`. ASCII without
quotes, spaces or backslashes, it fits a URL, a header, JSON and HTML, escapes nothing, and
no decoding turns `-vault` back into a placeholder; neutralising again changes nothing."""

_ESCAPED_LETTER_PATTERNS = dict(_escaped_letter_patterns())
_OPENER_START = re.compile(b"[" + re.escape(bytes(sorted(_first(_OPENER)))) + b"]")
_OPENER_BYTES = bytes(sorted(_alphabet(_OPENER)))
# The longest unfinished opener a stream holds back (unpadded, one is at most 420 bytes).
_HOLD_MAX = 1 << 16


def might_hold_placeholder(data: bytes) -> bool:
    """The fast pre-check: False means `data` holds no opener in any spelling `neutralise`
    knows, so it can go through untouched. It copies nothing.

    Every such opener holds the word `vault` as it is, or a letter of it escaped. No encoder
    escapes letters or digits, but clients decode them (requests turns `%76` into `v` and
    `%3%43` into `%3C`; JSON parsers `\\u0076`), so spellings like `%76ault`, `\\u0076ault`,
    `&#118;ault`, `%7%36ault` or `%2576ault` are looked for too: three more scans, each
    only where its `%`, `&` or `\\` occurs (memchr first)."""
    # `find`, not `in`: `b"vault" in data` first tries it as a byte value and clears the TypeError.
    if data.find(b"vault") >= 0:
        return True
    for first in _ESCAPED_LETTER_PATTERNS:  # a loop: `any` over a generator costs twice this on every response
        if data.find(first) >= 0 and _escaped_letter_regex(first).search(data):
            return True
    return False


class _Neutraliser:
    def spans(self, data: bytes) -> Iterator[_Span]:
        if might_hold_placeholder(data):
            for match in _opener_regex().finditer(data):
                yield match.start(), match.end(), match[0] + BLOCKED

    def hold(self, data: bytes) -> int:
        # An unfinished opener reaches the end of `data` on bytes an opener can hold.
        run = len(data.rstrip(_OPENER_BYTES))
        for start in _OPENER_START.finditer(data, run):
            if _may_grow(data, start.start()):
                return start.start()
        return len(data)


def _may_grow(data: bytes, start: int) -> bool:
    """Whether `data[start:]` is an unfinished opener: what follows could still change it."""
    node = _OPENER
    for byte in memoryview(data)[start:]:
        following = _deriv(node, byte)
        if following is None:
            return False
        node = following
    return bool(_first(node))


_NEUTRALISER = _Neutraliser()


def neutralise(data: bytes) -> bytes:
    """`data` with `BLOCKED` after the brackets of every placeholder opener, however spelled
    (see above); `data` itself when there is none (every response: the pre-check first)."""
    return _rewrite_all(_NEUTRALISER, data) if might_hold_placeholder(data) else data


def neutralise_text(text: str) -> str:
    """`neutralise` for text a peer sent, held as str (UTF-8, surrogateescape, as mitmproxy
    shows header values): a token endpoint's error, say (vaultcore.peertext)."""
    return _on_text(neutralise, text)


class StreamNeutraliser(_Stream):
    """`neutralise` for a streamed body: an opener split across chunks is still broken. Holds
    back only a tail that could still grow into an opener. One that is still unfinished after
    64 KiB (only absurd zero padding makes one that long) is let out with `BLOCKED` after it,
    which breaks it, rather than held without bound."""

    def __init__(self) -> None:
        super().__init__(_NEUTRALISER)

    def feed(self, chunk: bytes) -> bytes:
        out = super().feed(chunk)
        if len(self._pending) <= _HOLD_MAX:
            return out
        out += self._pending + BLOCKED
        self._pending = b""
        return out
