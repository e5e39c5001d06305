"""Requests signed by the proxy, end to end: real mitmdump with the addon, real clients that
hold no key at all, and servers that verify the signature themselves.

- SigV4: moto's server with IAM enforcement on (it checks each request's signature against
  the IAM user's secret key). curl and requests call Secrets Manager, STS and S3 by their
  AWS names (the proxy's resolver sends them to moto on loopback); the keys are vault keys.
  A wrong key gets the service's own signature error; a host outside the rule is never signed.
- HMAC: an upstream whose recorded request the test verifies as Stripe does.
- Echoes: a signature the proxy made comes back to the client as `[signature of RULE]`, whole,
  alone, re-encoded, or in a signed WebSocket handshake's messages and close frame.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from mitmproxy.test import tflow
from websockets.exceptions import ConnectionClosed

from tests.support.moto import MotoServer, enforced_auth
from tests.support.net import LOOPBACK, wait_until
from tests.support.proxy import MitmdumpProcess, StartProxy, audit_lines, audit_text
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply, WebSocketUpstream, headers_echo
from vaultcore.index import Secret, SecretIndex
from vaultcore.placeholders import find_near_miss, mentions_placeholder
from vaultcore.redaction import Redactor
from vaultcore.signing import Hmac, Rule
from vaultcore.vault import Vault
from vaultproxy.flights import Flights
from vaultproxy.responses import redactor_across, redactor_for
from vaultproxy.rewrite import Rewrite
from vaultproxy.signing import signatures

SIGNING = """\
rules:
  - name: aws
    hosts: ["*.amazonaws.com"]  # every AWS host, anyone's bucket included: on purpose
    allow_any_host: true
    sigv4:
      access_key_id: aws.access_key_id
      secret_access_key: aws.secret_access_key
  - name: webhook
    hosts: [api.example.com]
    hmac:
      key: webhook_secret
      header: Stripe-Signature
      value: "t={timestamp},v1={signature}"
      message: "{timestamp}.{body}"
"""
WEBHOOK_SECRET = "FAKE-whsec-e2e-5d0a"
SECRET_VALUE = "FAKE-fetched-through-the-proxy-7e1b"
JSON_TYPE = "application/x-amz-json-1.1"
TIMEOUT = 60


def start(mitmdump: StartProxy, home: Path) -> MitmdumpProcess:
    # Plain HTTP to moto under AWS names: allowed for this test's proxy only (real AWS is HTTPS).
    return mitmdump(env={"VAULTPROXY_HOME": str(home)}, hosts={"*.amazonaws.com": LOOPBACK, "*.example.com": LOOPBACK},
                    options={"vault_allow_plaintext": True})


def aws_vault(home: Path, access_key_id: str, secret_access_key: str) -> Vault:
    vault = Vault(home)
    vault.set("aws.access_key_id", access_key_id, hosts=["*.amazonaws.com"])
    vault.set("aws.secret_access_key", secret_access_key, hosts=["*.amazonaws.com"])
    (home / "signing.yaml").write_text(SIGNING)
    return vault


def secretsmanager(session: requests.Session, moto: MotoServer, target: str, body: dict[str, object]) -> requests.Response:
    return session.post(f"http://secretsmanager.us-east-1.amazonaws.com:{moto.port}/", data=json.dumps(body),
                        headers={"X-Amz-Target": f"secretsmanager.{target}", "Content-Type": JSON_TYPE}, timeout=TIMEOUT)


def test_sigv4_clients_without_keys_call_aws_through_the_proxy(
    vault_home: Path, moto: MotoServer, mitmdump: StartProxy, tls_upstream: RecordingUpstream, tmp_path: Path
) -> None:
    moto.client().create_secret(Name="svc/token", SecretString=SECRET_VALUE)
    reader_actions = ("secretsmanager:GetSecretValue", "sts:GetCallerIdentity", "s3:*")
    with enforced_auth(moto, reader_actions) as users:
        aws_vault(vault_home, users.reader.access_key_id, users.reader.secret_access_key)
        proxy = start(mitmdump, vault_home)
        session = proxy.requests_session()

        answer = secretsmanager(session, moto, "GetSecretValue", {"SecretId": "svc/token"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["SecretString"] == SECRET_VALUE

        curl = subprocess.run(
            ["curl", "-sS", "--max-time", "30", "-x", proxy.url, f"http://secretsmanager.us-east-1.amazonaws.com:{moto.port}/",
             "-H", "X-Amz-Target: secretsmanager.GetSecretValue", "-H", f"Content-Type: {JSON_TYPE}",
             "-d", '{"SecretId": "svc/token"}'],
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )
        assert curl.returncode == 0 and json.loads(curl.stdout)["SecretString"] == SECRET_VALUE, curl.stderr

        sts = session.post(f"http://sts.amazonaws.com:{moto.port}/", data={"Action": "GetCallerIdentity", "Version": "2011-06-15"},
                           timeout=TIMEOUT)  # service and region from the name: sts, us-east-1
        assert sts.status_code == 200 and users.reader.access_key_id not in sts.text.split("<UserId>")[0], sts.text

        bucket = f"http://s3.us-east-1.amazonaws.com:{moto.port}/signed-bucket"
        assert session.put(bucket, timeout=TIMEOUT).status_code == 200
        assert session.put(f"{bucket}/note.txt", data=b"hello", timeout=TIMEOUT).status_code == 200
        got = session.get(f"{bucket}/note.txt", timeout=TIMEOUT)
        assert got.status_code == 200 and got.content == b"hello"

        # A host outside every rule is never signed.
        plain = session.get(tls_upstream.url_for("other.example.com") + "/v1/items", timeout=TIMEOUT)
        assert plain.status_code == 200
        assert tls_upstream.requests[-1].header("Authorization") is None and tls_upstream.requests[-1].header("X-Amz-Date") is None

        # The wrong secret key: the service's own signature error reaches the client.
        Vault(vault_home).set("aws.secret_access_key", "FAKE-not-the-users-secret-key-0000", hosts=["*.amazonaws.com"])
        wrong = secretsmanager(session, moto, "GetSecretValue", {"SecretId": "svc/token"})
        assert wrong.status_code in (400, 403) and "Signature" in wrong.text, wrong.text

    audit = audit_lines(vault_home, count=0)
    assert any(e["outcome"] == "signed:aws" and e["keys"] == ["aws.access_key_id", "aws.secret_access_key"] for e in audit)
    assert users.reader.secret_access_key not in proxy.output() + audit_text(vault_home)


def test_sigv4_keys_keep_their_own_host_rules(vault_home: Path, mitmdump: StartProxy, moto: MotoServer) -> None:
    """A rule cannot send keys where the keys themselves may not go."""
    vault = aws_vault(vault_home, "FAKE-HOST-RULE-KEY-ID", "FAKE-secret-for-host-rule-test")
    vault.edit("aws.secret_access_key", hosts=["secretsmanager.eu-west-1.amazonaws.com"])
    session = start(mitmdump, vault_home).requests_session()
    refused = secretsmanager(session, moto, "ListSecrets", {})
    assert refused.status_code == 403 and refused.headers["X-Vaultproxy-Error"] == "host_not_allowed"


def test_hmac_signature_verifies_as_the_api_does(vault_home: Path, mitmdump: StartProxy, tls_upstream: RecordingUpstream) -> None:
    Vault(vault_home).set("webhook_secret", WEBHOOK_SECRET, hosts=["api.example.com"])
    (vault_home / "signing.yaml").write_text(SIGNING)
    session = start(mitmdump, vault_home).requests_session()
    body = b'{"type": "payment.succeeded", "amount": 4200}'
    assert session.post(tls_upstream.url_for("api.example.com") + "/hooks", data=body, timeout=TIMEOUT).status_code == 200

    received = tls_upstream.requests[-1]
    fields = dict(part.split("=", 1) for part in (received.header("Stripe-Signature") or "").split(","))
    expected = hmac.new(WEBHOOK_SECRET.encode(), f"{fields['t']}.".encode() + received.body, hashlib.sha256).hexdigest()
    assert received.body == body and hmac.compare_digest(fields["v1"], expected)
    assert abs(time.time() - int(fields["t"])) < 60

    # A client that signs itself is left alone; naming the rule makes the proxy sign anyway.
    own = session.post(tls_upstream.url_for("api.example.com") + "/hooks", data=body, timeout=TIMEOUT,
                       headers={"Stripe-Signature": "t=1,v1=client"})
    assert own.status_code == 200 and tls_upstream.requests[-1].header("Stripe-Signature") == "t=1,v1=client"
    marked = session.post(tls_upstream.url_for("api.example.com") + "/hooks", data=body, timeout=TIMEOUT,
                          headers={"Stripe-Signature": "t=1,v1=dummy", "X-Vaultproxy-Sign": "webhook"})
    assert marked.status_code == 200
    assert tls_upstream.requests[-1].header("Stripe-Signature") != "t=1,v1=dummy"
    assert tls_upstream.requests[-1].header("X-Vaultproxy-Sign") is None


@pytest.mark.parametrize("rules", [True, False], ids=["a host no rule covers", "no signing rules"])
def test_the_signing_marker_never_goes_upstream(
    vault_home: Path, mitmdump: StartProxy, tls_upstream: RecordingUpstream, rules: bool,
) -> None:
    """X-Vaultproxy-Sign is the proxy's, whatever the request holds and whether or not a rule
    signs it: it is taken out of requests with and without placeholders."""
    Vault(vault_home).set("demo", "FAKE-demo-value-2", hosts=["other.example.com"])
    if rules:
        (vault_home / "signing.yaml").write_text(SIGNING)
    session = start(mitmdump, vault_home).requests_session()
    for headers in ({}, {"X-Key": "<<vault:demo>>"}):
        answer = session.get(tls_upstream.url_for("other.example.com") + "/", timeout=TIMEOUT, headers={"X-Vaultproxy-Sign": "webhook", **headers})
        assert answer.status_code == 200
    assert [(r.header("X-Vaultproxy-Sign"), r.header("X-Key")) for r in tls_upstream.wait_for(2)] == [(None, None), (None, "FAKE-demo-value-2")]


@pytest.mark.parametrize(("broken", "said"), [
    ("rules: [{name: x}]\n", "signing.yaml:1: rules[0].hosts: missing"), ("rules: {", "signing.yaml:2: invalid YAML"),
])
def test_a_broken_signing_file_is_reported_and_signs_nothing_new(
    vault_home: Path, mitmdump: StartProxy, tls_upstream: RecordingUpstream, broken: str, said: str
) -> None:
    (vault_home / "signing.yaml").write_text(broken)
    Vault(vault_home).set("demo", "FAKE-demo-value-1", hosts=["api.example.com"])
    proxy = start(mitmdump, vault_home)
    response = proxy.requests_session().get(tls_upstream.url_for("api.example.com") + "/", timeout=TIMEOUT,
                                            headers={"X-Demo": "<<vault:demo>>"})
    assert response.status_code == 200 and tls_upstream.requests[-1].header("Stripe-Signature") is None
    assert said in proxy.output()


def test_sigv4_keys_from_an_aws_profile_and_the_default_chain(vault_home: Path, moto: MotoServer, mitmdump: StartProxy, tmp_path: Path) -> None:
    """Rules may sign with AWS's own configuration instead of vault keys: a named profile, or
    botocore's default chain (here: the credentials file's default profile). Each rule uses
    its own: the profile holds keys IAM does not know, the default profile the reader's."""
    moto.client().create_secret(Name="svc/profile", SecretString=SECRET_VALUE)
    with enforced_auth(moto, ("secretsmanager:GetSecretValue", "sts:GetCallerIdentity")) as users:
        credentials = tmp_path / "aws-credentials"
        credentials.write_text(
            f"[default]\naws_access_key_id = {users.reader.access_key_id}\naws_secret_access_key = {users.reader.secret_access_key}\n"
            "[stale]\naws_access_key_id = FAKE-STALE-PROFILE-KEY-ID\naws_secret_access_key = FAKE-stale-profile-secret\n"
        )
        (vault_home / "signing.yaml").write_text(
            "rules:\n"
            "  - {name: chain, hosts: [secretsmanager.us-east-1.amazonaws.com], sigv4: {default_chain: true}}\n"
            "  - {name: stale, hosts: [sts.amazonaws.com], sigv4: {profile: stale}}\n"
        )
        proxy = mitmdump(
            env={"VAULTPROXY_HOME": str(vault_home), "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
                 "AWS_CONFIG_FILE": str(tmp_path / "aws-config")},
            hosts={"*.amazonaws.com": LOOPBACK}, options={"vault_allow_plaintext": True},
        )
        session = proxy.requests_session()

        answer = secretsmanager(session, moto, "GetSecretValue", {"SecretId": "svc/profile"})
        assert answer.status_code == 200 and answer.json()["SecretString"] == SECRET_VALUE, answer.text
        stale = session.post(f"http://sts.amazonaws.com:{moto.port}/", data={"Action": "GetCallerIdentity", "Version": "2011-06-15"},
                             timeout=TIMEOUT)
        assert stale.status_code == 403 and "InvalidClientTokenId" in stale.text, stale.text

    outcomes = {(e["outcome"], tuple(e["keys"])) for e in audit_lines(vault_home, count=2)}
    assert outcomes == {("signed:chain", ("aws-default-chain",)), ("signed:stale", ("aws-profile:stale",))}
    assert users.reader.secret_access_key not in proxy.output()


def test_a_profile_that_does_not_exist_refuses_clearly(vault_home: Path, mitmdump: StartProxy, tls_upstream: RecordingUpstream) -> None:
    (vault_home / "signing.yaml").write_text("rules:\n  - {name: dev, hosts: [api.example.com], sigv4: {profile: nowhere, service: execute-api, region: eu-west-1}}\n")
    session = start(mitmdump, vault_home).requests_session()
    refused = session.get(tls_upstream.url_for("api.example.com") + "/items", timeout=TIMEOUT)
    assert refused.status_code == 400 and refused.headers["X-Vaultproxy-Error"] == "cannot_sign"
    assert "AWS profile 'nowhere'" in refused.text and not tls_upstream.requests


def test_a_signing_file_written_while_the_proxy_runs_is_picked_up_by_the_watcher(
    vault_home: Path, mitmdump: StartProxy, tls_upstream: RecordingUpstream,
) -> None:
    """signing.yaml and tokens.yaml are edited by hand: the proxy's watcher, not the check
    before each request, picks them up (every half second)."""
    Vault(vault_home).set("webhook_secret", WEBHOOK_SECRET, hosts=["api.example.com"])
    session = start(mitmdump, vault_home).requests_session()
    url = tls_upstream.url_for("api.example.com") + "/hooks"
    assert session.post(url, data=b"{}", timeout=TIMEOUT).status_code == 200
    assert tls_upstream.requests[-1].header("Stripe-Signature") is None

    (vault_home / "signing.yaml").write_text(SIGNING)

    def signed() -> bool:
        session.post(url, data=b"{}", timeout=TIMEOUT)
        return tls_upstream.requests[-1].header("Stripe-Signature") is not None

    wait_until(signed, 10, "the new signing rule to sign")


def test_a_burst_waiting_for_a_profiles_keys_leaves_the_vault_reload_free(
    vault_home: Path, mitmdump: StartProxy, tls_upstream: RecordingUpstream, tmp_path: Path,
) -> None:
    """Loading a profile's keys may take long (SSO, STS, a credential_process). A burst of
    requests waiting for them shares one load: had each waited on a worker thread of its own,
    they would fill the event loop's default thread pool (6 threads on 2 cores), and the
    reload a `local set` needs before the next request would queue behind them."""
    started, release = tmp_path / "process-started", tmp_path / "release"
    credential_process = tmp_path / "slow_credentials.py"
    credential_process.write_text(
        "import json, pathlib, time\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        f"while not pathlib.Path({str(release)!r}).exists():\n    time.sleep(0.05)\n"
        "print(json.dumps({'Version': 1, 'AccessKeyId': 'FAKE-SLOW-KEY-ID', 'SecretAccessKey': 'FAKE-slow-profile-secret'}))\n"
    )
    config = tmp_path / "aws-config"
    config.write_text(f"[profile slow]\ncredential_process = {sys.executable} {credential_process}\n")
    (vault_home / "signing.yaml").write_text(
        "rules:\n  - {name: slow, hosts: [signed.example.com], sigv4: {profile: slow, service: execute-api, region: eu-west-1}}\n"
    )
    proxy = mitmdump(
        env={"VAULTPROXY_HOME": str(vault_home), "AWS_CONFIG_FILE": str(config),
             "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials")},
        hosts={"*.example.com": LOOPBACK},
    )
    signed_url = tls_upstream.url_for("signed.example.com") + "/signed"
    with ThreadPoolExecutor(max_workers=12) as pool:
        burst = [pool.submit(lambda: proxy.requests_session().get(signed_url, timeout=TIMEOUT)) for _ in range(12)]
        try:
            wait_until(started.exists, TIMEOUT, "the credential process to start")
            time.sleep(0.5)  # every request of the burst has reached the proxy and waits
            Vault(vault_home).set("fresh", "FAKE-set-during-the-burst", hosts=["api.example.com"])
            answer = proxy.requests_session().get(
                tls_upstream.url_for("api.example.com") + "/fresh", headers={"X-Key": "<<vault:fresh>>"}, timeout=10,
            )
            assert answer.status_code == 200 and tls_upstream.requests[-1].header("X-Key") == "FAKE-set-during-the-burst"
            assert not any(request.done() for request in burst)  # still waiting for the keys
        finally:
            release.touch()
        statuses = [request.result().status_code for request in burst]
    assert statuses == [200] * 12
    signed = [r for r in tls_upstream.requests if r.path == "/signed"]
    assert len(signed) == 12 and all("Credential=FAKE-SLOW-KEY-ID/" in r.header("Authorization") for r in signed)


PROFILE_RULE = "rules:\n  - {name: dev, hosts: [signed.example.com], sigv4: {profile: dev, service: execute-api, region: eu-west-1}}\n"


def test_keys_from_an_aws_profile_sign_only_what_vault_keys_would(
    vault_home: Path, mitmdump: StartProxy, tls_upstream: RecordingUpstream, upstream: RecordingUpstream, tmp_path: Path,
) -> None:
    """A profile's keys have no hosts or origins rule of their own, but their rule's hosts: the
    request's own checks still hold. A page (with a simple POST that needs no preflight), plain
    HTTP to a host that is not loopback, and a Host header that names another host got
    requests signed with the user's AWS keys, session token and all; each is refused now."""
    credentials = tmp_path / "aws-credentials"
    credentials.write_text("[dev]\naws_access_key_id = FAKE-PROFILE-KEY-ID\naws_secret_access_key = FAKE-profile-secret\n"
                           "aws_session_token = FAKE-profile-session-token\n")
    (vault_home / "signing.yaml").write_text(PROFILE_RULE)
    proxy = mitmdump(env={"VAULTPROXY_HOME": str(vault_home), "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
                          "AWS_CONFIG_FILE": str(tmp_path / "aws-config")}, hosts={"*.example.com": LOOPBACK})
    session = proxy.requests_session()
    signed_url = tls_upstream.url_for("signed.example.com")

    page = session.post(f"{signed_url}/page", data=b"x=1", timeout=TIMEOUT,
                        headers={"Origin": "https://evil.example", "Content-Type": "application/x-www-form-urlencoded"})
    plain = session.get(upstream.url_for("signed.example.com") + "/plain", timeout=TIMEOUT)
    lying = session.get(f"{signed_url}/lying", headers={"Host": "evil.example.com"}, timeout=TIMEOUT)
    refusals = [(r.status_code, r.headers.get("X-Vaultproxy-Error")) for r in (page, plain, lying)]
    assert refusals == [(403, "origin_not_allowed"), (403, "plaintext_not_allowed"), (403, "host_mismatch")]
    assert not upstream.requests and not tls_upstream.requests

    control = session.get(f"{signed_url}/control", timeout=TIMEOUT)
    assert control.status_code == 200
    (received,) = tls_upstream.requests
    assert "Credential=FAKE-PROFILE-KEY-ID/" in received.header("Authorization")
    assert received.header("X-Amz-Security-Token") == "FAKE-profile-session-token"

    # The session token is no vault value, and an upstream that echoes it showed it to the client
    # (a review's): it comes back under a marker, as the signature does.
    tls_upstream.route("/headers", Reply(respond=headers_echo()))
    echoed = session.get(f"{signed_url}/headers", timeout=TIMEOUT)
    assert echoed.status_code == 200 and tls_upstream.requests[-1].header("X-Amz-Security-Token") == "FAKE-profile-session-token"
    assert "FAKE-profile-session-token" not in echoed.text + str(echoed.headers)
    assert echoed.headers["X-Echo-X-Amz-Security-Token"] == "[session token of dev]"


def test_a_request_refused_anyway_loads_no_aws_keys(
    vault_home: Path, mitmdump: StartProxy, tls_upstream: RecordingUpstream, tmp_path: Path,
) -> None:
    """Loading a profile's keys runs its credential_process (or STS, or SSO): a page's request,
    refused for its origin, ran it first."""
    ran = tmp_path / "credential-process-ran"
    process = tmp_path / "credentials.py"
    process.write_text(f"import json, pathlib\npathlib.Path({str(ran)!r}).touch()\n"
                       "print(json.dumps({'Version': 1, 'AccessKeyId': 'FAKE-PROCESS-KEY-ID', 'SecretAccessKey': 'FAKE-process-secret'}))\n")
    config = tmp_path / "aws-config"
    config.write_text(f"[profile dev]\ncredential_process = {sys.executable} {process}\n")
    (vault_home / "signing.yaml").write_text(PROFILE_RULE)
    proxy = mitmdump(env={"VAULTPROXY_HOME": str(vault_home), "AWS_CONFIG_FILE": str(config),
                          "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials")}, hosts={"*.example.com": LOOPBACK})
    page = proxy.requests_session().get(tls_upstream.url_for("signed.example.com") + "/page", timeout=TIMEOUT,
                                        headers={"Origin": "https://evil.example"})
    assert page.status_code == 403 and not ran.exists() and not tls_upstream.requests


ECHO_RULES = """\
rules:
  - name: webhook
    hosts: [api.example.com]
    hmac: {key: webhook_secret, header: X-Signature}
  - name: gateway
    hosts: [gw.example.com]
    sigv4: {access_key_id: gw.access_key_id, secret_access_key: gw.secret_access_key, service: execute-api, region: eu-west-1}
"""
STREAM_ABOVE = "1k"


def shows(answer: requests.Response, text: str) -> bool:
    """Whether the client can read `text` in the answer: its body or any header field."""
    return text in answer.text or any(text in value for value in answer.headers.values())


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_an_echoed_signature_comes_back_as_a_marker(
    vault_home: Path, mitmdump: StartProxy, tls_upstream: RecordingUpstream, streamed: bool,
) -> None:
    """A client that holds no key must not read back a signature the proxy made: over a body it
    chose, an HMAC verifies wherever the key is used. An upstream that echoes request headers
    (httpbin's /headers) shows it as `[signature of RULE]` instead, in its headers and in its
    body, whole or streamed (in small pieces: a signature split across chunks is still found)."""
    vault = Vault(vault_home)
    vault.set("webhook_secret", WEBHOOK_SECRET, hosts=["api.example.com"])
    vault.set("gw.access_key_id", "FAKEAKIDSIGECHO0001", hosts=["gw.example.com"])
    vault.set("gw.secret_access_key", "FAKE-gateway-secret-echo-9f2c", hosts=["gw.example.com"])
    (vault_home / "signing.yaml").write_text(ECHO_RULES)
    tls_upstream.route("/headers", Reply(respond=headers_echo(padding=4096 if streamed else 0), trickle=16 if streamed else 0))
    options = {"stream_large_bodies": STREAM_ABOVE} if streamed else {}
    session = mitmdump(env={"VAULTPROXY_HOME": str(vault_home)}, hosts={"*.example.com": LOOPBACK}, options=options).requests_session()
    chosen = b'{"type": "payout.paid", "amount": 99999999, "account": "attacker"}'

    # (Booleans only in the asserts: pytest would print the signatures compared.)
    for host, header, rule in (("api.example.com", "X-Signature", "webhook"), ("gw.example.com", "Authorization", "gateway")):
        answer = session.post(tls_upstream.url_for(host) + "/headers", data=chosen, timeout=TIMEOUT)
        sent = tls_upstream.requests[-1].header(header) or ""
        if rule == "webhook":
            received = hmac.compare_digest(sent, hmac.new(WEBHOOK_SECRET.encode(), chosen, hashlib.sha256).hexdigest())
        else:
            received = sent.startswith("AWS4-HMAC-SHA256 Credential=FAKEAKIDSIGECHO0001/") and "Signature=" in sent
        signature = sent.rpartition("Signature=")[2]
        marker = f"[signature of {rule}]"
        leaked = shows(answer, sent) or shows(answer, signature)
        marked = answer.headers.get(f"X-Echo-{header}") == marker and f'"{header}": "{marker}"' in answer.text
        assert answer.status_code == 200 and received
        assert not leaked
        assert marked
        assert ("content-length" not in answer.headers) is streamed  # the streamed path was the one taken


BARE_RULES = """\
rules:
  - name: webhook
    hosts: [api.example.com]
    hmac: {key: webhook_secret, header: Stripe-Signature, value: "t={timestamp},v1={signature}", message: "{timestamp}.{body}"}
  - name: gateway
    hosts: [gw.example.com]
    sigv4: {access_key_id: gw.access_key_id, secret_access_key: gw.secret_access_key, service: execute-api, region: eu-west-1}
"""


def stripe_fields(value: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in value.split(",")) if "," in value else {}


def verifies(value: str, body: bytes) -> bool:
    """Whether a Stripe-Signature value signs `body` with the test's webhook secret."""
    fields = stripe_fields(value)
    expected = hmac.new(WEBHOOK_SECRET.encode(), f"{fields.get('t')}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(fields.get("v1", ""), expected)


def bare_signature_echo(request: RecordedRequest) -> tuple[list[tuple[str, str]], bytes]:
    """A `Reply.respond` for a server that parses the signature header and reflects only the
    signature in it (Stripe's v1, SigV4's Signature), as hex and as base64 of its bytes, in a
    header and in its body: a verifier's error page ("signature ... does not match")."""
    stripe, authorization = request.header("Stripe-Signature"), request.header("Authorization")
    bare = stripe_fields(stripe).get("v1", "") if stripe else (authorization or "").rpartition("Signature=")[2]
    as_base64 = base64.b64encode(bytes.fromhex(bare)).decode()
    return [("X-Seen-Signature", bare)], json.dumps({"seen": bare, "seen_base64": as_base64}).encode()


def test_a_signature_echoed_alone_or_re_encoded_comes_back_as_a_marker(
    vault_home: Path, mitmdump: StartProxy, tls_upstream: RecordingUpstream,
) -> None:
    """Redacting the whole header value is not enough: a server that parses it and echoes only
    the signature (Stripe's v1 hex, SigV4's Signature), or its bytes in base64, handed the
    client a signature over a body it chose all the same."""
    vault = Vault(vault_home)
    vault.set("webhook_secret", WEBHOOK_SECRET, hosts=["api.example.com"])
    vault.set("gw.access_key_id", "FAKEAKIDSIGBARE0001", hosts=["gw.example.com"])
    vault.set("gw.secret_access_key", "FAKE-gateway-secret-bare-3e7a", hosts=["gw.example.com"])
    (vault_home / "signing.yaml").write_text(BARE_RULES)
    tls_upstream.route("/verify", Reply(respond=bare_signature_echo))
    session = start(mitmdump, vault_home).requests_session()
    chosen = b'{"type": "payout.paid", "amount": 99999999, "account": "attacker"}'

    # (Booleans only in the asserts: pytest would print the signatures compared.)
    for host, rule in (("api.example.com", "webhook"), ("gw.example.com", "gateway")):
        answer = session.post(tls_upstream.url_for(host) + "/verify", data=chosen, timeout=TIMEOUT)
        received = tls_upstream.requests[-1]
        if rule == "webhook":
            signed_here = verifies(received.header("Stripe-Signature") or "", chosen)
            bare = stripe_fields(received.header("Stripe-Signature") or "").get("v1", "")
        else:
            authorization = received.header("Authorization") or ""
            signed_here = authorization.startswith("AWS4-HMAC-SHA256 Credential=FAKEAKIDSIGBARE0001/")
            bare = authorization.rpartition("Signature=")[2]
        as_base64 = base64.b64encode(bytes.fromhex(bare)).decode() if bare else ""
        marker = f"[signature of {rule}]"
        leaked = shows(answer, bare) or shows(answer, as_base64)
        marked = answer.headers.get("X-Seen-Signature") == marker and answer.json() == {"seen": marker, "seen_base64": marker}
        assert answer.status_code == 200 and signed_here and len(bare) == 64
        assert not leaked
        assert marked


def test_a_signed_websocket_handshakes_signature_is_redacted_from_the_socket(
    vault_home: Path, tls_material: TLSMaterial, mitmdump: StartProxy,
) -> None:
    """A WebSocket's handshake is signed like any request, and its answer is the whole socket:
    an upstream that reflects the handshake in a message, or closes with its signature as the
    reason (a control frame mitmproxy relays with no hook: vaultproxy/wscontrol.py), handed the
    client a valid signature (of the empty body the handshake has)."""
    Vault(vault_home).set("webhook_secret", WEBHOOK_SECRET, hosts=["api.example.com"])
    (vault_home / "signing.yaml").write_text(SIGNING)
    proxy = start(mitmdump, vault_home)
    marker = "[signature of webhook]"

    with WebSocketUpstream(tls_material, echo_handshake=True) as upstream:
        with proxy.websocket(f"wss://api.example.com:{upstream.port}/socket") as socket:
            socket.send("what did you get?")
            echoed = socket.recv(timeout=TIMEOUT)
        sent = upstream.handshakes[-1].header("Stripe-Signature") or ""
    # (Booleans only in the asserts: pytest would print the signatures compared.)
    signed_here = verifies(sent, b"")
    leaked = sent in str(echoed) or stripe_fields(sent).get("v1", "-") in str(echoed)
    marked = json.loads(echoed).get("Stripe-Signature") == marker
    assert signed_here
    assert not leaked
    assert marked

    closing = WebSocketUpstream(tls_material, closing=lambda message: closing.handshakes[-1].header("Stripe-Signature") or "")
    with closing, proxy.websocket(f"wss://api.example.com:{closing.port}/socket") as socket:
        socket.send("bye?")
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=TIMEOUT)
    reason = closed.value.rcvd.reason if closed.value.rcvd is not None else None
    signed_here = verifies(closing.handshakes[-1].header("Stripe-Signature") or "", b"")
    closed_with_marker = reason == marker
    assert signed_here
    assert closed_with_marker


def signed(name: str, signature: bytes) -> tuple[Rule, Rewrite]:
    """An HMAC rule, and the change it made: its header set to `signature` among others."""
    return Rule(name, ("api.example.com",), Hmac("webhook_secret", "X-Signature")), \
        Rewrite(fields=((b"Host", b"api.example.com"), (b"x-signature", signature)), keys=["webhook_secret"])


def test_a_signature_is_redacted_under_a_marker_that_is_no_placeholder() -> None:
    """The marker names the rule with nothing of its name that could open a placeholder (or a
    near miss of one, which the proxy refuses) or end a header line."""
    rule, change = signed("odd <<vault:x>> name\r\n", b"FAKE-signature-0123456789abcdef")
    ((marker, value, exact),) = signatures(rule, change)  # no {signature} in the value template to find: the value alone
    assert marker == b"[signature of odd_vault_x_name_]" and value == b"FAKE-signature-0123456789abcdef" and not exact
    assert not mentions_placeholder(marker) and find_near_miss(marker) is None
    redactor = redactor_for((), signatures(rule, change))
    assert redactor is not None
    assert redactor.redact(b'{"X-Signature": "FAKE-signature-0123456789abcdef"}') == b'{"X-Signature": "[signature of odd_vault_x_name_]"}'


def test_a_retry_is_redacted_for_the_signature_it_replaces_too() -> None:
    """A replay is signed afresh; the upstream may echo the rejected request's signature, made
    with a key that may still be good, into the replay's answer."""
    flights, first, replay = Flights(), tflow.tflow(), tflow.tflow()
    rule, change = signed("webhook", b"FAKE-first-signature-0123")
    flights.remember(first, change, SecretIndex(), signatures=signatures(rule, change))
    used = flights.finish(first)
    assert used is not None
    flights.replaying(replay, used)
    rule, change = signed("webhook", b"FAKE-replay-signature-4567")
    flights.remember(replay, change, SecretIndex(), signatures=signatures(rule, change))
    held = flights.used(replay)
    assert held is not None
    redactor = redactor_for(held.uses(), held.signatures)
    assert redactor is not None
    assert redactor.redact(b"FAKE-first-signature-0123 FAKE-replay-signature-4567") == b"[signature of webhook] [signature of webhook]"


def test_a_signature_is_redacted_alone_and_in_the_other_encoding_too() -> None:
    """A server that parses the header may echo only the signature in it, or its bytes the
    other way (hex, base64): each is redacted under the same marker, the whole value as one."""
    rule = Rule("webhook", ("api.example.com",), Hmac("webhook_secret", "Stripe-Signature", "t={timestamp},v1={signature}"))
    digest = hashlib.sha256(b"FAKE-digest").digest()
    value = b"t=1700000000,v1=" + digest.hex().encode()
    found = signatures(rule, Rewrite(fields=((b"Stripe-Signature", value),), keys=["webhook_secret"]))
    redactor = redactor_for((), found)
    spellings = [digest.hex(), digest.hex().upper(), base64.b64encode(digest).decode(), base64.b64encode(digest).decode().rstrip("="),
                 base64.urlsafe_b64encode(digest).decode().rstrip("=")]
    echoed = json.dumps({"header": value.decode(), **{f"as_{i}": spelled for i, spelled in enumerate(spellings)}}).encode()
    # (Booleans only in the asserts: pytest would print the signatures compared.)
    redacted = redactor is not None and redactor.redact(echoed) == \
        json.dumps({"header": "[signature of webhook]", **{f"as_{i}": "[signature of webhook]" for i in range(len(spellings))}}).encode()
    assert redacted


def test_a_signature_in_a_value_template_that_is_not_ascii_is_found_alone() -> None:
    """signature() sends the header as UTF-8: its template is matched as such."""
    rule = Rule("webhook", ("api.example.com",), Hmac("webhook_secret", "X-Sig", "sig→{signature}"))
    digest = hashlib.sha256(b"FAKE-digest").digest()
    found = signatures(rule, Rewrite(fields=((b"X-Sig", "sig→".encode() + digest.hex().encode()),), keys=["webhook_secret"]))
    redactor = redactor_for((), found)
    assert redactor is not None and redactor.redact(b"v=" + digest.hex().encode()) == b"v=[signature of webhook]"


def test_a_websockets_signatures_are_kept_while_it_is_open() -> None:
    """The socket is its handshake's answer: the signatures are kept for its messages and
    control frames, under the socket's flow, and forgotten with its keys when it ends."""
    flights, socket, other = Flights(), tflow.twebsocketflow(), tflow.twebsocketflow()
    rule, change = signed("webhook", b"FAKE-handshake-signature-89ab")
    flights.add_websocket_signatures(socket, signatures(rule, change))
    held = redactor_across(flights.websocket_keys(socket), flights.websocket_signatures(socket))
    redacted = held is not None and held.redact(b"got FAKE-handshake-signature-89ab") == b"got [signature of webhook]"
    assert redacted
    assert flights.websocket_signatures(other) == ()
    flights.end_websocket(socket)
    assert flights.websocket_signatures(socket) == ()



def test_a_signed_websockets_redactor_is_built_once_for_its_messages() -> None:
    """Every server message asks for the socket's redactor: one that holds signatures is
    built once for the same keys and signatures (about 30 µs each time otherwise), and anew
    when the socket uses another key."""
    flights, socket = Flights(), tflow.twebsocketflow()
    index = SecretIndex(local_secrets=[Secret("ws.one", "FAKE-ws-one-value", ("api.example.com",))])
    rule, change = signed("webhook", b"FAKE-handshake-signature-cdef")
    flights.add_websocket_signatures(socket, signatures(rule, change))
    flights.add_websocket_keys(socket, ["ws.one"], index)

    def asked() -> Redactor | None:
        return redactor_across(flights.websocket_keys(socket), flights.websocket_signatures(socket))

    first = asked()
    assert first is not None and asked() is first
    flights.add_websocket_keys(socket, ["ws.two"], SecretIndex(local_secrets=[Secret("ws.two", "FAKE-ws-two-value", ("api.example.com",))]))
    again = asked()
    assert again is not first and again is not None
    assert again.redact(b"FAKE-ws-one-value FAKE-ws-two-value FAKE-handshake-signature-cdef") == \
        b"<<vault:ws.one>> <<vault:ws.two>> [signature of webhook]"
