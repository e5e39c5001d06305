"""README.md's command blocks, run as written against loopback stand-ins, so they stay true.

Every fenced block of README.md is accounted for. A shell block (```sh, bash, shell,
console) is run by a test here (RUN: its section and the start of its first command) or
listed in NOT_RUNNABLE with the reason (by its exact text, so a changed block is looked at
again). A block in another language is a file that a run block uses, named by its first line
(`// app.mjs`), and written where the commands run. test_every_block_is_run_or_listed fails
for anything else: a new example cannot stay untested unnoticed. A block that needs what
this machine may lack (curl, Node 18 for app.mjs, a Node that honours NODE_USE_ENV_PROXY)
is skipped with the reason where it is missing.

Each block runs in bash, from a file (a value typed in a block never reaches an argv), with
HOME in a tmp dir (the vault in ~/.config/vaultproxy, mitmproxy's CA in ~/.mitmproxy), and is
checked: the loopback stand-in received the value, and neither the client's output nor the
logs (the proxy's, mitmweb's) show it. Nothing leaves 127.0.0.1. What differs from a user's
machine, and nothing else:

- Public names resolve nowhere: `.test` is appended to each `httpbin.org` and `example.com`
  in a block (httpbin.org.test, api.example.com.test: reserved names that never resolve), so
  a client that went around the proxy reaches nothing, never the internet. The proxy, and
  only it, connects these names (on port 443, as the URLs say) to a loopback HTTPS stand-in
  (tests/support/stand_ins_addon.py), whose certificate it verifies against the test CA;
  any other name resolves to nothing there. A block whose URLs name another host fails until
  it gets a stand-in. The stand-in answers like httpbin's /headers: the request's headers.
- Fixed ports are free ones: `scripts/run` gets `--listen-port PORT` and, after `--`, the
  stand-in addon and the test CA; 8080, 8081 and 8082 in a block become the proxy's port and
  two free ones (a proxy the developer runs, or another test run, may hold the real ones).
  mitmweb's default ports are written out first, so ports that would clash still clash.
- `scripts/run` runs from a stand-in checkout: the real scripts/ (a symlink), and a `.venv`
  marked installed (the real checkout's may first need `pip install`, which needs the
  network; PIP_NO_INDEX makes sure it never tries). That .venv is a venv of the interpreter
  under test with the standard library only, plus vaultproxy's commands (vaultproxy,
  mitmdump, mitmweb) from the venv under test: its `python3` lacks the test extras
  (requests...), as the .venv scripts/run makes does.
- What a user types at a prompt comes on stdin (`local set` and `config add` read it when it
  is no terminal). moto stands in for AWS (AWS_ENDPOINT_URL), its dummy keys typed in; every
  other address boto3 could try goes to a closed loopback port (HTTPS_PROXY).
- Blocks after the Quick start run with the stand-in .venv activated, as the Quick start left
  the terminal (the AWS block, which needs no proxy, with the venv under test's bin on PATH).
  ~/.mitmproxy/config.yaml says `web_open_browser: false` (mitmweb would open a browser on a
  desktop).

The Quick start's proxy is shared by the module's tests (the `machine` fixture starts it,
with the README's `scripts/run`); each test stores the secrets it uses.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
import venv
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from tests.support.env import child_env
from tests.support.leaks import (
    MIN_TOKEN,
    Needle,
    fail_on,
    hunt_bytes,
    leak_value,
    needles_for,
)
from tests.support.moto import MotoServer
from tests.support.net import (
    LOOPBACK,
    free_port,
    is_listening,
    listening_addresses,
    port_accepts,
    wait_until,
)
from tests.support.proxy import REPO
from tests.support.tls import TLSMaterial, issue_server_material
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply

README = REPO / "README.md"
STAND_INS_SCRIPT = REPO / "tests" / "support" / "stand_ins_addon.py"
VENV_BIN = Path(sys.executable).parent  # the venv under test
VENV_COMMANDS = ("vaultproxy", "mitmdump", "mitmweb", "mitmproxy")  # what installing vaultproxy puts in a venv
SHELLS = ("sh", "bash", "shell", "console")
PUBLIC_NAMES = re.compile(r"\b(httpbin\.org|example\.com)\b")
STAND_IN_NAMES = ("httpbin.org.test", "api.example.com.test")
URL_HOST = re.compile(r"\b(?:https?|wss?)://(?:[^@/\s'\"]*@)?(\[[^\]]*\]|[^/:\s'\"]+)")
FIXED_PORTS = re.compile(r"\b(8080|8081|8082)\b")
MITMWEB_DEFAULT_PORTS = {"--listen-port": "8080", "--web-port": "8081"}
START_COMMAND = re.compile(r"^(\s*(?:scripts/run|vaultproxy start))(\s+#.*)?$", re.MULTILINE)
FILE_LINE = re.compile(r"^(?://|#|--)\s*([\w.-]+\.\w+)\s*$")
TIMEOUT = 60.0  # a guard against a hung command, not a measurement
STOP_TIMEOUT = 15.0
README_DEMO_VALUE = "hello-secret"  # what the Quick start stores, in the README's own words

# The shell blocks the tests below run, by (section, first command without its comment; one
# that ends in " ..." is the start of it) -> what runs it.
QUICK_START_PROXY = ("Quick start", "scripts/run")
QUICK_START = ("Quick start", "source .venv/bin/activate")
ANY_CLIENT = ("Any client", "vaultproxy local set token --hosts api.example.com")
NODE_ENV_PROXY = ("Any client", "NODE_USE_ENV_PROXY=1 vaultproxy exec -- node ...")
AWS = ("AWS Secrets Manager", "vaultproxy config add production --region us-east-1 --hosts '*.example.com'")
AWS_REFRESH = ("AWS Secrets Manager", AWS[1] + " --refresh 15m --refresh-on 401")
WATCH_UI = ("Watching flows", "mitmweb ...")
WATCH_CLIENT = ("Watching flows", "curl -x http://127.0.0.1:8082 ...")
RUN = {
    QUICK_START_PROXY: "the `machine` fixture, as the proxy of the tests below",
    QUICK_START: "test_quick_start",
    ANY_CLIENT: "test_any_client",
    NODE_ENV_PROXY: "test_node_env_proxy, where the Node on PATH honours NODE_USE_ENV_PROXY",
    AWS: "test_aws_secrets_manager",
    AWS_REFRESH: "test_aws_refresh_options",
    WATCH_UI: "test_watching_flows, in the background",
    WATCH_CLIENT: "test_watching_flows",
}
# Shell blocks that cannot run here, by their exact text: why.
NOT_RUNNABLE = {
    "scripts/run     # the proxy on 127.0.0.1:8080, local vault in ~/.config/vaultproxy (no AWS account needed)\n"
    "scripts/test    # the whole test suite\n":
        "scripts/test is the whole test suite, this test included (it would run itself); "
        "scripts/run is the Quick start's first block, which the `machine` fixture runs",
}


# --- README.md's blocks ----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced block: the section it is in, its language and text, its first line's number."""

    section: str
    language: str
    text: str
    line: int

    @property
    def is_shell(self) -> bool:
        return self.language in SHELLS

    @property
    def commands(self) -> str:
        """The text a shell runs (a `console` block: its `$ ` lines, without the prompt)."""
        if self.language != "console":
            return self.text
        return "".join(line[2:] + "\n" for line in self.text.splitlines() if line.startswith("$ "))

    @property
    def first_command(self) -> str:
        first = next((line for line in self.commands.splitlines() if line.strip()), "")
        return re.sub(r"\s+#.*$", "", first).strip()

    @property
    def file_name(self) -> str | None:
        """The file a non-shell block is, as its first line names it (`// app.mjs`)."""
        match = FILE_LINE.match(self.text.split("\n", 1)[0])
        return match.group(1) if match and not self.is_shell else None

    def where(self) -> str:
        return f"README.md:{self.line} ({self.section}, ```{self.language})"


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    body: list[str] = []
    section, fence, language, start = "", "", "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not fence:
            if heading := re.match(r"#{1,6}\s+(.*)", line):
                section = heading.group(1).strip()
            elif opening := re.match(r"\s{0,3}(`{3,}|~{3,})\s*([\w+-]*)", line):
                fence, language, start, body = opening.group(1), opening.group(2).lower(), number, []
        elif line.strip() == fence:
            blocks.append(Block(section, language, "".join(body), start))
            fence = ""
        else:
            body.append(line + "\n")
    assert not fence, f"README.md:{start}: a block is never closed"
    return blocks


@pytest.fixture(scope="module")
def blocks() -> list[Block]:
    return readme_blocks(README.read_text())


def matches(block: Block, key: tuple[str, str]) -> bool:
    section, command = key
    if command.endswith(" ..."):
        same = block.first_command.startswith(command.removesuffix("..."))
    else:
        same = block.first_command == command
    return block.is_shell and block.section == section and same


def readme_block(blocks: list[Block], key: tuple[str, str]) -> Block:
    found = [block for block in blocks if matches(block, key)]
    assert len(found) == 1, f"README.md has {len(found)} shell blocks in {key[0]!r} whose first command is {key[1]!r}; wanted one"
    return found[0]


def files_of(blocks: list[Block]) -> dict[str, str]:
    """The files the README's blocks show, by name."""
    return {block.file_name: block.text for block in blocks if block.file_name}


def test_every_block_is_run_or_listed(blocks: list[Block]) -> None:
    assert blocks, "README.md has no fenced blocks: is the parser broken?"
    shell_blocks = [block for block in blocks if block.is_shell]
    unaccounted = [
        block.where() for block in shell_blocks
        if block.text not in NOT_RUNNABLE and not any(matches(block, key) for key in RUN)
    ]
    assert not unaccounted, (
        f"README blocks neither run nor listed: {unaccounted}; run each in a test here (RUN), or list its exact "
        "text in NOT_RUNNABLE with the reason it cannot run against loopback stand-ins"
    )
    for key in RUN:
        readme_block(blocks, key)  # each block a test runs exists, once
    stale = [text for text in NOT_RUNNABLE if text not in {block.text for block in shell_blocks}]
    assert not stale, f"NOT_RUNNABLE lists blocks README.md no longer has: {stale}"
    run_text = "".join(block.text for block in shell_blocks if any(matches(block, key) for key in RUN))
    for block in blocks:
        if block.is_shell:
            continue
        assert block.file_name, f"{block.where()}: neither commands nor a file (name it on its first line: // app.mjs)"
        assert block.file_name in run_text, f"{block.where()}: no block that runs uses {block.file_name}"


def test_the_parser_reads_console_blocks_and_files() -> None:
    text = (
        "# Title\n## Use\n```console\n$ vaultproxy status  # where\nvault home: ...\n$ vaultproxy stop\n```\n"
        "```js\n// app.mjs\nconsole.log(1);\n```\n"
    )
    console, js = readme_blocks(text)
    assert (console.section, console.first_command, console.commands) == ("Use", "vaultproxy status", "vaultproxy status  # where\nvaultproxy stop\n")
    assert (js.file_name, js.is_shell, js.line) == ("app.mjs", False, 8)


# --- a user's machine, stood in for ----------------------------------------------------------


def explicit_defaults(text: str) -> str:
    """mitmweb's ports written out where a command leaves them to their defaults, so that two
    ports that would clash on a user's machine still clash once ports are mapped to free ones."""
    lines = text.split("\n")
    for number, line in enumerate(lines):
        if not re.match(r"\s*mitmweb\b", line):
            continue
        end = number
        while lines[end].endswith("\\") and end + 1 < len(lines):  # continuation lines
            end += 1
        command = " ".join(lines[number : end + 1])
        missing = "".join(f" {flag} {port}" for flag, port in MITMWEB_DEFAULT_PORTS.items() if flag not in command)
        lines[number] = line.replace("mitmweb", "mitmweb" + missing, 1)
    return "\n".join(lines)


def stand_in(text: str, ports: Mapping[str, int] | None = None, proxy_args: Sequence[str] = ()) -> str:
    """`text` as it runs here (see the module docstring): public names get `.test`, fixed ports
    (mitmweb's defaults made explicit) become `ports`, and a bare `scripts/run` or
    `vaultproxy start` gets `proxy_args`."""
    text = PUBLIC_NAMES.sub(r"\1.test", explicit_defaults(text))
    strangers = {host for host in URL_HOST.findall(text) if host not in (*STAND_IN_NAMES, LOOPBACK, "localhost")}
    assert not strangers, f"a README block names {sorted(strangers)}: give each a stand-in here (PUBLIC_NAMES, STAND_IN_NAMES)"
    text = FIXED_PORTS.sub(lambda port: str((ports or {}).get(port.group(), port.group())), text)
    return START_COMMAND.sub(lambda line: f"{line.group(1)} {shlex.join(proxy_args)}{line.group(2) or ''}", text)


def echo_headers(request: RecordedRequest) -> tuple[list[tuple[str, str]], bytes]:
    """httpbin's /headers: the request's headers, as JSON."""
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in request.headers}
    return [("Content-Type", "application/json")], json.dumps({"headers": headers}, indent=2).encode() + b"\n"


ECHO = Reply(respond=echo_headers)


def block_env(home: Path, venv_bin: Path | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A block's environment: HOME (and the AWS files) in `home`, none of the developer's proxy
    or AWS settings; `venv_bin` first on PATH, as `source .venv/bin/activate` has it (None: not
    activated)."""
    env = child_env(extra, home=home)
    if venv_bin is not None:
        env["PATH"] = f"{venv_bin}{os.pathsep}{env['PATH']}"
        env["VIRTUAL_ENV"] = str(venv_bin.parent)
    return env


def run_block(script: Path, env: Mapping[str, str], cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """A block, written to `script`, in bash (stopping at the first failing command), to completion."""
    return subprocess.run(["bash", "-e", "-o", "pipefail", str(script)], input=stdin, capture_output=True, env=env,
                          cwd=cwd, timeout=TIMEOUT, check=False)


def stand_in_checkout(root: Path) -> Path:
    """A checkout whose scripts/ are the real ones, and whose .venv is installed: a venv of the
    interpreter under test with nothing but the standard library, and vaultproxy's commands
    (those of the venv under test). Its `python3` has no test extras (no requests, httpx...),
    as the .venv scripts/run makes has none: a README example that needs one fails here too."""
    venv.create(root / ".venv", symlinks=True, with_pip=False)
    venv_bin = root / ".venv" / "bin"
    for name in VENV_COMMANDS:
        (venv_bin / name).symlink_to(VENV_BIN / name)
    (root / "scripts").symlink_to(REPO / "scripts", target_is_directory=True)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    stamp = root / ".venv" / ".installed-keyring"  # as bootstrap_venv leaves it after installing
    stamp.touch()
    mtime = stamp.stat().st_mtime
    os.utime(root / "pyproject.toml", (mtime - 60, mtime - 60))
    return root


@dataclass
class Machine:
    """HOME, a checkout, the loopback stand-in for the public hosts, and the proxy `scripts/run`
    started (its output in `proxy_log`)."""

    home: Path
    checkout: Path
    scratch: Path
    upstream: RecordingUpstream
    upstream_ca: Path
    proxy_port: int = 0
    proxy_log: Path = field(default_factory=Path)
    _servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _scripts: int = 0

    @property
    def vault_home(self) -> Path:
        return self.home / ".config" / "vaultproxy"

    @property
    def ca_cert(self) -> Path:
        return self.home / ".mitmproxy" / "mitmproxy-ca-cert.pem"

    def env(self, activated: bool = True, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return block_env(self.home, self.checkout / ".venv" / "bin" if activated else None, extra)

    def proxy_args(self, port: int) -> list[str]:
        """What `scripts/run` gets here: a free port, the stand-ins and the CA they are verified with."""
        stand_ins = [f"test_stand_ins={name}={LOOPBACK}:{self.upstream.port}" for name in STAND_IN_NAMES]
        return [
            "--listen-port", str(port), "--", "-s", str(STAND_INS_SCRIPT),
            *(word for entry in stand_ins for word in ("--set", entry)),
            "--set", "test_stand_ins_only=true", "--set", f"ssl_verify_upstream_trusted_ca={self.upstream_ca}",
        ]

    def _script(self, text: str) -> Path:
        self._scripts += 1
        path = self.scratch / f"block-{self._scripts}.sh"
        path.write_text(text)
        path.chmod(0o600)
        return path

    def run(self, text: str, cwd: Path, stdin: bytes = b"", activated: bool = True) -> subprocess.CompletedProcess[bytes]:
        """The block `text` in bash (stopping at the first failing command), to completion."""
        return run_block(self._script(text), self.env(activated), cwd, stdin)

    def start(self, text: str, cwd: Path, log: Path, activated: bool = True) -> subprocess.Popen[bytes]:
        """The block `text` in bash, in the background (a server, in a terminal of its own), in a
        process group of its own that stop() ends."""
        with log.open("ab") as output:
            server = subprocess.Popen(
                ["bash", str(self._script(text))], stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                env=self.env(activated, {"PIP_NO_INDEX": "1"}), cwd=cwd, start_new_session=True,
            )
        self._servers.append(server)
        return server

    def stop(self, server: subprocess.Popen[bytes]) -> None:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the group start() made: the block's shell and what it runs
            try:
                server.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

    def stop_all(self) -> None:
        for server in reversed(self._servers):
            self.stop(server)

    def proxy_record(self) -> dict[str, object]:
        try:
            record = json.loads((self.vault_home / "proxy.json").read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def store(self, key: str, value: str, hosts: str) -> None:
        """`vaultproxy local set KEY --hosts HOSTS`, the value on stdin: a test's own secret."""
        result = subprocess.run(
            [str(VENV_BIN / "vaultproxy"), "local", "set", key, "--hosts", hosts], input=value.encode(),
            capture_output=True, env=self.env(), cwd=self.home, timeout=TIMEOUT, check=False,
        )
        assert result.returncode == 0, result.stderr.decode()


def serving(machine: Machine, port: int) -> bool:
    """proxy.json names `port` and a pid that listens on it, and mitmproxy's CA is there.
    (mitmproxy 12 writes a new CA only after the addon has written proxy.json, and
    `vaultproxy env` needs it: a person typing into another terminal never sees the gap.)"""
    record = machine.proxy_record()
    pid = record.get("pid")
    listening = record.get("port") == port and isinstance(pid, int) and is_listening(pid, port)
    return listening and machine.ca_cert.is_file()


def started(machine: Machine, server: subprocess.Popen[bytes], port: int) -> bool:
    """Whether `server` has exited, or serves on `port`."""
    return server.poll() is not None or serving(machine, port)


def start_quick_start_proxy(machine: Machine, block: Block) -> None:
    """The Quick start's `scripts/run`, until the proxy it starts serves the vault. A port taken
    meanwhile by someone else is retried with another."""
    for _ in range(3):
        port = free_port()
        machine.proxy_log = machine.scratch / f"scripts-run-{port}.log"
        text = stand_in(block.commands, proxy_args=machine.proxy_args(port))
        server = machine.start(text, machine.checkout, machine.proxy_log, activated=False)
        wait_until(partial(started, machine, server, port), TIMEOUT, "scripts/run's proxy to serve the vault")
        if server.poll() is None:
            machine.proxy_port = port
            return
        if "in use" not in machine.proxy_log.read_text(errors="replace"):
            break
    raise AssertionError(f"scripts/run exited with {server.returncode}:\n{machine.proxy_log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial, blocks: list[Block]) -> Iterator[Machine]:
    root = tmp_path_factory.mktemp("readme")
    home = root / "home"
    (home / ".mitmproxy").mkdir(parents=True)
    (home / ".mitmproxy" / "config.yaml").write_text("web_open_browser: false\n")
    scratch = root / "scratch"
    scratch.mkdir(mode=0o700)
    material = issue_server_material(tls_material, root / "stand-in-tls", STAND_IN_NAMES)
    routes = {"/headers": ECHO, "/v1/me": ECHO}
    with RecordingUpstream(tls=material, routes=routes) as upstream:
        machine = Machine(home, stand_in_checkout(root / "checkout"), scratch, upstream, tls_material.ca_cert)
        try:
            start_quick_start_proxy(machine, readme_block(blocks, QUICK_START_PROXY))
            yield machine
            if machine.proxy_record():  # `vaultproxy stop`, as the README says; stop_all() is the fallback
                subprocess.run([str(VENV_BIN / "vaultproxy"), "stop"], capture_output=True, env=machine.env(),
                               cwd=home, timeout=TIMEOUT, check=False)
        finally:
            machine.stop_all()


# --- checks ----------------------------------------------------------------------------------


def output_of(result: subprocess.CompletedProcess[bytes]) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")


def needles_of(name: str, value: str) -> list[Needle]:
    """A random value in all its forms; the README's own short demo value as it is."""
    return needles_for(name, value, value) if len(value) >= MIN_TOKEN else [Needle(name, "plain", value.encode())]


def check_ran(result: subprocess.CompletedProcess[bytes], secrets: Mapping[str, str], *logs: Path) -> str:
    """The block succeeded, and neither its output nor `logs` show a value of `secrets`
    (looked for first, so a failure never prints a value). Returns its stdout."""
    needles = [needle for name, value in secrets.items() for needle in needles_of(name, value)]
    hits = hunt_bytes("the block's output", result.stdout + result.stderr, needles)
    for log in logs:
        hits += hunt_bytes(str(log), log.read_bytes(), needles)
    fail_on(hits)
    assert result.returncode == 0, f"exit {result.returncode}:\n{output_of(result)}"
    return result.stdout.decode()


def carried(request: RecordedRequest, value: str) -> bool:
    """Whether `request` carried `Authorization: Bearer VALUE` (a bool: a failed assertion
    on it never shows the value)."""
    return request.header("Authorization") == f"Bearer {value}"


def node_version() -> tuple[int, ...] | None:
    node = shutil.which("node")
    if node is None:
        return None
    answer = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    return tuple(int(part) for part in re.findall(r"\d+", answer.stdout)[:3])


def closed_port() -> int:
    """A loopback port nothing listens on (free a moment ago; nothing here binds it)."""
    return free_port()


def needs(program: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed: the README block runs it")


# --- the blocks ------------------------------------------------------------------------------


def test_quick_start(machine: Machine, blocks: list[Block]) -> None:
    needs("curl")
    assert machine.ca_cert.is_file()  # "it creates mitmproxy's CA in ~/.mitmproxy on first run"
    machine.upstream.clear()
    block = readme_block(blocks, QUICK_START)
    result = machine.run(stand_in(block.commands), cwd=machine.checkout, activated=False)
    shown = check_ran(result, {"demo": README_DEMO_VALUE}, machine.proxy_log)
    (request,) = machine.upstream.wait_for(1)
    assert (request.header("Host"), request.path) == ("httpbin.org.test", "/headers")
    assert carried(request, README_DEMO_VALUE)
    assert '"Authorization": "Bearer <<vault:demo>>"' in shown  # the echo, redacted


def test_any_client(machine: Machine, blocks: list[Block], tmp_path: Path) -> None:
    needs("curl")
    version = node_version()
    if version is None or version < (18,):
        pytest.skip(f"the block's app.mjs needs Node 18 or newer; here: {version or 'no node'}")
    for name, text in files_of(blocks).items():
        (tmp_path / name).write_text(stand_in(text))
    _, value = leak_value()
    machine.upstream.clear()
    block = readme_block(blocks, ANY_CLIENT)
    result = machine.run(stand_in(block.commands), cwd=tmp_path, stdin=value.encode())  # the value, as typed at the prompt
    shown = check_ran(result, {"token": value}, machine.proxy_log)
    requests = machine.upstream.wait_for(3)
    clients = sorted((request.header("User-Agent") or "node").split("/")[0] for request in requests)
    assert clients == ["Python-urllib", "curl", "node"]
    assert {(request.header("Host"), request.path) for request in requests} == {("api.example.com.test", "/v1/me")}
    assert all(carried(request, value) for request in requests)
    assert shown.count('"Authorization": "Bearer <<vault:token>>"') == 3  # each client printed the (redacted) echo


def test_node_env_proxy(machine: Machine, blocks: list[Block], tmp_path: Path) -> None:
    version = node_version()
    honoured = version is not None and (version >= (24, 5) or (22, 21) <= version < (23,))
    if not honoured:
        pytest.skip(f"Node honours NODE_USE_ENV_PROXY from 22.21 and 24.5; here: {version or 'no node'}")
    _, value = leak_value()
    machine.store("token", value, "api.example.com.test")
    machine.upstream.clear()
    block = readme_block(blocks, NODE_ENV_PROXY)
    shown = check_ran(machine.run(stand_in(block.commands), cwd=tmp_path), {"token": value}, machine.proxy_log)
    (request,) = machine.upstream.wait_for(1)
    assert (request.header("Host"), request.path) == ("api.example.com.test", "/v1/me")
    assert carried(request, value)
    assert '"Authorization": "Bearer <<vault:token>>"' in shown


def web_ui(log: Path) -> str:
    """mitmweb's UI address, with its token (mitmproxy 12) as it logs it."""
    found = re.search(r"Web server listening at (http://\S+)", log.read_text(errors="replace"))
    assert found, log.read_text(errors="replace")
    return found.group(1)


def flows_dump(ui: str) -> bytes:
    """Every flow mitmweb holds (its UI's /flows/dump), asked for directly, not through a proxy."""
    base, _, query = ui.partition("?")
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(f"{base.rstrip('/')}/flows/dump" + (f"?{query}" if query else ""), timeout=TIMEOUT) as answer:
        data: bytes = answer.read()
    return data


def test_watching_flows(machine: Machine, blocks: list[Block], tmp_path: Path) -> None:
    needs("curl")
    _, value = leak_value()
    machine.store("demo", value, "httpbin.org.test")
    ports = {"8080": machine.proxy_port, "8081": free_port(), "8082": free_port()}
    log = tmp_path / "mitmweb.log"
    mitmweb = machine.start(stand_in(readme_block(blocks, WATCH_UI).commands, ports), machine.home, log)
    try:
        wait_until(lambda: mitmweb.poll() is not None or port_accepts(ports["8082"]), TIMEOUT, "mitmweb's proxy")
        assert mitmweb.poll() is None, log.read_text(errors="replace")
        wait_until(lambda: "Web server listening" in log.read_text(errors="replace"), TIMEOUT, "mitmweb's UI")
        assert listening_addresses(ports["8082"]) == {LOOPBACK}  # else anyone who reaches it gets the secrets in
        machine.upstream.clear()
        block = readme_block(blocks, WATCH_CLIENT)
        shown = check_ran(machine.run(stand_in(block.commands, ports), cwd=machine.home), {"demo": value}, machine.proxy_log, log)
        (request,) = machine.upstream.wait_for(1)
        assert (request.header("Host"), request.path) == ("httpbin.org.test", "/headers")
        assert carried(request, value)
        assert '"Authorization": "Bearer <<vault:demo>>"' in shown
        # "the UI then only ever holds placeholders"
        flows = flows_dump(web_ui(log))
        fail_on(hunt_bytes("mitmweb's flows", flows, needles_of("demo", value)))
        assert b"<<vault:demo>>" in flows
    finally:
        machine.stop(mitmweb)


def run_aws_block(moto: MotoServer, block: Block, home: Path) -> tuple[subprocess.CompletedProcess[bytes], dict[str, str]]:
    """An AWS block in a fresh HOME, against moto, the static keys typed in; the result and
    the environment it ran in. No proxy here: these blocks set up, fetch and resolve."""
    home.mkdir()
    # boto3 reaching past moto for real AWS would meet a closed loopback port, not the internet.
    nowhere = f"http://{LOOPBACK}:{closed_port()}"
    env = block_env(home, VENV_BIN, {
        "AWS_ENDPOINT_URL": moto.endpoint_url, "HTTPS_PROXY": nowhere, "HTTP_PROXY": nowhere, "NO_PROXY": LOOPBACK,
    })
    keys = b"testing\ntesting\n\n"  # moto's dummy access key id and secret key, no session token
    script = home.parent / "block.sh"
    script.write_text(stand_in(block.commands))
    return run_block(script, env, home, keys), env


def test_aws_secrets_manager(moto: MotoServer, blocks: list[Block], tmp_path: Path) -> None:
    _, user = leak_value()
    _, password = leak_value()
    values = {"db.user": user, "db.password": password}
    moto.client().create_secret(Name="prod/db", SecretString=json.dumps({"user": user, "password": password}))
    result, env = run_aws_block(moto, readme_block(blocks, AWS), tmp_path / "home")
    assert "saved configuration production" in check_ran(result, values)
    resolve = subprocess.run(
        [str(VENV_BIN / "vaultproxy"), "resolve", "<<vault:db.user>>:<<vault:db.password>>", "--host", "api.example.com.test"],
        capture_output=True, env=env, cwd=tmp_path / "home", timeout=TIMEOUT, check=False,
    )
    resolved = check_ran(resolve, values)  # "<<vault:db.user>>, <<vault:db.password>> now resolve"
    assert "db.user: resolves" in resolved and "db.password: resolves" in resolved


def test_aws_refresh_options(moto: MotoServer, blocks: list[Block], tmp_path: Path) -> None:
    """The block's commands take its refresh options (what the running proxy does with them is
    for the refresh tests to check)."""
    _, token = leak_value()
    moto.client().create_secret(Name="prod/api-token", SecretString=token)
    result, _ = run_aws_block(moto, readme_block(blocks, AWS_REFRESH), tmp_path / "home")
    assert "saved configuration production" in check_ran(result, {"token": token})
