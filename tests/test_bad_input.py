"""Bad input: the placeholder engine never breaks, and the proxy stays up.

- hypothesis fuzzes `substitute` and `StreamSubstituter` with random text and bytes around
  (near-)placeholders and with hostile values: nothing but SubstitutionError escapes, a lookup
  that knows nothing changes nothing, and the result is all-or-nothing, equal to an oracle
  written here from the placeholder grammar (README, "Placeholders") (where only the literal form counts: not URL, form);
- raw sockets send a real mitmdump malformed requests (broken gzip, invalid UTF-8, huge heads
  and bodies around mitmproxy's limits, nested and unterminated placeholders, 10,000
  placeholders with and without a refused one): each gets an answer (or a close, for protocol
  errors), and a normal request succeeds after each.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import re
import socket
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.net import LOOPBACK
from tests.support.proxy import MitmdumpProcess
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordedRequest, RecordingUpstream
from vaultcore.placeholders import PERCENT_CONTEXTS, Context, Lookup, StreamSubstituter, SubstitutionError, substitute
from vaultcore.signing import parse_rules
from vaultcore.tokens import parse_sources
from vaultcore.vault import Vault

WAIT = 60.0

# --- the engine under hypothesis ---------------------------------------------------------------

# An oracle for the literal form, straight from the grammar: <<vault:KEY>> or <<vault:KEY|filter>>.
ORACLE = re.compile(r"<<vault:([A-Za-z0-9_.\-/]{1,256})(?:\|(base64|urlencode|raw))?>>")
KEYS = ["a", "db.user", "x/y-z_0", "k" * 256, "k" * 257, "refused", "missing"]
FRAGMENTS = [
    "<<vault:", ">>", "<<", ">", "<", "|", "|base64", "|urlencode", "|raw", "|bogus", "vault:", ":",
    "%3C%3Cvault:", "%3c%3cvault%3A", "%3E%3E", "%7C", " ", "\r\n", "\x00", "é", "\\", '"', *KEYS,
]
BYTE_FRAGMENTS = [f.encode() for f in FRAGMENTS] + [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80<<vault:"]


# Whole placeholders and near-misses, literal and percent-encoded, so that most inputs hold some.
placeholder_like = st.builds(
    "{}{}{}{}".format,
    st.sampled_from(["<<vault:", "%3C%3Cvault:", "%3c%3cvault%3A", "<<vault: ", "<vault:"]),
    st.sampled_from(KEYS) | st.text(max_size=4),
    st.sampled_from(["", "|base64", "|urlencode", "|raw", "|bogus", "|", "%7Cbase64"]),
    st.sampled_from([">>", ">>", "%3E%3E", ">", "", ">>>"]),
)

placeholders = st.builds("<<vault:{}{}>>".format, st.sampled_from(KEYS), st.sampled_from(["", "|base64", "|urlencode", "|raw"]))


def fuzz_text() -> st.SearchStrategy[str]:
    return st.lists(placeholders | placeholder_like | st.sampled_from(FRAGMENTS) | st.text(max_size=6), max_size=30).map("".join)


def fuzz_bytes() -> st.SearchStrategy[bytes]:
    text = (placeholders | placeholder_like).map(lambda t: t.encode("utf-8", "surrogatepass"))
    return st.lists(text | st.sampled_from(BYTE_FRAGMENTS) | st.binary(max_size=6), max_size=30).map(b"".join)


hostile_values = st.one_of(
    st.text(max_size=12), st.binary(max_size=12), st.sampled_from(["\ud800", "a\r\nb", "\x00", "<<vault:a>>", "%3C%3Cvault:a%3E%3E"]),
)


def hostile_lookup(values: dict[str, str | bytes | None]) -> Lookup:
    """`values`, and a refusal for the key "refused"."""

    def lookup(key: str) -> str | bytes | None:
        if key == "refused":
            raise SubstitutionError("host_not_allowed", key, f"{key} may not go there")
        return values.get(key)

    return lookup


def oracle_value(key: str, flt: str | None) -> str:
    """A key's value (after its filter) for the oracle: "val" and three digits, so that the
    value and its base64 are letters and digits, which no context escapes."""
    value = f"val{zlib.crc32(key.encode()) % 1000:03d}"
    if flt == "base64":
        return base64.b64encode(value.encode()).decode()
    return value


@dataclass(frozen=True)
class Outcome:
    result: str | bytes | None
    refused: bool


def run_substitute(data: str | bytes, context: Context, lookup: Lookup) -> Outcome:
    try:
        return Outcome(substitute(data, context, lookup)[0], False)
    except SubstitutionError:
        return Outcome(None, True)


def check_engine(data: str | bytes, context: Context, values: dict[str, str | bytes | None], cuts: list[int]) -> None:
    """The three properties of the module docstring for one input."""
    # 1. Hostile values: only SubstitutionError may escape, one-shot and streamed alike.
    outcome = run_substitute(data, context, hostile_lookup(values))
    if isinstance(data, bytes):
        stream = StreamSubstituter(context, hostile_lookup(values))
        pieces, start = [], 0
        try:
            for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
                pieces.append(stream.feed(data[start:cut]))
                start = cut
            pieces.append(stream.flush())
            assert not outcome.refused and b"".join(pieces) == outcome.result
        except SubstitutionError:
            assert outcome.refused

    # 2. A lookup that knows nothing changes nothing.
    assert substitute(data, context, lambda key: None) == (data, [])

    # 3. All or nothing, as the oracle says (literal form only; values are plain tokens).
    if context in PERCENT_CONTEXTS:
        return
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    refused_somewhere = any(m[1] == "refused" for m in ORACLE.finditer(text))

    def token_lookup(key: str) -> str:
        if key == "refused":
            raise SubstitutionError("host_not_allowed", key, "no")
        return oracle_value(key, None)

    outcome = run_substitute(data, context, token_lookup)
    assert outcome.refused == refused_somewhere
    if not refused_somewhere:
        expected = ORACLE.sub(lambda m: oracle_value(m[1], m[2]), text)
        assert outcome.result == (expected.encode("latin-1") if isinstance(data, bytes) else expected)


engine_inputs = {
    "data": fuzz_text() | fuzz_bytes(),
    "context": st.sampled_from(Context),
    "values": st.dictionaries(st.sampled_from(KEYS), st.none() | hostile_values, max_size=len(KEYS)),
    "cuts": st.lists(st.integers(min_value=0, max_value=400), max_size=6),
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**engine_inputs)
def test_engine_survives_fuzzing(data: str | bytes, context: Context, values: dict[str, str | bytes | None], cuts: list[int]) -> None:
    check_engine(data, context, values, cuts)


@pytest.mark.stress
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**engine_inputs)
def test_engine_survives_long_fuzzing(data: str | bytes, context: Context, values: dict[str, str | bytes | None], cuts: list[int]) -> None:
    check_engine(data, context, values, cuts)


# --- malformed requests through the real proxy ---------------------------------------------------

TOKEN = f"FAKE-bad-input-{uuid.uuid4().hex}"
ALIAS_VALUE = "inner"  # the value of `alias` is itself a key name...
INNER = f"FAKE-inner-{uuid.uuid4().hex}"  # ...whose value must never be pulled in by it
MANY = {f"p{i}": f"FAKE-p{i}-{uuid.uuid4().hex[:8]}" for i in range(100)}
VALUES = {"tok": TOKEN, "inner": INNER, **MANY}  # what must not show where it does not belong
STREAM_LIMIT = 1024 * 1024  # stream_large_bodies: bigger bodies are substituted chunk by chunk
BODY_LIMIT = 4 * 1024 * 1024  # body_size_limit: bigger bodies are refused by mitmproxy


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial) -> Iterator[MitmdumpProcess]:
    """One proxy for the module (these tests prove it survives what the others sent)."""
    home = tmp_path_factory.mktemp("bad-input") / "vault-home"
    vault = Vault(home)
    for key, value in {**VALUES, "alias": ALIAS_VALUE}.items():
        vault.set(key, value, hosts=[LOOPBACK])
    process = MitmdumpProcess(
        tmp_path_factory.mktemp("bad-input-mitmdump"), upstream_ca=tls_material.ca_cert,
        env={"VAULTPROXY_HOME": str(home)},
        options={"stream_large_bodies": "1m", "body_size_limit": "4m"},
    )
    with process:
        yield process


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def raw_request(target: bytes, upstream: RecordingUpstream, *, method: bytes = b"POST",
                headers: Sequence[tuple[bytes, bytes]] = (), body: bytes | None = None) -> bytes:
    """An absolute-form HTTP/1.1 request to `upstream`, exactly these bytes (Content-Length added for a body)."""
    lines = [method + b" " + f"http://{LOOPBACK}:{upstream.port}".encode() + target + b" HTTP/1.1",
             f"Host: {LOOPBACK}:{upstream.port}".encode(), b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if body is not None:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def exchange(proxy: MitmdumpProcess, data: bytes) -> Answer | None:
    """Send raw bytes to the proxy; its response, or None when it closed without one."""
    with socket.create_connection((LOOPBACK, proxy.port), timeout=WAIT) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # it may answer and close before reading everything (413): read what it said
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            return Answer(response.status, response.headers, response.read())
        except (http.client.RemoteDisconnected, ConnectionError):
            return None


def assert_still_serving(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    """A normal request with a placeholder still resolves, and mitmdump has printed no value."""
    upstream.clear()
    answer = exchange(proxy, raw_request(b"/normal", upstream, method=b"GET", headers=[(b"X-Tok", b"<<vault:tok>>")]))
    assert answer is not None and answer.status == 200
    (received,) = upstream.wait_for(1)
    assert received.header("x-tok") == TOKEN
    assert proxy.is_running()
    leaked = values_in(proxy.output().encode())
    assert not leaked, f"the values of {leaked} reached mitmdump's output"


def values_in(data: bytes) -> list[str]:
    """The keys whose values occur in `data`. Callers assign the result before asserting on
    it: pytest would print the arguments of a call made inside an assert, values and all."""
    return [key for key, value in VALUES.items() if value.encode() in data]


def sent_upstream(upstream: RecordingUpstream) -> RecordedRequest:
    """The one request the upstream got."""
    (received,) = upstream.wait_for(1)
    return received


def assert_refused(answer: Answer | None, status: int, code: str, upstream: RecordingUpstream) -> None:
    assert answer is not None and answer.status == status, answer
    assert answer.headers["X-Vaultproxy-Error"] == code
    sent = len(upstream.all_bytes())
    assert sent == 0, "a refused request reached the upstream"
    leaked = values_in(answer.body)
    assert not leaked, f"the refusal shows the values of {leaked}"


def test_broken_gzip_without_placeholder_passes_through(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    body = b"\x1f\x8b\x08\x00" + b"this is not deflate data" + gzip.compress(b"x")[:5]
    answer = exchange(proxy, raw_request(b"/gz", upstream, headers=[(b"Content-Encoding", b"gzip")], body=body))
    assert answer is not None and answer.status == 200
    assert sent_upstream(upstream).body == body
    assert_still_serving(proxy, upstream)


@pytest.mark.parametrize("body", [b"<<vault:tok>> not gzipped", gzip.compress(b"<<vault:tok>>" * 50)[:-30] + b"<<vault:tok>>"],
                         ids=["not-gzip", "truncated-gzip"])
def test_broken_gzip_with_placeholder_in_the_clear_is_refused(
    proxy: MitmdumpProcess, upstream: RecordingUpstream, body: bytes
) -> None:
    answer = exchange(proxy, raw_request(b"/gz", upstream, headers=[(b"Content-Encoding", b"gzip")], body=body))
    assert_refused(answer, 400, "undecodable_body", upstream)
    assert_still_serving(proxy, upstream)


@pytest.mark.parametrize("target", [b"/\xff\xfe<<vault:tok>>", b"/?q=\xc3<<vault:tok>>\xed\xa0\x80"], ids=["path", "query"])
def test_invalid_utf8_in_the_request_line_is_a_protocol_error(
    proxy: MitmdumpProcess, upstream: RecordingUpstream, target: bytes
) -> None:
    """mitmproxy itself answers 400 to non-ASCII bytes in the request line: nothing goes upstream."""
    answer = exchange(proxy, raw_request(target, upstream, method=b"GET"))
    assert answer is None or answer.status == 400
    sent = len(upstream.all_bytes())
    assert sent == 0, "a bad request line reached the upstream"
    assert_still_serving(proxy, upstream)


def test_invalid_utf8_percent_encoded_in_url_and_raw_in_headers_and_body(
    proxy: MitmdumpProcess, upstream: RecordingUpstream
) -> None:
    request = raw_request(
        b"/%FF%FE<<vault:tok>>?q=%C3<<vault:tok>>%ED%A0%80", upstream,
        headers=[(b"X-Bin", b"\xff<<vault:tok>>\xfe"), (b"Content-Type", b"text/plain")],
        body=b"\x80\xff<<vault:tok>>\xc3",
    )
    answer = exchange(proxy, request)
    assert answer is not None and answer.status == 200
    received = sent_upstream(upstream)
    token = TOKEN.encode()
    assert received.target == f"/%FF%FE{TOKEN}?q=%C3{TOKEN}%ED%A0%80"
    assert dict(received.headers)[b"X-Bin"] == b"\xff" + token + b"\xfe"
    assert received.body == b"\x80\xff" + token + b"\xc3"
    assert_still_serving(proxy, upstream)


def test_invalid_utf8_in_a_header_name_is_a_protocol_error(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    answer = exchange(proxy, raw_request(b"/", upstream, headers=[(b"X-\xff\xfe", b"<<vault:tok>>")], body=b""))
    assert answer is None or answer.status == 400
    sent = len(upstream.all_bytes())
    assert sent == 0, "a bad header name reached the upstream"
    assert_still_serving(proxy, upstream)


def test_invalid_utf8_in_a_json_body(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    body = b'{"k": "\xff<<vault:tok>>"}'
    answer = exchange(proxy, raw_request(b"/", upstream, headers=[(b"Content-Type", b"application/json")], body=body))
    assert answer is not None and answer.status == 200
    assert sent_upstream(upstream).body == b'{"k": "\xff' + TOKEN.encode() + b'"}'
    assert_still_serving(proxy, upstream)


def test_huge_header_value_and_many_headers_resolve(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    filler = b"h" * (200 * 1024)  # mitmproxy has no head size limit; the upstream reads lines up to 256 KiB
    headers = [(b"X-Huge", b"<<vault:tok>>" + filler + b"<<vault:tok>>")]
    headers += [(f"X-Many-{i}".encode(), f"<<vault:p{i % 100}>>".encode()) for i in range(2000)]
    answer = exchange(proxy, raw_request(b"/", upstream, method=b"GET", headers=headers))
    assert answer is not None and answer.status == 200
    received = dict(sent_upstream(upstream).headers)
    assert received[b"X-Huge"] == TOKEN.encode() + filler + TOKEN.encode()
    assert [received[f"X-Many-{i}".encode()] for i in range(2000)] == [MANY[f"p{i % 100}"].encode() for i in range(2000)]
    assert_still_serving(proxy, upstream)


def test_head_bigger_than_the_upstream_accepts(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    answer = exchange(proxy, raw_request(b"/", upstream, method=b"GET", headers=[(b"X-Huge", b"<<vault:tok>>" + b"h" * (4 * 1024 * 1024))]))
    assert answer is None or answer.status >= 400
    assert_still_serving(proxy, upstream)


@pytest.mark.parametrize(
    "size", [STREAM_LIMIT, STREAM_LIMIT + 1, BODY_LIMIT], ids=["buffered-at-stream-limit", "streamed-above-it", "streamed-at-body-limit"]
)
def test_bodies_around_mitmproxy_limits_resolve(proxy: MitmdumpProcess, upstream: RecordingUpstream, size: int) -> None:
    head, tail = b"<<vault:tok>>;", b";<<vault:tok>>"
    body = head + b"b" * (size - len(head) - len(tail)) + tail
    answer = exchange(proxy, raw_request(b"/", upstream, headers=[(b"Content-Type", b"text/plain")], body=body))
    assert answer is not None and answer.status == 200
    expected = TOKEN.encode() + b";" + b"b" * (size - len(head) - len(tail)) + b";" + TOKEN.encode()
    assert sent_upstream(upstream).body == expected
    assert_still_serving(proxy, upstream)


def test_body_above_body_size_limit_is_refused(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    body = b"<<vault:tok>>" + b"b" * BODY_LIMIT
    answer = exchange(proxy, raw_request(b"/", upstream, headers=[(b"Content-Type", b"text/plain")], body=body))
    assert answer is None or answer.status == 413
    sent = values_in(upstream.all_bytes())
    assert not sent, "a refused body reached the upstream"
    assert_still_serving(proxy, upstream)


def test_nested_placeholder_resolves_the_inner_one_only(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    answer = exchange(proxy, raw_request(b"/", upstream, headers=[(b"X-Nested", b"<<vault:<<vault:alias>>>>")],
                                         body=b"<<vault:<<vault:alias>>>>"))
    assert answer is not None and answer.status == 200
    received = sent_upstream(upstream)
    assert received.header("x-nested") == f"<<vault:{ALIAS_VALUE}>>"
    assert received.body == f"<<vault:{ALIAS_VALUE}>>".encode()
    sent = values_in(upstream.all_bytes())
    assert not sent, f"the values of {sent} went out"
    assert_still_serving(proxy, upstream)


def test_unterminated_placeholder_passes_through_literally(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    answer = exchange(proxy, raw_request(b"/?q=<<vault:tok", upstream, headers=[(b"X-Open", b"<<vault:tok")],
                                         body=b"<<vault:tok <<vault:tok|base64 <<vault:tok>"))
    assert answer is not None and answer.status == 200
    received = sent_upstream(upstream)
    assert received.target == "/?q=<<vault:tok"
    assert received.header("x-open") == "<<vault:tok"
    assert received.body == b"<<vault:tok <<vault:tok|base64 <<vault:tok>"
    assert_still_serving(proxy, upstream)


def many_placeholders(count: int) -> tuple[bytes, bytes]:
    """A body with `count` placeholders (100 keys in turn) and the body they resolve to."""
    keys = [f"p{i % 100}" for i in range(count)]
    body = "".join(f"{i}=<<vault:{key}>>\n" for i, key in enumerate(keys))
    expected = "".join(f"{i}={MANY[key]}\n" for i, key in enumerate(keys))
    return body.encode(), expected.encode()


def test_ten_thousand_placeholders_in_one_body(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    body, expected = many_placeholders(10_000)
    assert len(body) < STREAM_LIMIT  # buffered: resolved in one piece
    answer = exchange(proxy, raw_request(b"/", upstream, headers=[(b"Content-Type", b"text/plain")], body=body))
    assert answer is not None and answer.status == 200
    assert sent_upstream(upstream).body == expected
    assert_still_serving(proxy, upstream)


def test_ten_thousand_placeholders_with_one_refused_sends_nothing(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    body, _ = many_placeholders(10_000)
    body = body.replace(b"5000=<<vault:p0>>", b"5000=<<vault:not-in-the-vault>>")
    answer = exchange(proxy, raw_request(b"/", upstream, headers=[(b"Content-Type", b"text/plain")], body=body))
    assert_refused(answer, 400, "unknown_key", upstream)
    assert b"not-in-the-vault" in answer.body
    assert_still_serving(proxy, upstream)


@pytest.mark.parametrize("garbage", [
    b"\x00\xff" * 100 + b"\r\n\r\n",
    b"GET <<vault:tok>>\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"CONNECT <<vault:tok>>:443 HTTP/1.1\r\n\r\n",
    b"X-Tok: <<vault:tok>>\r\n\r\n",
], ids=["binary", "no-version", "bad-version", "connect-to-a-placeholder", "headers-only"])
def test_garbage_instead_of_a_request(proxy: MitmdumpProcess, upstream: RecordingUpstream, garbage: bytes) -> None:
    answer = exchange(proxy, garbage)
    assert answer is None or answer.status >= 400
    assert_still_serving(proxy, upstream)


@pytest.mark.parametrize("framing", [
    b"Content-Length: -5\r\n\r\n<<vault:tok>>",
    b"Content-Length: 1, 2\r\n\r\n<<vault:tok>>",
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n<<vault:tok>>\r\n0\r\n\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 13\r\n\r\n<<vault:tok>>",
], ids=["negative-length", "two-lengths", "bad-chunk-size", "chunked-and-length"])
def test_broken_body_framing(proxy: MitmdumpProcess, upstream: RecordingUpstream, framing: bytes) -> None:
    head = raw_request(b"/framing", upstream).removesuffix(b"\r\n")
    answer = exchange(proxy, head + framing)
    assert answer is None or answer.status >= 400
    sent = len(upstream.all_bytes())
    assert sent == 0, "a request with broken framing reached the upstream"
    assert_still_serving(proxy, upstream)


def test_stalled_clients_do_not_block_others(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    """Connections that stop mid-request (a head without its end, a body cut short, stray
    CRLFs that mitmproxy waits on forever) hold nothing up; closing them sends nothing."""
    partial_head = raw_request(b"/stalled", upstream, headers=[(b"X-Tok", b"<<vault:tok>>")]).removesuffix(b"\r\n")
    short_body = raw_request(b"/stalled", upstream, body=b"<<vault:tok>>" * 10)[:-50]
    with contextlib.ExitStack() as stack:
        for data in (partial_head, short_body, b"\r\n\r\n"):
            stalled = stack.enter_context(socket.create_connection((LOOPBACK, proxy.port), timeout=WAIT))
            stalled.sendall(data)
        assert_still_serving(proxy, upstream)
    assert_still_serving(proxy, upstream)  # ...and gives the proxy time to see the closes
    assert b"/stalled" not in upstream.all_bytes()



# --- YAML files the proxy reads: the same reader as configurations ---------------------------------


@pytest.mark.parametrize("parse", [parse_rules, parse_sources], ids=["signing.yaml", "tokens.yaml"])
def test_rule_files_refuse_anchors_aliases_and_huge_files(parse: Callable[[str, str], tuple[object, ...]]) -> None:
    """signing.yaml and tokens.yaml are parsed as configurations are: an alias bomb (a few
    hundred bytes that a reader would walk as 10^9 nodes) is refused at its first anchor."""
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
    with pytest.raises(ValueError, match=r"^rules\.yaml:1: anchors and aliases"):
        parse(bomb, "rules.yaml")
    with pytest.raises(ValueError, match=r"^rules\.yaml:2: anchors and aliases"):
        parse("x: 1\ny: &r [*r]\n", "rules.yaml")
    with pytest.raises(ValueError, match=r"^rules\.yaml: too large"):
        parse("#" * (1024 * 1024 + 1), "rules.yaml")
