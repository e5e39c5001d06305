"""Run the benchmarks: `scripts/bench` (about 10 minutes) or `scripts/bench --quick` (a smoke run).

    python -m bench [--quick] [--only proxy,body,vault,fetch] [--loadgen auto|wrk|python]

Prints a markdown report and writes it, with the raw samples as JSON, to bench/results/.
Every process started is stopped, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import CpuPlan, Target, load_average, machine_info, stopped_on_signals, table, targets_table, write_results
from tests.support.env import aws_isolation, is_isolated

SECTIONS = {"proxy": "bench.proxy", "body": "bench.body", "vault": "bench.vaultscale", "fetch": "bench.fetch"}

# Sized so a full run stays under ~10 minutes on 2 cores and --quick is a smoke run of 1-2.
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "proxy": {"rounds": 12, "seconds": 4.0, "warmup_seconds": 2.0, "connections": 8, "profile_seconds": 10.0, "hook_rounds": 7, "dispatch_rounds": 45, "idle_seconds": 30.0},
        "body": {"samples": {1: 21, 10: 7}},
        "vault": {"rounds": 7, "sizes": (100, 1_000, 10_000), "rss_rounds": 2},
        "fetch": {"rounds": 5, "sizes": (50, 200, 500)},
    },
    "quick": {
        "proxy": {"rounds": 3, "seconds": 2.0, "warmup_seconds": 1.0, "connections": 8, "profile_seconds": 4.0, "hook_rounds": 3, "dispatch_rounds": 9, "idle_seconds": 10.0},
        "body": {"samples": {1: 5, 10: 3}},
        "vault": {"rounds": 3, "sizes": (100, 1_000, 10_000), "rss_rounds": 1},
        "fetch": {"rounds": 1, "sizes": (50, 200, 500)},
    },
}


def isolate_environment(home: Path) -> None:
    """No proxy variables (they would route the bench's own loopback traffic), no AWS or
    vaultproxy settings of the developer's: the bench measures the defaults, key-file vaults."""
    for name in list(os.environ):
        if is_isolated(name):
            del os.environ[name]
    os.environ.update(aws_isolation(home))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description="vaultproxy benchmarks (see docs/benchmarks.md)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a minute or two: fewer, shorter rounds")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto", help="load generator for the proxy section (auto: wrk when installed)")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv), argv)
    except KeyboardInterrupt:
        print("\ninterrupted: every process the bench started has been stopped; no results written", file=sys.stderr)
        return 130


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    mode = "quick" if args.quick else "full"
    plan = CpuPlan.detect()
    machine = machine_info()
    results: dict[str, Any] = {"machine": machine, "mode": mode, "command": " ".join(["scripts/bench", *(argv or sys.argv[1:])]), "sections": {}}
    parts: list[str] = []
    targets: list[Target] = []
    failed: list[str] = []
    started = time.monotonic()
    with stopped_on_signals(), tempfile.TemporaryDirectory(prefix="vaultproxy-bench-") as tmp:
        isolate_environment(Path(tmp) / "home")
        for section in args.only:
            settings = {**SETTINGS[mode][section], "loadgen": args.loadgen}
            print(f"== {section} ...", file=sys.stderr, flush=True)
            section_start, load_before = time.monotonic(), load_average()
            try:
                module = importlib.import_module(SECTIONS[section])
                section_results, markdown, section_targets = module.run(settings, Path(tmp) / section, plan)
            except Exception as e:  # one broken section must not hide the others' figures
                traceback.print_exc()
                failed.append(section)
                results["sections"][section] = {"error": f"{type(e).__name__}: {e}"}
                parts.append(f"### {section}\n\nFAILED: {type(e).__name__}: {e}")
                continue
            section_results["elapsed_s"] = round(time.monotonic() - section_start, 1)
            section_results["load_average"] = [load_before, load_average()]
            results["sections"][section] = section_results
            parts.append(f"{markdown}\n\n_Machine load (1-minute load average) {load_before:.1f} at the start of this section, "
                         f"{section_results['load_average'][1]:.1f} at its end, on {machine['nproc']} CPUs._")
            targets += section_targets
            print(f"   {section} done in {section_results['elapsed_s']} s", file=sys.stderr, flush=True)
    results["targets"] = [t.__dict__ for t in targets]
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    header = table(
        ("machine", "value"),
        [
            ("nproc", machine["nproc"]), ("CPU", machine["cpu_model"]), ("Python", machine["python"]),
            ("mitmproxy", machine["mitmproxy"]), ("date (UTC)", machine["date"]), ("command", f"`{results['command']}`"),
            ("run time", f"{results['elapsed_s']:.0f} s"),
        ],
    )
    report = "\n\n".join([f"## vaultproxy benchmarks ({mode})", header, *parts, "### Targets", targets_table(targets)])
    json_path, md_path = write_results(results, report)
    print(report)
    print(f"\nraw results: {json_path.relative_to(Path.cwd()) if json_path.is_relative_to(Path.cwd()) else json_path}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
