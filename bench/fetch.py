"""4. Fetch scale: refreshing 50, 200 and 500 secrets from a Secrets Manager endpoint on
loopback (moto's server, in its own process), BatchGetSecretValue against one
GetSecretValue per secret.

Each sample is a whole `Vault.fetch(aliases, use_batch=...)`, as `vaultproxy secret refresh`
runs it: load the configuration, the AWS calls (8 at a time either way), and the encrypted
write of the results. Batch and per-secret runs alternate, sizes interleaved.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from bench.common import Child, CpuPlan, Target, alternate, bench_helper, median, paired_ratio, profile, table, timed
from vaultcore.profiles import ProviderConfig, SecretMapping
from vaultcore.providers import aws
from vaultcore.providers.aws import StaticCredentials
from vaultcore.vault import Vault

REGION = "us-east-1"
CREDENTIALS = StaticCredentials("testing", "testing")  # moto accepts anything
SPEEDUP_TARGET = 5.0


def alias(i: int) -> str:
    return f"s{i:03d}"


def secret_id(i: int) -> str:
    return f"bench/secret-{i:03d}"


def create_secrets(endpoint: str, count: int) -> None:
    client = boto3.session.Session(
        region_name=REGION, aws_access_key_id=CREDENTIALS.access_key_id, aws_secret_access_key=CREDENTIALS.secret_access_key,
    ).client("secretsmanager", endpoint_url=endpoint, config=Config(proxies={}, retries={"max_attempts": 1}))
    for i in range(count):
        client.create_secret(Name=secret_id(i), SecretString=f"bench-fetch-value-{i:03d}-not-a-secret")


def bench_vault(home: Path, endpoint: str, count: int) -> Vault:
    vault = Vault(home)
    mappings = tuple(SecretMapping(alias(i), secret_id(i)) for i in range(count))
    vault.add_config(
        ProviderConfig(name="bench", display_name="Bench", region=REGION, endpoint_url=endpoint, hosts=("api.example.com",), secrets=mappings),
        CREDENTIALS,
    )
    return vault


def fetch(vault: Vault, count: int, use_batch: bool) -> None:
    results = vault.fetch([alias(i) for i in range(count)], use_batch=use_batch)
    failed = [r for r in results.values() if r.error is not None]
    if len(results) != count or failed:
        raise RuntimeError(f"fetch of {count} secrets: {len(failed)} failed ({failed[0].error_code if failed else 'results missing'})")


def fixed_costs(vault: Vault, rounds: int) -> dict[str, float]:
    """The steps of `Vault.fetch` that do not depend on the number of secrets."""
    config = vault.config()
    steps: dict[str, Callable[[], object]] = {
        f"load the configuration ({len(config.secrets)} mappings, YAML)": vault.config,
        "create the boto3 Secrets Manager client": lambda: aws.session_for(config, CREDENTIALS).client(
            "secretsmanager", endpoint_url=config.endpoint_url, config=aws.client_config()),
        "decrypt the vault state (credentials)": vault.state,
        "write the vault (encrypt, fsync, rename)": lambda: vault.store.update(lambda state: None),
    }
    samples = alternate(list(steps), max(rounds, 3), lambda step: timed(steps[step], clock=time.perf_counter))
    return {step: median(times) for step, times in samples.items()}


def run(settings: Mapping[str, Any], workdir: Path, plan: CpuPlan) -> tuple[dict[str, Any], str, list[Target]]:
    sizes = settings["sizes"]
    largest = max(sizes)
    with Child(bench_helper("motoserver"), workdir / "moto.log", announces_port=True) as moto:
        endpoint = f"http://127.0.0.1:{moto.port}"
        create_secrets(endpoint, largest)
        vault = bench_vault(workdir / "vault", endpoint, largest)
        variants = [(size, batch) for size in sizes for batch in (True, False)]
        for size, batch in variants[:2]:  # warm-up (connections, imports), not recorded
            fetch(vault, size, batch)
        samples = alternate(variants, settings["rounds"], lambda v: timed(lambda: fetch(vault, *v), clock=time.perf_counter))
        speedup = {size: paired_ratio(samples[(size, False)], samples[(size, True)]) for size in sizes}
        fixed = profile_text = None
        if speedup[largest] < SPEEDUP_TARGET:
            fixed = fixed_costs(vault, settings["rounds"])
            profile_text = profile(lambda: fetch(vault, largest, True))

    rows = [
        (f"{size:,}", f"{median(samples[(size, True)]):.2f}", f"{median(samples[(size, False)]):.2f}", f"{speedup[size]:.1f}x")
        for size in sizes
    ]
    targets = [Target(
        f"fetch: batch vs per-secret at {largest}", f"{speedup[largest]:.1f}x", f">= {SPEEDUP_TARGET:g}x", speedup[largest] >= SPEEDUP_TARGET,
    )]
    markdown = (
        "### 4. Fetch scale\n\n"
        f"`Vault.fetch(aliases, use_batch=...)` against moto's server on loopback (its own process), {settings['rounds']} round(s), "
        "batch and per-secret alternating; seconds, medians. Both run 8 calls at a time; batch asks for 20 secrets per call.\n\n"
        + table(("secrets", "BatchGetSecretValue s", "GetSecretValue per secret s", "speed-up"), rows)
    )
    if fixed is not None:
        markdown += (
            "\n\nWhat every fetch pays whatever its size (wall time, medians), measured on its own:\n\n"
            + table(("step", "ms"), [(step, f"{seconds * 1000:.0f}") for step, seconds in fixed.items()])
            + f"\n\nProfile of one batch fetch of {largest} (pyinstrument, calling thread; its per-call overhead "
            f"inflates pure-Python steps such as YAML parsing several times):\n\n```\n{profile_text}\n```"
        )
    results = {
        "samples": {f"{size}-{'batch' if batch else 'per-secret'}": times for (size, batch), times in samples.items()},
        "speedup": {str(size): value for size, value in speedup.items()}, "fixed_costs_s": fixed, "profile": profile_text,
    }
    return results, markdown, targets
