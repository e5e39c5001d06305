"""End to end: the proxy's console says which secrets each request used or was refused.

mitmdump's own lines show flows, never which secret went where. vaultproxy adds one line per
request that used the vault, from the same record as its audit log line: outcome, method,
host, path without query, keys, and for a refusal why; never a value.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.net import LOOPBACK, wait_until
from tests.support.proxy import CLIENT_TIMEOUT, MitmdumpProcess, StartProxy, audit_lines
from tests.support.secret_set import Entry, SecretSet, module_fixtures, proxy_options
from tests.support.upstream import RecordingUpstream

TIMEOUT = 60
SECRETS = SecretSet({
    "con.a": Entry("sk_live_Zq9ConA"),
    "con.b": Entry("sk_live_Zq9ConB"),
    "con.far": Entry("sk_live_Zq9ConFar", hosts=("billing.example.com",)),
})
home, proxy, h2_proxy = module_fixtures(SECRETS)


def send(proxy: MitmdumpProcess, method: str, url: str, **kwargs: Any) -> requests.Response:
    with proxy.requests_session() as session:
        return session.request(method, url, timeout=TIMEOUT, **kwargs)


def console_lines(proxy: MitmdumpProcess, path: str) -> list[str]:
    """vaultproxy's console lines about requests for `path`, without their timestamps."""
    return [line.split("] ", 1)[1] for line in proxy.output().splitlines() if f" {LOOPBACK}{path} [" in line]


def test_a_resolved_request_is_one_line(proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path) -> None:
    response = send(proxy, "GET", upstream.url + "/console/used?q=<<vault:con.a>>", headers={"X-Key": "<<vault:con.b>>"})
    assert response.status_code == 200
    line = f"vaultproxy: resolved GET {LOOPBACK}/console/used [con.a, con.b]"
    proxy.wait_for_output(line)
    assert console_lines(proxy, "/console/used") == [line]
    (audit,) = audit_lines(home, "/console/used")
    assert (audit["method"], audit["host"], audit["keys"], audit["outcome"]) == ("GET", LOOPBACK, ["con.a", "con.b"], "resolved")
    assert SECRETS.leaked_keys(proxy.output()) == []


def test_a_refused_request_is_one_line_that_says_why(proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path) -> None:
    response = send(proxy, "POST", upstream.url + "/console/refused?q=1", data=b"k=<<vault:con.far>>")
    assert response.status_code == 403
    line = (
        f"vaultproxy: refused:host_not_allowed POST {LOOPBACK}/console/refused [con.far]: "
        f"secret 'con.far' is not allowed for host '{LOOPBACK}' (its hosts: billing.example.com)"
    )
    proxy.wait_for_output(line)
    assert console_lines(proxy, "/console/refused") == [line]
    (audit,) = audit_lines(home, "/console/refused")
    assert (audit["keys"], audit["outcome"]) == (["con.far"], "refused:host_not_allowed")


def test_a_request_without_secrets_has_no_line(proxy: MitmdumpProcess, upstream: RecordingUpstream, home: Path) -> None:
    assert send(proxy, "GET", upstream.url + "/console/plain", headers={"X-Text": "<vault:con.a>"}).status_code == 200
    proxy.wait_for_output(f"GET {upstream.url}/console/plain")  # the dumper's line: the flow is over
    assert console_lines(proxy, "/console/plain") == []
    assert audit_lines(home, "/console/plain", count=0) == []


def test_the_console_line_stays_when_the_audit_log_is_off(mitmdump: StartProxy, home: Path, upstream: RecordingUpstream) -> None:
    proxy = mitmdump(options=proxy_options(home, vault_audit_log="off"))
    assert send(proxy, "GET", upstream.url + "/console/no-audit", headers={"X-Key": "<<vault:con.a>>"}).status_code == 200
    proxy.wait_for_output(f"vaultproxy: resolved GET {LOOPBACK}/console/no-audit [con.a]")
    assert audit_lines(home, "/console/no-audit", count=0) == []


def test_control_characters_in_a_path_are_escaped(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    """The path is the client's: a terminal escape in it (a window title, a cleared screen) or a
    line break (a forged line) reaches the proxy's terminal escaped. Sent as raw bytes: no
    client library sends such a path."""
    path = "/console/esc\x1b]0;OWNED\x07\x1b[2J"
    request = f"GET {upstream.url}{path} HTTP/1.1\r\nHost: {LOOPBACK}:{upstream.port}\r\nX-Key: <<vault:con.a>>\r\nConnection: close\r\n\r\n"
    with socket.create_connection((LOOPBACK, proxy.port), timeout=CLIENT_TIMEOUT) as client:
        client.sendall(request.encode())
        assert client.recv(65536).startswith(b"HTTP/1.1 ")
    line = f"vaultproxy: resolved GET {LOOPBACK}/console/esc\\x1b]0;OWNED\\x07\\x1b[2J [con.a]"
    proxy.wait_for_output(line)
    assert not [text for text in proxy.output().splitlines() if "vaultproxy: " in text and "\x1b" in text]


def planted_log(tmp_path: Path, planted: str) -> tuple[Path, Path, str]:
    """An audit log path in a directory anyone can write to (/tmp), where another user planted
    `planted`; the file a planted link names; why the proxy refuses it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    victim, log = tmp_path / "victim", shared / "audit.log"
    victim.write_text("precious\n")
    if planted == "symlink":
        log.symlink_to(victim)
        return log, victim, "it is a symbolic link, which the proxy does not follow: set vault_audit_log to the file itself"
    if planted == "fifo":
        os.mkfifo(log, 0o666)
        return log, victim, "it is not a regular file: set vault_audit_log to a file of your own"
    log.touch()
    owner = pwd.getpwnam("nobody").pw_uid
    os.chown(log, owner, -1)
    return log, victim, f"it belongs to uid {owner}, not to you (uid 0): set vault_audit_log to a file of your own"


PLANTED = [
    "symlink", "fifo",
    pytest.param("another-users-file", marks=pytest.mark.skipif(os.geteuid() != 0, reason="chowns a file to nobody: needs root")),
]


@pytest.mark.parametrize("planted", PLANTED)
def test_an_audit_log_planted_in_a_shared_directory_stops_the_start(tmp_path: Path, home: Path, planted: str) -> None:
    """vault_audit_log outside the vault home, in a directory anyone can write to (/tmp): a
    link planted at that path would have the proxy append, with its rights, to whatever file
    the link names; a file planted there would be read by whoever planted it (and shown by
    `vaultproxy log`). The proxy used to refuse to write there and go on resolving secrets,
    every record lost: it does not start instead, as for any bad vault_* setting."""
    log, victim, why = planted_log(tmp_path, planted)
    process = MitmdumpProcess(tmp_path / "proxy", options=proxy_options(home, vault_audit_log=str(log)))
    (tmp_path / "proxy").mkdir()
    with contextlib.suppress(RuntimeError):  # it may get to listen before the script's error ends it
        process.start()
    try:
        wait_until(lambda: not process.is_running(), CLIENT_TIMEOUT, "mitmdump to exit")
    finally:
        status = process.stop()
    assert status != 0
    assert f"vaultproxy: cannot write the audit log {log}: {why}" in process.output()
    assert victim.read_text() == "precious\n"  # nothing appended through the link
    assert log.is_symlink() or not log.is_file() or log.read_text() == ""


def test_a_rotated_log_goes_on_in_its_file_when_a_planted_one_takes_its_place(
    mitmdump: StartProxy, home: Path, upstream: RecordingUpstream, tmp_path: Path,
) -> None:
    """Rotation renames the log; the proxy writes on in a new file at the path. Another user who
    plants a link there first gets no line (and no write through the link): the lines go on
    into the file the proxy has open, the rotated one, and the console says so."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    log, victim = shared / "audit.log", tmp_path / "victim"
    victim.write_text("precious\n")
    proxy = mitmdump(options=proxy_options(home, vault_audit_log=str(log)))
    assert send(proxy, "GET", upstream.url + "/console/before", headers={"X-Key": "<<vault:con.a>>"}).status_code == 200
    wait_until(lambda: log.is_file() and "/console/before" in log.read_text(), CLIENT_TIMEOUT, "the first line")
    rotated = shared / "audit.log.1"
    log.rename(rotated)
    log.symlink_to(victim)
    assert send(proxy, "GET", upstream.url + "/console/after", headers={"X-Key": "<<vault:con.a>>"}).status_code == 200
    wait_until(lambda: "/console/after" in rotated.read_text(), CLIENT_TIMEOUT, "the line after the rotation")
    proxy.wait_for_output(f"vaultproxy: cannot reopen the audit log {log}: it is a symbolic link")
    assert victim.read_text() == "precious\n"
