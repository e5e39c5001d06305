"""Public suffixes: the names under which anyone may register a name of their own.

`*.com` lets a secret go to whoever registers a .com name, and so does `*.co.uk`, or
`*.github.io` (anyone's GitHub Pages site): `hostrules.reaches_any_host` judges a glob by the
public suffix it sits under. Which names are public suffixes is the Public Suffix List
(https://publicsuffix.org/list/), which systems ship for curl and browsers (Debian's and
Ubuntu's `publicsuffix` package, a dependency of libpsl). It is read from there, not bundled:
a copy in the project would go stale while the system's is updated with it. Where no system
list is found, the list's default rule stands alone (every top-level name is a public
suffix, and nothing longer is), which still judges `*.com` and `*` but not `*.co.uk`.

Parsing and matching are pure; `system_suffixes` reads the file once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

# Where systems put the list (Debian and Ubuntu, Fedora's publicsuffix-list, Homebrew).
SYSTEM_LISTS = (
    Path("/usr/share/publicsuffix/public_suffix_list.dat"),
    Path("/usr/share/publicsuffix/effective_tld_names.dat"),
    Path("/opt/homebrew/share/publicsuffix/public_suffix_list.dat"),
    Path("/usr/local/share/publicsuffix/public_suffix_list.dat"),
)


@dataclass(frozen=True)
class PublicSuffixes:
    """The list's rules, as it writes them: lower case, international names in Unicode."""

    names: frozenset[str]  # `co.uk`
    wildcards: frozenset[str]  # `ck` for the rule `*.ck`: every name one label under it
    exceptions: frozenset[str]  # `www.ck` for the rule `!www.ck`: not a suffix after all
    parents: frozenset[str] = frozenset()  # `amazonaws.com`: the names public suffixes sit under

    @classmethod
    def parse(cls, text: str) -> PublicSuffixes:
        names, wildcards, exceptions = set(), set(), set()
        for line in text.splitlines():
            rule = line.split(maxsplit=1)[0] if line.strip() else ""
            if not rule or rule.startswith("//"):
                continue
            kind = names
            if rule.startswith("!"):
                kind, rule = exceptions, rule[1:]
            elif rule.startswith("*."):
                kind, rule = wildcards, rule[2:]
            kind.add(rule.lower())
        parents: set[str] = set()
        for suffix in names | wildcards:
            labels = suffix.split(".")
            parents.update(".".join(labels[i:]) for i in range(1, len(labels)))
        return cls(frozenset(names), frozenset(wildcards), frozenset(exceptions), frozenset(parents))

    def suffix_labels(self, name: str) -> int:
        """How many of `name`'s last labels are its public suffix (at least one: the list's
        default rule makes every top-level name one). `name` as host rules hold it: lower case,
        international labels in IDNA form (`xn--p1ai`), which the list writes in Unicode."""
        labels = [_unicode(label) for label in name.split(".")]
        for start in range(len(labels)):
            candidate = ".".join(labels[start:])
            if candidate in self.exceptions:
                return len(labels) - start - 1
            if candidate in self.names:
                return len(labels) - start
            if start + 1 < len(labels) and ".".join(labels[start + 1:]) in self.wildcards:
                return len(labels) - start
        return 1


NO_LIST = PublicSuffixes(frozenset(), frozenset(), frozenset())


def _unicode(label: str) -> str:
    if not label.startswith("xn--"):
        return label
    try:
        return label.encode("ascii").decode("idna")
    except UnicodeError:
        return label  # no name the list holds


@functools.cache
def system_suffixes() -> PublicSuffixes:
    """The system's list, read once; NO_LIST when there is none (see the module docstring)."""
    for path in SYSTEM_LISTS:
        try:
            return PublicSuffixes.parse(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeError):
            continue
    return NO_LIST
