"""Section 1's configurations f and g: mitmdump + vaultproxy holding 10,000 local secrets and
1,000 AWS secrets under auto-refresh, so that the refresher works while the load runs.

The AWS secrets come from moto's server in its own process (bench/motoserver.py), fetched
once before the run with `refresh: 30s`: the proxy's refresher fetches them again in batches
every half minute or so (jittered), writes the vault, and the proxy reloads its index, all
during the measured rounds. f and g are compared with b and c, the same requests through a
proxy whose vault holds only the three header secrets.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from bench.common import Child, sched_seconds
from bench.fetch import CREDENTIALS, REGION, alias, create_secrets, secret_id
from vaultcore.profiles import ProviderConfig, SecretMapping
from vaultcore.vault import Vault

REFRESHED = 1_000
LOCAL = 10_000
REFRESH_SECONDS = 30


def scaled_vault(home: Path, endpoint: str) -> Path:
    """`home` (which holds the header secrets) plus 10,000 local secrets and 1,000 fetched AWS
    secrets under auto-refresh."""
    from bench.vaultscale import make_vault  # here: vaultscale imports bench.proxy, which imports this module

    make_vault(home, LOCAL)
    create_secrets(endpoint, REFRESHED)
    vault = Vault(home)
    mappings = tuple(SecretMapping(alias(i), secret_id(i)) for i in range(REFRESHED))
    vault.add_config(ProviderConfig(name="bench", display_name="Bench", region=REGION, endpoint_url=endpoint,
                                    hosts=("api.example.com",), secrets=mappings, refresh=REFRESH_SECONDS), CREDENTIALS)
    failed = [r for r in vault.fetch().values() if r.error]
    if failed:
        raise RuntimeError(f"the first fetch of {REFRESHED} secrets failed: {failed[0].error_code}")
    return home


def idle_cpu(processes: Mapping[str, Child], seconds: float) -> dict[str, float]:
    """Each process's CPU time per second of wall time while no request arrives: for the
    scaled one, its refresher's work (fetches, vault writes, the reloads they cause)."""
    before = {name: sched_seconds(p.pid)[0] for name, p in processes.items()}
    began = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - began
    return {name: (sched_seconds(p.pid)[0] - before[name]) / elapsed for name, p in processes.items()}
