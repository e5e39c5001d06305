"""The `vaultproxy` command run as a user runs it: a real child process with VAULTPROXY_HOME in
its environment, values on stdin (never in argv), and a HOME of its own in the test's tmp dir.

- run_cli: one command to completion; start_cli: the same, left running for a caller that
  watches it (its /proc entries) before collecting its output; run_on_terminal: one command
  on a pseudo-terminal, answering its prompts
- VaultproxyStart: `vaultproxy start`, which execs mitmdump, handled like a MitmdumpProcess
- Listener: a process that listens on a loopback port and keeps what each connection sends
  it; with the addon in its command line, a stand-in for the proxy
- stand_in_proxy: a proxy.json that names such a stand-in, for the commands that need a
  running proxy but not its work (env, exec)
- parse_exports: the `export NAME=value` lines `vaultproxy env` prints
"""

from __future__ import annotations

import json
import os
import pty
import pwd
import select
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .env import child_env
from .net import LOOPBACK
from .proxy import ADDON_SCRIPT, MitmdumpProcess

CLI = (sys.executable, "-m", "vaultcore.cli")
CONSOLE_SCRIPT = Path(sys.executable).with_name("vaultproxy")  # what `pip install` gives users
CLI_TIMEOUT = 60.0  # a guard against a hung command, not a measurement
# Typed at a terminal: the wrapper makes the pty the child's controlling terminal, so getpass
# really reads /dev/tty with echo off, as for a user.
ON_TERMINAL = (
    "import fcntl, runpy, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "sys.argv[0] = 'vaultproxy'; runpy.run_module('vaultcore.cli', run_name='__main__', alter_sys=True)"
)
StartVaultproxy = Callable[..., "VaultproxyStart"]  # the `start_vaultproxy` fixture's factory
# Listens on a loopback port, prints it, then for each connection what it sent (hex, one line;
# up to the end of its headers, or what came within 5 s). Python 3.8 or newer: the system's
# python3 runs it for another user, who cannot run this virtual environment's.
LISTENER = """\
import socket, sys
server = socket.create_server((sys.argv[1], 0))
print(server.getsockname()[1], flush=True)
while True:
    connection, _ = server.accept()
    connection.settimeout(5)
    data = b""
    try:
        while b"\\r\\n\\r\\n" not in data and (chunk := connection.recv(65536)):
            data += chunk
    except OSError:
        pass
    connection.close()
    print(data.hex(), flush=True)
"""


def cli_env(vault_home: Path, user_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The CLI's environment: VAULTPROXY_HOME, and HOME and the AWS files in `user_home`, so
    nothing falls back to the developer's ~ (their AWS profile, ~/.curlrc...); plus `extra`
    (e.g. VAULTPROXY_PASSPHRASE)."""
    return child_env({"VAULTPROXY_HOME": str(vault_home), **(extra or {})}, home=user_home)


def _user_home(vault_home: Path, user_home: Path | None) -> Path:
    """`user_home`, by default "user-home" beside the vault; made, as it is the working directory too."""
    home = user_home if user_home is not None else vault_home.parent / "user-home"
    home.mkdir(parents=True, exist_ok=True)
    return home


def run_cli(
    vault_home: Path, *args: str, stdin: bytes = b"", user_home: Path | None = None,
    timeout: float = CLI_TIMEOUT, check: bool = False, env: Mapping[str, str] | None = None, **popen: Any,
) -> subprocess.CompletedProcess[bytes]:
    """`vaultproxy ARGS` against `vault_home` with `stdin`, to completion; output captured.

    Its HOME and working directory are `user_home` (see _user_home): whatever it writes by
    default stays in the test's tmp dir. `env`: more environment variables. `popen` goes to
    subprocess (e.g. a preexec_fn that sets a resource limit).
    """
    home = _user_home(vault_home, user_home)
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, env=cli_env(vault_home, home, env), cwd=home,
        timeout=timeout, check=check, **popen,
    )


def start_cli(
    vault_home: Path, *args: str, user_home: Path | None = None, env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """As run_cli, but returns the running process with pipes on stdin, stdout and stderr:
    a command that reads stdin waits until the caller's communicate() sends it."""
    home = _user_home(vault_home, user_home)
    return subprocess.Popen(
        [*CLI, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=cli_env(vault_home, home, env), cwd=home,
    )


def run_on_terminal(
    vault_home: Path, args: Sequence[str], replies: Sequence[tuple[str, str]] = (), *,
    user_home: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = CLI_TIMEOUT,
) -> tuple[int, str]:
    """`vaultproxy ARGS` with stdin, stdout and stderr on a pseudo-terminal; each reply
    (prompt, answer) is typed once its prompt appears. Returns the exit status and everything
    the terminal showed (a hidden prompt never shows what was typed). Fails when a prompt
    never came."""
    home = _user_home(vault_home, user_home)
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", ON_TERMINAL, *args], stdin=slave, stdout=slave, stderr=slave,
        env=cli_env(vault_home, home, env), cwd=home, start_new_session=True,
    )
    os.close(slave)
    shown, answered, pending = b"", 0, list(replies)
    try:
        while True:
            if not select.select([master], [], [], timeout)[0]:
                raise TimeoutError(f"{args}: no output for {timeout}s; so far: {shown!r}")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child has closed the terminal
                break
            if not data:
                break
            shown += data
            if pending and pending[0][0].encode() in shown[answered:]:
                answered = len(shown)
                os.write(master, pending.pop(0)[1].encode() + b"\n")
        status = process.wait(timeout)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    text = shown.decode("utf-8", errors="replace")
    assert not pending, f"{args}: never prompted for {pending[0][0]!r}; terminal showed {text!r}"
    return status, text


class Listener:
    """LISTENER as a process of `user` (default: this process's), run by `python`. With `addon`
    its command line names the addon script as mitmdump's does (`-s .../vaultproxy_addon.py`):
    the CLI then takes it for a proxy, if it is a process of the CLI's user and its own socket
    listens where proxy.json says. It serves nothing; `received` (once it has stopped) holds
    what each connection sent it."""

    def __init__(self, *, addon: bool, user: pwd.struct_passwd | None = None, python: str = sys.executable) -> None:
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "cwd": "/"} if user else {}
        self.process = subprocess.Popen(
            [python, "-c", LISTENER, LOOPBACK, *(["-s", str(ADDON_SCRIPT)] if addon else [])],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env={"PATH": os.environ["PATH"]}, **as_user,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the listener did not start (exit status {self.process.returncode})")
        self.port = int(line)
        self.pid = self.process.pid
        self.received: list[bytes] = []

    def stop(self) -> None:
        self.process.kill()
        out, _ = self.process.communicate(timeout=CLI_TIMEOUT)
        self.received = [bytes.fromhex(line) for line in out.decode().splitlines()]

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def stand_in_proxy(vault_home: Path, confdir: Path) -> Iterator[int]:
    """proxy.json as a running proxy writes it, naming a stand-in (a Listener with the addon
    in its command line) and its port, and `confdir` for mitmproxy's CA: enough for `env` and
    `exec`, which only verify that the proxy is there. Yields the port."""
    with Listener(addon=True) as stand_in:
        vault_home.mkdir(mode=0o700, exist_ok=True)
        record = {"pid": stand_in.pid, "host": LOOPBACK, "port": stand_in.port, "confdir": str(confdir)}
        (vault_home / "proxy.json").write_text(json.dumps(record))
        yield stand_in.port


def parse_exports(output: str) -> dict[str, str]:
    """`export NAME='value'` lines, parsed as a shell would; anything else fails the test."""
    variables = {}
    for line in output.splitlines():
        word, assignment = shlex.split(line)
        assert word == "export"
        name, _, value = assignment.partition("=")
        variables[name] = value
    return variables


class VaultproxyStart(MitmdumpProcess):
    """`vaultproxy start` (the console script) in place of mitmdump: the harness's start (free
    port, retry on a lost port race, wait until this very process listens), stop, logs and
    clients apply unchanged, because `start` execs mitmdump in the same process.

    `confdir`: mitmproxy's confdir (default: in workdir); one shared by several runs saves
    making a CA, which takes seconds, for each. `env`: more environment (VAULTPROXY_PASSPHRASE...).
    """

    def __init__(
        self, workdir: Path, vault_home: Path, *, start_args: Sequence[str] = (), mitmdump_args: Sequence[str] = (),
        confdir: Path | None = None, env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(workdir, env={"VAULTPROXY_HOME": str(vault_home), **(env or {})})
        if confdir is not None:
            self.confdir = confdir
        self._start_args = list(start_args)
        self._mitmdump_args = list(mitmdump_args)

    def command(self) -> list[str]:
        return [
            str(CONSOLE_SCRIPT), "start", *self._start_args, "--listen-port", str(self.port),
            "--", "--set", f"confdir={self.confdir}", *self._mitmdump_args,
        ]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")
