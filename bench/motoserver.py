"""moto's server mode (Secrets Manager) on loopback, in its own process for the fetch benchmark.

tests/support/moto.py runs it in a thread of the test process; here that would make the
server and the fetching client share one interpreter lock, and measure their contention
rather than the fetch.

    python -m bench.motoserver    prints its port, serves 127.0.0.1 until stdin closes or SIGTERM
"""

from __future__ import annotations

import signal
import sys
import threading

from tests.support.moto import MotoServer

if __name__ == "__main__":
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    # The parent holds our stdin: EOF means it is gone, so we never outlive the bench.
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), stop.set()), daemon=True).start()
    with MotoServer() as server:
        print(server.port, flush=True)
        stop.wait()
