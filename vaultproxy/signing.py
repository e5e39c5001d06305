"""Signing at the proxy: the mitmproxy side of vaultcore/signing.py.

A signature covers the request exactly as it leaves, so it is the last change: `Substitution`
(last in the chain) signs after resolving placeholders. The keys a rule signs with go through
the same lookup as placeholders (their hosts and origins rules, the plaintext rule, the Host
and SNI checks), and the headers it adds are taken out again, like values, before anything
records the request. The signature is also redacted from the request's response, as values
are (`signatures`; a signed WebSocket handshake's, from the socket's messages and control
frames): a client that holds no key must not read back what it was signed with.

A rule signs a request for its hosts unless the client has signed it itself (the request
already has the header the rule sets); `X-Vaultproxy-Sign: RULE` makes it sign anyway (for
SDKs that always sign, with dummy keys). That header never goes upstream.
"""

from __future__ import annotations

import base64
import re
import time

from mitmproxy import http

from vaultcore.placeholders import SubstitutionError
from vaultcore.signing import (
    AwsCredentials, Hmac, RequestParts, Rule, SigningError, SigV4, bare_signature, hmac_headers, sigv4_headers, vault_keys,
)
from vaultproxy.guard import RequestLookup
from vaultproxy.responses import Signature, Signatures
from vaultproxy.rewrite import Rewrite

MARKER = "X-Vaultproxy-Sign"


def signed_header(rule: Rule) -> str:
    return rule.method.header if isinstance(rule.method, Hmac) else "Authorization"


# What a rule's name keeps in the marker: nothing that could open a placeholder, a near miss of
# one, or end a header line.
_UNMARKED = re.compile(r"[^A-Za-z0-9._-]+")


SESSION_TOKEN_HEADER = b"x-amz-security-token"  # where SigV4 puts temporary keys' session token


def signatures(rule: Rule, change: Rewrite) -> Signatures:
    """The signature `change` (from `signature`) carries, under the marker a response shows in
    its place: an upstream that echoes request headers (httpbin's /headers, debug pages) would
    otherwise hand the client a signature it could not make, over a body it chose, that
    verifies wherever the key is used. Only the header the rule sets (`signature_forms`): what
    else a rule adds (a timestamp, X-Amz-Date, the body's hash) the client knows or can
    compute, and redacting it would rewrite unrelated dates in responses. A session token
    from the vault is redacted as its value; one from an AWS profile or the default chain is no
    value of the vault, and is redacted here, as the signature is. The markers name the rule
    and look like no placeholder, so a client that sends one back is not refused for it."""
    wanted = signed_header(rule).lower().encode()
    name = _UNMARKED.sub("_", rule.name)
    marker = f"[signature of {name}]".encode()
    found = tuple(
        Signature(marker, form, exact=i > 0)
        for field, value in change.fields or () if field.lower() == wanted
        for i, form in enumerate(signature_forms(rule, value))
    )
    if isinstance(rule.method, SigV4) and rule.method.from_aws:
        found += tuple(
            Signature(f"[session token of {name}]".encode(), value, exact=False)
            for field, value in change.fields or () if field.lower() == SESSION_TOKEN_HEADER and value
        )
    return found


def signature_forms(rule: Rule, value: bytes) -> tuple[bytes, ...]:
    """The signature alone in the value of the header `rule` set (or that whole value, where
    it cannot be found), then that value, and the signature in hex (either case) and base64
    (standard and URL-safe, padded or not) of its bytes: a server that parses the header (a
    verifier's error page, a debug view) may echo only the signature (Stripe's v1, SigV4's
    Signature), or decode it and show it another way, and each verifies as the whole value
    does. Only the first is looked for in every escaping (the value holding it is found by
    it); the others as written, which costs a tenth."""
    bare = bare_signature(rule.method, value.decode("utf-8", "surrogateescape"))  # as signature() encoded it
    if bare is None:  # not of the rule's form (a value template without {signature})
        return (value,)
    hex_encoded = isinstance(rule.method, SigV4) or rule.method.encoding == "hex"
    digest = bytes.fromhex(bare) if hex_encoded else base64.b64decode(bare)
    spelled = (digest.hex().encode(), digest.hex().upper().encode(), base64.b64encode(digest), base64.urlsafe_b64encode(digest))
    return tuple(dict.fromkeys((bare.encode(), value, *spelled, *(form.rstrip(b"=") for form in spelled[2:]))))


def rule_for(rules: tuple[Rule, ...], request: http.Request) -> Rule | None:
    """The rule that signs `request`, if any: the first for its host, unless the client
    signed the request itself and did not ask for the rule by name."""
    if not rules:
        return None
    rule = next((r for r in rules if r.applies_to(request.host, request.port)), None)
    if rule is None:
        return None
    marked = request.headers.get(MARKER)
    return rule if marked == rule.name or (marked is None and signed_header(rule) not in request.headers) else None


def signature(rule: Rule, request: http.Request, lookup: RequestLookup, aws: AwsCredentials, *, streamed: bool) -> Rewrite:
    """The request's header fields with the rule's signature headers set (and the marker
    gone), as a Rewrite for the flight to undo; SubstitutionError when a key is refused or
    the request cannot be signed. `aws`: the keys of rules that take AWS's own credentials,
    loaded (`AwsCredentials.ready`)."""
    check_aws_source(rule, lookup)
    values: dict[str, str | bytes] = {}
    for key in rule.keys():
        value = lookup(key)
        if value is None:  # vault_on_missing=keep leaves unknown keys literal: nothing to sign with
            raise SubstitutionError("unknown_key", key, f"signing rule {rule.name!r} needs the vault key {key!r}, which is unknown")
        values[key] = value
    body = None if streamed else (request.raw_content or b"")
    parts = RequestParts(request.method, request.url, request.pretty_host, request.path, request.headers, body)
    try:
        if isinstance(rule.method, Hmac):
            secret = values[rule.method.key]
            added = hmac_headers(rule.method, secret if isinstance(secret, bytes) else secret.encode(), parts, int(time.time()))
        else:
            keys = aws.keys(rule.method) if rule.method.from_aws else \
                vault_keys(rule.method, {k: v if isinstance(v, str) else v.decode() for k, v in values.items()})
            added = sigv4_headers(rule.method, keys, parts)
    except SigningError as e:
        raise cannot_sign(rule, e) from None
    # The fields as they are, less the marker and any the signature replaces, then the signature's
    # (built from the fields: a copy of mitmproxy's Headers costs more than signing).
    replaced = {name.lower().encode() for name in (*added, MARKER)}
    kept = tuple(field for field in request.headers.fields if field[0].lower() not in replaced)
    return Rewrite(fields=kept + tuple((name.encode(), value.encode()) for name, value in added.items()), keys=rule.keys())


def check_aws_source(rule: Rule, lookup: RequestLookup) -> None:
    """Keys from AWS's own configuration have no lookup that checks them: `check_unkeyed`
    does, before they are used, and before they are loaded (a credential_process, STS, SSO)."""
    if isinstance(rule.method, SigV4) and rule.method.from_aws:
        lookup.check_unkeyed(rule.method.credentials_name())


def cannot_sign(rule: Rule, error: SigningError) -> SubstitutionError:
    return SubstitutionError("cannot_sign", rule.name, f"signing rule {rule.name!r}: {error}")
