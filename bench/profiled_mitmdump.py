"""mitmdump under pyinstrument, so a missed proxy target comes with where the time went.

    python -m bench.profiled_mitmdump OUT.json MITMDUMP_ARGS...

START_SIGNAL starts sampling mitmdump's event-loop thread (where every addon hook runs) and
STOP_SIGNAL stops it and writes pyinstrument's session to OUT.json, so the profile covers
the load the bench drives and not mitmdump's start-up. (Real-time signals: mitmproxy takes
SIGUSR1 and SIGUSR2 for its own debug dumps.)
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

START_SIGNAL = signal.SIGRTMIN
STOP_SIGNAL = signal.SIGRTMIN + 1


def main(out: Path, args: list[str]) -> None:
    # Imported here: bench/proxy.py imports the signals without needing pyinstrument.
    from mitmproxy.tools.main import mitmdump
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001, async_mode="disabled")

    def save(signum: int, frame: object) -> None:
        partial = out.with_suffix(".partial")  # renamed when complete: the bench never reads half a file
        profiler.stop().save(str(partial))
        partial.rename(out)

    signal.signal(START_SIGNAL, lambda signum, frame: profiler.start())
    signal.signal(STOP_SIGNAL, save)
    mitmdump(args)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
