"""The running proxy's fetches: secrets under auto-refresh before they go stale, and the
secrets of a request an upstream rejected.

Both run on threads of their own, never on the proxy's event loop, and write through the
vault like `vaultproxy secret refresh` does (under its lock, merged into the freshest state,
the newer fetch winning), so the proxy picks their values up by its usual reload and the CLI
and the proxy never lose each other's writes. One fetch is in flight per secret, whoever
asks: a request rejected while the secret is being fetched waits for that fetch.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from typing import Literal
from concurrent.futures import Future, ThreadPoolExecutor

from vaultcore.index import Secret
from vaultcore.vault import Vault

logger = logging.getLogger(__name__)

# A rejected secret is fetched again at most this often: a credential that is simply wrong
# must not turn every request into a call to the provider.
REJECTION_WINDOW_SECONDS = 30.0
# At most this many secrets a second: 50 BatchGetSecretValue calls of 20, half of AWS's quota
# of 100 calls a second per region, so the CLI and other clients keep the other half.
SECRETS_PER_SECOND = 1000
# Plan again at least this often, and wait this long after a refresh that could not even
# be tried (the vault locked or unreadable), so that no failure turns into a busy loop.
IDLE_SECONDS = 60.0
AFTER_FAILURE_SECONDS = 1.0

# Which version of a secret a fetch is for: the current one (kept in the vault's cache), or the
# one a rotation has staged (AWSPENDING; kept in memory, for retries only).
Stage = Literal["current", "pending"]
CURRENT: Stage = "current"
PENDING: Stage = "pending"


class Refresher:
    def __init__(self, vault: Vault):
        self.vault = vault
        self._lock = threading.Lock()
        self._in_flight: dict[tuple[Stage, str, str], Future[None]] = {}
        self._last_rejection_fetch: dict[tuple[Stage, str, str], float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vaultproxy-refetch")
        # The keys of versions staged by a rotation, as the last refetch for a rejection found
        # them: kept in memory only, for retries (see `pending`).
        self._pending: dict[tuple[str, str], dict[str, Secret]] = {}
        self.cpu_seconds = 0.0  # the auto-refresh thread's CPU time (benchmarks report it)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vaultproxy-refresher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wake(self) -> None:
        """Plan again now: the vault or a configuration changed."""
        self._wake.set()

    # --- auto-refresh ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.thread_time()
            try:
                pause = self._refresh_due()
            except Exception as e:  # the thread must outlive any one failure; its cause is logged
                logger.warning(f"vaultproxy: auto-refresh failed, retrying: {e}")
                pause = AFTER_FAILURE_SECONDS
            self.cpu_seconds += time.thread_time() - started
            if pause > 0:
                self._wake.wait(pause)
                self._wake.clear()

    def _refresh_due(self) -> float:
        """Fetch what is due, paced; returns how long to sleep before planning again."""
        name, due, next_at = self.vault.refresh_plan(time.time())
        if name is None or not due:
            return IDLE_SECONDS if next_at is None else min(max(next_at - time.time(), 0.0), IDLE_SECONDS)
        for start in range(0, len(due), SECRETS_PER_SECOND):
            began = time.monotonic()
            self.fetch(name, due[start:start + SECRETS_PER_SECOND])
            if start + SECRETS_PER_SECOND < len(due) and self._stop.wait(max(0.0, began + 1 - time.monotonic())):
                break
        return 0.0

    # --- one fetch per secret in flight ------------------------------------------------------

    def fetch(self, name: str, aliases: Iterable[str]) -> None:
        """Fetch `aliases` of configuration `name` now, in this thread; an alias already being
        fetched is not fetched twice, its fetch is waited for."""
        future, mine, joined = self._claim(CURRENT, name, aliases)
        self._run_fetch(CURRENT, name, mine, future)
        for other in joined:
            other.exception()  # waits; its failure is its own caller's to report

    def refetch_rejected(self, name: str, aliases: Iterable[str], stage: Stage = CURRENT) -> list[Future[None]]:
        """Fetch `aliases` (their current version, or the one a rotation has staged) again in
        the background because an upstream rejected them: the futures to wait for. An alias
        fetched for a rejection in the last REJECTION_WINDOW_SECONDS is not fetched again
        (nothing to wait for, unless that fetch is still in flight)."""
        now = time.monotonic()
        with self._lock:
            recent = {
                alias for alias in aliases
                if (stage, name, alias) not in self._in_flight
                and now - self._last_rejection_fetch.get((stage, name, alias), -math.inf) < REJECTION_WINDOW_SECONDS
            }
            for alias in aliases:
                if alias not in recent:
                    self._last_rejection_fetch[(stage, name, alias)] = now
        future, mine, joined = self._claim(stage, name, [a for a in aliases if a not in recent])
        if mine:
            self._pool.submit(self._run_fetch, stage, name, mine, future)
        return [future, *joined] if mine else joined

    def pending(self, name: str, aliases: Iterable[str]) -> dict[str, Secret]:
        """The keys of the rotation-staged versions of `aliases`, as their last refetch of
        stage PENDING found them."""
        with self._lock:
            return {key: secret for alias in aliases for key, secret in self._pending.get((name, alias), {}).items()}

    def _claim(self, stage: Stage, name: str, aliases: Iterable[str]) -> tuple[Future[None], list[str], list[Future[None]]]:
        """A future for the aliases nobody is fetching (now this caller's to fetch), and the
        futures of the fetches already in flight for the others."""
        future: Future[None] = Future()
        mine: list[str] = []
        joined: dict[int, Future[None]] = {}
        with self._lock:
            for alias in dict.fromkeys(aliases):
                other = self._in_flight.get((stage, name, alias))
                if other is None:
                    self._in_flight[(stage, name, alias)] = future
                    mine.append(alias)
                else:
                    joined[id(other)] = other
        return future, mine, list(joined.values())

    def _run_fetch(self, stage: Stage, name: str, aliases: list[str], future: Future[None]) -> None:
        try:
            if aliases and stage == CURRENT:
                self.vault.fetch(aliases, name)
            elif aliases:
                found = self.vault.fetch_pending(aliases, name)
                with self._lock:
                    for alias in aliases:
                        self._pending[(name, alias)] = {k: s for k, s in found.items() if k.split(".", 1)[0] == alias}
            future.set_result(None)
        except BaseException as e:
            future.set_exception(e)
            raise
        finally:
            with self._lock:
                for alias in aliases:
                    if self._in_flight.get((stage, name, alias)) is future:
                        del self._in_flight[(stage, name, alias)]
