"""Faults: nothing is lost.

- kill -9 of the CLI at random points of vault writes: the vault always opens, holding
  exactly the state before or after the write, and `vault.enc.bak` is an earlier good state;
- AWS endpoint down, slow, answering 5xx, or credentials revoked: cached values keep
  resolving through the real proxy, the error is shown, nothing cached is overwritten;
- `vault.enc` truncated, foreign or encrypted with another key under a running proxy: the
  proxy keeps its last good state, the CLI fails with one line and changes nothing;
- a disk-full write: one-line error, the last good state kept, the next write works;
- upstreams that reset, hang or answer garbage: the client gets an error, other clients don't
  notice, and the value never shows in the proxy's output.

Every CLI here is a real `python -m vaultcore.cli` process; every proxy a real mitmdump.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import random
import resource
import select
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.moto import REGION, MotoServer
from tests.support.net import LOOPBACK, free_port, wait_until
from tests.support.cli import run_cli, start_cli
from tests.support.proxy import MitmdumpProcess, StartProxy
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply
from vaultcore.profiles import ProviderConfig, SecretMapping
from vaultcore.providers import aws
from vaultcore.providers.aws import StaticCredentials
from vaultcore.store import State, VaultError
from vaultcore.vault import Vault

HOST = LOOPBACK  # upstreams listen here; loopback may receive secrets over plain HTTP
KEYS = StaticCredentials("FAKEFAULTTEST0000001", "FAKE-faults-secret-key-77d1")
CLI_TIMEOUT = 120.0
WAIT = 60.0
RELOADED = "vaultproxy: reloaded"
RELOAD_FAILED = "reload failed, keeping the last good state"
CONFIG_KEPT = "keep the last good mappings"  # a broken configuration file: the vault's changes still count


# --- helpers -------------------------------------------------------------------------------


def cli(home: Path, *args: str, stdin: bytes = b"", timeout: float = CLI_TIMEOUT, **popen: Any) -> subprocess.CompletedProcess[bytes]:
    """Run the real CLI to completion (not checked: tests look at the exit code)."""
    return run_cli(home, *args, stdin=stdin, timeout=timeout, **popen)


def ok(result: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    """The CLI failed the way users are promised: exit 1, exactly one line on stderr, nothing on stdout."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 1, stderr
    assert result.stdout == b""
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("vaultproxy: error: "), stderr
    return stderr


def state_of_copy(vault_file: Path, home: Path, scratch: Path) -> State:
    """Decrypt `vault_file` with `home`'s key, through the public API, in a scratch home."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(mode=0o700)
    shutil.copy2(home / "key", scratch / "key")
    shutil.copyfile(vault_file, scratch / "vault.enc")
    return Vault(scratch).state()


def pruned(state: State, *paths: tuple[str, ...]) -> State:
    """A deep copy of `state` without the entries at `paths` (to compare everything else)."""
    copy = json.loads(json.dumps(state))
    for path in paths:
        node = copy
        for part in path[:-1]:
            node = node.get(part, {})
        node.pop(path[-1], None)
    return copy


def count_in_output(proxy: MitmdumpProcess, text: str) -> int:
    return proxy.output().count(text)


def wait_for_count(proxy: MitmdumpProcess, text: str, above: int) -> None:
    """Wait until the proxy has logged `text` more than `above` times (it polls vault.enc)."""
    wait_until(lambda: count_in_output(proxy, text) > above, WAIT, f"{text!r} in mitmdump's output")


def start_vault_proxy(mitmdump: StartProxy, home: Path, **options: str) -> MitmdumpProcess:
    return mitmdump(env={"VAULTPROXY_HOME": str(home)}, options=options)


def resolved_through(proxy: MitmdumpProcess, upstream: RecordingUpstream, path: str, headers: dict[str, str]) -> RecordedRequest:
    """Send one request with placeholders through the proxy; the request the upstream got."""
    upstream.clear()
    with proxy.requests_session() as session:
        answer = session.get(upstream.url + path, headers=headers, timeout=WAIT)
    assert answer.status_code == 200, answer.text
    (received,) = upstream.wait_for(1)
    return received


# --- kill -9 during writes -------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """One CLI write and how to recognise its result: `is_after(old, new)` is True when `new`
    is exactly `old` with this write applied (and nothing else changed)."""

    args: tuple[str, ...]
    stdin: bytes
    is_after: Callable[[State, State], bool]


def local_set(n: int, rng: random.Random) -> Write:
    key, value = f"loc-{rng.randrange(4)}", f"FAKE-kill-{n}-{uuid.uuid4().hex}"

    def is_after(old: State, new: State) -> bool:
        entry = new.get("local", {}).get(key, {})
        return (entry.get("value"), entry.get("hosts")) == (value, [HOST]) and (
            pruned(new, ("local", key)) == pruned(old, ("local", key))
        )

    return Write(("local", "set", key, "--hosts", HOST), value.encode(), is_after)


def secret_fetch(n: int, active: str, admin: Any) -> Write:
    """Rotate the active configuration's secret in moto, then fetch it."""
    value = f"FAKE-rotated-{n}-{uuid.uuid4().hex}"
    admin.put_secret_value(SecretId=f"{active}/api", SecretString=value)
    changed = [("configs", active, "cache", "api")] + [("configs", active, f) for f in ("error", "error_code", "last_fetched")]

    def is_after(old: State, new: State) -> bool:
        entry = new.get("configs", {}).get(active, {}).get("cache", {}).get("api", {})
        return (entry.get("value"), entry.get("error")) == (value, None) and pruned(new, *changed) == pruned(old, *changed)

    return Write(("secret", "fetch", "api"), b"", is_after)


def config_use(target: str) -> Write:
    def is_after(old: State, new: State) -> bool:
        return new.get("active_config") == target and pruned(new, ("active_config",)) == pruned(old, ("active_config",))

    return Write(("config", "use", target), b"", is_after)


def spawn_cli(home: Path, args: tuple[str, ...], stdin: bytes) -> subprocess.Popen[bytes]:
    """Start the CLI with its input already written and closed, so a kill never finds it waiting."""
    process = start_cli(home, *args)
    assert process.stdin is not None
    process.stdin.write(stdin)
    process.stdin.close()
    return process


def finish(process: subprocess.Popen[bytes]) -> tuple[int, str]:
    """(exit status, stderr) of a spawned CLI, killed or not."""
    assert process.stderr is not None
    returncode = process.wait(CLI_TIMEOUT)
    with process.stderr:
        return returncode, process.stderr.read().decode(errors="replace")


# inotify(7) event masks: an entry created, deleted, or renamed into the directory.
IN_CREATE, IN_DELETE, IN_MOVED_TO = 0x100, 0x200, 0x80


@contextlib.contextmanager
def directory_events(path: Path) -> Iterator[int]:
    """An inotify descriptor that turns readable when an entry of `path` is created, renamed
    in or deleted: it wakes a waiter within microseconds of a write's first step, which
    polling cannot (a vault write, fsyncs included, takes a few milliseconds)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1 failed")
    try:
        if libc.inotify_add_watch(fd, os.fsencode(path), IN_CREATE | IN_DELETE | IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path} failed")
        yield fd
    finally:
        os.close(fd)


def kill_when_home_changes(process: subprocess.Popen[bytes], events: int, delay: float) -> None:
    """SIGKILL `process` `delay` seconds after it first changes the watched home directory
    (its write has begun), unless it exits first."""
    while process.poll() is None:
        if select.select([events], [], [], 0.05)[0]:
            deadline = time.perf_counter() + delay
            while time.perf_counter() < deadline:
                pass  # busy: sub-millisecond precision inside the write
            process.kill()
            return


@pytest.fixture
def kill_vault(vault_home: Path, moto: MotoServer) -> tuple[Vault, Any]:
    """A vault with local secrets and two moto-backed configurations (prod active), fetched."""
    admin = moto.client()
    vault = Vault(vault_home)
    for name in ("prod", "staging"):
        admin.create_secret(Name=f"{name}/api", SecretString=f"FAKE-{name}-initial")
        vault.add_config(
            ProviderConfig(name=name, display_name=name, region=REGION, endpoint_url=moto.endpoint_url,
                           hosts=(HOST,), secrets=(SecretMapping("api", f"{name}/api"),)),
            KEYS,
        )
        vault.use_config(name)
        vault.fetch(["api"])
    vault.use_config("prod")
    for i in range(4):
        vault.set(f"loc-{i}", f"FAKE-local-initial-{i}", hosts=[HOST])
    return vault, admin


def run_kill_loop(kill_vault: tuple[Vault, Any], tmp_path: Path, writes: int) -> None:
    """`writes` CLI writes, each killed at a random point: during start-up, the fetch, or the write itself."""
    vault, admin = kill_vault
    home = vault.home
    seed = random.randrange(2**32)  # kill timing varies from run to run anyway; the seed is in every message
    rng = random.Random(seed)
    # Every state the vault has held, oldest first (the setup's backup included).
    history = [state_of_copy(home / "vault.enc.bak", home, tmp_path / "backup-check"), vault.state()]
    killed_in_write = 0
    for n in range(writes):
        old = history[-1]
        kind = rng.choice(["local", "local", "fetch", "use"])
        if kind == "local":
            write = local_set(n, rng)
        elif kind == "fetch":
            write = secret_fetch(n, old["active_config"], admin)
        else:
            write = config_use("staging" if old["active_config"] == "prod" else "prod")
        in_write = n % 4 != 0  # most kills wait for the write to begin; the rest land anywhere
        with directory_events(home) as events:
            process = spawn_cli(home, write.args, write.stdin)
            if in_write:
                kill_when_home_changes(process, events, rng.uniform(0.0, 0.008))  # a write, fsyncs included: a few ms
            else:
                # Anywhere: mostly start-up or the network part of a fetch, sometimes the write.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(rng.uniform(0.0, 0.8))
                process.kill()
        returncode, stderr = finish(process)
        where = f"seed {seed}, write {n} {write.args}"
        assert returncode in (0, -signal.SIGKILL), f"{where} failed: {stderr}"
        killed_in_write += in_write and returncode == -signal.SIGKILL

        try:
            current = Vault(home).state()  # opens, whatever the kill interrupted
        except VaultError as e:
            pytest.fail(f"{where}: the vault does not open: {e}")
        if returncode == 0:
            assert write.is_after(old, current), f"{where} completed but its result is not in the vault"
        else:
            assert current == old or write.is_after(old, current), f"{where}: torn or foreign state"
        if current != old:
            history.append(current)
        backup = state_of_copy(home / "vault.enc.bak", home, tmp_path / "backup-check")
        assert backup in history, f"{where}: vault.enc.bak is not a state the vault has held"

    assert killed_in_write > 0, f"seed {seed}: no kill landed inside a write"
    final = config_use("staging" if history[-1]["active_config"] == "prod" else "prod")
    ok(cli(home, *final.args))
    assert final.is_after(history[-1], Vault(home).state())
    leftovers = sorted(name for name in os.listdir(home) if name not in {"vault.enc", "vault.enc.bak", "vault.lock", "key", "configs"})
    assert leftovers == [], "a write left temp files behind"


def test_kill_9_during_writes_loses_nothing(kill_vault: tuple[Vault, Any], tmp_path: Path) -> None:
    run_kill_loop(kill_vault, tmp_path, writes=10)


@pytest.mark.stress
def test_kill_9_during_200_writes_loses_nothing(kill_vault: tuple[Vault, Any], tmp_path: Path) -> None:
    run_kill_loop(kill_vault, tmp_path, writes=200)


def test_kill_9_during_the_first_write_leaves_a_usable_home(tmp_path: Path) -> None:
    """The first write also creates the key: a kill there must not leave a torn key or vault."""
    for attempt in range(4):
        home = tmp_path / f"fresh-{attempt}"
        home.mkdir(mode=0o700)
        value = f"FAKE-first-{attempt}-{uuid.uuid4().hex}"
        with directory_events(home) as events:
            process = spawn_cli(home, ("local", "set", "first", "--hosts", HOST), value.encode())
            kill_when_home_changes(process, events, random.uniform(0.0, 0.008))
        returncode, stderr = finish(process)
        assert returncode in (0, -signal.SIGKILL), stderr
        state = Vault(home).state()
        if returncode == 0:
            assert state["local"]["first"]["value"] == value
        assert state == {} or state["local"]["first"]["value"] == value
        Vault(home).set("second", "FAKE-second", hosts=[HOST])
        assert Vault(home).get("second") == "FAKE-second"


# --- AWS endpoint faults -----------------------------------------------------------------------


@dataclass
class AwsSetup:
    home: Path
    proxy: MitmdumpProcess
    upstream: RecordingUpstream
    values: dict[str, str]

    def config(self) -> ProviderConfig:
        return Vault(self.home).configs.load("prod")

    def point_at(self, endpoint_url: str) -> None:
        """Change the configuration's endpoint (as editing its YAML would) and set its keys for
        it (as `config set-credentials` must then: kept keys never follow an endpoint by
        themselves), and wait for the proxy to see it."""
        before = count_in_output(self.proxy, RELOADED)
        vault = Vault(self.home)
        vault.configs.save(dataclasses.replace(self.config(), endpoint_url=endpoint_url))
        vault.set_credentials("prod", KEYS)
        wait_for_count(self.proxy, RELOADED, before)

    def cache(self) -> dict[str, Any]:
        return Vault(self.home).state()["configs"]["prod"]["cache"]

    def assert_still_resolving(self) -> None:
        received = resolved_through(
            self.proxy, self.upstream, "/check?key=<<vault:api>>", {"X-Db-User": "<<vault:db.user>>"}
        )
        assert received.target == f"/check?key={self.values['api']}"
        assert received.header("x-db-user") == self.values["db.user"]

    def failed_fetch(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """Fetch everything while the endpoint is broken: exit 1, the cache untouched, the
        errors shown by `status --json` and `secret list --json`, the proxy still resolving.
        Returns the CLI's stderr."""
        cache_before = self.cache()
        reloads = count_in_output(self.proxy, RELOADED)
        result = cli(self.home, "secret", "refresh", "--all", *args, timeout=timeout)
        stderr = result.stderr.decode(errors="replace")
        assert result.returncode == 1, stderr
        wait_for_count(self.proxy, RELOADED, reloads)  # the errors were written; the proxy reloaded them
        cache_after = self.cache()
        for alias in ("api", "db"):
            kept = ("value", "binary", "version_id", "fetched_at")
            assert {k: cache_after[alias].get(k) for k in kept} == {k: cache_before[alias].get(k) for k in kept}
            assert cache_after[alias]["error"]
        status = json.loads(ok(cli(self.home, "status", "--json")).stdout)
        assert status["config_error"]
        rows = {row["key"]: row for row in status["keys"]}
        assert rows["api"]["error"] and rows["db.user"]["error"] and rows["api"]["last_fetched"]
        listing = {row["alias"]: row for row in json.loads(ok(cli(self.home, "secret", "list", "--json")).stdout)}
        assert all(listing[a]["status"] == "error" and listing[a]["error"] and listing[a]["last_fetched"] for a in ("api", "db"))
        shown = stderr + json.dumps(status) + json.dumps(listing) + self.proxy.output()
        leaked = [key for key, value in self.values.items() if value in shown]
        assert not leaked, f"the values of {leaked} were shown"
        self.assert_still_resolving()
        return stderr

    def recovers(self) -> None:
        """With the endpoint fixed, a refresh clears every error."""
        reloads = count_in_output(self.proxy, RELOADED)
        vault = Vault(self.home)
        assert all(result.error is None for result in vault.fetch().values())
        wait_for_count(self.proxy, RELOADED, reloads)
        assert vault.status()["config_error"] is None
        self.assert_still_resolving()


@pytest.fixture
def aws_setup(vault_home: Path, moto: MotoServer, mitmdump: StartProxy, upstream: RecordingUpstream) -> AwsSetup:
    """Secrets fetched from moto through the CLI, and a proxy resolving them."""
    admin = moto.client()
    token = uuid.uuid4().hex[:12]
    values = {"api": f"FAKE-aws-api-{token}", "db.user": f"FAKE-aws-dbuser-{token}"}
    admin.create_secret(Name="prod/api", SecretString=values["api"])
    admin.create_secret(Name="prod/db", SecretString=json.dumps({"user": values["db.user"], "port": 5432}))
    Vault(vault_home).add_config(
        ProviderConfig(name="prod", display_name="Prod", region=REGION, endpoint_url=moto.endpoint_url, hosts=(HOST,),
                       secrets=(SecretMapping("api", "prod/api"), SecretMapping("db", "prod/db", mode="json"))),
        KEYS,
    )
    Vault(vault_home).fetch()
    setup = AwsSetup(vault_home, start_vault_proxy(mitmdump, vault_home), upstream, values)
    setup.assert_still_resolving()
    return setup


def test_endpoint_down(aws_setup: AwsSetup) -> None:
    working = aws_setup.config().endpoint_url or ""
    aws_setup.point_at(f"http://{LOOPBACK}:{free_port()}")  # nothing listens there
    assert "unreachable" in aws_setup.failed_fetch()
    assert "unreachable" in (Vault(aws_setup.home).status()["config_error"] or "")
    aws_setup.point_at(working)
    aws_setup.recovers()


@pytest.mark.parametrize("status", [500, 503])
def test_endpoint_answering_5xx(aws_setup: AwsSetup, status: int) -> None:
    working = aws_setup.config().endpoint_url or ""
    with RecordingUpstream(routes={"/": Reply(status=status, body=b'{"message": "server trouble"}')}) as broken:
        aws_setup.point_at(broken.url)
        aws_setup.failed_fetch()
        assert broken.requests, "the fetch never reached the failing endpoint"
    aws_setup.point_at(working)
    aws_setup.recovers()


@contextlib.contextmanager
def credentials_revoked(moto: MotoServer) -> Iterator[None]:
    """moto's IAM enforcement on: the test's keys (no IAM user) are rejected. Process-wide, so always restored."""
    reset_auth = f"{moto.endpoint_url}/moto-api/reset-auth"
    answer = requests.post(reset_auth, data=b"0", timeout=10)
    answer.raise_for_status()
    try:
        yield
    finally:
        previous = answer.json()["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
        requests.post(reset_auth, data=str(previous).encode(), timeout=10).raise_for_status()


def test_credentials_revoked_mid_session(aws_setup: AwsSetup, moto: MotoServer) -> None:
    with credentials_revoked(moto):
        stderr = aws_setup.failed_fetch()
        assert "credentials rejected" in stderr and "set-credentials prod" in stderr
        leaked = KEYS.secret_access_key in stderr
        assert not leaked, "the secret access key is in the error"
    aws_setup.recovers()


def test_slow_endpoint_fetch_ends_with_a_timeout_error() -> None:
    """An endpoint that accepts and never answers: the fetch gives up within its read timeout."""
    config = ProviderConfig(name="prod", display_name="Prod", region=REGION, hosts=(HOST,),
                            secrets=(SecretMapping("api", "prod/api"),))
    with RecordingUpstream(behaviour="hang") as silent:
        outcome: dict[str, aws.FetchResult] = {}
        fetch = threading.Thread(target=lambda: outcome.update(aws.fetch(
            dataclasses.replace(config, endpoint_url=silent.url), config.secrets, KEYS, read_timeout=0.5)))
        fetch.start()
        fetch.join(WAIT)  # generous: the point is that it ends at all
        assert not fetch.is_alive(), "the fetch hangs on a silent endpoint"
        assert silent.requests, "the fetch never reached the silent endpoint"
    assert outcome["api"].value is None and outcome["api"].error_code == "timeout"


def test_broken_configuration_file_keeps_last_good_state(aws_setup: AwsSetup) -> None:
    """A configuration file damaged by hand (or half-synced) while the proxy runs: its secrets keep
    their last good mappings (while changes to the vault itself still take effect)."""
    path = aws_setup.home / "configs" / "prod.yaml"
    good = path.read_bytes()
    kept = count_in_output(aws_setup.proxy, CONFIG_KEPT)
    path.write_bytes(good[: len(good) // 2] + b"\nsecrets: [unclosed\n")
    wait_for_count(aws_setup.proxy, CONFIG_KEPT, kept)
    aws_setup.assert_still_resolving()
    # status still answers, and says what is wrong with the file
    status = cli(aws_setup.home, "status", "--json")
    assert status.returncode == 0, status.stderr.decode(errors="replace")
    error = json.loads(status.stdout)["config_error"]
    assert "prod.yaml" in error and b"FAKE" not in status.stdout + status.stderr, "no value belongs in the output"

    reloads = count_in_output(aws_setup.proxy, RELOADED)
    path.write_bytes(good)
    wait_for_count(aws_setup.proxy, RELOADED, reloads)
    aws_setup.assert_still_resolving()


@pytest.mark.stress
def test_slow_endpoint_through_the_cli(aws_setup: AwsSetup) -> None:
    """The CLI's default timeouts apply (two attempts of 10 s): it ends, with the cache intact."""
    working = aws_setup.config().endpoint_url or ""
    with RecordingUpstream(behaviour="hang") as silent:
        aws_setup.point_at(silent.url)
        assert "did not answer in time" in aws_setup.failed_fetch(timeout=300)
    aws_setup.point_at(working)
    aws_setup.recovers()


# --- a damaged vault file under a running proxy ----------------------------------------------------


def truncate(path: Path, other_home: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def empty(path: Path, other_home: Path) -> None:
    """What a non-atomic writer leaves when it dies right after opening the file."""
    path.write_bytes(b"")


def foreign(path: Path, other_home: Path) -> None:
    path.write_bytes(b"PK\x03\x04" + os.urandom(600))  # some zip file


def other_key(path: Path, other_home: Path) -> None:
    """A good vault of another home (its own key), holding the same key with another value."""
    Vault(other_home).set("tok", "FAKE-other-vault-value", hosts=[HOST])
    path.write_bytes((other_home / "vault.enc").read_bytes())


@dataclass
class DamageScene:
    """A vault home and the proxy that serves it, shared by the damaged vault tests."""

    home: Path
    proxy: MitmdumpProcess
    good_files: dict[str, bytes]  # vault.enc holding tok=FAKE-tok-good, vault.enc.bak tok=FAKE-tok-first

    def restore(self) -> None:
        """Put the good files back, each in one step (the proxy never sees a half-written file)."""
        for name, data in self.good_files.items():
            temporary = self.home / f"{name}.test-restore"
            temporary.write_bytes(data)
            os.replace(temporary, self.home / name)


@pytest.fixture(scope="module")
def damage_scene(tmp_path_factory: pytest.TempPathFactory, module_mitmdump: StartProxy) -> DamageScene:
    home = tmp_path_factory.mktemp("vault-home")
    Vault(home).set("tok", "FAKE-tok-first", hosts=[HOST])
    Vault(home).set("tok", "FAKE-tok-good")
    good_files = {name: (home / name).read_bytes() for name in ("vault.enc", "vault.enc.bak")}
    return DamageScene(home, start_vault_proxy(module_mitmdump, home), good_files)


@pytest.fixture
def damage_proxy(damage_scene: DamageScene) -> tuple[Path, MitmdumpProcess]:
    """The shared proxy, its vault as good as before any test damaged it."""
    damage_scene.restore()
    return damage_scene.home, damage_scene.proxy


@pytest.mark.parametrize("damage", [truncate, empty, foreign, other_key], ids=["truncated", "empty", "foreign", "other-key"])
def test_damaged_vault_file_keeps_last_good_state(
    damage: Callable[[Path, Path], None], damage_proxy: tuple[Path, MitmdumpProcess], tmp_path: Path,
    upstream: RecordingUpstream,
) -> None:
    vault_home, proxy = damage_proxy
    vault_file = vault_home / "vault.enc"
    assert resolved_through(proxy, upstream, "/", {"X-Tok": "<<vault:tok>>"}).header("x-tok") == "FAKE-tok-good"
    good = vault_file.read_bytes()
    backup = (vault_home / "vault.enc.bak").read_bytes()

    failures = count_in_output(proxy, RELOAD_FAILED)
    damage(vault_file, tmp_path / "other-home")
    damaged = vault_file.read_bytes()
    wait_for_count(proxy, RELOAD_FAILED, failures)
    assert resolved_through(proxy, upstream, "/", {"X-Tok": "<<vault:tok>>"}).header("x-tok") == "FAKE-tok-good"
    assert proxy.is_running()

    for args, stdin in ((("local", "set", "new", "--hosts", HOST), b"FAKE-new"), (("status", "--json"), b"")):
        error = one_line_error(cli(vault_home, *args, stdin=stdin))
        assert "vault.enc" in error and "FAKE" not in error, "no value belongs in the error"
    assert vault_file.read_bytes() == damaged, "the CLI changed a vault it cannot read"
    assert (vault_home / "vault.enc.bak").read_bytes() == backup
    assert not [name for name in os.listdir(vault_home) if name.startswith(".")], "a refused write left a temp file"

    # Put the good file back: the proxy picks up later changes again.
    reloads = count_in_output(proxy, RELOADED)
    vault_file.write_bytes(good)
    Vault(vault_home).set("tok", "FAKE-tok-after-repair")
    wait_for_count(proxy, RELOADED, reloads)
    wait_until(
        lambda: resolved_through(proxy, upstream, "/", {"X-Tok": "<<vault:tok>>"}).header("x-tok") == "FAKE-tok-after-repair",
        WAIT, "the proxy to resolve the value written after the repair",
    )


# --- disk full ---------------------------------------------------------------------------------------


def file_size_limit(limit: int) -> Callable[[], None]:
    """preexec_fn: files may not grow past `limit` bytes; writes past it fail with EFBIG instead of killing."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real small filesystem (needs root, as in CI); skips where mounting is not allowed."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(directory: Path, leave: int) -> Path:
    """Fill the filesystem of `directory`, then free about `leave` bytes."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)  # until ENOSPC
    with filler.open("r+b") as f:
        f.truncate(max(0, filler.stat().st_size - leave))
    return filler


def assert_disk_full_write_fails_cleanly(home: Path, run: Callable[[], subprocess.CompletedProcess[bytes]]) -> None:
    before = {name: (home / name).read_bytes() for name in ("vault.enc", "vault.enc.bak")}
    error = one_line_error(run())
    assert "cannot write" in error and "vault.enc" in error and "unchanged" in error
    assert "FAKE" not in error, "no value belongs in the error"
    assert {name: (home / name).read_bytes() for name in before} == before
    assert Vault(home).get("keep") == "FAKE-keep-me"
    assert not [name for name in os.listdir(home) if name.startswith(".")], "a failed write left a temp file"


def big_value() -> bytes:
    return b"FAKE-big-" + os.urandom(64 * 1024).hex().encode()


def test_disk_full_file_size_limit(vault_home: Path) -> None:
    Vault(vault_home).set("keep", "FAKE-keep-me", hosts=[HOST])
    Vault(vault_home).set("keep", "FAKE-keep-me")  # a backup exists too
    limit = (vault_home / "vault.enc").stat().st_size + 512
    assert_disk_full_write_fails_cleanly(
        vault_home,
        lambda: cli(vault_home, "local", "set", "big", "--hosts", HOST, stdin=big_value(), preexec_fn=file_size_limit(limit)),
    )
    Vault(vault_home).set("big", "FAKE-big-later", hosts=[HOST])
    assert Vault(vault_home).get("big") == "FAKE-big-later"


def test_disk_full_small_filesystem(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small-fs", "512k") as mount:
        home = mount / "vault-home"
        home.mkdir(mode=0o700)
        Vault(home).set("keep", "FAKE-keep-me", hosts=[HOST])
        Vault(home).set("keep", "FAKE-keep-me")
        filler = fill(mount, leave=8 * 1024)
        assert_disk_full_write_fails_cleanly(
            home, lambda: cli(home, "local", "set", "big", "--hosts", HOST, stdin=big_value())
        )
        filler.unlink()
        Vault(home).set("big", "FAKE-big-later", hosts=[HOST])
        assert Vault(home).get("big") == "FAKE-big-later"


# --- misbehaving upstreams ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def streaming_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vault-home")


@pytest.fixture(scope="module")
def streaming_proxy(module_mitmdump: StartProxy, streaming_home: Path) -> MitmdumpProcess:
    """Shared by the misbehaving upstream tests: each uses a key of its own."""
    return start_vault_proxy(module_mitmdump, streaming_home, stream_large_bodies="64k")


@pytest.mark.parametrize("behaviour", ["reset", "hang", "malformed"])
def test_misbehaving_upstream_fails_only_its_own_request(
    behaviour: str, streaming_home: Path, streaming_proxy: MitmdumpProcess, upstream: RecordingUpstream
) -> None:
    """The failing request carries its value in the URL, a header and a body big enough to be
    streamed: every part must be restored on the error path (the dumper prints the flow)."""
    proxy, key, path = streaming_proxy, f"tok-{behaviour}", f"/bad-{behaviour}"
    placeholder = f"<<vault:{key}>>"
    value = f"FAKE-upstream-fault-{uuid.uuid4().hex}"
    Vault(streaming_home).set(key, value, hosts=[HOST])
    body = placeholder.encode() + b"b" * (256 * 1024) + placeholder.encode()
    with RecordingUpstream(behaviour=behaviour) as bad, proxy.requests_session() as bad_client, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(bad_client.post, f"{bad.url}{path}?key={placeholder}", data=body,
                              headers={"X-Tok": placeholder, "Content-Type": "text/plain"}, timeout=(WAIT, WAIT))
        (sent,) = bad.wait_for(1)
        # The value did go out, everywhere, before the upstream failed.
        assert (sent.target, sent.header("x-tok")) == (f"{path}?key={value}", value)
        assert sent.body == body.replace(placeholder.encode(), value.encode())
        # While the bad request is pending (or just failed), another client is served normally.
        good = resolved_through(proxy, upstream, "/good", {"X-Tok": placeholder})
        assert good.header("x-tok") == value
        if behaviour == "hang":
            assert not pending.done()
            bad.stop()  # the upstream finally drops the connection
        assert pending.result().status_code == 502
    assert resolved_through(proxy, upstream, "/after", {"X-Tok": placeholder}).header("x-tok") == value
    assert proxy.is_running()
    proxy.wait_for_output(f"{path}?key=")  # the dumper has shown the failed flow
    leaked = value in proxy.output()
    assert not leaked, "the value reached mitmdump's output"
