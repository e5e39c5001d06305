"""When a provider secret under auto-refresh is next fetched. Pure: times in, times out.

A secret with `refresh: TTL` is fetched again a little before its TTL runs out, early by a
jitter of its own (up to a tenth of the TTL, at most a minute) so that secrets fetched
together do not all fall due in the same second forever. A failed fetch keeps the cached
value and is retried with exponential backoff, up to a cap, so an outage of the provider
costs it a few calls, not one per secret per second.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

JITTER_SHARE = 0.1
JITTER_CAP_SECONDS = 60.0
BACKOFF_FIRST_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 900.0


def epoch(timestamp: str | None) -> float | None:
    """An ISO 8601 time as the vault records it, in seconds since the epoch."""
    return datetime.fromisoformat(timestamp).timestamp() if timestamp else None


def jitter(alias: str, fetched: float, ttl: float) -> float:
    """How early this fetch of `alias` falls due: fixed for one fetch (a hash, not a random
    draw, so every plan made until the next fetch agrees), different across secrets."""
    digest = hashlib.blake2b(f"{alias}\0{fetched}".encode(), digest_size=8).digest()
    share = int.from_bytes(digest, "big") / 2**64
    return share * min(ttl * JITTER_SHARE, JITTER_CAP_SECONDS)


def backoff(failures: int, ttl: float) -> float:
    """Seconds to wait after the `failures`-th failed fetch in a row: doubling from five
    seconds (or half the TTL, if shorter) up to fifteen minutes."""
    first = min(BACKOFF_FIRST_SECONDS, ttl / 2)
    return min(BACKOFF_CAP_SECONDS, first * 2 ** max(failures - 1, 0))


def due_at(alias: str, entry: dict[str, Any], ttl: float) -> float:
    """When `alias` (its cache entry `entry`) should be fetched next: at once if it never was;
    after a backoff since the last failure while fetches fail; else before its TTL runs out."""
    failures = int(entry.get("failures") or 0)
    failed = epoch(entry.get("error_at"))
    if failures and failed is not None:
        return failed + backoff(failures, ttl)
    fetched = epoch(entry.get("fetched_at"))
    if fetched is None or entry.get("value") is None:
        return 0.0
    return fetched + ttl - jitter(alias, fetched, ttl)


def batch_ahead(ttl: float) -> float:
    """A secret due within this many seconds joins a batch being fetched now: one call for
    secrets that fall due close together, at the price of fetching them slightly early."""
    return min(ttl * JITTER_SHARE, JITTER_CAP_SECONDS / 12)
