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

from tests.support import env
from tests.support.cli import StartVaultproxy, VaultproxyStart
from tests.support.env import aws_isolation, is_isolated
from tests.support.moto import MotoServer, count_operations
from tests.support.proxy import MitmdumpProcess, StartProxy, make_ca_template
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


@pytest.fixture(scope="session", autouse=True)
def child_bytecode_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A bytecode cache for child Pythons (see env.bytecode_cache), kept from one session to
    the next in pytest's cache directory."""
    cache = getattr(request.config, "cache", None)
    directory = cache.mkdir("child-bytecode") if cache is not None else tmp_path_factory.mktemp("child-bytecode")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(env, "bytecode_cache", directory)
        yield directory


@pytest.fixture(scope="session", autouse=True)
def mitmproxy_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One mitmproxy CA for the session, copied into each proxy's fresh confdir: mitmproxy
    would otherwise make one at each start (half a second of CPU)."""
    with pytest.MonkeyPatch.context() as patch:
        template = make_ca_template(tmp_path_factory.mktemp("mitmproxy-ca"))
        patch.setattr(MitmdumpProcess, "ca_template", template)
        yield template


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


@pytest.fixture(scope="session")
def exiting() -> Iterator[list[MitmdumpProcess]]:
    """Processes told to exit at the teardown of a test, not waited for there: mitmproxy's
    shutdown takes a few hundred milliseconds of CPU, spent while the next test runs. A later
    teardown reaps those that have exited; the end of the session waits for the others (and
    kills any that does not exit)."""
    processes: list[MitmdumpProcess] = []
    yield processes
    for process in processes:
        process.stop()


def _started_then_stopped(make: Callable[..., Process], exiting: list[MitmdumpProcess]) -> Iterator[Callable[..., Process]]:
    """A factory fixture's body: each process `make` builds is started when asked for, and
    told to exit at teardown (see `exiting`)."""
    started: list[Process] = []

    def start(*args: Any, **kwargs: Any) -> Process:
        process = make(*args, **kwargs)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.terminate()
    exited = [process for process in exiting if not process.is_running()]
    for process in exited:
        process.stop()  # closes its logs
        exiting.remove(process)
    exiting.extend(started)


def _mitmdump_maker(tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial) -> Callable[..., MitmdumpProcess]:
    def make(**kwargs: Any) -> MitmdumpProcess:
        kwargs.setdefault("upstream_ca", tls_material.ca_cert)
        return MitmdumpProcess(tmp_path_factory.mktemp("mitmdump"), **kwargs)

    return make


@pytest.fixture
def mitmdump(
    tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial, exiting: list[MitmdumpProcess]
) -> Iterator[StartProxy]:
    """Factory: `start_proxy(**kwargs)` starts a MitmdumpProcess (kwargs as its constructor).

    Upstream certificates are verified against the test CA unless `upstream_ca` is given.
    Every proxy started is stopped at teardown (see `exiting`).
    """
    yield from _started_then_stopped(_mitmdump_maker(tmp_path_factory, tls_material), exiting)


@pytest.fixture(scope="module")
def module_mitmdump(
    tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial, exiting: list[MitmdumpProcess]
) -> Iterator[StartProxy]:
    """As `mitmdump`, for a module's shared proxies: stopped when the module's tests are done.
    Share a proxy only between tests that cannot influence each other (their own vault keys,
    the same options)."""
    yield from _started_then_stopped(_mitmdump_maker(tmp_path_factory, tls_material), exiting)


@pytest.fixture
def start_vaultproxy(tmp_path_factory: pytest.TempPathFactory, exiting: list[MitmdumpProcess]) -> Iterator[StartVaultproxy]:
    """Factory: `start(vault_home, **kwargs)` runs `vaultproxy start` until it listens on a free
    port (kwargs as VaultproxyStart). Every one started is stopped at teardown (see `exiting`)."""

    def make(vault_home: Path, **kwargs: Any) -> VaultproxyStart:
        return VaultproxyStart(tmp_path_factory.mktemp("vaultproxy-start"), vault_home, **kwargs)

    yield from _started_then_stopped(make, exiting)


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
