"""The in-memory secret index and the policy that decides whether a key may be resolved.

Pure logic, no I/O: `vault.py` builds a `SecretIndex` from the decrypted state and the
active configuration; the proxy asks it for a `Lookup` bound to one request's destination.
Every refusal is a `SubstitutionError` whose code tells the proxy 403 (policy) or 400.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vaultcore.hostrules import host_matches, origin_matches
from vaultcore.placeholders import Lookup, SubstitutionError

LOCAL_SOURCE = "local"
LOCALHOST = "localhost"

# Refusals that are about where a secret may go (403); everything else is a bad request (400).
POLICY_CODES = frozenset(
    {
        "no_hosts_rule", "host_not_allowed", "origin_not_allowed", "plaintext_not_allowed", "host_mismatch",
        "placeholder_in_authority", "sni_mismatch", "name_not_served", "mint_only",
    }
)
# A minted credential (an OAuth access token) that must be minted, or minted again, first: the
# proxy mints it and resolves the request again; a client never sees this code.
MINT_NEEDED = "mint_needed"


@dataclass(frozen=True)
class Secret:
    key: str
    value: str | bytes = field(repr=False)
    hosts: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()
    source: str = LOCAL_SOURCE
    usable_until: float | None = None  # a minted token: not sent from then on (vaultcore.tokens)
    mint_only: str | None = None  # a token source's credential: only its minting sends it (vaultcore.tokens)


@dataclass(frozen=True)
class Destination:
    """Where a request goes: the host the proxy connects to, its scheme, and the web
    origin that made it (the `Origin` header), if any."""

    host: str
    scheme: str = "https"
    origin: str | None = None
    via: str | None = None  # an upstream proxy the request travels through
    verified: bool = True  # whether an HTTPS upstream's certificate is verified
    port: int | None = None  # None: unknown, then only hosts rules without a port match

    def cleartext_hops(self) -> list[str]:
        """Hosts that could read the request on its way: the destination over plain HTTP or
        unverified TLS, and an upstream proxy carrying plain HTTP (it reads the request whole)."""
        hops = [self.host] + ([self.via] if self.via else [])  # unverified TLS ends at the next proxy too
        return [] if self.scheme == "https" and self.verified else hops


@functools.lru_cache(maxsize=1024)
def is_loopback(host: str) -> bool:
    """Whether connecting to `host` reaches this machine, whatever a DNS server says: a
    loopback address, or `localhost`, which every system answers from /etc/hosts. Names under
    it (`app.localhost`, `localhost.`) are not: a resolver may ask DNS about them (glibc with
    `hosts: files dns` does), and a hostile DNS server would get what was sent in clear."""
    host = host.lower()
    if host.startswith("[") and host.endswith("]") and ":" in host:  # an IPv6 literal; `[localhost]` is no name
        host = host[1:-1]
    if host == LOCALHOST:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    # ::ffff:127.0.0.1 (a dual-stack socket's view of an IPv4 client) is loopback; Python
    # before 3.13 says it is not.
    return (ip.ipv4_mapped or ip).is_loopback if isinstance(ip, ipaddress.IPv6Address) else ip.is_loopback


def origin_allowed(secret: Secret, destination: Destination) -> bool:
    """Non-browser requests (no origin) pass; a page's origin must be in the secret's list."""
    return destination.origin is None or origin_matches(destination.origin, secret.origins)


def check_cleartext(key: str, destination: Destination, *, allow_plaintext: bool) -> None:
    """Refuse `key` where a hop that is not loopback could read the request."""
    exposed = [hop for hop in destination.cleartext_hops() if not is_loopback(hop)]
    if exposed and not allow_plaintext:
        raise SubstitutionError(
            "plaintext_not_allowed", key,
            f"refusing to send secret {key!r} where {', '.join(map(repr, exposed))} can read it "
            "(plain HTTP, an upstream proxy, or an unverified certificate): "
            "use https, or start the proxy with `--set vault_allow_plaintext=true`",
        )


def check_unkeyed(name: str, destination: Destination, *, allow_plaintext: bool) -> None:
    """The policy for credentials that are not the vault's (AWS keys from a profile or the
    default chain, `name` being where they come from): they have no hosts or origins rule of
    their own, only their signing rule's hosts, so no web page may use them; the plaintext
    rule holds as for any key."""
    if destination.origin is not None:
        raise SubstitutionError(
            "origin_not_allowed", name,
            f"a web page at {destination.origin!r} may not have requests signed with {name}: "
            "only vault keys can be allowed for web origins (sign with vault keys, and add the origin to them)",
        )
    check_cleartext(name, destination, allow_plaintext=allow_plaintext)


class SecretIndex:
    """Keys to secrets, in resolution order: provider keys first, then local secrets.

    A local secret whose key a provider also has is shadowed ("overridden by duplicate key")
    and recorded in `shadowed`, so `status` can say so. `unfetched` maps the aliases the
    active configuration has no value for to their last fetch error (None: never fetched),
    so that a refusal of one names the fix (`secret fetch`), not `local set`."""

    def __init__(
        self, provider_secrets: Iterable[Secret] = (), local_secrets: Iterable[Secret] = (),
        unfetched: Mapping[str, str | None] | None = None,
    ):
        self._secrets: dict[str, Secret] = {}
        self.shadowed: dict[str, str] = {}
        self.unfetched = dict(unfetched or {})
        for secret in provider_secrets:
            self._secrets.setdefault(secret.key, secret)
        for secret in local_secrets:
            if secret.key in self._secrets:
                self.shadowed[secret.key] = self._secrets[secret.key].source
            else:
                self._secrets[secret.key] = secret

    def overlaid(self, secrets: Iterable[Secret]) -> SecretIndex:
        """This index with `secrets` in front, in place of any of the same key: the tokens
        the proxy minted, or a rotation's pending version for one retry."""
        index = SecretIndex(unfetched=self.unfetched)
        index._secrets = {**self._secrets, **{secret.key: secret for secret in secrets}}
        index.shadowed = self.shadowed
        return index

    def __len__(self) -> int:
        return len(self._secrets)

    def __contains__(self, key: object) -> bool:
        return key in self._secrets

    def get(self, key: str) -> Secret | None:
        return self._secrets.get(key)

    def secrets(self) -> list[Secret]:
        return list(self._secrets.values())

    def check(self, key: str, destination: Destination, *, allow_plaintext: bool = False) -> Secret:
        """The secret for `key` if `destination` may receive it; otherwise a SubstitutionError
        that names the key and the fix (never the value)."""
        secret = self._secrets.get(key)
        # A web page learns nothing from a refusal it can read (a same-origin probe): unless
        # its origin is allowed, every answer is the same, whether the key exists or not.
        if destination.origin is not None and (secret is None or not origin_allowed(secret, destination)):
            raise SubstitutionError(
                "origin_not_allowed", key,
                f"a web page at {destination.origin!r} may not use secret {key!r}: "
                f"add the origin with `--origins {destination.origin}` if you trust it",
            )
        if secret is None:
            raise SubstitutionError("unknown_key", key, self._unknown(key))
        if secret.mint_only is not None:
            raise SubstitutionError(
                "mint_only", key,
                f"{key!r} is a credential of token {secret.mint_only!r} (tokens.yaml): only the proxy sends it, to the "
                f"token endpoint when it mints; a request uses <<vault:{secret.mint_only}>>",
            )
        if not secret.hosts:
            raise SubstitutionError(
                "no_hosts_rule", key,
                f"secret {key!r} has no hosts rule, so it is injected nowhere: "
                f"`vaultproxy local set {key} --hosts {destination.host}` (or `hosts:` in its configuration)",
            )
        if not host_matches(destination.host, destination.port, secret.hosts):
            raise SubstitutionError(
                "host_not_allowed", key,
                f"secret {key!r} is not allowed for host {destination.host!r} (its hosts: {', '.join(secret.hosts)})",
            )
        check_cleartext(key, destination, allow_plaintext=allow_plaintext)
        if secret.usable_until is not None and time.time() >= secret.usable_until:
            raise SubstitutionError(MINT_NEEDED, key, f"{key!r} is a token that must be minted first ({secret.source})")
        return secret

    def _unknown(self, key: str) -> str:
        alias = key.split(".", 1)[0]  # a JSON secret's keys are alias.field
        if alias not in self.unfetched:
            return (
                f"unknown key {key!r}: add it with `vaultproxy local set {key} --hosts HOST` "
                "or map it in the active configuration"
            )
        error = self.unfetched[alias]
        why = f"its last fetch failed ({error})" if error else "it has not been fetched yet"
        return f"{key!r} is mapped in the active configuration as {alias!r}, but {why}: `vaultproxy secret fetch {alias}`"

    def lookup_for(self, destination: Destination, *, keep_unknown: bool = False, allow_plaintext: bool = False) -> Lookup:
        """A placeholders.Lookup bound to one request. With `keep_unknown`, unknown keys stay
        literal (on_missing: keep); every other refusal still raises."""

        def lookup(key: str) -> str | bytes | None:
            # A page whose origin may not use a key learns nothing either: with keep, its
            # placeholders stay literal whether the key exists or not.
            secret = self._secrets.get(key)
            if keep_unknown and (secret is None or not origin_allowed(secret, destination)):
                return None
            return self.check(key, destination, allow_plaintext=allow_plaintext).value

        return lookup
