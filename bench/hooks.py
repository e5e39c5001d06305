"""Part of 1: what the addons' hooks cost per request, in process, without the network.

Through mitmdump every figure carries mitmproxy's own per-request work (and the machine's
noise); here only the hooks run, on real `http.HTTPFlow`s inside mitmproxy's addon test
context: vaultproxy's request hooks (`requestheaders`, `request`) and response hooks
(`responseheaders`, `response`) for configurations b and c, and mitmproxy's ModifyHeaders
(`requestheaders`, `responseheaders`) for d. Flow and response creation is not timed; the
times are CPU time of the bench's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.addons.modifyheaders import ModifyHeaders
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from bench.common import alternate, median, timed
from vaultproxy.addon import VaultProxy

CYCLES = 500  # requests per sample
RESPONSE = http.Response.make(200, b"ok")

Hooks = tuple[Callable[[http.HTTPFlow], None], Callable[[http.HTTPFlow], None]]


def flow(upstream: str, headers: Mapping[str, str]) -> http.HTTPFlow:
    f = tflow.tflow()
    f.request = http.Request.make("GET", f"http://{upstream}/", b"", {"Host": upstream, **headers})
    f.response = None
    return f


def per_request_us(hooks: Hooks, upstream: str, headers: Mapping[str, str]) -> float:
    """Mean µs of the request hooks plus the response hooks over CYCLES fresh flows: all
    requests, then all responses (flows are independent), each batch timed in CPU time."""
    on_request, on_response = hooks
    flows = [flow(upstream, headers) for _ in range(CYCLES)]
    spent = timed(lambda: [on_request(f) for f in flows])
    for f in flows:
        f.response = RESPONSE.copy()
    spent += timed(lambda: [on_response(f) for f in flows])
    return spent / CYCLES * 1e6


def vaultproxy_hooks(proxy: VaultProxy) -> Hooks:
    substitution = proxy.substitution

    def on_request(f: http.HTTPFlow) -> None:
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
        variants: dict[str, tuple[Hooks, Mapping[str, str]]] = {
            "b": (vaultproxy_hooks(proxy), {}),
            "c": (vaultproxy_hooks(proxy), placeholder_headers),
            "d": ((modify.requestheaders, modify.responseheaders), placeholder_headers),
        }
        for name in ("c", "d"):
            f = flow(upstream, placeholder_headers)
            on_request, _ = variants[name][0]
            on_request(f)
            if any("<<vault:" in f.request.headers[h] for h in placeholder_headers):
                raise RuntimeError(f"in-process hooks of configuration {name} did not set the headers")
        samples = alternate(list(variants), rounds, lambda name: per_request_us(variants[name][0], upstream, variants[name][1]))
    return {"cycles_per_sample": CYCLES, "samples_us": samples, "median_us": {name: median(s) for name, s in samples.items()}}
