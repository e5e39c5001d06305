"""Any command-line secret manager: a mapping runs a command, its standard output is the value.

    secrets:
      - alias: github
        command: [op, read, "op://dev/github/token"]
        timeout: 20s

The command is an argv list run directly, never by a shell, with no standard input and the
user's own environment (so `op`, `pass`, `gpg-agent` and the like find their sessions); the
value only ever travels from its standard output into the vault, never into another
process's argv or environment. One trailing newline is dropped (most tools print one). A
failure is one line built from the exit status and the first line of standard error; a
command that outlives its timeout, or prints more than a secret may hold, is killed with its
whole process group. Commands run one after another: several may ask for the same unlock
(a pinentry, a biometric prompt) and must not race for it.

The commands authenticate themselves (`op signin`, a GPG agent, `gcloud auth login`): the
vault keeps no credentials for this provider. POSIX only (process groups, pipes in select).
"""

from __future__ import annotations

import getpass
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vaultcore.peertext import quoted
from vaultcore.profiles import ProviderConfig, SecretMapping
from vaultcore.providers.base import FetchResult, Field, Identity, Prompt, ProviderError, Schema
from vaultcore.store import without_passphrase

DEFAULT_TIMEOUT = 30
MAX_OUTPUT_BYTES = 1024 * 1024  # a secret holds at most 1 MiB (vault.MAX_VALUE_BYTES)
STDERR_KEPT = 4096  # enough for the first line of an error message
MESSAGE_CHARS = 200

SCHEMA = Schema(
    fields=(
        Field("command", "the command whose output is the value, as an argv list, e.g. [op, read, 'op://dev/gh/token']"
                         " (on the command line: one string, split like a shell would, never run by one)",
              where="secret", kind="strings", required=True),
        Field("timeout", f"how long the command may run, e.g. 20s (default {DEFAULT_TIMEOUT}s)",
              where="secret", kind="duration", identity=False),
    ),
    sources=("default",),
    secret_id=None,
)


def credential_prompts(config: ProviderConfig) -> tuple[Prompt, ...]:
    return ()


def credentials_from_dict(stored: Mapping[str, Any]) -> Any:
    raise ValueError("the command provider keeps no credentials in the vault")


def credentials_origin(config: ProviderConfig) -> str:
    return "each command's own login (op signin, a GPG agent, gcloud auth login, ...)"


def config_warning(config: ProviderConfig) -> str | None:
    missing = _missing_programs(config)
    return f"not found on PATH: {', '.join(missing)}; install them, or give their full paths" if missing else None


def test_connection(config: ProviderConfig, credentials: Any) -> Identity:
    """Whether every program the mappings run can be found: running them would fetch values."""
    missing = _missing_programs(config)
    if missing:
        raise ProviderError("missing_command", f"not found on PATH: {', '.join(missing)}; install them, or give their full paths")
    programs = sorted({m.option("command")[0] for m in config.secrets})
    return Identity(account=getpass.getuser(), arn=f"commands {', '.join(programs) or '(none mapped yet)'}",
                    user_id="", scope="user")


def _missing_programs(config: ProviderConfig) -> list[str]:
    return sorted({program for m in config.secrets if shutil.which(program := m.option("command")[0]) is None})


def fetch(
    config: ProviderConfig,
    mappings: Sequence[SecretMapping],
    credentials: Any,
    *,
    use_batch: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, FetchResult]:
    """Run each mapping's command in turn; a failed one is an error row."""
    results: dict[str, FetchResult] = {}
    for m in mappings:
        results[m.alias] = _run(m)
        if progress is not None:
            progress(len(results), len(mappings))
    return results


def _run(mapping: SecretMapping) -> FetchResult:
    argv: tuple[str, ...] = mapping.option("command")
    program = argv[0]
    timeout = mapping.option("timeout", DEFAULT_TIMEOUT)
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            env=without_passphrase(os.environ),  # the CLI may hold it; the command has no business with the vault
        )
    except FileNotFoundError:
        return _failure(mapping, "missing_command", f"command not found: {program}; install it, or give its full path")
    except OSError as e:
        return _failure(mapping, "command_failed", f"cannot run {program}: {e.strerror or type(e).__name__}")
    with process:
        outcome = _collect(process, timeout)
    if isinstance(outcome, FetchResult):
        return FetchResult(mapping.alias, error=outcome.error, error_code=outcome.error_code)
    status, out, err = outcome
    if status != 0:
        said = _first_line(err)
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        return _failure(mapping, "command_failed", f"{program} {how}" + (f": {said}" if said else " (nothing on stderr)"))
    if out.endswith(b"\n"):
        out = out[:-2] if out.endswith(b"\r\n") else out[:-1]
    if not out:
        return _failure(mapping, "empty", f"{program} printed nothing")
    try:
        return FetchResult(mapping.alias, out.decode("utf-8"))
    except UnicodeDecodeError:
        return FetchResult(mapping.alias, bytes(out))


def _collect(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, bytes, bytes] | FetchResult:
    """The exit status, standard output and (the start of) standard error, read together so
    that neither pipe fills up; a FetchResult when the command had to be killed."""
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    assert process.stdout is not None and process.stderr is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ, out)
        selector.register(process.stderr, selectors.EVENT_READ, err)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return _killed(process, "command_timeout", f"{process.args[0]} did not finish within {timeout}s")  # type: ignore[index]
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer: bytearray = key.data
                buffer += chunk
                if len(out) > MAX_OUTPUT_BYTES:
                    return _killed(process, "too_large",
                                   f"{process.args[0]} printed more than {MAX_OUTPUT_BYTES} bytes, more than a secret may hold")  # type: ignore[index]
                del err[STDERR_KEPT:]
    try:
        status = process.wait(max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:  # closed its pipes but goes on running
        return _killed(process, "command_timeout", f"{process.args[0]} did not finish within {timeout}s")  # type: ignore[index]
    return status, bytes(out), bytes(err)


def _killed(process: subprocess.Popen[bytes], code: str, message: str) -> FetchResult:
    """Kill the command and whatever it started (its own process group), and say why."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.wait()
    return FetchResult("", error=message, error_code=code)


def _first_line(err: bytes) -> str:
    text = err.decode("utf-8", "replace").strip()
    return quoted(text.splitlines()[0].strip() if text else "", MESSAGE_CHARS)


def _failure(mapping: SecretMapping, code: str, message: str) -> FetchResult:
    return FetchResult(mapping.alias, error=message, error_code=code)
