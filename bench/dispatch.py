"""Part of 1: what each configuration adds to mitmdump's own work on a request, in process.

A request's four hooks (requestheaders, request, responseheaders, response), each followed
by the `update` mitmproxy sends after it, dispatched by mitmproxy's addon manager through the
addon chain mitmdump builds (`DumpMaster`: the default addons, the dumper, the terminal log,
a `-s` script), with no network. bench/hooks.py calls vaultproxy's hooks directly and so
leaves out what mitmproxy charges for offering every event to every addon object; through
mitmdump (section 1) each figure also carries sockets and parsing, and two processes of the
same configuration differ by several per cent (section 1's control, a2). This sits between
the two: the configurations of section 1 (a, a2, b, c, d, e), each mitmdump of section 1 in
a process of its own (b and c share one, as there) pinned to the proxy's CPU, sampled in
alternation, in CPU time of the process's thread.

    python -m bench.dispatch PROCESS VAULT_HOME CONFDIR [narrow]    (a sampler; bench/proxy.py runs them)

A sampler builds its mitmdump, then answers each line "headers" or "plain" on stdin with the
µs per request of CYCLES requests (with or without the three placeholder headers) on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from bench.common import alternate, bench_helper, median, median_interval, pinned_to
from tests.support.env import child_env

CYCLES = 100  # requests per sample: short samples, finely interleaved, cancel the machine's drift
SCRIPT_TIMEOUT = 30.0
# What a sampler can build: section 1's mitmdump processes, but for the 10,000-secret one.
PROCESSES = ("plain", "plain2", "addon", "modify", "null")
# What-ifs beside e, not part of `scripts/bench` (docs/benchmarks.md, "Addon objects, not
# hooks"): e's two addon objects without a hook, and one object with all of e's hooks.
SHAPES = ("bare", "single")


# --- the sampler process ---------------------------------------------------------------------


async def build_master(process: str, vault_home: Path, confdir: Path) -> Any:
    """mitmdump's master as `mitmdump -q` builds it, with no listening server; for "addon"
    and "null", once its script has loaded and appended its second part to the chain."""
    from mitmproxy import options
    from mitmproxy.tools.dump import DumpMaster

    from bench.proxy import NULL_ADDON, modify_headers_specs
    from vaultcore.proxyenv import ADDON_SCRIPT

    opts = options.Options(server=False, confdir=str(confdir))
    master = DumpMaster(opts)
    opts.update(termlog_verbosity="error", flow_detail=0)
    if process == "modify":
        opts.update(modify_headers=modify_headers_specs())
    elif process in ("addon", "null"):
        opts.update_defer(vault_home=str(vault_home))  # declared by the script once it loads
        before = len(master.addons.chain)
        opts.update(scripts=[str(ADDON_SCRIPT if process == "addon" else NULL_ADDON)])
    elif process in SHAPES:
        master.addons.add(*shaped_like_e(process))
    await master.running()
    if process in ("addon", "null"):
        deadline = time.monotonic() + SCRIPT_TIMEOUT
        while len(master.addons.chain) == before:  # mitmproxy loads scripts from a task
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {process} script did not load")
            await asyncio.sleep(0.01)
    return master


def shaped_like_e(shape: str) -> list[object]:
    """The addon objects of a SHAPES what-if: what e costs by its objects, and by its hooks."""
    if shape == "bare":
        return [type("BareFirst", (), {})(), type("BareLast", (), {})()]
    from bench.null_addon import First, Last

    hooks = {name for part in (First, Last) for name in vars(part) if not name.startswith("_") and name != "running"}
    return [type("Single", (), dict.fromkeys(hooks, lambda self, *args: None))()]


def bench_client(master: Any) -> Any:
    """A client connection of the proxy's own user (vaultproxy's gate admits it)."""
    from mitmproxy.addonmanager import traverse
    from mitmproxy.test import tflow

    from vaultproxy.addon import VaultProxy
    from vaultproxy.clientgate import Peer

    client = tflow.tclient_conn()
    for addon in traverse(master.addons.chain):
        if isinstance(addon, VaultProxy):
            addon.gate.peers[client] = Peer(os.geteuid(), admitted=True)
    return client


async def per_request_us(master: Any, client: Any, headers: Mapping[str, str]) -> float:
    """Mean µs of one request's hooks and updates, a request to a turn of the event loop (as
    bench/hooks.py's c); flows and responses are made outside the timing."""
    from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpRequestHook, HttpResponseHeadersHook, HttpResponseHook

    from bench.hooks import RESPONSE, flow
    from bench.proxy import LOOPBACK

    dispatch = master.addons.handle_lifecycle
    flows = [flow(f"{LOOPBACK}:8081", headers, client) for _ in range(CYCLES)]
    start = time.thread_time()
    for f in flows:
        await dispatch(HttpRequestHeadersHook(f))
        await dispatch(HttpRequestHook(f))
        await asyncio.sleep(0)
    spent = time.thread_time() - start
    for f in flows:
        f.response = RESPONSE.copy()
    start = time.thread_time()
    for f in flows:
        await dispatch(HttpResponseHeadersHook(f))
        await dispatch(HttpResponseHook(f))
        await asyncio.sleep(0)
    spent += time.thread_time() - start
    return spent / CYCLES * 1e6


async def check_resolves(master: Any, client: Any) -> None:
    """The addon's sampler does its work: a request's placeholders leave as the values (not
    refused, as a client the gate did not admit would be)."""
    from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpRequestHook

    from bench.hooks import flow
    from bench.proxy import HEADER_VALUES, LOOPBACK, PLACEHOLDER_HEADERS

    f = flow(f"{LOOPBACK}:8081", PLACEHOLDER_HEADERS, client)
    await master.addons.handle_lifecycle(HttpRequestHeadersHook(f))
    await master.addons.handle_lifecycle(HttpRequestHook(f))
    if f.response is not None or [f.request.headers.get(name) for name in PLACEHOLDER_HEADERS] != list(HEADER_VALUES.values()):
        raise RuntimeError("the addon's dispatch sampler did not resolve the placeholders")


def narrow_dispatch() -> None:
    """A what-if, for this bench only (docs/benchmarks.md): mitmproxy's addon manager as it
    would be if it offered each event only to the addon objects that define its hook. Today
    `AddonManager.trigger_event` walks every addon of the chain for every event, each through a
    coroutine, a generator-based context manager and two generators, whether or not it has the
    hook. Here the hooks of each event are listed once (for the sampler's chain, built once
    and never changed: a chain that changes length is listed again, nothing finer) and each
    runs as mitmproxy runs it: its arguments taken from the event for it, in `safecall`,
    awaited when it returns an awaitable, an AddonHalt ending the event. What this saves
    besides the addons that have no hook: the coroutine and the generators per addon that
    has one, and `safecall` is entered per hook instead of per addon of the chain."""
    import inspect

    from mitmproxy import addonmanager, exceptions, hooks

    async def trigger_event(self: addonmanager.AddonManager, event: hooks.Hook) -> None:
        listed = self.__dict__.setdefault("_bench_hooks", {})
        key = (event.name, len(self.chain))
        if (handlers := listed.get(key)) is None:
            handlers = listed[key] = [func for addon in self.chain for _, func in self._iter_hooks(addon, event)]
        for func in handlers:
            try:
                with addonmanager.safecall():
                    result = func(*event.args())
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return

    addonmanager.AddonManager.trigger_event = trigger_event  # type: ignore[method-assign]


async def serve(process: str, vault_home: Path, confdir: Path, narrow: bool) -> None:
    from bench.proxy import PLACEHOLDER_HEADERS

    if narrow:
        narrow_dispatch()
    master = await build_master(process, vault_home, confdir)
    client = bench_client(master)
    if process == "addon":
        await check_resolves(master, client)
    print("ready", flush=True)
    while line := (await asyncio.to_thread(sys.stdin.readline)).strip():
        print(json.dumps(await per_request_us(master, client, PLACEHOLDER_HEADERS if line == "headers" else {})), flush=True)
    await master.done()


# --- the bench's side ------------------------------------------------------------------------


@contextlib.contextmanager
def samplers(
    workdir: Path, vault_home: Path, cpus: frozenset[int] | None, processes: Iterable[str], narrow: bool,
) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """One sampler process for each of `processes`, each stopped on the way out."""
    started: dict[str, subprocess.Popen[str]] = {}
    logs: list[IO[bytes]] = []
    try:
        for process in processes:
            log = (workdir / f"dispatch-{process}.log").open("ab")
            logs.append(log)
            started[process] = child = subprocess.Popen(
                [*bench_helper("dispatch"), process, str(vault_home), str(workdir / "confdir"), *(["narrow"] if narrow else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                env=child_env(home=workdir / "home"), preexec_fn=pinned_to(cpus),
            )
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the dispatch sampler for {process} did not start: see {log.name}")
        yield started
    finally:
        for child in started.values():
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                child.communicate(timeout=30)  # the end of its input ends it
            if child.poll() is None:
                child.kill()
                child.wait()
        for log in logs:
            log.close()


def sample(child: subprocess.Popen[str], headers: bool) -> float:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("headers\n" if headers else "plain\n")
    child.stdin.flush()
    answer = child.stdout.readline()
    if not answer:
        raise RuntimeError("a dispatch sampler exited during the run")
    return float(answer)


def run(
    workdir: Path, vault_home: Path, cpus: frozenset[int] | None, rounds: int, configs: Mapping[str, tuple[str, bool]],
    *, narrow: bool = False,
) -> dict[str, Any]:
    """µs per request of each of `configs` (name -> its process, whether its requests carry
    the placeholder headers; "a" among them), and what each adds over a (the median of the
    per-round differences), over `rounds` alternating samples after one of warm-up.
    `narrow`: with mitmproxy's dispatch as `narrow_dispatch` makes it."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "vault"  # a copy: a running addon writes its proxy.json into its home
    shutil.copytree(vault_home, home, dirs_exist_ok=True)
    with samplers(workdir, home, cpus, dict.fromkeys(process for process, _ in configs.values()), narrow) as started:

        def measure(name: str) -> float:
            process, headers = configs[name]
            return sample(started[process], headers)

        alternate(list(configs), 1, measure)  # warm-up, not recorded
        samples = alternate(list(configs), rounds, measure)
    added = {name: [x - a for x, a in zip(values, samples["a"])] for name, values in samples.items() if name != "a"}
    return {
        "cycles_per_sample": CYCLES, "samples_us": samples,
        "median_us": {name: median(values) for name, values in samples.items()},
        "added_us": {name: median(differences) for name, differences in added.items()},
        "added_interval_us": {name: median_interval(differences) for name, differences in added.items()},  # (low, high, coverage)
    }


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5) or sys.argv[4:] not in ([], ["narrow"]):
        sys.exit("usage: python -m bench.dispatch PROCESS VAULT_HOME CONFDIR [narrow]")
    asyncio.run(serve(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:] == ["narrow"]))
