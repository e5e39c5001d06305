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

The hooks run in a running event loop, as in mitmdump, and the loop turns between requests:
what the proxy does once per turn (the check of the vault's files, the write of the audit
lines recorded in the turn) is paid as often as in the proxy. c is a lone client, one
request a turn: every request pays both (a lone client through mitmdump: 1.0 requests per
vault check and per audit write). Under section 1's load (wrk, 8 connections) mitmdump made
3.6 requests per vault check and per audit write (counted in the running proxy, 2026-12-02):
c4, the same requests 4 to a turn, is c at that load. The loop's own cost of the turns,
measured with no hooks ("turn"), is taken off every figure: it is no hook's. (Before
2026-12-02 the hooks ran with no event loop: each request paid the vault check and the
audit write too, but apart from the loop's interleaving.)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mitmproxy import connection, http
from mitmproxy.addons.modifyheaders import ModifyHeaders
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from bench.common import median
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


def no_hook(flow: http.HTTPFlow) -> None:
    """What the loop's turns cost by themselves is measured with this."""


def run(vault_home: Path, upstream: str, placeholder_headers: Mapping[str, str], modify_headers: list[str], rounds: int) -> dict[str, Any]:
    """`measure` in an event loop of its own."""
    return asyncio.run(measure(vault_home, upstream, placeholder_headers, modify_headers, rounds))


async def measure(vault_home: Path, upstream: str, placeholder_headers: Mapping[str, str], modify_headers: list[str], rounds: int) -> dict[str, Any]:
    """µs per request for b, c, c4 and d, sampled in alternation, each less the loop's own
    cost of its turns in the same round; with a check that c and d really set the headers
    (and that c put the placeholders back afterwards)."""
    proxy, modify = VaultProxy(), ModifyHeaders()
    with taddons.context(Proxyserver(), proxy, modify) as context:  # on this running loop
        context.configure(proxy, vault_home=str(vault_home))
        context.configure(modify, modify_headers=modify_headers)
        client = owners_connection(proxy)
        variants: dict[str, tuple[Hooks, Mapping[str, str], int]] = {
            "b": (vaultproxy_hooks(proxy), {}, 1),
            "c": (vaultproxy_hooks(proxy), placeholder_headers, 1),
            "c4": (vaultproxy_hooks(proxy), placeholder_headers, 4),
            "d": ((modify.requestheaders, modify.responseheaders), placeholder_headers, 1),
            "turn": ((no_hook, no_hook), {}, 1),
        }
        for name in ("c", "d"):
            f = flow(upstream, placeholder_headers, client)
            on_request, _ = variants[name][0]
            on_request(f)
            if any("<<vault:" in f.request.headers[h] for h in placeholder_headers):
                raise RuntimeError(f"in-process hooks of configuration {name} did not set the headers")
        gross: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):  # alternating, as bench.common.alternate
            for name, (hooks, headers, per_turn) in variants.items():
                gross[name].append(await per_request_us(hooks, upstream, headers, client, per_turn))
    turn = gross.pop("turn")
    samples = {
        name: [us - loop_us / variants[name][2] for us, loop_us in zip(values, turn)] for name, values in gross.items()
    }
    return {
        "cycles_per_sample": CYCLES, "samples_us": samples, "median_us": {name: median(s) for name, s in samples.items()},
        "turn_us": median(turn),
    }
