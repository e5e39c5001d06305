"""Signing rules without I/O: the signing.yaml schema (every error names file, line and
field), HMAC signatures as Stripe, Slack and GitHub verify them, the signature alone in the
header a rule sets, the AWS scope a host name gives, and keys from an AWS profile's files.
SigV4 itself is verified end to end by moto (tests/test_proxy_signing.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from pathlib import Path

import pytest

from vaultcore.signing import (
    AwsCredentials, Hmac, RequestParts, SigningError, SigV4, aws_scope, bare_signature, hmac_headers, parse_rules, sigv4_headers,
    vault_keys,
)

RULES = """\
rules:
  - name: aws
    hosts: ["*.amazonaws.com"]  # every AWS host, anyone's bucket included: on purpose
    allow_any_host: true
    sigv4:
      access_key_id: aws.access_key_id
      secret_access_key: aws.secret_access_key
  - name: stripe-webhook
    hosts: [hooks.example.com]
    hmac:
      key: webhook_secret
      header: Stripe-Signature
      value: "t={timestamp},v1={signature}"
      message: "{timestamp}.{body}"
"""
BODY = b'{"id": "evt_1", "amount": 100}'
SECRET = b"FAKE-whsec-test-2b1c"


def request(body: bytes | None = BODY) -> RequestParts:
    return RequestParts("POST", "https://hooks.example.com/in?x=1", "hooks.example.com", "/in?x=1", {"Content-Type": "application/json"}, body)


def test_rules_parse() -> None:
    aws, stripe = parse_rules(RULES, "signing.yaml")
    assert aws.name == "aws" and isinstance(aws.method, SigV4) and aws.keys() == ["aws.access_key_id", "aws.secret_access_key"]
    assert aws.applies_to("secretsmanager.us-east-1.amazonaws.com", 443) and not aws.applies_to("amazonaws.com.evil.test", 443)
    assert isinstance(stripe.method, Hmac) and stripe.method.algorithm == "sha256" and stripe.keys() == ["webhook_secret"]


@pytest.mark.parametrize(("text", "line", "problem"), [
    ("rules: {}\n", 1, "rules: must be a list"),
    ("rules:\n  - {name: a, hosts: [x.example.com]}\n", 2, "rules[0]: needs one of sigv4 or hmac"),
    ("rules:\n  - name: a\n    hosts: [x.example.com]\n    hmac: {key: k, header: 'Bad Header'}\n", 4, "rules[0].hmac.header: must be a header name"),
    ("rules:\n  - name: a\n    hosts: [x.example.com]\n    hmac: {key: k, header: X, message: '{nonce}'}\n", 4, "rules[0].hmac.message: names nonce"),
    ("rules:\n  - name: a\n    hosts: [https://x.example.com]\n    hmac: {key: k, header: X}\n", 3, "rules[0].hosts[0]: must be a host"),
    ("rules:\n  - name: a\n    hosts: [x.example.com]\n    sigv4: {access_key_id: a}\n", 4, "rules[0].sigv4.secret_access_key: missing"),
    ("rules:\n  - name: a\n    hosts: [x.example.com]\n    hmac: {key: k, header: X, algorithm: md5}\n", 4, "rules[0].hmac.algorithm: must be one of"),
    ("rules:\n  - name: a\n    hosts: [x.example.com]\n    hmac: {key: k, header: X, secret: s}\n", 4, "rules[0].hmac.secret: unknown field"),
    ("rules:\n  - name: a\n    hosts: ['*', x.example.com]\n    hmac: {key: k, header: X}\n", 3,
     "rules[0].hosts[0]: * matches nearly every host; add `allow_any_host: true` to this entry"),
    ("rules:\n  - name: \"a\\e[2K\"\n    hosts: [x.example.com]\n    hmac: {key: k, header: X}\n", 2,
     "rules[0].name: must not hold control characters"),
    # format specs and conversions (a review's): {signature:d} failed on every request and the
    # request left unsigned; {timestamp:>999999999} made a 1 GB header; {signature!r} hid the
    # signature from redaction; {body!s} left the body out of what was signed
    ("rules:\n  - name: a\n    hosts: [x.example.com]\n    hmac: {key: k, header: X, value: 'v1={signature:d}'}\n", 4,
     "rules[0].hmac.value: {signature:d} formats its field; write {signature}"),
    ("rules:\n  - name: a\n    hosts: [x.example.com]\n    hmac: {key: k, header: X, value: '{timestamp:>999999999}{signature}'}\n", 4,
     "rules[0].hmac.value: {timestamp:>999999999} formats its field; write {timestamp}"),
    ("rules:\n  - name: a\n    hosts: [x.example.com]\n    hmac: {key: k, header: X, value: '{signature!r}'}\n", 4,
     "rules[0].hmac.value: {signature!r} formats its field; write {signature}"),
    ("rules:\n  - name: a\n    hosts: [x.example.com]\n    hmac: {key: k, header: X, message: '{body!s}'}\n", 4,
     "rules[0].hmac.message: {body!s} formats its field; write {body}"),
    # a Cyrillic і: the file reads api.stripe.com, the rule matches api.xn--strpe-p2e.com
    ("rules:\n  - name: a\n    hosts: [api.str\u0456pe.com]\n    hmac: {key: k, header: X}\n", 3,
     "rules[0].hosts[0]: must be written in ASCII (an international name in its IDNA form): write api.xn--strpe-p2e.com"),
])
def test_bad_rules_name_file_line_and_field(text: str, line: int, problem: str) -> None:
    with pytest.raises(SigningError) as error:
        parse_rules(text, "signing.yaml")
    assert str(error.value).startswith(f"signing.yaml:{line}: {problem}")


def test_a_rule_for_any_host_says_so_and_a_message_may_span_lines() -> None:
    (rule,) = parse_rules("rules:\n  - name: a\n    hosts: ['*']\n    allow_any_host: true\n"
                          "    hmac: {key: k, header: X, message: \"{method}\\n{path}\"}\n", "signing.yaml")
    assert rule.hosts == ("*",) and isinstance(rule.method, Hmac) and rule.method.message == "{method}\n{path}"


def test_stripe_style_signature_verifies_as_stripe_does() -> None:
    _, stripe = parse_rules(RULES, "signing.yaml")
    assert isinstance(stripe.method, Hmac)
    headers = hmac_headers(stripe.method, SECRET, request(), 1_700_000_000)
    fields = dict(part.split("=", 1) for part in headers["Stripe-Signature"].split(","))
    expected = hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()  # Stripe's documented scheme
    assert fields == {"t": "1700000000", "v1": expected}


def test_slack_and_github_styles() -> None:
    slack = Hmac("k", "X-Slack-Signature", "v0={signature}", "v0:{timestamp}:{body}", timestamp_header="X-Slack-Request-Timestamp")
    headers = hmac_headers(slack, SECRET, request(), 1_700_000_001)
    assert headers["X-Slack-Request-Timestamp"] == "1700000001"
    assert headers["X-Slack-Signature"] == "v0=" + hmac.new(SECRET, b"v0:1700000001:" + BODY, hashlib.sha256).hexdigest()
    github = Hmac("k", "X-Hub-Signature-256", "sha256={signature}")
    assert hmac_headers(github, SECRET, request(), 0) == {
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET, BODY, hashlib.sha256).hexdigest(),
    }
    b64 = Hmac("k", "X-Sig", message="{method} {path}", algorithm="sha512", encoding="base64")
    digest = hmac.new(SECRET, b"POST /in?x=1", hashlib.sha512).digest()
    assert hmac_headers(b64, SECRET, request(), 0) == {"X-Sig": base64.b64encode(digest).decode()}


def test_a_streamed_body_cannot_be_signed_but_a_bodyless_template_can() -> None:
    with pytest.raises(SigningError, match="streamed"):
        hmac_headers(Hmac("k", "X-Sig"), SECRET, request(body=None), 0)
    assert "X-Sig" in hmac_headers(Hmac("k", "X-Sig", message="{method}{path}{timestamp}"), SECRET, request(body=None), 5)


@pytest.mark.parametrize(("host", "scope"), [
    ("secretsmanager.us-east-1.amazonaws.com", ("secretsmanager", "us-east-1")),
    ("s3.eu-west-2.amazonaws.com", ("s3", "eu-west-2")),
    ("my-bucket.s3.eu-west-2.amazonaws.com", ("s3", "eu-west-2")),
    ("sts.amazonaws.com", ("sts", "us-east-1")),
    ("api.example.com", (None, None)),
    ("amazonaws.com.evil.test", (None, None)),
])
def test_aws_scope_from_host(host: str, scope: tuple[str | None, str | None]) -> None:
    assert aws_scope(host) == scope


def test_sigv4_needs_a_scope_and_a_whole_body_except_for_s3() -> None:
    rule = SigV4("a", "s")
    keys = vault_keys(rule, {"a": "AKIDEXAMPLE", "s": "FAKE-sigv4-secret"})
    parts = RequestParts("GET", "https://api.example.com/", "api.example.com", "/", {}, b"")
    with pytest.raises(SigningError, match="set sigv4.service and sigv4.region"):
        sigv4_headers(rule, keys, parts)
    streamed = RequestParts("PUT", "https://s3.us-east-1.amazonaws.com/b/k", "s3.us-east-1.amazonaws.com", "/b/k", {}, None)
    headers = sigv4_headers(rule, keys, streamed)
    assert headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD" and headers["Authorization"].startswith("AWS4-HMAC-SHA256 ")
    with pytest.raises(SigningError, match="streamed"):
        sigv4_headers(rule, keys, RequestParts("POST", "https://sts.amazonaws.com/", "sts.amazonaws.com", "/", {}, None))


def test_sigv4_session_tokens_travel_with_the_signature() -> None:
    rule = SigV4("a", "s", session_token="t", service="execute-api", region="eu-west-1")
    keys = vault_keys(rule, {"a": "FAKEEXAMPLE", "s": "FAKE-sigv4-secret", "t": "FAKE-session-token"})
    parts = RequestParts("GET", "https://api.example.com/items", "api.example.com", "/items", {}, b"")
    headers = sigv4_headers(rule, keys, parts)
    assert headers["X-Amz-Security-Token"] == "FAKE-session-token"
    assert "/eu-west-1/execute-api/aws4_request" in headers["Authorization"]
    assert "x-amz-security-token" in headers["Authorization"].split("SignedHeaders=")[1]


def test_sigv4_keys_from_a_profile_or_the_default_chain() -> None:
    profile, chain = parse_rules(
        "rules:\n"
        "  - {name: dev, hosts: [secretsmanager.eu-west-1.amazonaws.com], sigv4: {profile: dev, region: eu-west-1}}\n"
        "  - {name: any, hosts: [sts.amazonaws.com], sigv4: {default_chain: true}}\n",
        "signing.yaml",
    )
    assert profile.method == SigV4(profile="dev", region="eu-west-1") and profile.keys() == [] and profile.names() == ["aws-profile:dev"]
    assert chain.method == SigV4(default_chain=True) and chain.names() == ["aws-default-chain"]


@pytest.mark.parametrize("sigv4, says", [
    ("{profile: dev, access_key_id: a, secret_access_key: s}", "needs one source of keys"),
    ("{region: eu-west-1}", "needs one source of keys"),
    ("{default_chain: false}", "must be true"),
    ("{session_token: t, profile: dev}", "access_key_id: missing"),
])
def test_sigv4_needs_exactly_one_source_of_keys(sigv4: str, says: str) -> None:
    with pytest.raises(SigningError, match=says):
        parse_rules(f"rules:\n  - {{name: r, hosts: [a.test], sigv4: {sigv4}}}\n", "signing.yaml")


def test_profile_keys_load_from_aws_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "credentials").write_text("[dev]\naws_access_key_id = FAKE-PROFILE-KEY-ID\naws_secret_access_key = FAKE-profile-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    aws, rule = AwsCredentials(), SigV4(profile="dev")
    assert not aws.ready(rule) and aws.ready(SigV4("a", "s"))
    aws.load(rule)
    assert aws.ready(rule) and aws.keys(rule).access_key_id == "FAKE-PROFILE-KEY-ID"
    assert "FAKE-profile-secret" not in repr(aws.keys(rule))
    with pytest.raises(SigningError, match="AWS profile 'missing'"):
        aws.load(SigV4(profile="missing"))


def hex_of(digest: bytes) -> str:
    return digest.hex()


def base64_of(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@pytest.mark.parametrize(("rule", "message", "encode"), [
    (Hmac("k", "X-Signature"), BODY, hex_of),
    (Hmac("k", "Stripe-Signature", "t={timestamp},v1={signature}", "{timestamp}.{body}"), b"1700000002." + BODY, hex_of),
    (Hmac("k", "X-Slack-Signature", "v0={signature}", "v0:{timestamp}:{body}"), b"v0:1700000002:" + BODY, hex_of),
    (Hmac("k", "X-Sig", "{{{method}}} sig={signature};{path}", algorithm="sha512", encoding="base64"), BODY, base64_of),
    (Hmac("k", "X-Sig", "{timestamp}{signature}{timestamp}", algorithm="sha1"), BODY, hex_of),
], ids=["default", "stripe", "slack", "base64", "fields-around"])
def test_the_bare_signature_is_found_in_the_header_an_hmac_rule_sets(rule: Hmac, message: bytes, encode: Callable[[bytes], str]) -> None:
    """A server may parse the header and echo only the signature (Stripe's v1, Slack's v0):
    the proxy redacts it alone too, so it must find it where the rule's value template put it.
    (Booleans only in the asserts: pytest would print the signatures compared.)"""
    header = hmac_headers(rule, SECRET, request(), 1_700_000_002)[rule.header]
    found = bare_signature(rule, header)
    assert found is not None and hmac.compare_digest(found, encode(hmac.new(SECRET, message, rule.algorithm).digest()))


def test_the_bare_signature_of_sigv4_is_the_authorizations_signature_part() -> None:
    rule = SigV4("a", "s", session_token="t", service="execute-api", region="eu-west-1")
    keys = vault_keys(rule, {"a": "FAKEEXAMPLE", "s": "FAKE-sigv4-secret", "t": "FAKE-session-token"})
    parts = RequestParts("GET", "https://api.example.com/items", "api.example.com", "/items", {}, b"")
    authorization = sigv4_headers(rule, keys, parts)["Authorization"]
    found = bare_signature(rule, authorization)
    assert found is not None and len(found) == 64 and authorization.endswith(f", Signature={found}")


@pytest.mark.parametrize(("rule", "value"), [
    (Hmac("k", "Stripe-Signature", "t={timestamp},v1={signature}"), "t=1,v1=client"),
    (Hmac("k", "Stripe-Signature", "t={timestamp},v1={signature}"), "v1=" + "ab" * 32),
    (Hmac("k", "X-Signature"), "ab" * 31),
    (SigV4("a", "s"), "Bearer FAKE-token"),
])
def test_a_value_not_in_the_rules_form_has_no_bare_signature(rule: Hmac | SigV4, value: str) -> None:
    assert bare_signature(rule, value) is None
