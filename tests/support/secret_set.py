"""A module's set of test secrets, and the shared proxies that resolve them and must never show them.

Each value is a distinctive token (which survives every escaping but base64) followed by the
characters a test needs: the token, or the value's base64 form, in any output is a leak.
Leaks are reported by key, so a failure does not print a value.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from vaultcore.vault import Vault

from .net import LOOPBACK
from .proxy import EXAMPLE_HOSTS, MitmdumpProcess, OptionValue
from .tls import TLSMaterial


class Entry(NamedTuple):
    """A test secret: its token, the rest of its value, and its host and origin rules."""

    token: str
    rest: str = ""
    hosts: tuple[str, ...] = (LOOPBACK, "api.example.com")
    origins: tuple[str, ...] = ()

    @property
    def value(self) -> str:
        return self.token + self.rest


class SecretSet:
    """Test secrets by key."""

    def __init__(self, entries: Mapping[str, Entry]) -> None:
        self._entries = dict(entries)
        self._forms = {
            key: (entry.token, base64.b64encode(entry.value.encode()).decode()) for key, entry in self._entries.items()
        }

    def value(self, key: str) -> str:
        return self._entries[key].value

    def fill(self, home: Path) -> Path:
        """Store every secret, with its rules, in the vault at `home`; returns `home`."""
        vault = Vault(home)
        for key, entry in self._entries.items():
            vault.set(key, entry.value, hosts=entry.hosts, origins=entry.origins)
        return home

    def leaked_keys(self, text: str) -> list[str]:
        """Keys whose value shows in `text` (named by key, so a failure does not print values)."""
        return [key for key, forms in self._forms.items() if any(form in text for form in forms)]

    def assert_logged_without_values(self, proxy: MitmdumpProcess, marker: str) -> None:
        """The dumper printed the flow whose URL holds `marker`, and no value anywhere."""
        proxy.wait_for_output(marker)
        assert self.leaked_keys(proxy.output()) == []


def proxy_options(home: Path, **extra: OptionValue) -> dict[str, OptionValue]:
    """The vault at `home`, and flow_detail=3: the output shows requests in full, to be searched."""
    return {"vault_home": str(home), "flow_detail": 3, **extra}


def running_proxy(
    workdir: Path, tls_material: TLSMaterial, home: Path, secrets: SecretSet, **extra: OptionValue
) -> Iterator[MitmdumpProcess]:
    """A module's shared proxy (for a fixture to `yield from`); at teardown neither its output
    nor the audit log holds a value of `secrets`."""
    process = MitmdumpProcess(
        workdir, upstream_ca=tls_material.ca_cert, options=proxy_options(home, **extra), hosts=EXAMPLE_HOSTS,
    )
    with process:
        yield process
    assert secrets.leaked_keys(process.output()) == []
    assert secrets.leaked_keys((home / "audit.log").read_text()) == []


def module_fixtures(secrets: SecretSet) -> tuple[Callable[..., Any], ...]:
    """The module-scoped fixtures of a test module about `secrets`, to bind at its top level:
    `home, proxy, h2_proxy = module_fixtures(SECRETS)`.

    home: a vault holding the secrets, filled before any proxy starts. proxy: a running_proxy
    with default options. h2_proxy: the same with lazy upstream connections, so that clients
    can speak HTTP/2 to the proxy (see MitmdumpProcess.httpx_client).
    """

    @pytest.fixture(scope="module")
    def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return secrets.fill(tmp_path_factory.mktemp("vault-home"))

    @pytest.fixture(scope="module")
    def proxy(tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial, home: Path) -> Iterator[MitmdumpProcess]:
        yield from running_proxy(tmp_path_factory.mktemp("vaultproxy"), tls_material, home, secrets)

    @pytest.fixture(scope="module")
    def h2_proxy(
        tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial, home: Path
    ) -> Iterator[MitmdumpProcess]:
        workdir = tmp_path_factory.mktemp("vaultproxy")
        yield from running_proxy(workdir, tls_material, home, secrets, connection_strategy="lazy")

    return home, proxy, h2_proxy
