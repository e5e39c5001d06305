"""Credentials that stay fresh, end to end: a real mitmdump with the addon, moto's server as
AWS behind a tap that counts every call the proxy's refresher makes (tests/support/
gatekeepers.py), and an HTTPS API that accepts only the current credential.

The secret is rotated with put_secret_value while the proxy runs and requests flow:
- with `refresh: TTL` the new value is in use within the TTL (plus jitter, plus the proxy's
  reload), with no request ever refused;
- with `refresh_on: [401]` the first request after a rotation succeeds through the retry,
  a burst of 200 concurrent rejected requests makes exactly one fetch, and a credential
  that is simply wrong gets its 401 without another fetch;
- an outage of the provider keeps the cached value in use, and the refresher backs off;
- a JSON secret's keys change together; the CLI and the refresher keep each other's writes;
- a retry takes the route of the request it replays, whatever listener that came in on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Container, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.env import child_env
from tests.support.gatekeepers import Gatekeeper, ProviderTap
from tests.support.moto import REGION, MotoServer
from tests.support.net import LOOPBACK, free_port, is_listening, wait_until
from tests.support.proxy import MitmdumpProcess, StartProxy, audit_lines, audit_text
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply
from vaultcore.profiles import ProviderConfig, SecretMapping
from vaultcore.providers.base import StaticCredentials
from vaultcore.vault import Vault

REPO = Path(__file__).resolve().parents[1]
HOST = "api.example.com"
KEYS = StaticCredentials("FAKEREFRESHTEST00001", "FAKE-refresh-secret-access-key-77c1")
TOKENS = [f"FAKE-rotated-token-{n:02d}-5be0" for n in range(6)]
TIMEOUT = 60


@pytest.fixture
def tap(moto: MotoServer) -> Iterator[ProviderTap]:
    with ProviderTap(moto.endpoint_url) as server:
        yield server


@pytest.fixture
def gatekeeper(tls_material: TLSMaterial) -> Iterator[Gatekeeper]:
    with Gatekeeper(tls_material.server_context(), TOKENS[0]) as server:
        yield server


def provider_vault(home: Path, tap: ProviderTap, *mappings: SecretMapping, refresh: int = 0, refresh_on: tuple[int, ...] = (),
                   hosts: tuple[str, ...] = (HOST,)) -> Vault:
    vault = Vault(home)
    config = ProviderConfig(name="prod", display_name="Prod", region=REGION, endpoint_url=tap.endpoint_url,
                            hosts=hosts, secrets=mappings, refresh=refresh, refresh_on=refresh_on)
    vault.add_config(config, KEYS)
    assert all(r.error is None for r in vault.fetch().values())
    return vault


def start(mitmdump: StartProxy, home: Path, **options: str) -> MitmdumpProcess:
    return mitmdump(env={"VAULTPROXY_HOME": str(home)}, hosts={HOST: LOOPBACK}, options=options)


def assert_no_value_in(proxy: MitmdumpProcess, home: Path, *values: str) -> None:
    recorded = proxy.output() + audit_text(home)
    for value in values:
        assert value not in recorded


def test_ttl_puts_a_rotated_value_in_use_without_a_refused_request(
    vault_home: Path, moto: MotoServer, tap: ProviderTap, tls_upstream: RecordingUpstream, mitmdump: StartProxy
) -> None:
    ttl = 2
    moto.client().create_secret(Name="svc/token", SecretString=TOKENS[0])
    provider_vault(vault_home, tap, SecretMapping("token", "svc/token"), refresh=ttl)
    proxy = start(mitmdump, vault_home)
    session = proxy.requests_session()
    url = tls_upstream.url_for(HOST) + "/v1/items"

    def sent() -> str | None:
        response = session.get(url, headers={"Authorization": "Bearer <<vault:token>>"}, timeout=TIMEOUT)
        assert response.status_code == 200, response.headers.get("X-Vaultproxy-Error")
        return tls_upstream.requests[-1].header("Authorization")

    assert sent() == f"Bearer {TOKENS[0]}"
    moto.client().put_secret_value(SecretId="svc/token", SecretString=TOKENS[1])
    rotated = time.monotonic()
    # Within the TTL (the refresher fetches up to a tenth of it early), the reload (0.5 s) and
    # a margin for a loaded machine: never more than a few TTLs.
    wait_until(lambda: sent() == f"Bearer {TOKENS[1]}", ttl * 4 + 5, "the rotated value to be in use")
    assert time.monotonic() - rotated < ttl * 4 + 5
    assert tap.fetches() >= 1

    status = subprocess.run(
        [sys.executable, "-m", "vaultcore.cli", "status", "--json"], capture_output=True, text=True, timeout=TIMEOUT,
        env=child_env({"VAULTPROXY_HOME": str(vault_home)}, home=vault_home.parent / "user-home"), cwd=REPO, check=True,
    )
    (row,) = [r for r in json.loads(status.stdout)["keys"] if r["key"] == "token"]
    assert row["refresh"] == "2s" and row["last_fetched"] and row["refresh_due"] and row["failures"] == 0
    assert_no_value_in(proxy, vault_home, *TOKENS[:2], KEYS.secret_access_key)


def test_refresh_on_401_retries_once_and_a_burst_fetches_once(
    vault_home: Path, moto: MotoServer, tap: ProviderTap, gatekeeper: Gatekeeper, mitmdump: StartProxy
) -> None:
    moto.client().create_secret(Name="svc/token", SecretString=TOKENS[0])
    provider_vault(vault_home, tap, SecretMapping("token", "svc/token"), refresh_on=(401,))
    proxy = start(mitmdump, vault_home, stream_large_bodies="1k")
    url = f"https://{HOST}:{gatekeeper.port}/v1/items"
    local = threading.local()

    def call(_: int = 0) -> int:
        if not hasattr(local, "session"):
            local.session = proxy.requests_session()
        return local.session.get(url, headers={"Authorization": "Bearer <<vault:token>>"}, timeout=TIMEOUT).status_code

    assert call() == 200
    moto.client().put_secret_value(SecretId="svc/token", SecretString=TOKENS[1])
    gatekeeper.current = TOKENS[1]  # the old token is revoked as the new one goes live
    before = tap.fetches()
    # A streamed upload has left by the time the answer comes: it cannot be sent again, so
    # its rejection goes to the client and nothing is fetched for it.
    streamed = proxy.requests_session().post(url, data=b"x" * 8192, timeout=TIMEOUT,
                                             headers={"Authorization": "Bearer <<vault:token>>"})
    assert streamed.status_code == 401 and tap.fetches() == before
    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(call, range(200)))
    assert statuses == [200] * 200  # every rejected request was replayed with the new value
    assert tap.fetches() - before == 1  # one fetch, however many requests were rejected at once
    assert gatekeeper.shown[TOKENS[1]] == 200

    # A credential that is simply wrong: nothing changes at the provider, the clients get the
    # upstream's 401, and the provider is not asked again within the window.
    gatekeeper.current = "FAKE-a-token-nobody-has"
    before = tap.fetches()
    with ThreadPoolExecutor(max_workers=50) as pool:
        assert set(pool.map(call, range(100))) == {401}
    assert tap.fetches() - before <= 1

    audit = audit_lines(vault_home, count=0)
    assert any(entry["outcome"] == "retried_after_401" and entry["keys"] == ["token"] for entry in audit)
    assert_no_value_in(proxy, vault_home, *TOKENS[:2], KEYS.secret_access_key)


def test_provider_outage_keeps_the_cached_value_and_backs_off(
    vault_home: Path, moto: MotoServer, tap: ProviderTap, tls_upstream: RecordingUpstream, mitmdump: StartProxy
) -> None:
    ttl = 2
    moto.client().create_secret(Name="svc/token", SecretString=TOKENS[0])
    vault = provider_vault(vault_home, tap, SecretMapping("token", "svc/token"), refresh=ttl)
    tap.down = True
    before_outage = len(tap.times)  # the first fetch, above, succeeded
    proxy = start(mitmdump, vault_home)
    session = proxy.requests_session()
    url = tls_upstream.url_for(HOST) + "/v1/items"

    def calls() -> list[float]:
        return [t for t, operation in tap.times[before_outage:] if operation in ("GetSecretValue", "BatchGetSecretValue")]

    # The window opens at the first attempt: a loaded host takes seconds to make the proxy's
    # first AWS client, which is no part of the backoff.
    wait_until(lambda: bool(calls()), 60, "the first refresh attempt")
    watched = 10.0
    while time.monotonic() - calls()[0] < watched:
        response = session.get(url, headers={"Authorization": "Bearer <<vault:token>>"}, timeout=TIMEOUT)
        assert response.status_code == 200 and tls_upstream.requests[-1].header("Authorization") == f"Bearer {TOKENS[0]}"
        time.sleep(0.25)

    # Each attempt is one fetch with botocore's own retry (two calls close together).
    seen = calls()
    in_window = [t for t in seen if t - seen[0] < watched]
    attempts = [t for i, t in enumerate(in_window) if i == 0 or t - in_window[i - 1] > 0.4]
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    # The first attempt comes when the TTL runs out (2 s, less jitter). Without backoff the next
    # would follow every 2 s (5 in 10 s); backoff from 1 s doubling waits 1, 2, 4 s after each
    # failed attempt: at most 4 attempts in 10 s, each gap at least a second longer than the one
    # before, less what the attempts' own length varies by (botocore retries with jitter inside
    # one; "twice the first gap" failed on a slow machine with gaps of 2.3 and 4.1 s).
    assert 3 <= len(attempts) <= 4 and all(later - earlier >= 0.5 for earlier, later in zip(gaps, gaps[1:])), gaps
    row = next(r for r in vault.secret_rows() if r["alias"] == "token")
    assert row["failures"] >= len(attempts) - 1 and row["status"] == "error" and row["last_fetched"]


def test_json_keys_change_together(
    vault_home: Path, moto: MotoServer, tap: ProviderTap, tls_upstream: RecordingUpstream, mitmdump: StartProxy
) -> None:
    def version(n: int) -> str:
        return json.dumps({"user": f"FAKE-user-{n}", "password": f"FAKE-password-{n}"})

    moto.client().create_secret(Name="svc/db", SecretString=version(0))
    provider_vault(vault_home, tap, SecretMapping("db", "svc/db", mode="json"), refresh=1)
    proxy = start(mitmdump, vault_home)
    stop = threading.Event()

    def rotate() -> None:
        n = 0
        while not stop.wait(0.3):
            n += 1
            moto.client().put_secret_value(SecretId="svc/db", SecretString=version(n))

    rotator = threading.Thread(target=rotate)
    rotator.start()
    session = proxy.requests_session()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            response = session.get(tls_upstream.url_for(HOST) + "/login",
                                   headers={"X-Login": "<<vault:db.user>>:<<vault:db.password>>"}, timeout=TIMEOUT)
            assert response.status_code == 200
    finally:
        stop.set()
        rotator.join()
    pairs = [r.header("X-Login") for r in tls_upstream.requests]
    versions = set()
    for pair in pairs:
        user, password = pair.split(":")
        assert user.removeprefix("FAKE-user-") == password.removeprefix("FAKE-password-"), "a half-updated secret went out"
        versions.add(user)
    assert len(versions) >= 2  # values did change during the run


def test_cli_and_refresher_keep_each_others_writes(
    vault_home: Path, moto: MotoServer, tap: ProviderTap, tls_upstream: RecordingUpstream, mitmdump: StartProxy, tmp_path: Path
) -> None:
    for n in range(10):
        moto.client().create_secret(Name=f"svc/s{n}", SecretString=f"FAKE-value-{n}-a")
    vault = provider_vault(vault_home, tap, *(SecretMapping(f"s{n}", f"svc/s{n}") for n in range(10)), refresh=1)
    start(mitmdump, vault_home)
    env = child_env({"VAULTPROXY_HOME": str(vault_home)}, home=tmp_path / "user-home")

    def cli(*words: str, stdin: str | None = None) -> None:
        done = subprocess.run([sys.executable, "-m", "vaultcore.cli", *words], input=stdin, capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=TIMEOUT, check=False)
        assert done.returncode == 0, done.stderr

    for n in range(4):  # while the refresher writes every second
        cli("local", "set", f"local{n}", "--hosts", HOST, stdin=f"FAKE-local-{n}\n")
        moto.client().put_secret_value(SecretId=f"svc/s{n}", SecretString=f"FAKE-value-{n}-b")
        cli("secret", "refresh", f"s{n}")

    state = vault.state()
    assert sorted(state["local"]) == [f"local{n}" for n in range(4)]  # no local write lost
    index = vault.index()
    for n in range(4):  # and no fetch undone by an older one finishing later
        assert index.get(f"s{n}").value == f"FAKE-value-{n}-b"


def test_a_rotation_in_progress_is_retried_with_the_pending_version(
    vault_home: Path, moto: MotoServer, tap: ProviderTap, gatekeeper: Gatekeeper, mitmdump: StartProxy
) -> None:
    moto.client().create_secret(Name="svc/token", SecretString=TOKENS[0])
    vault = provider_vault(vault_home, tap, SecretMapping("token", "svc/token"), refresh_on=(401,))
    proxy = start(mitmdump, vault_home)
    session = proxy.requests_session()
    url = f"https://{HOST}:{gatekeeper.port}/v1/items"
    # A rotation has staged its new version, and the service already takes only that one.
    moto.client().put_secret_value(SecretId="svc/token", SecretString=TOKENS[2], VersionStages=["AWSPENDING"])
    gatekeeper.current = TOKENS[2]

    response = session.get(url, headers={"Authorization": "Bearer <<vault:token>>"}, timeout=TIMEOUT)
    assert response.status_code == 200
    assert gatekeeper.shown[TOKENS[0]] == 1 and gatekeeper.shown[TOKENS[2]] == 1  # current first, then pending
    audit = audit_lines(vault_home, count=0)
    assert [e["outcome"] for e in audit if e["outcome"].startswith("retried")] == ["retried_after_401_with_pending"]
    assert vault.index().get("token").value == TOKENS[0]  # the cache keeps the current version
    assert_no_value_in(proxy, vault_home, TOKENS[0], TOKENS[2])


def test_auto_refresh_serves_other_providers_too(
    vault_home: Path, tls_upstream: RecordingUpstream, mitmdump: StartProxy, tmp_path: Path
) -> None:
    """The refresher goes through the provider interface: a command-line secret manager
    (here a script reading a file) under `refresh: 1s`, through the real proxy."""
    source = tmp_path / "current-token"
    source.write_text(TOKENS[3])
    vault = Vault(vault_home)
    vault.add_config(ProviderConfig(name="tools", display_name="Tools", provider="command", credentials_source="default",
                                    hosts=(HOST,), refresh=1))
    vault.add_secret(SecretMapping("token", mode="plaintext", options=(
        ("command", (sys.executable, "-c", f"print(open({str(source)!r}).read())")),
    )))
    assert vault.fetch()["token"].error is None
    proxy = start(mitmdump, vault_home)
    session = proxy.requests_session()

    def sent() -> str | None:
        response = session.get(tls_upstream.url_for(HOST) + "/v1/items", headers={"Authorization": "<<vault:token>>"},
                               timeout=TIMEOUT)
        assert response.status_code == 200
        return tls_upstream.requests[-1].header("Authorization")

    assert sent() == TOKENS[3]
    source.write_text(TOKENS[4])
    wait_until(lambda: sent() == TOKENS[4], 15, "the command provider's new value to be in use")
    assert_no_value_in(proxy, vault_home, TOKENS[3], TOKENS[4])


def gate(accepted: Container[str]) -> Reply:
    """A plain-HTTP stand-in for an API that takes only the tokens in `accepted` (401 otherwise)."""

    def answer(request: RecordedRequest) -> bytes:
        ok = (request.header("Authorization") or "").removeprefix("Bearer ") in accepted
        status, body = ("200 OK", b'{"ok": true}') if ok else ("401 Unauthorized", b'{"error": "invalid token"}')
        head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        return head.encode() + body

    return Reply(raw=answer)


def shown(requests: list[RecordedRequest]) -> list[int | None]:
    """Which of TOKENS each request carried, by index (an assertion shows no token)."""
    sent = [(r.header("Authorization") or "").removeprefix("Bearer ") for r in requests]
    return [TOKENS.index(token) if token in TOKENS else None for token in sent]


def test_a_retry_takes_the_route_of_the_request_it_replays(
    vault_home: Path, moto: MotoServer, tap: ProviderTap, mitmdump: StartProxy
) -> None:
    """The retry after a 401 goes out the way the rejected request did, which is what the
    plaintext rule judged: from the listener that request came in on, not along the route of
    the proxy's first `--mode` (where mitmproxy's own replay would send it).

    The first mode forwards to a next proxy the plaintext rule does not count as loopback
    (proxy.example.com, which the test resolver inside mitmdump connects to on 127.0.0.1). A
    plain-HTTP request to a loopback API that came in on the regular listener is retried
    directly; one that came in on a listener chained to a loopback next proxy is retried
    through that one; the first mode's next proxy never sees either."""
    client = moto.client()
    client.create_secret(Name="svc/token", SecretString=TOKENS[0])
    client.create_secret(Name="svc/other", SecretString=TOKENS[2])
    provider_vault(vault_home, tap, SecretMapping("token", "svc/token"), SecretMapping("other", "svc/other"),
                   refresh_on=(401,), hosts=(LOOPBACK,))
    # Each secret rotated at the provider; the API (and the loopback next proxy, which answers
    # for it) takes only the new values.
    client.put_secret_value(SecretId="svc/token", SecretString=TOKENS[1])
    client.put_secret_value(SecretId="svc/other", SecretString=TOKENS[3])
    accepted = {TOKENS[1], TOKENS[3]}
    with (
        RecordingUpstream(routes={"/v1/items": gate(accepted)}) as api,
        RecordingUpstream() as far_proxy,
        RecordingUpstream(routes={"/v1/items": gate(accepted)}) as near_proxy,
    ):
        regular_port, near_port = free_port(), free_port()
        proxy = mitmdump(env={"VAULTPROXY_HOME": str(vault_home)}, hosts={"proxy.example.com": LOOPBACK}, args=[
            "--mode", f"upstream:http://proxy.example.com:{far_proxy.port}",  # the first mode: mitmdump's own port
            "--mode", f"regular@{regular_port}",
            "--mode", f"upstream:http://{LOOPBACK}:{near_proxy.port}@{near_port}",
        ])
        wait_until(lambda: is_listening(proxy.pid, regular_port) and is_listening(proxy.pid, near_port), TIMEOUT, "every listener")

        def through(port: int, key: str) -> tuple[int, str | None]:
            with proxy.requests_session() as session:
                session.proxies = {"http": f"http://{LOOPBACK}:{port}"}
                answer = session.get(f"http://{LOOPBACK}:{api.port}/v1/items", headers={"Authorization": f"Bearer <<vault:{key}>>"},
                                     timeout=TIMEOUT)
            return answer.status_code, answer.headers.get("X-Vaultproxy-Error")

        # The premise: a request that would cross the first mode's next proxy in clear text is refused.
        assert through(proxy.port, "token") == (403, "plaintext_not_allowed")

        def far_proxy_saw_nothing() -> bool:
            return far_proxy.connections_accepted == 0 and not any(token.encode() in far_proxy.all_bytes() for token in TOKENS)

        # The regular listener: the API rejects the old value, and the new one goes to it directly.
        assert through(regular_port, "token") == (200, None)
        assert far_proxy_saw_nothing()
        assert shown(api.requests) == [0, 1]
        assert [r.target for r in api.requests] == ["/v1/items"] * 2

        # The listener chained to the loopback next proxy: rejected there, retried there.
        assert through(near_port, "other") == (200, None)
        assert shown(near_proxy.requests) == [2, 3]
        assert [r.target for r in near_proxy.requests] == [f"http://{LOOPBACK}:{api.port}/v1/items"] * 2
        assert len(api.requests) == 2
        assert far_proxy_saw_nothing()
    retried = [e["keys"] for e in audit_lines(vault_home, count=0) if e["outcome"] == "retried_after_401"]
    assert retried == [["token"], ["other"]]
    assert_no_value_in(proxy, vault_home, *TOKENS[:4], KEYS.secret_access_key)
