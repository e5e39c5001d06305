"""Host rules: which destinations (host, and optionally port) a secret may be sent to.

Pure logic, no I/O (but the system's Public Suffix List, read once: vaultcore.publicsuffix).
A `hosts` rule is one of:

- `*`: any host.
- a name, `api.example.com`. A `*` in it stands for part of ONE label and never spans a dot:
  `api-*.example.com`, `api.example.*` (api.example.com, never api.example.evil.test; a
  glob in a public suffix or just under it reaches names anyone may register:
  `reaches_any_host`).
  Only a leading `*.` stands for one or more labels: `*.example.com` matches a.example.com
  and a.b.example.com, not example.com.
- an IP rule, which matches only hosts that are IP addresses: an address (`127.0.0.1`,
  `::1`, `[::1]`), a network (`10.0.0.0/8`, `::1/128`, `fd00::/8`), or an IPv4 address
  with `*` octets (`127.0.0.*`, `10.*.*.*`, `*.*.*.*`). All four octets must be written:
  `10.*` is refused (write `10.*.*.*` or `10.0.0.0/8`), as is any rule whose last label
  is a number but that is no IPv4 rule (`foo.123`), which URLs would read as IPv4.
- any of these followed by `:PORT` (`localhost:8443`, `[::1]:8443`, `*.example.com:443`)
  matches that port only; without a port, any port.

Case and one trailing dot are ignored. Names are compared in their IDNA (`xn--`) form, the
name the resolver looks up, so `bücher.example` and `xn--bcher-kva.example` are one host and
a Unicode dot cannot hide a label boundary. A host that is neither a valid name nor a
standard IP address (including `127.1` or `0x7f.0.0.1`, which resolvers read as IPv4)
matches only `*`. `parse_host_rule` refuses a rule that could never match; `host_matches`
never raises, so a rule stored before this grammar that is now invalid just matches nothing.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from vaultcore.publicsuffix import PublicSuffixes, system_suffixes

_EXPECTED = (
    "expected a host such as api.example.com, *.example.com, api-*.example.com, 127.0.0.1, "
    "127.0.0.*, 10.0.0.0/8 or [::1], optionally with :PORT"
)
_PORT_RE = re.compile(r"[0-9]{1,5}")
_HOST_LABEL_RE = re.compile(r"[a-z0-9_-]{1,63}")  # what mitmproxy accepts in a host name
_RULE_LABEL_RE = re.compile(r"[a-z0-9_*-]{1,63}")
_OCTET_RE = re.compile(r"[0-9]+|\*")
# A last label that makes a host an IPv4 address to URL parsers and resolvers (WHATWG URL:
# "ends in a number"); inet_aton also reads 0x and octal parts.
_NUMBER_RE = re.compile(r"[0-9]+|0x[0-9a-f]*")

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_Target = _IPAddress | str | None  # a host as matched: an IP, an IDNA name, or unmatchable


@dataclass(frozen=True)
class HostRule:
    """One parsed hosts rule. `host` is its canonical text (`str(rule)` adds the port).

    A name rule carries its compiled glob (`name_re`), an IP rule its (version, address,
    mask) (`network`); the `*` rule carries neither."""

    host: str
    port: int | None = None
    name_re: re.Pattern[str] | None = field(default=None, repr=False)
    network: tuple[int, int, int] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        if self.port is None:
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _matches(self, target: _Target, port: int | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.name_re is not None:
            return isinstance(target, str) and self.name_re.fullmatch(target) is not None
        if self.network is not None:
            version, address, mask = self.network
            return isinstance(target, _IPAddress) and target.version == version and int(target) & mask == address
        return True


class RuleError(ValueError):
    """A rule that could never match; `reason` says why, without the expected form."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _invalid(text: str, reason: str) -> RuleError:
    return RuleError(f"invalid host rule {text!r}: {reason}; {_EXPECTED}", reason)


def resolver_name(host: str) -> str | None:
    """`host` as the resolver sees it: lowercase, without brackets or one trailing dot, and
    IDNA-encoded as Python's socket module does (which also turns Unicode dots into dots).
    None if IDNA cannot encode it (an empty or over-long label, a forbidden character)."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return host.encode("idna").decode("ascii").removesuffix(".")
    except UnicodeError:
        return None


def _target(host: str) -> _Target:
    name = resolver_name(host)
    if not name:
        return None
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        # A zone (fe80::1%eth0) picks the machine: no rule names it, so nothing matches.
        return None if getattr(ip, "scope_id", None) else ip
    labels = name.split(".")
    if _NUMBER_RE.fullmatch(labels[-1]) or not all(map(_HOST_LABEL_RE.fullmatch, labels)):
        return None
    return name


def _split_port(text: str) -> tuple[str, int | None]:
    """(host, port) of a rule: `host`, `host:port`, `[v6]`, `[v6]:port`; a bare IPv6 address
    or network (two or more colons) has no port."""
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or rest[:1] not in ("", ":"):
            raise _invalid(text, "brackets hold an IPv6 address, optionally followed by :PORT")
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, None
    if port is None:
        return host, None
    if not _PORT_RE.fullmatch(port) or not 0 < int(port) < 65536:
        raise _invalid(text, "a port is a number from 1 to 65535")
    return host, int(port)


def _ip_rule(text: str, host: str, port: int | None) -> HostRule:
    """An IPv6 address, or an IPv4/IPv6 network in CIDR form."""
    if "%" in host:
        raise _invalid(text, "an IPv6 zone (%eth0) is not supported")
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        raise _invalid(text, "not an IP address or network") from None
    canonical = str(network) if "/" in host else str(network.network_address)
    return HostRule(canonical, port, network=(network.version, int(network.network_address), int(network.netmask)))


def _ipv4_rule(text: str, octets: list[str], port: int | None) -> HostRule:
    """An IPv4 address whose octets may be `*` (any octet)."""
    try:
        ipaddress.IPv4Address(".".join("0" if octet == "*" else octet for octet in octets))
    except ValueError:
        raise _invalid(text, "an IPv4 rule has four octets, each 0-255 or * (10.*.*.*), or is a network (10.0.0.0/8)") from None
    address = mask = 0
    for octet in octets:
        fixed = octet != "*"
        address = address << 8 | (int(octet) if fixed else 0)
        mask = mask << 8 | (0xFF if fixed else 0)
    return HostRule(".".join(octets), port, network=(4, address, mask))


def _name_rule(text: str, name: str, port: int | None) -> HostRule:
    labels = name.split(".")
    if not all(map(_RULE_LABEL_RE.fullmatch, labels)):
        raise _invalid(text, "a name holds only letters, digits, '-', '_', '*' and single dots")
    if any("*" in label and label.startswith("xn--") for label in labels):
        raise _invalid(text, "a * cannot stand in a non-ASCII label")
    # A leading `*.` is one or more labels; any other `*` stays inside its label.
    prefix = r"(?:[^.]+\.)+" if labels[0] == "*" else ""  # (`*` alone is parsed before)
    globs = labels[1:] if prefix else labels
    body = r"\.".join("[^.]*".join(map(re.escape, label.split("*"))) for label in globs)
    return HostRule(name, port, name_re=re.compile(prefix + body))


def parse_host_rule(text: str) -> HostRule:
    """Parse one hosts rule (grammar in the module docstring).

    Raises ValueError naming the expected form for a rule that could never match: a URL,
    whitespace, an empty label, a port out of range, an IPv4 rule that is not four octets."""
    text = text.strip()
    if "://" in text:
        raise _invalid(text, "a URL; write only its host, e.g. api.example.com")
    host, port = _split_port(text)
    name = resolver_name(host)
    if name is None:
        raise _invalid(text, "an empty or over-long label, or not a valid international name")
    if not name:
        raise _invalid(text, "no host")
    if name == "*":
        return HostRule("*", port)
    if ":" in name or "/" in name:
        return _ip_rule(text, name, port)
    labels = name.split(".")
    if all(map(_OCTET_RE.fullmatch, labels)) and (len(labels) == 4 or any(label != "*" for label in labels)):
        return _ipv4_rule(text, labels, port)
    if _NUMBER_RE.fullmatch(labels[-1]):
        raise _invalid(text, "it ends in a number, so it must be an IPv4 address (four octets)")
    return _name_rule(text, name, port)


def normalise_host_rule(text: str) -> str:
    """The canonical text of a hosts rule, also accepting a URL for it, because that is what
    people paste: `https://API.example.com/path` gives `api.example.com`; a URL's explicit
    port is kept (`https://h:8443/` gives `h:8443`). Raises ValueError like parse_host_rule."""
    text = text.strip()
    if "://" in text:
        try:
            parts = urlsplit(text)
            host, port = parts.hostname, parts.port
        except ValueError:
            raise _invalid(text, "not a valid URL") from None
        if not host:
            raise _invalid(text, "a URL without a host")
        host = f"[{host}]" if ":" in host else host
        text = host if port is None else f"{host}:{port}"
    return str(parse_host_rule(text))


def _rule_or_none(text: str) -> HostRule | None:
    try:
        return parse_host_rule(text)
    except ValueError:  # stored before this grammar: it matches nothing, and the proxy runs on
        return None


def host_matches(host: str, port: int | None, patterns: Iterable[str]) -> bool:
    """Whether a destination `host` (a name or IP, brackets allowed, no port) on `port` (None:
    unknown, then only port-less rules match) is allowed by one of the `patterns`.

    An empty host or no patterns never match; an invalid pattern matches nothing."""
    return _host_matches(host, port, tuple(patterns))


@functools.lru_cache(maxsize=4096)
def _host_matches(host: str, port: int | None, patterns: tuple[str, ...]) -> bool:
    """Cached: the proxy asks the same few (host, port, hosts rule) questions on every request."""
    if not host.strip():
        return False
    target = _target(host)
    return any(rule is not None and rule._matches(target, port) for rule in map(_rule_or_none, patterns))


_DEFAULT_PORTS = {"http": "80", "https": "443"}
_ORIGIN_RE = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.\-]*)://(?P<host>\[[^\]/]*\]|[^:/\[\]@]+)(?::(?P<port>\d+))?"
)


def _split_origin(origin: str) -> tuple[str, str, str | None] | None:
    """(scheme, host, port or None when default) of a normalised origin, None if malformed."""
    m = _ORIGIN_RE.fullmatch(origin.strip().lower().removesuffix("/"))
    if m is None:
        return None
    port = m["port"]
    if port is not None and port.lstrip("0") == _DEFAULT_PORTS.get(m["scheme"]):
        port = None
    return m["scheme"], m["host"], port


def origin_matches(origin: str, patterns: Iterable[str]) -> bool:
    """Whether a browser `Origin` is allowed by one of `patterns` (scheme://host[:port]).

    Exact on scheme and port (default ports removed), case-insensitive, trailing slash
    ignored; the pattern's host is a host rule without a port ("https://*.example.com",
    "http://127.0.0.*:3000"). The opaque origin "null" (sandboxed frames, file://) only
    matches an explicit "null" pattern."""
    patterns = [p.strip().lower() for p in patterns]
    if origin.strip().lower() == "null":
        return "null" in patterns
    parts = _split_origin(origin)
    if parts is None:
        return False
    scheme, host, port = parts
    for pattern in patterns:
        wanted = _split_origin(pattern)
        if wanted is not None and wanted[0] == scheme and wanted[2] == port and host_matches(host, None, [wanted[1]]):
            return True
    return False


_EXPECTED_ORIGIN = (
    "expected an origin as browsers send it: scheme://host[:port], e.g. http://localhost:3000, "
    "https://app.example.com or https://*.example.com (or null)"
)
_SCHEME_RE = re.compile(r"[a-z][a-z0-9+.\-]*")


def _invalid_origin(text: str, reason: str) -> RuleError:
    return RuleError(f"invalid origin {text!r}: {reason}; {_EXPECTED_ORIGIN}", reason)


def parse_origin_rule(text: str) -> str:
    """The canonical text of an origins rule: `null`, or scheme://host[:port] whose host is a
    hosts rule (globs allowed), lowercase, without the scheme's default port or a trailing
    slash. Raises ValueError naming the expected form for a rule no browser's Origin could
    match: no scheme (`localhost:3000`), a path, user info, a bad host or port."""
    text = text.strip()
    if text.lower() == "null":
        return "null"
    scheme, separator, rest = text.partition("://")
    scheme, rest = scheme.lower(), rest.removesuffix("/")
    if not separator or not _SCHEME_RE.fullmatch(scheme):
        raise _invalid_origin(text, "no scheme")
    if any(c in rest for c in "/?#"):
        raise _invalid_origin(text, f"an origin is written without a path: write {scheme}://{re.split('[/?#]', rest)[0]}")
    if "@" in rest:
        raise _invalid_origin(text, "an origin has no user name")
    try:
        host, port = _split_port(rest)
        rule = parse_host_rule(host)
    except RuleError as e:
        raise _invalid_origin(text, e.reason) from None
    shown = f"[{rule.host}]" if ":" in rule.host else rule.host
    default = port is not None and str(port) == _DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{shown}" + ("" if port is None or default else f":{port}")


def normalise_origin_rule(text: str) -> str:
    """As parse_origin_rule, also accepting a page's URL for its origin, because that is what
    people paste: `http://localhost:3000/app?x=1` gives `http://localhost:3000`."""
    scheme, separator, rest = text.strip().partition("://")
    if separator:
        text = f"{scheme}://{re.split('[/?#]', rest)[0]}"
    return parse_origin_rule(text)


WIDEST_NETWORK = 8  # prefix length: 10.0.0.0/8 is a private network; wider is most of the internet
WIDEST_IPV6_NETWORK = 32  # a regional registry's allocation to one provider; 2a00::/8 is most of Europe's
# IPv6 blocks that hold every IPv4 address, and where (6to4 from bit 16, the rest at the end):
# their rules reach what the IPv4 network inside them does.
_IPV4_INSIDE = (
    (ipaddress.ip_network("::ffff:0:0/96"), 96), (ipaddress.ip_network("64:ff9b::/96"), 96),
    (ipaddress.ip_network("64:ff9b:1::/48"), 96), (ipaddress.ip_network("2002::/16"), 16),
)
# Top-level names no one can register (RFC 6761, 6762, 8375; ICANN's .internal): a glob just
# under them (`*.localhost`, `*.internal`) reaches only one's own hosts.
_UNREGISTRABLE = frozenset({"localhost", "test", "example", "invalid", "local", "internal", "onion", "home.arpa"})


def _reaches_registrable(labels: list[str], suffixes: PublicSuffixes) -> bool:
    """Whether a name rule's glob can stand for a name anyone may register: the glob is in the
    rule's public suffix or the label just under it (`*.co.uk`; `*.elb.amazonaws.com`, whose
    every label under elb.amazonaws.com is a suffix: a glob is a label no rule of the list
    names, which its wildcards take as any), or it can be a suffix's own label, with a name
    left of it (`api.*.amazonaws.com` is api.s3.amazonaws.com, a bucket; a leading `*.`
    spans labels, so `*.amazonaws.com` is any bucket's name too)."""
    in_suffix = suffixes.suffix_labels(".".join(labels))
    if any("*" in label for label in labels[-(in_suffix + 1):]):
        return True
    return any(
        "*" in label and (i > 0 or label == "*") and ".".join(labels[i + 1:]) in suffixes.parents
        for i, label in enumerate(labels)
    )


def reaches_any_host(rule: str, suffixes: PublicSuffixes | None = None) -> bool:
    """Whether a hosts rule or origins rule lets every host, or nearly every host, through:
    hosts anyone may own. Such a rule is only ever set on purpose. Decided by what the rule
    matches (in its canonical form), with or without a port (`https://*.*` for origins):

    - a name with a glob in its public suffix or the label just under it (`*`, `*.*`, `*.**`,
      `api.*`, `*.com`, `*example.com`, `*.co.uk`, `*.github.io`): anyone who registers a name
      there gets matched, unless its top-level name is one no one can register
      (`*.localhost`, `*.test`, `*.internal`). The public suffixes are `suffixes`, by default
      the system's Public Suffix List (vaultcore.publicsuffix; without one, only top-level
      names: `*.co.uk` is then not judged);
    - an IPv4 glob whose first octet is one (`*.*.*.*`, `*.0.0.1`);
    - a network wider than a /8 (`0.0.0.0/0`, `0.0.0.0/1` and `128.0.0.0/1` together), IPv4
      inside IPv6 counted as IPv4 (`::ffff:0.0.0.0/96`), and a public IPv6 network wider
      than a /32 (`2a00::/8`, `::/0`).

    Not judged: several rules that only together reach nearly everything."""
    try:
        rule = parse_origin_rule(rule) if "://" in rule else normalise_host_rule(rule)
    except ValueError:
        pass  # matches nothing: judged as written
    host = rule.partition("://")[2] or rule
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]  # a port
    labels = host.split(".")
    if len(labels) == 4 and all(label == "*" or label.isdigit() for label in labels):
        return labels[0] == "*"  # an IPv4 glob: 10.*.*.* is a /8
    if "*" in host and _reaches_registrable(labels, suffixes or system_suffixes()):
        return ".".join(labels[-2:]) not in _UNREGISTRABLE and labels[-1] not in _UNREGISTRABLE
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        return False
    if isinstance(network, ipaddress.IPv4Network):
        return network.prefixlen < WIDEST_NETWORK
    for block, ipv4_at in _IPV4_INSIDE:
        if network.overlaps(block):
            return network.prefixlen - ipv4_at < WIDEST_NETWORK
    return network.prefixlen < (WIDEST_NETWORK if network.is_private else WIDEST_IPV6_NETWORK)
