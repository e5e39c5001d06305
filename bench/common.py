"""What every benchmark shares: side-by-side sampling, statistics, CPU pinning, owned child
processes, profiles and the report.

The machine is small (2 cores) and shared, so a figure measured alone means little: every
comparison is sampled in alternation (ABCD ABCD ...) and reported as medians and as the
median of per-round ratios, which cancels most of the drift between rounds.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from tests.support.env import child_env
from tests.support.net import wait_until

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
STOP_TIMEOUT = 30.0
READY_TIMEOUT = 60.0

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


# --- sampling and statistics ---------------------------------------------------------------


def alternate(names: Sequence[K], rounds: int, measure: Callable[[K], T]) -> dict[K, list[T]]:
    """`measure(name)` for every name, round after round (ABCD ABCD ...), so slow phases of
    a noisy machine hit every configuration alike."""
    samples: dict[K, list[T]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            samples[name].append(measure(name))
    return samples


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


CONFIDENCE = 0.95  # of every interval reported beside a median


def per_round_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Each round's ratio: each pair was measured moments apart."""
    return [n / d for n, d in zip(numerators, denominators, strict=True) if d]


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of the per-round ratios."""
    return median(per_round_ratios(numerators, denominators))


@dataclass(frozen=True)
class Estimate:
    """The median of per-round ratios, and an interval that holds the median of the ratios
    such rounds give with at least `coverage` probability. Two processes of one configuration
    differ by several per cent on this kind of host (the proxy section's control), as much as
    the margins of some bars: a bar inside the interval is not decided by the run."""

    median: float
    low: float
    high: float
    coverage: float

    def verdict(self, bar: float, *, at_most: bool = False) -> bool | None:
        """Whether the ratio is at least `bar` (or, `at_most`, at most): True or False when
        the whole interval says so, None (undecided) when the bar lies inside it."""
        met, missed = (self.high <= bar, self.low > bar) if at_most else (self.low >= bar, self.high < bar)
        return True if met else False if missed else None

    def __str__(self) -> str:
        return f"{self.median:.3f} [{self.low:.3f}-{self.high:.3f}{shortfall(self.coverage)}]"


def shortfall(coverage: float) -> str:
    """What an interval says of itself when too few rounds (a quick run's 3) cannot give
    CONFIDENCE: it is the whole range, and covers this much."""
    return f", {coverage:.0%}" if coverage < CONFIDENCE else ""


def paired(numerators: Sequence[float], denominators: Sequence[float]) -> Estimate:
    """The per-round ratios' median and its interval (`median_interval`)."""
    ratios = per_round_ratios(numerators, denominators)
    return Estimate(median(ratios), *median_interval(ratios))


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """A distribution-free interval for the median: the k-th smallest and k-th largest of
    `values`, with k the largest whose interval still covers the median with probability
    `confidence` (the number of values below the median is binomial, n and 1/2, whatever the
    distribution). Returns (low, high, coverage); with too few values for `confidence` (fewer
    than 6 at 95%) the whole range, and the lower coverage it has."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return math.nan, math.nan, 0.0

    def coverage(k: int) -> float:  # of the k-th smallest to the k-th largest: 1 - 2 P(Bin(n, 1/2) < k)
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k < (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def timed(operation: Callable[[], object], clock: Callable[[], float] = time.thread_time) -> float:
    """Seconds one call takes (what it returns is kept alive until the clock has stopped).

    By default the calling thread's CPU time: on a shared machine, time spent waiting for a
    CPU would otherwise be counted as the code's. Work done in other threads or processes,
    or waiting on the network, needs `clock=time.perf_counter`."""
    start = clock()
    result = operation()
    elapsed = clock() - start
    del result
    return elapsed


# --- CPUs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuPlan:
    """The proxy gets one CPU (mitmproxy runs one event loop), the load generator and the
    upstream the others, so they do not take turns on the proxy's core."""

    proxy: frozenset[int] | None
    client: frozenset[int] | None

    @classmethod
    def detect(cls) -> CpuPlan:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(cpus) < 2:
            return cls(None, None)
        return cls(frozenset(cpus[:1]), frozenset(cpus[1:]))

    def describe(self) -> str:
        if self.proxy is None or self.client is None:
            return "not pinned (fewer than 2 usable CPUs)"
        return f"mitmdump on CPU {sorted(self.proxy)}, load generator and upstream on CPU {sorted(self.client)} (sched_setaffinity, as taskset)"


def pinned_to(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child (and so every thread it starts) to `cpus`."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def sched_seconds(pid: int) -> tuple[float, float]:
    """(CPU time used, time spent runnable but waiting for a CPU) so far, summed over the
    process's threads (/proc/PID/task/*/schedstat, nanoseconds).

    CPU time per request barely changes when other work shares the machine, unlike
    throughput; the waiting time tells how much other work there was."""
    used = waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            fields = (task / "schedstat").read_text().split()
            used, waited = used + int(fields[0]), waited + int(fields[1])
    return used / 1e9, waited / 1e9


def load_average() -> float:
    """The 1-minute load average: how busy the shared machine was around a measurement."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS from /proc/PID/status), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# --- child processes -------------------------------------------------------------------------


class Child:
    """A process the bench starts and always stops (terminate, then kill), with stdin held
    open so that helpers written for the bench also exit when the bench dies.

    `announces_port`: the child prints its port as its first stdout line (bench helpers);
    otherwise readiness is `ready(pid)`, polled."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        *,
        cpus: frozenset[int] | None = None,
        env: Mapping[str, str] | None = None,
        home: Path | None = None,
        announces_port: bool = False,
        ready: Callable[[int], bool] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log = log
        self.port = 0
        self._cpus = cpus
        self._env = child_env(env, home=home)
        self._announces_port = announces_port
        self._ready = ready
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> Child:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("ab")
        self._process = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stderr=self._log_file,
            stdout=subprocess.PIPE if self._announces_port else self._log_file,
            env=self._env, cwd=REPO, preexec_fn=pinned_to(self._cpus),
        )
        try:
            if self._announces_port:
                self.port = self._read_port()
            if self._ready is not None:
                process = self._process
                wait_until(lambda: process.poll() is not None or self._ready(process.pid), READY_TIMEOUT, f"{self.argv[0]} to start")
            if self._process.poll() is not None:
                raise RuntimeError(f"{Path(self.argv[0]).name} exited early with status {self._process.returncode}: {self.log_tail()}")
        except BaseException:
            self.stop()
            raise
        return self

    def _read_port(self) -> int:
        """The first stdout line, read in a thread so that a child that never prints cannot hang us."""
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(READY_TIMEOUT)
        if not line or not line[0].strip().isdigit():
            raise RuntimeError(f"{' '.join(self.argv[:3])} did not announce its port: {self.log_tail()}")
        return int(line[0])

    def log_tail(self, lines: int = 20) -> str:
        """The end of what the child printed, for error messages (the work dir is temporary)."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no output)"

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Child:
        return self if self._process is not None else self.start()  # may come started

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def bench_helper(module: str) -> list[str]:
    """argv for one of the bench's own helper processes (`python -m bench.MODULE`)."""
    return [sys.executable, "-m", f"bench.{module}"]


@contextlib.contextmanager
def stopped_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every `finally` stops what it started."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- profiles --------------------------------------------------------------------------------


def profile(operation: Callable[[], object], repeat: int = 1, lines: int = 40) -> str:
    """A pyinstrument call tree of `operation` (run `repeat` times), cut to `lines` lines,
    for the write-up of a missed target."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return "(pyinstrument is not installed: run the bench through scripts/bench)"
    profiler = Profiler(interval=0.0005)
    profiler.start()
    for _ in range(repeat):
        operation()
    profiler.stop()
    text = profiler.output_text(unicode=False, color=False, show_all=False).strip("\n").splitlines()
    tree = next((i + 1 for i, line in enumerate(text) if line.startswith("Profile at")), 0)  # after the banner
    return "\n".join(line for line in text[tree:][:lines] if line.strip())


# --- report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One figure the brief sets a bar for; `met` None: the run cannot tell (`Estimate.verdict`)."""

    name: str
    measured: str
    bar: str
    met: bool | None


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats already formatted by the caller."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def targets_table(targets: Sequence[Target]) -> str:
    return table(
        ("target", "measured", "bar", "met"),
        [(t.name, t.measured, t.bar, {True: "yes", False: "**NO**", None: "undecided"}[t.met]) for t in targets],
    )


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    import mitmproxy.version

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "mitmproxy": mitmproxy.version.VERSION,
        "platform": platform.platform(),
    }


def write_results(results: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Raw results as JSON and the printed report as markdown, side by side in bench/results/."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = RESULTS_DIR / f"bench-{stamp}.json"
    json_path.write_text(json.dumps(results, indent=2, default=asdict) + "\n")  # Estimates
    md_path = json_path.with_suffix(".md")
    md_path.write_text(markdown + "\n")
    return json_path, md_path
