"""Shared fixtures: loopback upstreams, TLS material, mitmdump and `vaultproxy start`
processes, a moto server and a count of the Secrets Manager operations made.

Every server is started by its fixture and stopped at teardown; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.cli import StartVaultproxy, VaultproxyStart
from tests.support.env import aws_isolation, is_isolated
from tests.support.moto import MotoServer, count_operations
from tests.support.proxy import MitmdumpProcess, StartProxy
from tests.support.tls import TLSMaterial, make_tls_material
from tests.support.upstream import RecordingUpstream, WebSocketUpstream


@pytest.fixture(scope="session")
def isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty home for anything that falls back to ~ (AWS config files do not exist there)."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, isolated_home: Path) -> None:
    """Tests never see the developer's proxies, AWS profile or credentials, or vaultproxy settings."""
    for name in list(os.environ):
        if is_isolated(name):
            monkeypatch.delenv(name)
    for name, value in aws_isolation(isolated_home).items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    return make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as server:
        yield server


@pytest.fixture
def tls_upstream(tls_material: TLSMaterial) -> Iterator[RecordingUpstream]:
    with RecordingUpstream(tls=tls_material) as server:
        yield server


@pytest.fixture
def ws_upstream() -> Iterator[WebSocketUpstream]:
    with WebSocketUpstream() as server:
        yield server


@pytest.fixture
def vault_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty VAULTPROXY_HOME for in-process code; pass it to a proxy with env={"VAULTPROXY_HOME": ...}."""
    home = tmp_path / "vaultproxy-home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("VAULTPROXY_HOME", str(home))
    return home


Process = TypeVar("Process", bound=MitmdumpProcess)


def _started_then_stopped(make: Callable[..., Process]) -> Iterator[Callable[..., Process]]:
    """A factory fixture's body: each process `make` builds is started when asked for, and
    stopped at teardown."""
    started: list[Process] = []

    def start(*args: Any, **kwargs: Any) -> Process:
        process = make(*args, **kwargs)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def mitmdump(tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial) -> Iterator[StartProxy]:
    """Factory: `start_proxy(**kwargs)` starts a MitmdumpProcess (kwargs as its constructor).

    Upstream certificates are verified against the test CA unless `upstream_ca` is given.
    Every proxy started is stopped at teardown.
    """

    def make(**kwargs: Any) -> MitmdumpProcess:
        kwargs.setdefault("upstream_ca", tls_material.ca_cert)
        return MitmdumpProcess(tmp_path_factory.mktemp("mitmdump"), **kwargs)

    yield from _started_then_stopped(make)


@pytest.fixture
def start_vaultproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartVaultproxy]:
    """Factory: `start(vault_home, **kwargs)` runs `vaultproxy start` until it listens on a free
    port (kwargs as VaultproxyStart). Every one started is stopped at teardown."""

    def make(vault_home: Path, **kwargs: Any) -> VaultproxyStart:
        return VaultproxyStart(tmp_path_factory.mktemp("vaultproxy-start"), vault_home, **kwargs)

    yield from _started_then_stopped(make)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """The session's moto server, emptied for this test."""
    moto_server.reset()
    return moto_server


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The Secrets Manager operations vaultcore's fetches make in this test, by name."""
    return count_operations(monkeypatch)
