"""Part of 1: what the addons' hooks cost per request, in process, without the network.

Through mitmdump every figure carries mitmproxy's own per-request work (and the machine's
noise); here only the hooks run, on real `http.HTTPFlow`s inside mitmproxy's addon test
context: every request and response hook that ships, on both of vaultproxy's addon objects
(VaultProxy's `requestheaders`, with the client gate in it, Substitution's `requestheaders`
and `request`, VaultProxy's `responseheaders` and `response`) for configurations b and c,
and mitmproxy's ModifyHeaders (`requestheaders`, `responseheaders`) for d. The requests come
on one keep-alive connection of the proxy's own user, as the gate admits it when it opens
(the /proc lookup is once per connection). There is no event loop: the audit line is
written, and the vault's files are checked, for every request. Flow and response creation
is not timed; the times are CPU time of the bench's thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mitmproxy import connection, http
from mitmproxy.addons.modifyheaders import ModifyHeaders
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from bench.common import alternate, median, timed
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


def per_request_us(hooks: Hooks, upstream: str, headers: Mapping[str, str], client: connection.Client) -> float:
    """Mean µs of the request hooks plus the response hooks over CYCLES fresh flows: all
    requests, then all responses (flows are independent), each batch timed in CPU time."""
    on_request, on_response = hooks
    flows = [flow(upstream, headers, client) for _ in range(CYCLES)]
    spent = timed(lambda: [on_request(f) for f in flows])
    for f in flows:
        f.response = RESPONSE.copy()
    spent += timed(lambda: [on_response(f) for f in flows])
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


def run(vault_home: Path, upstream: str, placeholder_headers: Mapping[str, str], modify_headers: list[str], rounds: int) -> dict[str, Any]:
    """µs per request for b, c and d, sampled in alternation; with a check that c and d
    really set the headers (and that c put the placeholders back afterwards)."""
    proxy, modify = VaultProxy(), ModifyHeaders()
    with taddons.context(Proxyserver(), proxy, modify) as context:
        context.configure(proxy, vault_home=str(vault_home))
        context.configure(modify, modify_headers=modify_headers)
        client = owners_connection(proxy)
        variants: dict[str, tuple[Hooks, Mapping[str, str]]] = {
            "b": (vaultproxy_hooks(proxy), {}),
            "c": (vaultproxy_hooks(proxy), placeholder_headers),
            "d": ((modify.requestheaders, modify.responseheaders), placeholder_headers),
        }
        for name in ("c", "d"):
            f = flow(upstream, placeholder_headers, client)
            on_request, _ = variants[name][0]
            on_request(f)
            if any("<<vault:" in f.request.headers[h] for h in placeholder_headers):
                raise RuntimeError(f"in-process hooks of configuration {name} did not set the headers")
        samples = alternate(list(variants), rounds, lambda name: per_request_us(variants[name][0], upstream, variants[name][1], client))
    return {"cycles_per_sample": CYCLES, "samples_us": samples, "median_us": {name: median(s) for name, s in samples.items()}}
