"""`vaultproxy log`: the audit log the proxy writes (one JSON object a line, no values), read
and filtered by the real CLI: --key, --host, --since, --json, and --follow across a rotation.

The lines are written here in the proxy's format; test_cli_proxy.py reads one that a real
proxy wrote.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import select
import signal
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli, start_cli
from vaultcore import auditlog
from tests.support.net import LOOPBACK

TIMEOUT = 30.0
# When the module is collected: a test may run many minutes later (the whole suite runs in
# between), so each `--since` window below leaves a quarter of an hour to spare.
NOW = datetime.now(timezone.utc)


def entry(minutes_ago: int, host: str, keys: list[str], outcome: str = "resolved", path: str = "/v1") -> dict[str, Any]:
    time = (NOW - timedelta(minutes=minutes_ago)).isoformat(timespec="milliseconds")
    return {"time": time, "method": "GET", "host": host, "path": path, "keys": keys, "outcome": outcome}


ENTRIES = [
    entry(120, "api.example.com", ["token"]),
    entry(30, "db.example.com", ["db.user", "db.password"]),
    entry(5, "evil.test", ["token"], "refused:host_not_allowed", "/steal"),
    entry(1, "api.example.org", ["dbx"]),
]


def append(path: Path, text: str) -> None:
    """As the proxy writes: appended, possibly a part of a line at a time."""
    with path.open("a") as log:
        log.write(text)


def jsonl(*entries: dict[str, Any]) -> str:
    return "".join(json.dumps(e) + "\n" for e in entries)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "vault-home"
    home.mkdir(mode=0o700)
    append(home / "audit.log", jsonl(*ENTRIES[:2]) + '{"time": "cut short by a full disk\n' + jsonl(*ENTRIES[2:]))
    return home


def shown(home: Path, *args: str) -> list[dict[str, Any]]:
    result = run_cli(home, "log", "--json", *args)
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize(("args", "expected"), [
    ([], ENTRIES),
    (["--key", "token"], [ENTRIES[0], ENTRIES[2]]),
    (["--key", "db"], [ENTRIES[1]]),  # an alias's JSON keys, not another key that starts alike
    (["--host", "*.example.com"], ENTRIES[:2]),
    (["--since", "20m"], ENTRIES[2:]),
    (["--since", (NOW - timedelta(minutes=45)).isoformat()], ENTRIES[1:]),
    (["--key", "token", "--host", "evil.test", "--since", "1h"], [ENTRIES[2]]),
], ids=["all", "key", "alias", "host", "age", "iso-time", "all-filters"])
def test_filters(home: Path, args: list[str], expected: list[dict[str, Any]]) -> None:
    assert shown(home, *args) == expected


def test_lines_for_people(home: Path) -> None:
    out = run_cli(home, "log", "--since", "20m").stdout.decode().splitlines()
    assert out == [
        f"{ENTRIES[2]['time']}  refused:host_not_allowed  GET evil.test/steal  token",
        f"{ENTRIES[3]['time']}  resolved  GET api.example.org/v1  dbx",
    ]


@pytest.mark.parametrize(("args", "says"), [
    (["--since", "yesterday"], "--since: 'yesterday' is no age or time: use e.g. 30s, 10m, 2h, 1d"),
    (["--host", "https://x/"], "--host: invalid host rule"),
], ids=["since", "host"])
def test_bad_filters_are_usage_errors(home: Path, args: list[str], says: str) -> None:
    result = run_cli(home, "log", *args)
    assert result.returncode == 2 and says in result.stderr.decode() and result.stdout == b""


def test_the_log_the_proxy_was_told_to_write(home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.log"
    append(elsewhere, jsonl(ENTRIES[3]))
    proxy = {"pid": os.getpid(), "host": LOOPBACK, "port": 1, "options": {"vault_audit_log": str(elsewhere)}}
    (home / "proxy.json").write_text(json.dumps(proxy))
    assert shown(home) == [ENTRIES[3]]
    (home / "proxy.json").write_text(json.dumps({**proxy, "options": {"vault_audit_log": "off"}}))
    result = run_cli(home, "log")
    assert result.returncode == 1 and result.stderr == b"vaultproxy: error: the proxy runs with vault_audit_log=off: it logs nothing\n"


@pytest.mark.parametrize("planted", [
    "symlink", "fifo",
    pytest.param("another-users-file", marks=pytest.mark.skipif(os.geteuid() != 0, reason="chowns a file to nobody: needs root")),
])
def test_a_log_planted_in_a_shared_directory_is_not_read(home: Path, tmp_path: Path, planted: str) -> None:
    """vault_audit_log may name a file in a directory anyone can write to (/tmp). Another user
    who plants a file, a link or a FIFO at that path before the proxy makes it (the proxy then
    refuses to write there) must not have `vaultproxy log` show their forged lines as the
    owner's audit, nor hang it on a FIFO. The writer's rule: a regular file of the user's own."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    log = shared / "audit.log"
    forged = jsonl(entry(0, "forged.example", ["token"], path="/bob-was-here"))
    if planted == "symlink":
        (tmp_path / "forged.log").write_text(forged)
        log.symlink_to(tmp_path / "forged.log")
        says = "it is a symbolic link"
    elif planted == "fifo":
        os.mkfifo(log, 0o666)
        says = "it is not a regular file"
    else:
        log.write_text(forged)
        os.chown(log, pwd.getpwnam("nobody").pw_uid, -1)
        says = "it belongs to uid"
    proxy = {"pid": os.getpid(), "host": LOOPBACK, "port": 1, "options": {"vault_audit_log": str(log)}}
    (home / "proxy.json").write_text(json.dumps(proxy))
    result = run_cli(home, "log", timeout=TIMEOUT)
    assert result.returncode == 1 and b"forged.example" not in result.stdout
    assert result.stderr.startswith(f"vaultproxy: error: cannot read the audit log {log}: {says}".encode()), result.stderr


def test_control_characters_are_shown_escaped(home: Path) -> None:
    """A path is what a client sent: a terminal escape in it (a title, a cleared screen) or a
    line break (a forged line) reaches the terminal escaped. --json is JSON-escaped already."""
    hostile = entry(0, "api.example.com", ["ctl"], path="/a\x1b]0;OWNED\x07\x1b[2Jb\r\n2026-01-31  resolved  forged")
    append(home / "audit.log", jsonl(hostile))
    out = run_cli(home, "log", "--key", "ctl").stdout.decode()
    assert out == f"{hostile['time']}  resolved  GET api.example.com/a\\x1b]0;OWNED\\x07\\x1b[2Jb\\r\\n2026-01-31  resolved  forged  ctl\n"
    assert shown(home, "--key", "ctl") == [hostile]


def test_no_log_yet(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "new-home", "log")
    assert result.returncode == 0 and result.stdout == b""
    assert b"nothing logged yet in" in result.stderr


def read_line(process: subprocess.Popen[bytes]) -> str:
    """The next line `process` prints, within TIMEOUT."""
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([process.stdout], [], [], TIMEOUT)
        assert ready, f"no line from log --follow within {TIMEOUT}s (so far {line!r})"
        chunk = os.read(process.stdout.fileno(), 1)
        assert chunk, "log --follow exited"
        line += chunk
    return line.decode()


def test_follow_prints_new_lines_across_a_rotation(home: Path) -> None:
    log = home / "audit.log"
    process = start_cli(home, "log", "--follow", "--json", "--key", "token")
    try:
        assert [json.loads(read_line(process)) for _ in range(2)] == [ENTRIES[0], ENTRIES[2]]
        later = entry(0, "api.example.com", ["token"], path="/later")
        append(log, jsonl(entry(0, "x.example.com", ["other"])) + jsonl(later)[:20])  # the proxy is mid-line
        append(log, jsonl(later)[20:])
        assert json.loads(read_line(process)) == later
        log.rename(home / "audit.log.1")  # rotated: the proxy reopens audit.log, and so does log
        rotated = entry(0, "api.example.com", ["token"], path="/rotated")
        append(log, jsonl(rotated))
        assert json.loads(read_line(process)) == rotated
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        process.communicate(timeout=TIMEOUT)
    assert process.returncode == 130


@pytest.mark.skipif(os.geteuid() != 0, reason="chowns a file to nobody: needs root")
def test_a_planted_log_that_cannot_even_be_opened_names_its_owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root opens another user's file, and the check after the open names its owner. Any
    other user is refused by open() first (a 0644 file of someone else's): that said only
    "Permission denied" (a review's PoC, run as a user). The owner is named either way."""
    log = tmp_path / "audit.log"
    log.write_text("planted\n")
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(log, nobody, -1)
    real_open = os.open

    def as_a_user(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if Path(path) == log:  # what the kernel answers a user who may not write there
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", as_a_user)
    with pytest.raises(OSError, match=f"it belongs to uid {nobody}, not to you"):
        auditlog.open_own(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
