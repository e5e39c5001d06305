"""mitmdump under a profiler, so a missed proxy target comes with where the time went.

    python -m bench.profiled_mitmdump time OUT.json MITMDUMP_ARGS...     pyinstrument's session
    python -m bench.profiled_mitmdump calls OUT.json MITMDUMP_ARGS...    Python calls per function

START_SIGNAL starts profiling mitmdump's event-loop thread (where every addon hook runs) and
STOP_SIGNAL stops it and writes OUT.json, so the profile covers the load the bench drives and
not mitmdump's start-up. (Real-time signals: mitmproxy takes SIGUSR1 and SIGUSR2 for its own
debug dumps.)

"time" samples (pyinstrument): what share of the time each function takes. "calls" counts
every Python call (cProfile; its overhead slows the proxy, but changes no count): unlike a
time, a count does not move with the machine's load, so two configurations' counts per
request say exactly how much more work one does, and whose.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import signal
import sys
from pathlib import Path
from typing import Protocol

START_SIGNAL = signal.SIGRTMIN
STOP_SIGNAL = signal.SIGRTMIN + 1


class Recorder(Protocol):
    def start(self) -> None: ...

    def stop_and_save(self, path: Path) -> None: ...


class Sampled:
    def __init__(self) -> None:
        from pyinstrument import Profiler  # the bench extra: only this mode needs it

        self.profiler = Profiler(interval=0.001, async_mode="disabled")

    def start(self) -> None:
        self.profiler.start()

    def stop_and_save(self, path: Path) -> None:
        self.profiler.stop().save(str(path))


class Counted:
    def __init__(self) -> None:
        self.profile = cProfile.Profile()

    def start(self) -> None:
        self.profile.enable()

    def stop_and_save(self, path: Path) -> None:
        self.profile.disable()
        stats = pstats.Stats(self.profile).stats  # type: ignore[attr-defined]
        calls = {f"{file}:{line}({name})": entry[1] for (file, line, name), entry in stats.items()}
        path.write_text(json.dumps({"calls": calls}))


RECORDERS: dict[str, type[Sampled] | type[Counted]] = {"time": Sampled, "calls": Counted}


def main(mode: str, out: Path, args: list[str]) -> None:
    from mitmproxy.tools.main import mitmdump

    recorder: Recorder = RECORDERS[mode]()

    def save(signum: int, frame: object) -> None:
        partial = out.with_suffix(".partial")  # renamed when complete: the bench never reads half a file
        recorder.stop_and_save(partial)
        partial.rename(out)

    signal.signal(START_SIGNAL, lambda signum, frame: recorder.start())
    signal.signal(STOP_SIGNAL, save)
    mitmdump(args)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
