"""1. Proxy throughput and latency: what vaultproxy adds to a small HTTP/1.1 request.

The configurations, sampled in alternation through real mitmdump processes, with a load
generator (wrk, or bench/loadgen.py) in its own process on the other CPU and the fast
upstream of bench/upstream.py:

    a  plain mitmdump
    a2 a second plain mitmdump, the control: two processes of one configuration differ by this
       much in the same run (a target missed by less is within the noise)
    b  mitmdump + vaultproxy, a request without placeholders
    c  mitmdump + vaultproxy, three header placeholders
    d  plain mitmdump whose own modify_headers sets the same three headers
    e  plain mitmdump + bench/null_addon.py (vaultproxy's hooks, doing nothing): what any
       addon shaped like vaultproxy costs, the floor under b

    f  as b, and g as c, through a proxy whose vault holds 10,000 local secrets and 1,000 AWS
       secrets (moto) under auto-refresh, refreshed during the run (bench/refreshing.py)

b and c share one mitmdump process, f and g another. Before measuring, one request per configuration goes
to the upstream's /echo, and the bench stops unless the headers arrived as intended. When a
target is missed, mitmdump + vaultproxy is profiled under c's load, and the Python calls a
request makes are counted under a, b, c and d's (bench/profiled_mitmdump.py).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import dispatch, hooks, refreshing
from bench.common import (
    REPO, Child, CpuPlan, Estimate, Target, alternate, bench_helper, median, paired, per_round_ratios, pinned_to, sched_seconds, shortfall,
    table,
)
from bench.profiled_mitmdump import START_SIGNAL, STOP_SIGNAL
from tests.support.env import child_env
from tests.support.net import LOOPBACK, free_port, is_listening, wait_until
from vaultcore.proxyenv import mitmdump_argv
from vaultcore.vault import Vault

MITMDUMP = Path(sys.executable).with_name("mitmdump")
LUA_SCRIPT = Path(__file__).with_name("proxy.lua")
NULL_ADDON = Path(__file__).with_name("null_addon.py")
PROJECT_PACKAGES = ("vaultproxy", "vaultcore")
PROFILE_LINES = 25
# The configurations whose calls per request are counted on a miss. e, the addon of
# vaultproxy's shape that does nothing, is the floor: what mitmproxy charges for being there.
COUNTED = ("a", "b", "c", "d", "e")
DISPATCH_FILE = Path("mitmproxy", "addonmanager.py")  # where mitmproxy offers each event to each addon
START_ATTEMPTS = 3
# Fake values: distinctive, so the /echo check proves they arrived, and not secrets.
HEADER_VALUES = {f"bench.header{i}": f"bench-header-value-{i}-not-a-secret" for i in (1, 2, 3)}
PLACEHOLDER_HEADERS = {f"X-Key-{i}": f"<<vault:bench.header{i}>>" for i in (1, 2, 3)}


@dataclass(frozen=True)
class Config:
    label: str
    process: str  # which mitmdump serves it
    placeholders: bool  # whether the request carries the three placeholder headers


CONFIGS = {
    "a": Config("plain mitmdump", "plain", False),
    "a2": Config("a second plain mitmdump (the control)", "plain2", False),
    "b": Config("mitmdump + vaultproxy, no placeholders", "addon", False),
    "c": Config("mitmdump + vaultproxy, 3 header placeholders", "addon", True),
    "d": Config("plain mitmdump + modify_headers (3 headers)", "modify", True),
    "e": Config("plain mitmdump + empty addon with vaultproxy's hooks", "null", False),
    "f": Config("as b; the vault: 10,000 secrets, 1,000 under auto-refresh", "scaled", False),
    "g": Config("as c; the vault: 10,000 secrets, 1,000 under auto-refresh", "scaled", True),
}
HOOK_LABELS = {
    "b": "vaultproxy, no placeholders (client gate included)",
    "c": "vaultproxy, 3 header placeholders, a lone client (one request to a turn of the event loop: whatever is done once a turn is paid by each)",
    "c4": "the same, 4 requests to a turn of the event loop, as under section 1's load",
    "d": "mitmproxy ModifyHeaders, 3 headers",
    "h": "vaultproxy, a request it signs with an HMAC header",
    "v": "vaultproxy, a request it signs with AWS SigV4 (botocore)",
    "o": "vaultproxy, `Bearer <<vault:TOKEN>>` with an OAuth token it minted and holds",
}


def start_mitmdump(
    workdir: Path,
    *,
    vault_home: Path | None = None,
    extra: Sequence[str] = (),
    cpus: frozenset[int] | None = None,
    launcher: Sequence[str] | None = None,
) -> Child:
    """mitmdump as users run it (with the addon: `vaultcore.proxyenv.mitmdump_argv`), quiet
    and with its own confdir, alike for every configuration. Returns it started.
    `launcher` replaces the mitmdump executable (bench/profiled_mitmdump.py)."""
    options = ["-q", "--set", f"confdir={workdir / 'confdir'}", *extra]
    for attempt in range(START_ATTEMPTS):
        port = free_port()  # another process may take it first: then try another
        if vault_home is not None:
            argv = mitmdump_argv(vault_home, LOOPBACK, port, options)
        else:
            argv = [str(MITMDUMP), "--listen-host", LOOPBACK, "--listen-port", str(port), *options]
        if launcher is not None:
            argv = [*launcher, *argv[1:]]
        child = Child(argv, workdir / "mitmdump.log", cpus=cpus, home=workdir / "home", ready=lambda pid, port=port: is_listening(pid, port))
        try:
            child.start()
        except RuntimeError:
            if attempt == START_ATTEMPTS - 1:
                raise
            continue
        child.port = port
        return child
    raise AssertionError("unreachable")


def header_vault(home: Path) -> Path:
    """A vault with the three header secrets, bound to the loopback upstream."""
    vault = Vault(home)
    for key, value in HEADER_VALUES.items():
        vault.set(key, value, hosts=[LOOPBACK])
    return home


def modify_headers_specs() -> list[str]:
    """mitmproxy's own equivalent: `/~q/NAME/VALUE` sets the header on requests."""
    return [f"/~q/{name}/{value}" for name, value in zip(PLACEHOLDER_HEADERS, HEADER_VALUES.values())]


def modify_headers_options() -> list[str]:
    return [arg for spec in modify_headers_specs() for arg in ("--set", f"modify_headers={spec}")]


def request_headers(config: Config) -> dict[str, str]:
    return dict(PLACEHOLDER_HEADERS) if config.placeholders else {}


def raw_request(upstream_port: int, path: str, headers: Mapping[str, str], *, close: bool = False) -> bytes:
    """The absolute-form request a proxied client sends; the same bytes wrk sends."""
    lines = [f"GET http://{LOOPBACK}:{upstream_port}{path} HTTP/1.1", f"Host: {LOOPBACK}:{upstream_port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def echoed_head(proxy_port: int, upstream_port: int, headers: Mapping[str, str]) -> bytes:
    """What the upstream received for one request through the proxy (its /echo route)."""
    with socket.create_connection((LOOPBACK, proxy_port), timeout=30) as sock:
        sock.sendall(raw_request(upstream_port, "/echo", headers, close=True))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, _, body = answer.partition(b"\r\n\r\n")
    if not status.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"the proxy answered {status.splitlines()[0]!r}, not 200: its log says why")
    return bytes.fromhex(body.decode())


def check_configuration(name: str, config: Config, proxy_port: int, upstream_port: int) -> None:
    """Stop the bench unless configuration `name` sends what it claims to."""
    head = echoed_head(proxy_port, upstream_port, request_headers(config)).lower()
    expected = [f"{h}: {v}".lower().encode() for h, v in zip(PLACEHOLDER_HEADERS, HEADER_VALUES.values())]
    substituted = all(line in head for line in expected) and b"<<vault:" not in head
    absent = not any(h.lower().encode() in head for h in PLACEHOLDER_HEADERS)
    if not (substituted if config.placeholders else absent):
        raise RuntimeError(f"configuration {name} ({config.label}) did not send the expected headers upstream")


def load_command(loadgen: str, proxy_port: int, upstream_port: int, headers: Mapping[str, str], connections: int, seconds: float) -> tuple[list[str], dict[str, str]]:
    if loadgen == "wrk":
        env = {
            "BENCH_TARGET": f"http://{LOOPBACK}:{upstream_port}/",
            "BENCH_HOST": f"{LOOPBACK}:{upstream_port}",
            "BENCH_HEADERS": "\n".join(f"{h}: {v}" for h, v in headers.items()),
        }
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(LUA_SCRIPT), f"http://{LOOPBACK}:{proxy_port}/"]
        return argv, env
    request = raw_request(upstream_port, "/", headers)
    return [*bench_helper("loadgen"), str(proxy_port), str(connections), str(seconds), request.hex()], {}


def run_load(loadgen: str, plan: CpuPlan, proxy: Child, upstream_port: int, headers: Mapping[str, str], connections: int, seconds: float) -> dict[str, Any]:
    """One load run: requests per second, p50 and p99 latency (ms), errors; the proxy's CPU
    time per request (µs), and the shares of the run it was busy and waiting for a CPU."""
    argv, env = load_command(loadgen, proxy.port, upstream_port, headers, connections, seconds)
    cpu_before, wait_before = sched_seconds(proxy.pid)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 120, env=child_env(env), cwd=REPO, preexec_fn=pinned_to(plan.client),
    )
    cpu_after, wait_after = sched_seconds(proxy.pid)
    line = next((line for line in done.stdout.splitlines() if line.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"{argv[0]} failed (status {done.returncode}): {done.stderr.strip()[-2000:]}")
    result = json.loads(line.removeprefix("BENCH_RESULT "))
    requests, duration = result["requests"], result["duration_us"] / 1e6
    return {
        "rps": requests / duration,
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "cpu_us_per_request": (cpu_after - cpu_before) / requests * 1e6 if requests else float("nan"),
        "busy": (cpu_after - cpu_before) / duration,
        "cpu_wait": (wait_after - wait_before) / duration,
        "requests": requests,
        "errors": sum(result["errors"].values()),
    }


def choose_loadgen(requested: str) -> str:
    if requested == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if requested == "wrk" and not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed (apt-get install wrk), use --loadgen python")
    return requested


def process_options(home: Path, scaled: Path) -> dict[str, dict[str, Any]]:
    """`start_mitmdump`'s arguments for each mitmdump process of CONFIGS."""
    return {
        "plain": {},
        "plain2": {},
        "addon": {"vault_home": home},
        "scaled": {"vault_home": scaled},
        "modify": {"extra": modify_headers_options()},
        "null": {"extra": ["-s", str(NULL_ADDON)]},
    }


def start_processes(stack: contextlib.ExitStack, workdir: Path, home: Path, scaled: Path, plan: CpuPlan) -> dict[str, Child]:
    processes: dict[str, Child] = {}
    for process, kwargs in process_options(home, scaled).items():
        processes[process] = stack.enter_context(start_mitmdump(workdir / process, cpus=plan.proxy, **kwargs))
    return processes


def addon_profile(workdir: Path, home: Path, upstream_port: int, plan: CpuPlan, loadgen: str, connections: int, seconds: float) -> dict[str, Any]:
    """Where mitmdump + vaultproxy spends its time under configuration c's load: the share
    of the event loop's busy time (not waiting in select) inside vaultproxy/vaultcore, and
    per function of ours."""
    session_file = workdir / "session.json"
    with contextlib.ExitStack() as stack:
        proxy = stack.enter_context(start_mitmdump(workdir, vault_home=home, cpus=plan.proxy, launcher=[*bench_helper("profiled_mitmdump"), "time", str(session_file)]))
        run_load(loadgen, plan, proxy, upstream_port, PLACEHOLDER_HEADERS, connections, 1.0)  # warm-up
        os.kill(proxy.pid, START_SIGNAL)
        run_load(loadgen, plan, proxy, upstream_port, PLACEHOLDER_HEADERS, connections, seconds)
        os.kill(proxy.pid, STOP_SIGNAL)
        wait_until(session_file.exists, 60, "the profile to be written")
    from pyinstrument.session import Session

    root = Session.load(str(session_file)).root_frame()
    if root is None:
        raise RuntimeError("the profile recorded no samples")
    busy = root.time - idle_time(root)
    ranked = sorted(project_functions(root).items(), key=lambda item: -item[1])[:PROFILE_LINES]
    return {
        "seconds": seconds,
        "busy_share": busy / root.time,
        "project_share": sum(t for _, t in outermost_project_frames(root)) / busy,
        "functions": [{"function": name, "share": t / busy} for name, t in ranked],
    }


def call_counts(workdir: Path, home: Path, upstream_port: int, plan: CpuPlan, loadgen: str, connections: int, seconds: float) -> dict[str, dict[str, float]]:
    """Python calls per request of mitmdump under each COUNTED configuration's load: in all,
    in vaultproxy's and vaultcore's functions, and in mitmproxy's addon manager (its offering
    of each event to each addon object). Counts, unlike times, do not move with the machine."""
    options = process_options(home, home)
    counts: dict[str, dict[str, float]] = {}
    for name in COUNTED:
        config, out = CONFIGS[name], workdir / name / "calls.json"
        launcher = [*bench_helper("profiled_mitmdump"), "calls", str(out)]
        with start_mitmdump(workdir / name, cpus=plan.proxy, launcher=launcher, **options[config.process]) as proxy:
            run_load(loadgen, plan, proxy, upstream_port, request_headers(config), connections, 1.0)  # warm-up
            os.kill(proxy.pid, START_SIGNAL)
            load = run_load(loadgen, plan, proxy, upstream_port, request_headers(config), connections, seconds)
            os.kill(proxy.pid, STOP_SIGNAL)
            wait_until(out.exists, 60, "the call counts to be written")
        calls: dict[str, int] = json.loads(out.read_text())["calls"]
        requests = load["requests"]
        files = {function: function.rpartition(":")[0] for function in calls}
        counts[name] = {
            "all": sum(calls.values()) / requests,
            "ours": sum(n for function, n in calls.items() if is_project_file(files[function])) / requests,
            "dispatch": sum(n for function, n in calls.items() if Path(files[function]).parts[-2:] == DISPATCH_FILE.parts) / requests,
            "requests": requests,
        }
    return counts


def idle_time(frame: Any) -> float:
    """Time the event loop spent waiting for I/O (in the selector), not working."""
    if frame.function == "select" and (frame.file_path or "").endswith("selectors.py"):
        return frame.time
    return sum(idle_time(child) for child in frame.children)


def is_project(frame: Any) -> bool:
    return is_project_file(frame.file_path or "")


@functools.cache
def is_project_file(path: str) -> bool:
    """Whether `path` (a code object's file name: relative to the bench's working directory
    when the module was found there) is in one of PROJECT_PACKAGES, installed or in this
    tree. By its directories, not by a substring: a clone is often itself named vaultproxy,
    which would make every frame of its .venv ours (and a relative path none of them)."""
    resolved = (REPO / path).resolve()
    return any(
        parent.name in PROJECT_PACKAGES and (parent.parent == REPO or parent.parent.name == "site-packages")
        for parent in resolved.parents
    )


def outermost_project_frames(frame: Any) -> list[tuple[Any, float]]:
    if frame is None:
        return []
    if is_project(frame):
        return [(frame, frame.time)]
    return [found for child in frame.children for found in outermost_project_frames(child)]


def project_functions(root: Any) -> dict[str, float]:
    """Inclusive time of each vaultproxy/vaultcore function, summed over every call path
    (a function under itself counted once)."""
    times: dict[str, float] = {}

    def walk(frame: Any, path: frozenset[str]) -> None:
        if is_project(frame):
            name = f"{frame.class_name + '.' if frame.class_name else ''}{frame.function}  {frame.file_path_short}:{frame.line_no}"
            if name not in path:
                times[name] = times.get(name, 0.0) + frame.time
                path = path | {name}
        for child in frame.children:
            walk(child, path)

    walk(root, frozenset())
    return times


def run(settings: Mapping[str, Any], workdir: Path, plan: CpuPlan) -> tuple[dict[str, Any], str, list[Target]]:
    loadgen = choose_loadgen(settings["loadgen"])
    connections, seconds = settings["connections"], settings["seconds"]
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(Child(bench_helper("upstream"), workdir / "upstream.log", cpus=plan.client, announces_port=True))
        home = header_vault(workdir / "vault")
        moto = stack.enter_context(Child(bench_helper("motoserver"), workdir / "moto.log", announces_port=True))
        scaled = refreshing.scaled_vault(header_vault(workdir / "scaled-vault"), f"http://{LOOPBACK}:{moto.port}")
        processes = start_processes(stack, workdir, home, scaled, plan)
        for name, config in CONFIGS.items():
            check_configuration(name, config, processes[config.process].port, upstream.port)

        def measure(name: str, duration: float = seconds) -> dict[str, Any]:
            config = CONFIGS[name]
            return run_load(loadgen, plan, processes[config.process], upstream.port, request_headers(config), connections, duration)

        for name in CONFIGS:  # warm-up, not recorded
            measure(name, settings["warmup_seconds"])
        samples = alternate(list(CONFIGS), settings["rounds"], measure)
        if not all(p.alive() for p in processes.values()):
            raise RuntimeError(f"a mitmdump exited during the run: see the logs in {workdir}")
        summary = summarize(samples)
        idle = refreshing.idle_cpu({"addon": processes["addon"], "scaled": processes["scaled"]}, settings["idle_seconds"])
        f_over_b, f_over_b_cpu = over(samples, "f", "b")
        g_over_c, g_over_c_cpu = over(samples, "g", "c")
        c_over_d, c_over_d_cpu = over(samples, "c", "d")
        targets = [
            ratio_target("proxy: b/a (addon, no placeholders)", summary["b"]["ratio"], summary["b"]["cpu_ratio"], 0.97),
            ratio_target("proxy: c/a (3 header placeholders)", summary["c"]["ratio"], summary["c"]["cpu_ratio"], 0.95),
            ratio_target("proxy: c/d (vs modify_headers)", c_over_d, c_over_d_cpu, 1.0),
            ratio_target("proxy: f/b (10,000 secrets, 1,000 auto-refreshed)", f_over_b, f_over_b_cpu, 0.95, " (noise)"),
            ratio_target("proxy: g/c (10,000 secrets, 1,000 auto-refreshed)", g_over_c, g_over_c_cpu, 0.95, " (noise)"),
        ]
        in_process = hooks.run(home, f"{LOOPBACK}:{upstream.port}", PLACEHOLDER_HEADERS, modify_headers_specs(), settings["hook_rounds"])
        in_dispatch = {name: (c.process, c.placeholders) for name, c in CONFIGS.items() if c.process in dispatch.PROCESSES}
        dispatched = dispatch.run(workdir / "dispatch", home, plan.proxy, settings["dispatch_rounds"], in_dispatch)
        profile, counted = None, None
        if not all(t.met is True for t in targets):
            counted = call_counts(workdir / "calls", home, upstream.port, plan, loadgen, connections, settings["profile_seconds"])
            if importlib.util.find_spec("pyinstrument"):
                profile = addon_profile(workdir / "profile", home, upstream.port, plan, loadgen, connections, settings["profile_seconds"])

    rows = [
        (name, CONFIGS[name].label, f"{s['rps']:.0f}", str(s["ratio"]), f"{s['ratio_min']:.2f}-{s['ratio_max']:.2f}",
         f"{s['cpu_us']:.0f}", str(s["cpu_ratio"]), f"{s['busy']:.0%}", f"{s['cpu_wait']:.0%}",
         f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['p50_added_ms']:+.2f}", f"{s['p99_added_ms']:+.2f}", s["errors"])
        for name, s in summary.items()
    ]
    markdown = (
        "### 1. Proxy throughput and latency\n\n"
        f"{loadgen}, {connections} keep-alive connections, {settings['rounds']} rounds of {seconds:g} s per configuration "
        f"({'/'.join(CONFIGS)} alternating), {plan.describe()}. Medians over rounds; \"vs a\" = median of the per-round "
        "ratios (range: lowest-highest round); \"CPU vs a\" = a's mitmdump CPU time per request over this one's, "
        "the same comparison in CPU time, which other load on the machine disturbs far less; \"busy\" = mitmdump's "
        "CPU time over wall time (near 100%: the proxy is the bottleneck), \"CPU wait\" = time it was runnable but "
        "waiting for its CPU (other work on the machine); \"+p50\", \"+p99\" = the latency added over plain mitmdump "
        "(a), the median of per-round differences. Beside each median ratio, in brackets, the interval that holds it with 95% "
        "confidence (distribution-free: bench.common.median_interval); a bar inside it is undecided by the run.\n\n"
        + table(("", "configuration", "req/s", "vs a", "range", "CPU µs/req", "CPU vs a", "busy", "CPU wait", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms", "errors"), rows)
        + f"\n\nc / d (vaultproxy vs mitmproxy's own modify_headers): {c_over_d} in req/s, {c_over_d_cpu} in CPU time per request."
        + f"\n\nAuto-refresh (f, g: {refreshing.LOCAL:,} local secrets and {refreshing.REFRESHED:,} AWS secrets under "
        f"`refresh: {refreshing.REFRESH_SECONDS}s`): f / b {f_over_b}, g / c {g_over_c} in req/s ({f_over_b_cpu} and "
        f"{g_over_c_cpu} in CPU time per request). With no request "
        f"arriving, for {settings['idle_seconds']:g} s, that proxy used {idle['scaled'] * 1000:.1f} ms of CPU per second "
        f"(the refresher: batched fetches, vault writes, the reloads they cause), the one with 3 secrets "
        f"{idle['addon'] * 1000:.1f} ms."
        + "\n\nThe hooks alone, in process (bench/hooks.py: real flows in mitmproxy's addon test context, no network, "
        "in a running event loop that turns between requests; "
        f"{in_process['cycles_per_sample']} requests per sample, {settings['hook_rounds']} samples alternating, medians; "
        f"the event loop's own cost of the turns taken off: {in_process['turn_us']:.1f} µs per request at one a turn), "
        "beside plain mitmdump's whole CPU time per request (a):\n\n"
        + table(("", "hooks", "µs per request", "share of a's CPU µs/req"), [
            (name, label, f"{in_process['median_us'][name]:.1f}", f"{in_process['median_us'][name] / summary['a']['cpu_us']:.1%}")
            for name, label in HOOK_LABELS.items()
        ])
        + "\n\nThe same configurations in process, with mitmproxy's dispatch (bench/dispatch.py: each in a process of its "
        "own, the addon chain mitmdump builds, a request's four hooks and the `update` after each dispatched to every "
        f"addon, no network; {dispatched['cycles_per_sample']} requests per sample, {settings['dispatch_rounds']} samples "
        "alternating, CPU time; \"added\" = the median of the per-round differences from a, and the interval that holds "
        "it with 95% confidence):\n\n"
        + table(("", "configuration", "µs per request", "added over a, µs"), [
            (name, CONFIGS[name].label, f"{dispatched['median_us'][name]:.0f}", added_over_a(dispatched, name) if name != "a" else "")
            for name in in_dispatch
        ])
        + f"\n\nc adds {dispatched['added_us']['c'] - dispatched['added_us']['d']:+.1f} µs per request more than d in process "
        f"(a2, the control, {dispatched['added_us']['a2']:+.1f})."
    )
    if profile is not None:
        listing = "\n".join(f"{f['share']:6.1%}  {f['function']}" for f in profile["functions"]) or "(no sample fell in vaultproxy or vaultcore)"
        markdown += (
            f"\n\nProfile (a target was missed): mitmdump + vaultproxy under configuration c's load for {profile['seconds']:g} s, "
            f"sampled by pyinstrument. The event loop was busy {profile['busy_share']:.0%} of the time; "
            f"{profile['project_share']:.1%} of that busy time is inside vaultproxy/vaultcore (the rest is mitmproxy, "
            "including its dispatch of the addon's hooks). Our functions, time including callees, as a share of the "
            f"busy time:\n\n```\n{listing}\n```"
        )
    if counted is not None:
        markdown += (
            f"\n\nPython calls per request (a target was missed): mitmdump under cProfile, each configuration's load for "
            f"{settings['profile_seconds']:g} s. A count, unlike a time, does not move with the machine: how much more work "
            "each configuration does, and whose (vaultproxy's and vaultcore's own functions; mitmproxy's addon manager "
            "offering each event to each addon object):\n\n"
            + table(("", "configuration", "calls per request", "over a", "in vaultproxy/vaultcore", "in mitmproxy's dispatch"), [
                (name, CONFIGS[name].label, f"{c['all']:,.0f}", f"{c['all'] - counted['a']['all']:+,.0f}" if name != "a" else "",
                 f"{c['ours']:,.0f}", f"{c['dispatch']:,.0f}")
                for name, c in counted.items()
            ])
            + "\n\n" + floor_sentence(counted)
        )
    results = {
        "loadgen": loadgen, "connections": connections, "seconds": seconds, "rounds": settings["rounds"],
        "pinning": plan.describe(), "configs": {n: c.label for n, c in CONFIGS.items()},
        "samples": samples, "summary": summary, "c_over_d": c_over_d, "c_over_d_cpu": c_over_d_cpu,
        "f_over_b": f_over_b, "f_over_b_cpu": f_over_b_cpu, "g_over_c": g_over_c, "g_over_c_cpu": g_over_c_cpu, "idle_cpu_per_s": idle,
        "hooks_in_process": in_process, "dispatch_in_process": dispatched, "profile": profile, "calls_per_request": counted,
    }
    return results, markdown, targets


def floor_sentence(counted: Mapping[str, Mapping[str, float]]) -> str:
    """What the counts say of c >= d: e's calls over a are what any addon of vaultproxy's
    shape pays (its two places in the chain, every event offered to both), before it does
    anything; d's over a are all ModifyHeaders does to set three headers."""
    floor = counted["e"]["all"] - counted["a"]["all"]
    modify = counted["d"]["all"] - counted["a"]["all"]
    return (
        f"An addon of vaultproxy's shape that does nothing (e) makes {floor:+,.0f} calls a request over a; "
        f"ModifyHeaders setting three headers (d), {modify:+,.0f}. vaultproxy's own work over that floor: "
        f"{counted['b']['all'] - counted['e']['all']:+,.0f} calls without placeholders (b), "
        f"{counted['c']['all'] - counted['e']['all']:+,.0f} with three (c). For c to do no more than d, "
        f"the three placeholders would have to be resolved in {modify - floor:+,.0f} calls."
    )


def added_over_a(dispatched: Mapping[str, Any], name: str) -> str:
    low, high, coverage = dispatched["added_interval_us"][name]
    return f"{dispatched['added_us'][name]:+.1f} [{low:+.1f} to {high:+.1f}{shortfall(coverage)}]"


def over(samples: Mapping[str, list[dict[str, Any]]], name: str, base: str) -> tuple[Estimate, Estimate]:
    """`name` against `base`, round by round: in req/s, and in CPU time per request (base's
    over name's, so that higher is better in both)."""
    return (
        paired([s["rps"] for s in samples[name]], [s["rps"] for s in samples[base]]),
        paired([s["cpu_us_per_request"] for s in samples[base]], [s["cpu_us_per_request"] for s in samples[name]]),
    )


def ratio_target(name: str, ratio: Estimate, cpu_ratio: Estimate, bar: float, note: str = "") -> Target:
    """A bar on a ratio, decided by its CPU-time interval: the proxy is CPU-bound, so both say
    what a request costs it, but req/s also moves whenever other work takes the proxy's CPU
    (its interval is several times as wide). Met or missed when that whole interval says so,
    else undecided."""
    return Target(name, f"CPU {cpu_ratio}; req/s {ratio}", f">= {bar:.2f}{note}", cpu_ratio.verdict(bar))


def summarize(samples: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    base = samples["a"]
    summary = {}
    for name, runs in samples.items():
        rps = [s["rps"] for s in runs]
        per_round = per_round_ratios(rps, [s["rps"] for s in base])
        ratio, cpu_ratio = over(samples, name, "a")
        summary[name] = {
            "rps": median(rps),
            "ratio": ratio,
            "ratio_min": min(per_round),
            "ratio_max": max(per_round),
            "cpu_us": median([s["cpu_us_per_request"] for s in runs]),
            "cpu_ratio": cpu_ratio,
            "busy": median([s["busy"] for s in runs]),
            "cpu_wait": median([s["cpu_wait"] for s in runs]),
            "p50_ms": median([s["p50_ms"] for s in runs]),
            "p99_ms": median([s["p99_ms"] for s in runs]),
            # the latency this configuration adds over plain mitmdump: medians of per-round differences
            "p50_added_ms": median([s["p50_ms"] - a["p50_ms"] for s, a in zip(runs, base)]),
            "p99_added_ms": median([s["p99_ms"] - a["p99_ms"] for s, a in zip(runs, base)]),
            "errors": sum(s["errors"] for s in runs),
        }
    return summary
