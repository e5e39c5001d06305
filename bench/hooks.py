"""Part of 1: what the addons' hooks cost per request, in process, without the network.

Through mitmdump every figure carries mitmproxy's own per-request work (and the machine's
noise); here only the hooks run, on real `http.HTTPFlow`s inside mitmproxy's addon test
context: every request and response hook that ships, on both of vaultproxy's addon objects
(VaultProxy's `requestheaders`, with the client gate in it, Substitution's `requestheaders`
and `request`, VaultProxy's `responseheaders` and `response`) for configurations b and c,
and mitmproxy's ModifyHeaders (`requestheaders`, `responseheaders`) for d. The requests come
on one keep-alive connection of the proxy's own user, as the gate admits it when it opens
(the /proc lookup is once per connection). Flow and response creation is not timed; the
times are CPU time of the bench's thread.

The hooks run in a running event loop, as in mitmdump, on a proxy that is `running()` as in
mitmdump (its file watch read by the loop, its refresher and reload watcher started), and the
loop turns between requests: what the proxy does once per turn is paid as often as in the
proxy. c is a lone client, one request a turn; c4, the same requests 4 to a turn, is the load
of section 1 (wrk, 8 connections: mitmdump served 3.6 requests a turn, counted in a running
proxy, 2026-12-02). Until the file watch and the audit log's flush interval (2026-12-02,
afternoon), each turn cost three stat calls and an audit write, and c paid them per request;
now c and c4 should agree. The loop's own cost of the turns, measured with no hooks ("turn"),
is taken off every figure: it is no hook's.

Beside the 3-header case, the credentials the proxy computes (issue 14): h, a request it signs
with an HMAC header; v, one it signs with AWS SigV4 (botocore's signer); o, one whose
`Authorization: Bearer <<vault:bench_token>>` takes an OAuth access token the proxy minted
before the run from a real authorization server on loopback (tests/support/oauth_server.py)
and holds: the cost of a request with a cached token. Each goes to a loopback address of its
own (127.0.0.2-4), which its rule or token source names.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mitmproxy import connection, http
from mitmproxy.addons.modifyheaders import ModifyHeaders
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from bench.common import median
from tests.support.oauth_server import AuthorizationServer
from vaultcore.vault import Vault
from vaultproxy.addon import VaultProxy
from vaultproxy.clientgate import Peer

CYCLES = 500  # requests per sample
RESPONSE = http.Response.make(200, b"ok")

Hooks = tuple[Callable[[http.HTTPFlow], None], Callable[[http.HTTPFlow], None]]


def flow(upstream: str, headers: Mapping[str, str], client: connection.Client | None = None) -> http.HTTPFlow:
    f = tflow.tflow()
    f.request = http.Request.make("GET", f"http://{upstream}/", b"", {"Host": upstream, **headers})
    f.response = None
    if client is not None:
        f.client_conn = client
    return f


def owners_connection(proxy: VaultProxy) -> connection.Client:
    """A client connection the gate has admitted as the proxy's own user's."""
    client = tflow.tclient_conn()
    proxy.gate.peers[client] = Peer(os.geteuid(), admitted=True)
    return client


async def in_turns(hook: Callable[[http.HTTPFlow], None], flows: list[http.HTTPFlow], per_turn: int) -> float:
    """CPU seconds of `hook` on every flow, `per_turn` flows to a turn of the event loop; the
    turns include what the hooks left for the loop to do (asyncio runs callbacks in order:
    those scheduled by a turn's hooks run before the next turn's)."""
    start = time.thread_time()
    for i, f in enumerate(flows, 1):
        hook(f)
        if i % per_turn == 0:
            await asyncio.sleep(0)
    await asyncio.sleep(0)
    return time.thread_time() - start


async def per_request_us(hooks: Hooks, upstream: str, headers: Mapping[str, str], client: connection.Client, per_turn: int) -> float:
    """Mean µs of the request hooks plus the response hooks over CYCLES fresh flows: all
    requests, then all responses (flows are independent), `per_turn` to a turn of the event
    loop, each batch timed in CPU time."""
    on_request, on_response = hooks
    flows = [flow(upstream, headers, client) for _ in range(CYCLES)]
    spent = await in_turns(on_request, flows, per_turn)
    for f in flows:
        f.response = RESPONSE.copy()
    spent += await in_turns(on_response, flows, per_turn)
    return spent / CYCLES * 1e6


def vaultproxy_hooks(proxy: VaultProxy) -> Hooks:
    substitution = proxy.substitution

    def on_request(f: http.HTTPFlow) -> None:
        proxy.requestheaders(f)
        substitution.requestheaders(f)
        substitution.request(f)

    def on_response(f: http.HTTPFlow) -> None:
        proxy.responseheaders(f)
        proxy.response(f)

    return on_request, on_response


# The computed credentials' variants: (upstream, request headers, the header the proxy sets).
HMAC_UPSTREAM, SIGV4_UPSTREAM, OAUTH_UPSTREAM = "127.0.0.2:8081", "127.0.0.3:8081", "127.0.0.4:8081"
COMPUTED: dict[str, tuple[str, dict[str, str], str]] = {
    "h": (HMAC_UPSTREAM, {}, "X-Signature"),
    "v": (SIGV4_UPSTREAM, {}, "Authorization"),
    "o": (OAUTH_UPSTREAM, {"Authorization": "Bearer <<vault:bench_token>>"}, "Authorization"),
}
BENCH_CLIENT = ("bench-client", "FAKE-bench-client-secret-0001")


def computed_credentials(home: Path, token_url: str) -> None:
    """The signing rules and the token source of h, v and o, with their keys, in `home`."""
    vault = Vault(home)
    vault.set("bench.hmac_key", "FAKE-bench-hmac-key-0001", hosts=["127.0.0.2"])
    vault.set("bench.access_key_id", "FAKE-BENCH-ACCESS-KEY-ID", hosts=["127.0.0.3"])
    vault.set("bench.secret_access_key", "FAKE-bench-sigv4-secret-0001", hosts=["127.0.0.3"])
    vault.set("bench.client_secret", BENCH_CLIENT[1], hosts=["127.0.0.1"])
    (home / "signing.yaml").write_text(json.dumps({"rules": [
        {"name": "hmac", "hosts": ["127.0.0.2"], "hmac": {"key": "bench.hmac_key", "header": "X-Signature", "message": "{method}{path}{timestamp}{body}"}},
        {"name": "sigv4", "hosts": ["127.0.0.3"], "sigv4": {"access_key_id": "bench.access_key_id",
         "secret_access_key": "bench.secret_access_key", "service": "execute-api", "region": "eu-west-1"}},
    ]}))
    (home / "tokens.yaml").write_text(json.dumps({"tokens": [
        {"name": "bench_token", "hosts": ["127.0.0.4"], "token_url": token_url, "client_id": BENCH_CLIENT[0],
         "client_secret": "bench.client_secret"},
    ]}))


def no_hook(flow: http.HTTPFlow) -> None:
    """What the loop's turns cost by themselves is measured with this."""


def run(vault_home: Path, upstream: str, placeholder_headers: Mapping[str, str], modify_headers: list[str], rounds: int) -> dict[str, Any]:
    """`measure` in an event loop of its own, on a copy of `vault_home` with the computed
    credentials' rules and keys added, and an authorization server for o's token."""
    home = vault_home.with_name(vault_home.name + "-hooks")
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(vault_home, home)
    with AuthorizationServer() as authorization:
        authorization.add_client(*BENCH_CLIENT)
        computed_credentials(home, authorization.token_url)
        result = asyncio.run(measure(home, upstream, placeholder_headers, modify_headers, rounds))
        result["token_requests"] = authorization.token_requests()
    return result


async def measure(vault_home: Path, upstream: str, placeholder_headers: Mapping[str, str], modify_headers: list[str], rounds: int) -> dict[str, Any]:
    """µs per request for b, c, c4 and d, sampled in alternation, each less the loop's own
    cost of its turns in the same round; with a check that c and d really set the headers
    (and that c put the placeholders back afterwards)."""
    proxy, modify = VaultProxy(), ModifyHeaders()
    with taddons.context(Proxyserver(), proxy, modify) as context:  # on this running loop
        context.configure(proxy, vault_home=str(vault_home))
        context.configure(modify, modify_headers=modify_headers)
        proxy.running()  # as in mitmdump: the file watch, the refresher, the reload watcher
        client = owners_connection(proxy)
        await proxy.mint("bench_token")  # o measures a request with a token the proxy holds
        variants: dict[str, tuple[Hooks, str, Mapping[str, str], int]] = {
            "b": (vaultproxy_hooks(proxy), upstream, {}, 1),
            "c": (vaultproxy_hooks(proxy), upstream, placeholder_headers, 1),
            "c4": (vaultproxy_hooks(proxy), upstream, placeholder_headers, 4),
            "d": ((modify.requestheaders, modify.responseheaders), upstream, placeholder_headers, 1),
            **{name: (vaultproxy_hooks(proxy), to, headers, 1) for name, (to, headers, _) in COMPUTED.items()},
            "turn": ((no_hook, no_hook), upstream, {}, 1),
        }
        check_headers_set(variants, placeholder_headers, client)
        gross: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):  # alternating, as bench.common.alternate
            for name, (hooks, to, headers, per_turn) in variants.items():
                gross[name].append(await per_request_us(hooks, to, headers, client, per_turn))
        proxy.done()
    turn = gross.pop("turn")
    samples = {
        name: [us - loop_us / variants[name][3] for us, loop_us in zip(values, turn)] for name, values in gross.items()
    }
    return {
        "cycles_per_sample": CYCLES, "samples_us": samples, "median_us": {name: median(s) for name, s in samples.items()},
        "turn_us": median(turn),
    }


def check_headers_set(variants: Mapping[str, tuple[Hooks, str, Mapping[str, str], int]], placeholder_headers: Mapping[str, str], client: connection.Client) -> None:
    """Each measured configuration really does its work: c and d set the headers, h and v
    sign, o sends the token it holds."""
    expected = {"c": list(placeholder_headers), "d": list(placeholder_headers)} | {name: [header] for name, (_, _, header) in COMPUTED.items()}
    for name, headers in expected.items():
        (on_request, _), to, sent, _ = variants[name]
        f = flow(to, sent, client)
        on_request(f)
        values = [f.request.headers.get(h, "") for h in headers]
        if f.response is not None or any(not v or "<<vault:" in v for v in values):
            raise RuntimeError(f"in-process hooks of configuration {name} did not set {', '.join(headers)}")
