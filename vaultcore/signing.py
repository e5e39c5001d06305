"""Requests the proxy signs: AWS SigV4, and HMAC signatures of the kind webhooks and many
APIs use. Pure: a rule and a request's parts in, the headers to set out.

The rules live in `$VAULTPROXY_HOME/signing.yaml`, shareable like a configuration: they name
vault keys, never values. A rule applies to requests for its hosts; its keys must also be
allowed for the host (their own hosts rules), as for any placeholder.

    rules:
      - name: aws
        hosts: [secretsmanager.eu-west-1.amazonaws.com]
        sigv4:
          access_key_id: aws.access_key_id          # vault keys (local, or a provider's JSON secret)
          secret_access_key: aws.secret_access_key
          session_token: aws.session_token          # optional
          service: secretsmanager                   # optional where the host names it
          region: eu-west-1                         # likewise
      - name: aws-dev
        hosts: [secretsmanager.eu-west-1.amazonaws.com]
        sigv4:
          profile: dev                              # or `default_chain: true`: botocore's credentials
      - name: webhook
        hosts: ["hooks.example.com"]
        hmac:
          key: webhook_secret
          header: X-Signature
          value: "t={timestamp},v1={signature}"     # default "{signature}"
          message: "{timestamp}.{body}"             # default "{body}"
          algorithm: sha256                         # sha1, sha256 (default), sha512
          encoding: hex                             # hex (default) or base64
          timestamp_header: X-Timestamp             # optional: the timestamp in a header of its own

Templates may name {method}, {host}, {path} (with the query), {timestamp} (Unix seconds, the
proxy's clock) and {body} (the body's bytes as sent); the value template also {signature}.
Stripe: value "t={timestamp},v1={signature}", message "{timestamp}.{body}"; Slack: header
X-Slack-Signature, value "v0={signature}", message "v0:{timestamp}:{body}", timestamp_header
X-Slack-Request-Timestamp; GitHub: header X-Hub-Signature-256, value "sha256={signature}".
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import string
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vaultcore.hostrules import host_matches
from vaultcore.peertext import quoted
from vaultcore.rulefiles import ANY_HOST, NodeReader, check_header, load_named, parse_named

SIGNING_FILE = "signing.yaml"
ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
ENCODINGS = ("hex", "base64")
TEMPLATE_FIELDS = frozenset({"method", "host", "path", "timestamp", "body", "signature"})
AWS_REGION_RE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d")
GLOBAL_REGION = "us-east-1"


class SigningError(ValueError):
    """A rule that cannot be used, or a request it cannot sign; says why and the fix."""


@dataclass(frozen=True)
class SigV4:
    """Keys from the vault (`access_key_id`, `secret_access_key`, `session_token` are vault
    keys), or from an AWS profile or botocore's default chain (`AwsCredentials`)."""

    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    service: str | None = None
    region: str | None = None
    profile: str | None = None
    default_chain: bool = False

    @property
    def from_aws(self) -> bool:
        """Whether the credentials come from AWS's own configuration, not the vault."""
        return self.profile is not None or self.default_chain

    def credentials_name(self) -> str:
        """What the audit log names as the credentials of a rule that uses no vault key."""
        return f"aws-profile:{self.profile}" if self.profile else "aws-default-chain"


@dataclass(frozen=True)
class Hmac:
    key: str  # a vault key
    header: str
    value: str = "{signature}"
    message: str = "{body}"
    algorithm: str = "sha256"
    encoding: str = "hex"
    timestamp_header: str | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    hosts: tuple[str, ...]
    method: SigV4 | Hmac

    def applies_to(self, host: str, port: int | None) -> bool:
        return host_matches(host, port, self.hosts)

    def keys(self) -> list[str]:
        """The vault keys the rule signs with."""
        if isinstance(self.method, Hmac):
            return [self.method.key]
        return [k for k in (self.method.access_key_id, self.method.secret_access_key, self.method.session_token) if k]

    def names(self) -> list[str]:
        """What the rule signs with, as the audit log records it: its vault keys, or where
        its AWS credentials come from."""
        if isinstance(self.method, SigV4) and self.method.from_aws:
            return [self.method.credentials_name()]
        return self.keys()


# --- the rules file ---------------------------------------------------------------------------


def load_rules(home: Path) -> tuple[Rule, ...]:
    """The rules of `home`'s signing.yaml; none when there is no such file."""
    return load_named(home / SIGNING_FILE, "rules", read_rule, SigningError)


def parse_rules(text: str, source: str) -> tuple[Rule, ...]:
    return parse_named(text, source, "rules", read_rule, SigningError)


def read_rule(reader: NodeReader, node: yaml.Node, field: str) -> Rule:
    entries = reader.mapping(node, field, ("name", "hosts", "sigv4", "hmac", ANY_HOST), required=("name", "hosts"))
    if ("sigv4" in entries) == ("hmac" in entries):
        raise reader.error(node, field, "needs one of sigv4 or hmac")
    any_host = reader.flag(entries[ANY_HOST], f"{field}.{ANY_HOST}") if ANY_HOST in entries else False
    hosts = reader.hosts(entries["hosts"], f"{field}.hosts", any_host=any_host)
    method = read_sigv4(reader, entries["sigv4"], f"{field}.sigv4") if "sigv4" in entries else read_hmac(reader, entries["hmac"], f"{field}.hmac")
    return Rule(reader.string(entries["name"], f"{field}.name"), hosts, method)


def read_sigv4(reader: NodeReader, node: yaml.Node, field: str) -> SigV4:
    fields = ("access_key_id", "secret_access_key", "session_token", "service", "region", "profile", "default_chain")
    e = reader.mapping(node, field, fields)
    for given, needed in (("access_key_id", "secret_access_key"), ("secret_access_key", "access_key_id"), ("session_token", "access_key_id")):
        if given in e and needed not in e:
            raise reader.error(node, f"{field}.{needed}", f"missing (required with {given})")
    if len([name for name in ("access_key_id", "profile", "default_chain") if name in e]) != 1:
        raise reader.error(node, field, "needs one source of keys: access_key_id and secret_access_key (vault keys), profile, or default_chain: true")
    if "default_chain" in e and e["default_chain"].value != "true":
        raise reader.error(e["default_chain"], f"{field}.default_chain", "must be true (or left out)")
    optional = {name: reader.key(e[name], f"{field}.{name}") for name in ("access_key_id", "secret_access_key", "session_token") if name in e}
    optional |= {name: reader.string(e[name], f"{field}.{name}") for name in ("service", "region", "profile") if name in e}
    return SigV4(**optional, default_chain="default_chain" in e)


def read_hmac(reader: NodeReader, node: yaml.Node, field: str) -> Hmac:
    e = reader.mapping(node, field, ("key", "header", "value", "message", "algorithm", "encoding", "timestamp_header"),
                       required=("key", "header"))
    return Hmac(
        reader.key(e["key"], f"{field}.key"), reader.string(e["header"], f"{field}.header", check_header),
        reader.string(e["value"], f"{field}.value", _check_template) if "value" in e else "{signature}",
        reader.string(e["message"], f"{field}.message", _check_template, layout=True) if "message" in e else "{body}",
        reader.choice(e["algorithm"], f"{field}.algorithm", ALGORITHMS) if "algorithm" in e else "sha256",
        reader.choice(e["encoding"], f"{field}.encoding", ENCODINGS) if "encoding" in e else "hex",
        reader.string(e["timestamp_header"], f"{field}.timestamp_header", check_header) if "timestamp_header" in e else None,
    )


def _check_template(value: str) -> None:
    """Fields by name only: a format spec or conversion ({signature:d}, {timestamp:>999999999},
    {signature!r}) would fail on every request, build a header of any size, or write the
    signature in a form redaction does not know."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(value) if name is not None]
    except ValueError as e:
        raise ValueError(f"is not a template: {e} (write {{{{ and }}}} for literal braces)") from None
    for name, spec, conversion in fields:
        if spec or conversion:
            written = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ValueError(f"{{{written}}} formats its field; write {{{name}}}")
    names = {name for name, _, _ in fields}
    unknown = names - TEMPLATE_FIELDS
    if unknown:
        raise ValueError(f"names {', '.join(sorted(unknown))}; a template may use {', '.join(sorted(TEMPLATE_FIELDS))}")


# --- signing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestParts:
    """What a signature covers: the request as it leaves, after every other change."""

    method: str
    url: str  # scheme://host[:port]/path?query, as sent
    host: str
    path: str  # path and query
    headers: Mapping[str, str]
    body: bytes | None  # None: streamed, not known when the headers leave


def hmac_headers(rule: Hmac, secret: bytes, request: RequestParts, timestamp: int) -> dict[str, str]:
    """The header `rule` sets: its value template with the signature of its message template."""
    if request.body is None and "{body}" in rule.message:
        raise SigningError(f"cannot sign the body of a streamed request into {rule.header}: send it whole (below stream_large_bodies)")
    fields = {"method": request.method, "host": request.host, "path": request.path, "timestamp": str(timestamp)}
    message = _render_bytes(rule.message, fields, request.body or b"")
    digest = hmac.new(secret, message, ALGORITHMS[rule.algorithm]).digest()
    signature = digest.hex() if rule.encoding == "hex" else base64.b64encode(digest).decode("ascii")
    headers = {rule.header: rule.value.format(**fields, body="", signature=signature)}
    if rule.timestamp_header:
        headers[rule.timestamp_header] = fields["timestamp"]
    return headers


def _render_bytes(template: str, fields: Mapping[str, str], body: bytes) -> bytes:
    """A template as bytes, with the body's raw bytes where it says {body}."""
    parts = template.split("{body}")
    return body.join(part.format(**fields, body="", signature="").encode() for part in parts)


def aws_scope(host: str) -> tuple[str | None, str | None]:
    """(service, region) as an AWS endpoint's name says them; None where it does not."""
    # service.region.amazonaws.com, bucket.s3.region.amazonaws.com, sts.amazonaws.com (global)
    labels = host.lower().rstrip(".").split(".")
    if len(labels) < 3 or labels[-2:] != ["amazonaws", "com"]:
        return None, None
    named = labels[:-2]
    if len(named) >= 2 and AWS_REGION_RE.fullmatch(named[-1]):
        return named[-2], named[-1]
    return named[-1], GLOBAL_REGION


@dataclass(frozen=True)
class Keys:
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def vault_keys(rule: SigV4, values: Mapping[str, str]) -> Keys:
    """The keys of a rule that takes them from the vault; `values`: its vault keys' values."""
    assert rule.access_key_id is not None and rule.secret_access_key is not None
    return Keys(values[rule.access_key_id], values[rule.secret_access_key], values.get(rule.session_token) if rule.session_token else None)


class AwsCredentials:
    """The keys of rules that take them from an AWS profile or botocore's default chain
    (environment, ~/.aws files, SSO, assumed roles, container and instance roles). Loading
    may ask a remote service (STS, SSO, instance metadata), so `load` is for a worker thread;
    the keys are kept until botocore says temporary ones need refreshing."""

    def __init__(self) -> None:
        self._held: dict[SigV4, Any] = {}
        self._lock = threading.Lock()

    def ready(self, rule: SigV4 | Hmac) -> bool:
        """Whether `keys` answers without loading (always, for a rule of vault keys)."""
        if not isinstance(rule, SigV4) or not rule.from_aws:
            return True
        held = self._held.get(rule)
        return held is not None and not (getattr(held, "refresh_needed", None) and held.refresh_needed())

    def load(self, rule: SigV4 | Hmac) -> None:
        """Blocking: load (or refresh) the rule's credentials; SigningError when there are none."""
        import botocore.session

        with self._lock:  # one load for a burst of requests
            if self.ready(rule):
                return
            assert isinstance(rule, SigV4)
            where = f"AWS profile {rule.profile!r}" if rule.profile else "the default AWS credential chain"
            try:
                held = botocore.session.Session(profile=rule.profile).get_credentials()
                if held is not None:
                    held.get_frozen_credentials()  # refreshes temporary ones here, not when signing
            except Exception as e:  # botocore's errors, STS's ClientError (AccessDenied...): never sign unsigned
                # (a credential_process's standard error, an endpoint's words: quoted)
                raise SigningError(f"cannot load credentials from {where}: {type(e).__name__}: {quoted(str(e))}") from None
            if held is None:
                raise SigningError(f"no credentials found in {where}")
            self._held[rule] = held

    def keys(self, rule: SigV4) -> Keys:
        """The loaded keys (after `ready`, or `load`)."""
        frozen = self._held[rule].get_frozen_credentials()
        return Keys(frozen.access_key, frozen.secret_key, frozen.token)


def sigv4_headers(rule: SigV4, keys: Keys, request: RequestParts) -> dict[str, str]:
    """The headers SigV4 adds (Authorization, X-Amz-Date, and X-Amz-Security-Token and
    X-Amz-Content-Sha256 where they apply)."""
    from botocore.auth import S3SigV4Auth, SigV4Auth  # loaded only once a rule signs
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
    from botocore.credentials import Credentials

    derived_service, derived_region = aws_scope(request.host)
    service, region = rule.service or derived_service, rule.region or derived_region
    if not service or not region:
        raise SigningError(f"cannot tell the AWS service and region from {request.host!r}: set sigv4.service and sigv4.region")
    s3 = service == "s3"
    if request.body is None and not s3:
        raise SigningError(f"cannot sign a streamed request to {service}: SigV4 covers the body; send it whole (below stream_large_bodies)")
    skipped = {"authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256", "proxy-connection", "connection"}
    headers = {k: v for k, v in request.headers.items() if k.lower() not in skipped}
    aws_request = AWSRequest(method=request.method, url=request.url, data=request.body or b"", headers=headers)
    if request.body is None:  # S3 takes UNSIGNED-PAYLOAD: the body streams after the headers
        aws_request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    credentials = Credentials(keys.access_key_id, keys.secret_access_key, keys.session_token)
    (S3SigV4Auth if s3 else SigV4Auth)(credentials, service, region).add_auth(aws_request)
    added = {"Authorization", "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256"}
    return {name: value for name, value in aws_request.headers.items() if name in added or name.lower() in {a.lower() for a in added}}


# --- the signature alone ------------------------------------------------------------------------

# In SigV4's Authorization: "AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=<hex>".
_SIGV4_SIGNATURE = re.compile(r"(?:^|[\s,])Signature=(?P<signature>[0-9a-f]{64})(?=$|[\s,])")


def bare_signature(rule: SigV4 | Hmac, value: str) -> str | None:
    """The signature alone in `value`, the value of the header `rule` sets (`hmac_headers`,
    `sigv4_headers`): a server may parse that header and echo only the signature (Stripe's
    v1, SigV4's Signature), which verifies as well as the whole value does. None when `value`
    is not of the rule's form."""
    if isinstance(rule, SigV4):
        found = _SIGV4_SIGNATURE.search(value)
    else:
        pattern = _value_pattern(rule)
        found = pattern.fullmatch(value) if pattern is not None else None
    return found["signature"] if found else None


@functools.lru_cache(maxsize=64)
def _value_pattern(rule: Hmac) -> re.Pattern[str] | None:
    """`rule`'s value template as a pattern (None if it holds no signature): its literal text
    as it is, {signature} a group of exactly what the algorithm and encoding make (so a field
    beside it, a timestamp's digits, cannot take part of it), any other field as little text
    as the rest allows (and the same text where the template names it again). Cached: a rule
    signs request after request."""
    size = ALGORITHMS[rule.algorithm]().digest_size
    if rule.encoding == "hex":
        signature = f"[0-9a-f]{{{2 * size}}}"
    else:  # four characters for every three bytes begun, the last of them padding
        padding = -size % 3
        signature = f"[A-Za-z0-9+/]{{{4 * -(-size // 3) - padding}}}={{{padding}}}"
    groups = {"signature": "signature"}  # field name -> group name (a field may be no identifier: "{0}")
    seen: set[str] = set()
    parts: list[str] = []
    for literal, name, _, _ in string.Formatter().parse(rule.value):
        parts.append(re.escape(literal))
        if name is None:
            continue
        group = groups.setdefault(name, f"field{len(groups)}")
        parts.append(f"(?P={group})" if name in seen else f"(?P<{group}>{signature if name == 'signature' else '.*?'})")
        seen.add(name)
    return re.compile("".join(parts), re.DOTALL) if "signature" in seen else None
