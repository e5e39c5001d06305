"""3. Vault scale: opening and indexing vaults of 100, 1,000 and 10,000 local secrets, and
the memory mitmdump + vaultproxy holds with 10,000.

Open time is `Vault(home).snapshot()` on a fresh object each time (decrypt, parse, build the
index: what the proxy does at start and on every reload), sizes alternating. Memory is
VmRSS of three mitmdump processes after the same few requests, started in alternation:
plain, with the addon and a 1-secret vault, with the addon and the 10,000-secret vault.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.common import Child, CpuPlan, Target, alternate, bench_helper, median, profile, rss_mib, table, timed
from bench.proxy import start_mitmdump
from tests.support.net import LOOPBACK
from vaultcore.store import State
from vaultcore.configurations import now, pack_value
from vaultcore.vault import Vault

OPEN_TARGET_MS = 150.0
RSS_TARGET_MIB = 60e6 / 2**20  # the brief's 60 MB
RSS_REQUESTS = 20
LOOPBACK_KEY = "svc00000.token"  # the one secret bound to the loopback upstream


def key(i: int) -> str:
    return f"svc{i:05d}.token"


def make_vault(home: Path, count: int) -> Path:
    """A key-file vault of `count` local secrets, written by ONE store update (as a bulk
    import would), each bound to one of a hundred hosts."""

    def fill(state: State) -> None:
        local = state.setdefault("local", {})
        stamp = now()
        for i in range(count):
            local[key(i)] = {
                **pack_value(f"bench-vault-value-{i:05d}-not-a-secret-0123456789abcdef"),
                "hosts": [LOOPBACK] if i == 0 else [f"api{i % 100}.example.com"],
                "origins": [],
                "updated_at": stamp,
            }

    Vault(home).store.update(fill)
    return home


def open_vault(home: Path) -> object:
    return Vault(home).snapshot()


def requests_through(proxy_port: int, upstream_port: int) -> None:
    """The same few keep-alive requests to every process, one placeholder each (which
    plain mitmdump passes on literally)."""
    request = (
        f"GET http://{LOOPBACK}:{upstream_port}/ HTTP/1.1\r\nHost: {LOOPBACK}:{upstream_port}\r\n"
        f"X-Key: <<vault:{LOOPBACK_KEY}>>\r\n\r\n"
    ).encode()
    with socket.create_connection((LOOPBACK, proxy_port), timeout=30) as sock, sock.makefile("rb") as answers:
        for _ in range(RSS_REQUESTS):
            sock.sendall(request)
            status = answers.readline()
            if not status.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"request through the proxy answered {status!r}, not 200")
            length = 0
            while (line := answers.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answers.read(length)


def run(settings: Mapping[str, Any], workdir: Path, plan: CpuPlan) -> tuple[dict[str, Any], str, list[Target]]:
    sizes = settings["sizes"]
    homes = {size: make_vault(workdir / f"vault-{size}", size) for size in sizes}
    for size, home in homes.items():
        count = len(Vault(home).snapshot().index)
        if count != size:
            raise RuntimeError(f"the vault of {size} secrets indexes {count} keys")
    open_s = alternate(list(sizes), settings["rounds"], lambda size: timed(lambda: open_vault(homes[size])))
    largest = max(sizes)
    open_ms = {size: median(samples) * 1000 for size, samples in open_s.items()}

    memory_homes = {
        "plain mitmdump": None,
        "mitmdump + vaultproxy, 1 secret": make_vault(workdir / "vault-1", 1),
        f"mitmdump + vaultproxy, {largest:,} secrets": homes[largest],
    }
    with Child(bench_helper("upstream"), workdir / "upstream.log", announces_port=True) as upstream:

        def measure_rss(label: str) -> float:
            with start_mitmdump(workdir / "rss", vault_home=memory_homes[label]) as proxy:
                requests_through(proxy.port, upstream.port)
                return rss_mib(proxy.pid)

        rss = alternate(list(memory_homes), settings["rss_rounds"], measure_rss)
    rss_median = {label: median(samples) for label, samples in rss.items()}
    plain = rss_median["plain mitmdump"]
    over_plain = rss_median[f"mitmdump + vaultproxy, {largest:,} secrets"] - plain

    targets = [
        Target(f"vault: open + index {largest:,} secrets", f"{open_ms[largest]:.0f} ms", f"< {OPEN_TARGET_MS:g} ms", open_ms[largest] < OPEN_TARGET_MS),
        Target(f"vault: RSS with {largest:,} secrets over plain mitmdump", f"{over_plain:.1f} MiB", f"< 60 MB ({RSS_TARGET_MIB:.1f} MiB)", over_plain < RSS_TARGET_MIB),
    ]
    markdown = (
        "### 3. Vault scale\n\n"
        f"`Vault(home).snapshot()` (decrypt, parse, index) on a fresh object, key-file vault, {settings['rounds']} rounds "
        "with sizes alternating, timed in the thread's CPU time; medians.\n\n"
        + table(("secrets", "vault.enc", "open + index ms"), [
            (f"{size:,}", f"{(homes[size] / 'vault.enc').stat().st_size / 1024:.0f} KiB", f"{open_ms[size]:.1f}") for size in sizes
        ])
        + f"\n\nResident memory (VmRSS) after {RSS_REQUESTS} requests, {settings['rss_rounds']} round(s) alternating; medians.\n\n"
        + table(("process", "VmRSS MiB", "over plain MiB"), [
            (label, f"{value:.1f}", f"{value - plain:+.1f}") for label, value in rss_median.items()
        ])
    )
    profile_text = None
    if open_ms[largest] >= OPEN_TARGET_MS:
        profile_text = profile(lambda: open_vault(homes[largest]), repeat=5)
        markdown += f"\n\nProfile of opening {largest:,} secrets (5 runs, pyinstrument):\n\n```\n{profile_text}\n```"
    results = {
        "open_seconds": {str(k): v for k, v in open_s.items()}, "open_ms_median": {str(k): v for k, v in open_ms.items()},
        "rss_mib": rss, "rss_mib_median": rss_median, "rss_over_plain_mib": over_plain, "profile": profile_text,
    }
    return results, markdown, targets

