"""Tests for vaultcore.hostrules: the hosts rule grammar, every known way around it, origin
rules, and hypothesis properties (pure: no I/O, no network)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vaultcore.hostrules import HostRule, host_matches, normalise_host_rule, origin_matches, parse_host_rule, reaches_any_host
from vaultcore.index import Destination, Secret, SecretIndex, is_loopback
from vaultcore.publicsuffix import NO_LIST, PublicSuffixes, system_suffixes
from vaultcore.placeholders import SubstitutionError

FAST = settings(max_examples=200, deadline=None)

# --- host_matches ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "patterns", "expected"),
    [
        # exact names, case, trailing dots
        ("api.stripe.com", None, ["api.stripe.com"], True),
        ("API.Stripe.COM", None, ["api.stripe.com"], True),
        ("api.stripe.com", None, ["API.STRIPE.COM"], True),
        ("api.stripe.com.", None, ["api.stripe.com"], True),
        ("api.stripe.com", None, ["api.stripe.com."], True),
        ("api.stripe.com", None, [" api.stripe.com "], True),
        ("evilapi.stripe.com", None, ["api.stripe.com"], False),
        ("api.stripe.com.evil.net", None, ["api.stripe.com"], False),
        ("api.stripe.com..", None, ["api.stripe.com"], False),
        # a leading `*.`: one or more labels
        ("a.example.com", None, ["*.example.com"], True),
        ("a.b.example.com", None, ["*.example.com"], True),
        ("example.com", None, ["*.example.com"], False),
        ("badexample.com", None, ["*.example.com"], False),
        ("evilexample.com", None, ["*.example.com"], False),
        ("example.com.evil.net", None, ["*.example.com"], False),
        ("example.com.evil.test", None, ["*.example.com"], False),
        ("a.b.example.com", None, ["*.*.example.com"], True),
        ("a.example.com", None, ["*.*.example.com"], False),
        # any other `*`: inside one label
        ("api.example.com", None, ["api.example.*"], True),
        ("api.example.evil.test", None, ["api.example.*"], False),
        ("api.example.", None, ["api.example.*"], False),
        ("api-v2.example.com", None, ["api-*.example.com"], True),
        ("api-.example.com", None, ["api-*.example.com"], True),
        ("api-x.evil.example.com", None, ["api-*.example.com"], False),
        ("api.evil.example.com", None, ["api.*.com"], False),
        ("api.example.com", None, ["api.*.com"], True),
        ("eu.api.example.com", None, ["*.api.*.com"], True),
        ("api.example.com", None, ["*.api.*.com"], False),
        ("localhost", None, ["local*"], True),
        ("localhost.evil.test", None, ["local*"], False),
        # `*` alone
        ("anything.at.all", None, ["*"], True),
        ("127.0.0.1", None, ["*"], True),
        ("::1", 443, ["*"], True),
        ("127.1", None, ["*"], True),
        ("", None, ["*"], False),
        ("  ", None, ["*"], False),
        ("example.com", None, [], False),
        ("example.com", None, ["other.com", "example.com"], True),
        # IPv4 rules match IP addresses only
        ("127.0.0.1", None, ["127.0.0.1"], True),
        ("127.0.0.1.", None, ["127.0.0.1"], True),
        ("127.0.0.2", None, ["127.0.0.1"], False),
        ("127.0.0.9", None, ["127.0.0.*"], True),
        ("127.0.0.255", None, ["127.0.0.*"], True),
        ("127.0.1.1", None, ["127.0.0.*"], False),
        ("127.0.0.evil.test", None, ["127.0.0.*"], False),
        ("127.0.0.evil", None, ["127.0.0.*"], False),
        ("127.0.0.1.evil.test", None, ["127.0.0.*"], False),
        ("127.0.0.1.evil.test", None, ["127.0.0.1"], False),
        ("10.1.2.3", None, ["10.*.*.*"], True),
        ("10.evil.test.x", None, ["10.*.*.*"], False),
        ("9.1.2.3", None, ["10.*.*.*"], False),
        ("10.1.2.3", None, ["10.*"], False),  # refused: not four octets
        ("10.evil", None, ["10.*"], False),
        ("10.evil.test", None, ["10.*"], False),
        ("1.2.3.4", None, ["*.2.3.4"], True),
        ("1.2.3.4", None, ["*.*.*.*"], True),
        ("a.b.evil.test", None, ["*.*.*.*"], False),
        ("a.b.evil.test", None, ["*.*.*"], True),  # not IP-shaped: a name glob
        ("evil.2.3.4", None, ["*.2.3.4"], False),
        # resolvers read these as IPv4: no name or IP rule matches them
        ("127.1", None, ["127.0.0.1", "127.0.0.*", "127.*.*.*"], False),
        ("0x7f.0.0.1", None, ["0x7f.*.*.*", "127.0.0.1"], False),
        ("0x7f.1", None, ["0x7f.*"], False),
        ("2130706433", None, ["2130706433", "127.0.0.1"], False),
        ("foo.1", None, ["foo.*"], False),
        # CIDR
        ("10.9.8.7", None, ["10.0.0.0/8"], True),
        ("11.0.0.1", None, ["10.0.0.0/8"], False),
        ("10.evil.test", None, ["10.0.0.0/8"], False),
        ("10.0.0.1", None, ["10.0.0.1/8"], True),  # host bits ignored
        ("::1", None, ["::1/128"], True),
        ("fd12:3456::1", None, ["fd00::/8"], True),
        ("fe80::1", None, ["fd00::/8"], False),
        ("10.0.0.1", None, ["::/0"], False),
        ("::1", None, ["0.0.0.0/0"], False),
        # IPv6, with or without brackets
        ("::1", None, ["[::1]"], True),
        ("[::1]", None, ["::1"], True),
        ("[2001:DB8::1]", None, ["2001:db8::1"], True),
        ("2001:db8:0:0:0:0:0:1", None, ["2001:db8::1"], True),
        ("::2", None, ["::1"], False),
        ("fe80::1%eth0", None, ["fe80::1", "fe80::/10"], False),
        ("::ffff:127.0.0.1", None, ["127.0.0.1"], False),
        # ports
        ("localhost", 8443, ["localhost:8443"], True),
        ("localhost", 443, ["localhost:8443"], False),
        ("localhost", None, ["localhost:8443"], False),
        ("localhost", 8443, ["localhost"], True),
        ("LOCALHOST.", 8443, ["localhost.:8443"], True),
        ("::1", 8443, ["[::1]:8443"], True),
        ("[::1]", 8444, ["[::1]:8443"], False),
        ("a.example.com", 443, ["*.example.com:443"], True),
        ("a.example.com", 80, ["*.example.com:443"], False),
        ("127.0.0.5", 3000, ["127.0.0.*:3000"], True),
        ("127.0.0.5", 3001, ["127.0.0.*:3000"], False),
        ("anything", 443, ["*:443"], True),
        ("anything", 80, ["*:443"], False),
        # IDNA: one host in both forms, Unicode dots are dots
        ("bücher.example", None, ["xn--bcher-kva.example"], True),
        ("xn--bcher-kva.example", None, ["BÜCHER.example"], True),
        ("bücher.example", None, ["*.example"], True),
        ("api.example.evil\u3002test", None, ["api.example.*"], False),
        ("api.example.evil\uff0etest", None, ["api.example.*"], False),
        ("api.example.com\u3002", None, ["api.example.com"], True),
        ("ａｐｉ.example.com", None, ["api.example.com"], True),
        ("\udcff.example.com", None, ["*.example.com"], False),
        ("a\x00.example.com", None, ["*.example.com"], False),
        ("a b.example.com", None, ["*.example.com"], False),
        ("\u200b", None, ["*.example.com", "\u200b"], False),
        # rules stored before this grammar that can never match: ignored, never raised
        ("api.example.com", None, ["https://api.example.com/"], False),
        ("api.example.com", None, ["https://api.example.com/", "api.example.com"], True),
        ("exa mple.com", None, ["exa mple.com"], False),
        ("a..b", None, ["a..b"], False),
        ("localhost", 99999, ["localhost:99999"], False),
        ("", None, [""], False),
    ],
)
def test_host_matches(host: str, port: int | None, patterns: list[str], expected: bool) -> None:
    assert host_matches(host, port, patterns) is expected


def test_host_matches_accepts_any_iterable() -> None:
    assert host_matches("a.example.com", None, (p for p in ["*.example.com"]))


# --- parse_host_rule and normalise_host_rule -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("api.example.com", "api.example.com"),
        (" API.Example.COM. ", "api.example.com"),
        ("*", "*"),
        ("*:443", "*:443"),
        ("*.example.com:443", "*.example.com:443"),
        ("api-*.example.com", "api-*.example.com"),
        ("localhost:08443", "localhost:8443"),
        ("127.0.0.*", "127.0.0.*"),
        ("10.*.*.*", "10.*.*.*"),
        ("10.0.0.1/8", "10.0.0.0/8"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("[::1]:8443", "[::1]:8443"),
        ("[2001:DB8:0::1]", "2001:db8::1"),
        ("fd00::/8", "fd00::/8"),
        ("[fd00::/8]:443", "[fd00::/8]:443"),
        ("Bücher.example", "xn--bcher-kva.example"),
        ("under_score.example", "under_score.example"),
    ],
)
def test_parse_host_rule(text: str, canonical: str) -> None:
    rule = parse_host_rule(text)
    assert isinstance(rule, HostRule)
    assert str(rule) == canonical
    assert parse_host_rule(canonical) == rule


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no host"),
        ("   ", "no host"),
        (":443", "no host"),
        ("https://api.example.com/", "URL"),
        ("exa mple.com", "only letters"),
        ("a..b", "empty or over-long label"),
        (".", "empty or over-long label"),
        ("x" * 64 + ".com", "empty or over-long label"),
        ("api.example.com/v1", "not an IP address or network"),
        ("localhost:0", "port"),
        ("localhost:65536", "port"),
        ("localhost:", "port"),
        ("localhost:https", "port"),
        ("localhost:*", "port"),
        ("[::1]:99999", "port"),
        ("[::1", "brackets hold"),
        ("[::1]8443", "brackets hold"),
        ("10.*", "four octets"),
        ("127.0.*", "four octets"),
        ("1.2.3.4.5", "four octets"),
        ("256.0.0.1", "four octets"),
        ("127.0.0.01", "four octets"),
        ("127.0.0.*/24", "not an IP address or network"),
        ("1.2.3.4/33", "not an IP address or network"),
        ("fd00::*", "not an IP address or network"),
        ("fe80::1%eth0", "zone"),
        ("foo.123", "ends in a number"),
        ("0x7f.1", "ends in a number"),
        ("api.*.1", "ends in a number"),
        ("bü*.example", "non-ASCII label"),
        ("user@example.com", "only letters"),
        ("exa?mple.com", "only letters"),
        ("exa[m]ple.com", "only letters"),
    ],
)
def test_parse_host_rule_refuses_rules_that_never_match(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="expected a host such as api.example.com") as info:
        parse_host_rule(text)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("https://api.example.com/path", "api.example.com"),
        ("https://API.example.com", "api.example.com"),
        ("http://user:pw@api.example.com/x?y#z", "api.example.com"),
        ("https://api.example.com:8443/path", "api.example.com:8443"),
        ("https://api.example.com:443/", "api.example.com:443"),  # an explicit port is kept
        ("https://[::1]:8443/x", "[::1]:8443"),
        ("http://[::1]/", "::1"),
        ("https://*.example.com/", "*.example.com"),
        ("https://bücher.example/", "xn--bcher-kva.example"),
        ("Api.Example.com.", "api.example.com"),
        ("127.0.0.*:3000", "127.0.0.*:3000"),
    ],
)
def test_normalise_host_rule(text: str, canonical: str) -> None:
    assert normalise_host_rule(text) == canonical


@pytest.mark.parametrize(
    "text", ["https://", "https:///path", "https://api.example.com:99999/", "http://[::1", "https://10.*/", "exa mple.com"]
)
def test_normalise_host_rule_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected a host"):
        normalise_host_rule(text)


# --- the index asks with the destination's port ----------------------------------------------


def test_check_binds_the_port_and_survives_invalid_stored_rules() -> None:
    index = SecretIndex(local_secrets=[
        Secret("tok", "S3CRET", hosts=("localhost:8443",)),
        Secret("old", "S3CRET", hosts=("https://api.example.com/", "10.*")),
    ])
    assert index.check("tok", Destination("localhost", port=8443)).value == "S3CRET"
    for destination in (Destination("localhost", port=9000), Destination("localhost")):
        with pytest.raises(SubstitutionError) as info:
            index.check("tok", destination)
        assert info.value.code == "host_not_allowed"
    for host in ("api.example.com", "10.0.0.1"):
        with pytest.raises(SubstitutionError) as info:
            index.check("old", Destination(host, port=443))
        assert info.value.code == "host_not_allowed"


# --- origin_matches --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "patterns", "expected"),
    [
        ("http://localhost:3000", ["http://localhost:3000"], True),
        ("http://localhost:3000/", ["HTTP://LocalHost:3000"], True),
        ("http://localhost:3001", ["http://localhost:3000"], False),
        ("http://localhost", ["http://localhost:3000"], False),
        ("https://localhost:3000", ["http://localhost:3000"], False),
        ("https://app.example.com", ["https://app.example.com:443"], True),
        ("https://app.example.com:443", ["https://app.example.com"], True),
        ("http://app.example.com:80", ["http://app.example.com/"], True),
        ("http://app.example.com:443", ["http://app.example.com"], False),
        ("https://a.example.com", ["https://*.example.com"], True),
        ("https://a.b.example.com", ["https://*.example.com"], True),
        ("https://example.com", ["https://*.example.com"], False),
        ("https://example.com.evil.test", ["https://*.example.com"], False),
        ("http://a.example.com", ["https://*.example.com"], False),
        ("https://a.example.com:8443", ["https://*.example.com"], False),
        ("https://app.example.com", ["https://app.example.*"], True),
        ("https://app.example.evil.test", ["https://app.example.*"], False),
        ("http://127.0.0.1:3000", ["http://127.0.0.*:3000"], True),
        ("http://127.0.0.evil.test:3000", ["http://127.0.0.*:3000"], False),
        ("http://[::1]:3000", ["http://[::1]:3000"], True),
        ("http://[::1]:3000", ["http://[::0:1]:3000"], True),
        ("https://anything.example", ["https://*"], True),
        ("null", ["null"], True),
        ("null", ["*", "https://*", "http://localhost"], False),
        ("NULL", ["null"], True),
        ("http://localhost:3000", ["null"], False),
        ("http://localhost:3000", [], False),
        ("not an origin", ["not an origin"], False),
        ("http://localhost:3000/path", ["http://localhost:3000/path"], False),
        ("http://user@localhost", ["http://user@localhost"], False),
    ],
)
def test_origin_matches(origin: str, patterns: list[str], expected: bool) -> None:
    assert origin_matches(origin, patterns) is expected


# --- properties ------------------------------------------------------------------------------

letters = st.text(alphabet="abcxyz", min_size=1, max_size=6)
# Pattern labels: letters, digits and '-' with `*` anywhere in them.
glob_labels = st.text(alphabet="ab1-*", min_size=1, max_size=6)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@FAST
@given(
    labels=st.lists(glob_labels, min_size=1, max_size=4).filter(lambda ls: ls[0] != "*" and "*" in "".join(ls)),
    fills=st.lists(st.lists(letters, min_size=1, max_size=3), min_size=1, max_size=20),
    extra=st.sampled_from(["", "evil.", ".evil", ".evil.test"]),
)
def test_a_star_never_spans_a_dot(labels: list[str], fills: list[list[str]], extra: str) -> None:
    """Fill each `*` with one or more labels (what fnmatch would match): a host with more
    labels than the pattern never matches; with one label per `*` and nothing else, it does."""
    pattern = ".".join(labels)
    try:
        parse_host_rule(pattern)
    except ValueError:
        assume(False)
    pieces = pattern.split("*")
    stars = len(pieces) - 1
    fills = (fills * stars)[:stars]
    host = pieces[0] + "".join(".".join(fill) + piece for fill, piece in zip(fills, pieces[1:], strict=True))
    host = extra.removeprefix(".") + host if extra.endswith(".") else host + extra
    more_labels = host.count(".") > pattern.count(".")
    assert more_labels == (extra != "" or any(len(fill) > 1 for fill in fills))
    assert host_matches(host, None, [pattern]) is not more_labels


octets = st.one_of(st.integers(0, 255).map(str), st.just("*"))
ipv4_star_rules = st.lists(octets, min_size=4, max_size=4).map(".".join)
ip_rules = st.one_of(
    ipv4_star_rules,
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 128)).map(lambda t: f"{t[0]}/{t[1]}"),
)


@FAST
@given(
    rule=ip_rules,
    host=st.one_of(
        st.lists(letters, min_size=1, max_size=5).map(".".join),
        st.tuples(ipv4_star_rules, letters).map(lambda t: t[0].replace("*", t[1])),  # 127.0.0.evil
        st.tuples(st.ip_addresses(), st.sampled_from([".evil", ".evil.test", "x"])).map(lambda t: f"{t[0]}{t[1]}"),
        st.text(alphabet="0123456789abcdefx.:[]*", max_size=40),
    ),
)
def test_an_ip_rule_matches_only_ip_addresses(rule: str, host: str) -> None:
    parse_host_rule(rule)  # every generated rule is valid
    assume(not is_ip(host))
    assert not host_matches(host, None, [rule])


@FAST
@given(st.tuples(st.ip_addresses(v=4), st.lists(octets, min_size=4, max_size=4)))
def test_a_star_octet_matches_any_octet(case: tuple[ipaddress.IPv4Address, list[str]]) -> None:
    ip, rule = case
    expected = all(want == "*" or want == have for want, have in zip(rule, str(ip).split("."), strict=True))
    assert host_matches(str(ip), None, [".".join(rule)]) is expected


rule_text = st.text(alphabet=st.sampled_from(list("*.:[]/%@0123456789abfx- _")) | st.characters(), max_size=40)


@FAST
@given(rule_text)
def test_parse_host_rule_returns_or_raises_value_error(text: str) -> None:
    try:
        rule = parse_host_rule(text)
    except ValueError:
        return
    assert parse_host_rule(str(rule)) == rule  # the canonical text means the same rule
    assert normalise_host_rule(text) == str(rule)


@FAST
@given(rule_text.map(lambda t: "https://" + t))
def test_normalise_host_rule_returns_or_raises_value_error(text: str) -> None:
    try:
        canonical = normalise_host_rule(text)
    except ValueError:
        return
    assert normalise_host_rule(canonical) == canonical


@FAST
@given(host=rule_text, port=st.none() | st.integers(-1, 70000), patterns=st.lists(rule_text, max_size=3))
def test_host_matches_never_raises(host: str, port: int | None, patterns: list[str]) -> None:
    assert host_matches(host, port, patterns) in (True, False)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("LocalHost", True), ("127.0.0.5", True), ("::1", True), ("[::1]", True),
     ("::ffff:127.0.0.1", True), ("::ffff:10.0.0.1", False), ("10.0.0.1", False), ("example.com", False),
     # names a resolver may ask DNS about (glibc with `hosts: files dns` does)
     ("a.localhost", False), ("localhost.", False), ("localhost.evil.test", False),
     # brackets hold an IPv6 address only: a resolver given `[localhost]` answers as it likes
     ("[localhost]", False), ("[127.0.0.1]", False)],
)
def test_loopback_for_the_plaintext_rule(host: str, loopback: bool) -> None:
    """An IPv4-mapped loopback address is loopback on every Python (3.11 says otherwise)."""
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(("destination", "hops"), [
    (Destination("localhost", "http"), ["localhost"]),
    (Destination("localhost", "https", verified=False), ["localhost"]),
    (Destination("localhost", "https"), []),
    # unverified TLS through a next proxy: that proxy may end the TLS itself and read it all
    (Destination("localhost", "https", verified=False, via="proxy.example.com"), ["localhost", "proxy.example.com"]),
    (Destination("localhost", "http", via="proxy.example.com"), ["localhost", "proxy.example.com"]),
])
def test_cleartext_hops(destination: Destination, hops: list[str]) -> None:
    assert destination.cleartext_hops() == hops


@pytest.mark.parametrize(("rule", "wide"), [
    ("*", True), ("*:443", True), ("https://*", True),
    ("*.*", True), ("*.*:443", True), ("https://*.*", True), ("*.*.*.*", True),  # every name with a dot, every IPv4
    ("0.0.0.0/0", True), ("0.0.0.0/1", True), ("::/0", True), ("[::/0]:443", True),
    ("*.example.com", False), ("api.example.com", False), ("10.0.0.0/8", False), ("127.0.0.*", False), ("[::1]:443", False),
    # the same reach in other spellings: a glob in the top-level label, IPv4 inside IPv6
    ("*.**", True), ("**", True), ("*.**:443", True), ("https://*.**", True), ("api.*", True), ("*.c*", True),
    ("*.0.0.1", True), ("10.*.*.*", False), ("::ffff:0.0.0.0/96", True), ("[64:ff9b::/97]:443", True),
    ("::ffff:10.0.0.0/104", False), ("2001:db8::/32", False),
    # as written in a file (config import judges it so): a trailing dot, upper case
    ("*.*.", True), ("*.", True), ("API.*.", True), ("*.0.0.1.", True), ("https://*.*.", True),
    # names anyone may register, but not under a top-level name no one can
    ("*.com", True), ("*example.com", True), ("https://*.com", True), ("a.*.example.com", False),
    ("*.localhost", False), ("*.internal", False), ("*.test", False), ("*.home.arpa", False),
    # IPv6: public networks wider than a /32, private ones than a /8; IPv4 inside (6to4, NAT64)
    ("2a00::/8", True), ("2001:4860::/32", False), ("fd00::/8", False), ("2002::/16", True), ("64:ff9b:1::/48", True),
])
def test_rules_that_reach_nearly_every_host_need_a_flag(rule: str, wide: bool) -> None:
    assert reaches_any_host(rule) is wide


# A few of the Public Suffix List's rules, in its own format: an ICANN suffix of two labels, a
# private one (anyone's GitHub Pages site), a wildcard with an exception, an IDN suffix.
SAMPLE_LIST = PublicSuffixes.parse("""
// ===BEGIN ICANN DOMAINS===
com
uk
co.uk
// ck : https://en.wikipedia.org/wiki/.ck
*.ck
!www.ck
рф
// ===BEGIN PRIVATE DOMAINS===
github.io   trailing words after whitespace are ignored
s3.amazonaws.com
*.elb.amazonaws.com
""")


@pytest.mark.parametrize(("rule", "wide"), [
    ("*.co.uk", True), ("https://*.co.uk", True), ("*.co.uk:443", True), ("a.*.co.uk", True), ("*co.uk", True),
    ("*.example.co.uk", False), ("api.example.co.uk", False), ("*.github.io", True), ("*.pages.github.io", False),
    ("*.anything.ck", True), ("*.www.ck", False),  # every name under ck is a suffix, but www.ck
    ("*.xn--p1ai", True), ("*.рф", True), ("*.com", True), ("*.example.com", False), ("*.localhost", False),
    # a review's: a glob on a wildcard's own label (every name under elb.amazonaws.com is a suffix)
    ("*.elb.amazonaws.com", True), ("*.lb-1.elb.amazonaws.com", True), ("app.lb-1.elb.amazonaws.com", False),
    # a glob that can be a suffix's own label: api.s3.amazonaws.com is a bucket anyone may name
    ("*.amazonaws.com", True), ("api.*.amazonaws.com", True), ("s*.amazonaws.com", False),
    ("secretsmanager.eu-west-1.amazonaws.com", False),
])
def test_a_glob_under_a_public_suffix_of_more_labels_needs_the_flag(rule: str, wide: bool) -> None:
    """`*.co.uk` matches every name anyone registers under co.uk, as `*.com` does under com."""
    assert reaches_any_host(rule, SAMPLE_LIST) is wide


def test_without_a_list_only_top_level_names_are_public_suffixes() -> None:
    assert (reaches_any_host("*.com", NO_LIST), reaches_any_host("*.co.uk", NO_LIST)) == (True, False)


@pytest.mark.parametrize(("name", "labels"), [
    ("co.uk", 2), ("example.co.uk", 2), ("a.b.example.co.uk", 2), ("uk", 1), ("example.com", 1),
    ("unlisted", 1), ("example.unlisted", 1),  # the default rule: every top-level name
    ("foo.ck", 2), ("a.foo.ck", 2), ("www.ck", 1), ("a.www.ck", 1), ("xn--p1ai", 1), ("site.github.io", 2),
])
def test_public_suffix_labels_follow_the_lists_algorithm(name: str, labels: int) -> None:
    assert SAMPLE_LIST.suffix_labels(name) == labels


@pytest.mark.skipif(system_suffixes() is NO_LIST, reason="no Public Suffix List on this system (Debian: apt install publicsuffix)")
def test_the_systems_list_judges_the_usual_multi_label_suffixes() -> None:
    wide = ("*.co.uk", "*.com.au", "*.github.io", "*.compute.amazonaws.com", "*.amazonaws.com")
    assert all(reaches_any_host(rule) for rule in wide)
    assert not any(reaches_any_host(rule) for rule in ("*.example.co.uk", "*.city.kawasaki.jp", "sts.amazonaws.com"))
