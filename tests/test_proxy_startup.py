"""End to end: a start-up that cannot give a working vaultproxy stops mitmdump at once.

A bad `--set vault_*=...` used to switch vaultproxy off without a word (mitmproxy drops a
script whose deferred option it cannot parse, and ignores unknown names and bad choices), and
other start-up failures printed a traceback, then "proxy listening", then exited. Each case
here ends with exit status 1 and one line that says what is wrong and what is valid: nothing
else but mitmproxy's own "Loading script" line.

And a proxy that starts serves no request before it is whole: mitmproxy listens before its
addons have run their `running` hooks.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from mitmproxy.version import VERSION

from tests.support.net import LOOPBACK, wait_until
from tests.support.proxy import ADDON_SCRIPT, CLIENT_TIMEOUT, STARTUP_TIMEOUT, MitmdumpProcess, OptionValue, StartProxy
from tests.support.upstream import RecordingUpstream
from vaultcore.vault import Vault

OPTIONS = "vault_home, vault_on_missing, vault_allow_plaintext, vault_redact_responses, vault_audit_log, vault_max_growth, vault_served_names"
BAD_OPTIONS: dict[str, tuple[dict[str, OptionValue], str]] = {
    "not-a-boolean": ({"vault_allow_plaintext": "maybe"}, "vaultproxy: vault_allow_plaintext: not a valid value (use true or false)"),
    "not-a-choice": ({"vault_on_missing": "foo"}, "vaultproxy: vault_on_missing=foo: not a valid value (use block or keep)"),
    "unknown-name": ({"vault_on_mising": "keep"}, f"vaultproxy: unknown option vault_on_mising (the options are {OPTIONS})"),
    "not-a-size": ({"vault_max_growth": "lots"}, "vaultproxy: vault_max_growth=lots: not a valid value (use a size such as 512k or 2m)"),
    "debug-log": ({"termlog_verbosity": "debug"}, "vaultproxy: termlog_verbosity=debug logs requests with their values; use info"),
}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    Vault(home).set("start.k", "sk_live_Zq9Start", hosts=["127.0.0.1"])
    return home


def failed_start(proxy: MitmdumpProcess) -> tuple[int | None, list[str]]:
    """Start `proxy`, which must exit: its exit status and what it printed, but for
    mitmproxy's own line about loading the script. (mitmproxy binds its port while it loads
    the script, so the socket may be seen for a moment; the proxy never says it listens.)"""
    with contextlib.suppress(RuntimeError):  # it exits before its port is seen, or just after
        proxy.start()
    wait_until(lambda: not proxy.is_running(), STARTUP_TIMEOUT, "mitmdump to exit")
    return proxy.stop(), [line for line in proxy.output().splitlines() if "Loading script" not in line]


def proxy_with(workdir: Path, home: Path, options: Mapping[str, OptionValue] = {}, env: Mapping[str, str] = {}) -> MitmdumpProcess:
    return MitmdumpProcess(workdir, options={"vault_home": str(home), **options}, env=env)


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_a_bad_option_stops_the_proxy_with_one_line(tmp_path: Path, home: Path, case: str) -> None:
    options, line = BAD_OPTIONS[case]
    assert failed_start(proxy_with(tmp_path / "mitmdump", home, options)) == (1, [line])


def test_a_bad_option_in_mitmproxys_config_file_stops_it_too(tmp_path: Path, home: Path) -> None:
    proxy = proxy_with(tmp_path / "mitmdump", home)
    proxy.confdir.mkdir(parents=True)
    (proxy.confdir / "config.yaml").write_text("vault_redact_responses: sometimes\n")
    assert failed_start(proxy) == (1, ["vaultproxy: vault_redact_responses: not a valid value (use true or false)"])


@pytest.mark.skipif(int(VERSION.split(".")[0]) < 12, reason="mitmproxy 11 has no store_streamed_bodies")
def test_store_streamed_bodies_stops_the_proxy_with_one_line(tmp_path: Path, home: Path) -> None:
    status, lines = failed_start(proxy_with(tmp_path / "mitmdump", home, {"store_streamed_bodies": True}))
    assert (status, lines) == (1, ["vaultproxy: store_streamed_bodies would record substituted values; turn it off"])


def test_a_vault_that_cannot_be_opened_stops_the_proxy_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    with monkeypatch.context() as patch:
        patch.setenv("VAULTPROXY_PASSPHRASE", "the right passphrase")
        Vault(home).set("start.k", "sk_live_Zq9Start", hosts=["127.0.0.1"])
    status, lines = failed_start(proxy_with(tmp_path / "mitmdump", home, env={"VAULTPROXY_PASSPHRASE": "a wrong one"}))
    assert (status, lines) == (1, [f"vaultproxy: cannot load the vault: cannot open {home / 'vault.enc'}: wrong passphrase (the vault uses its passphrase)"])


def test_a_damaged_vault_stops_the_proxy_with_one_line(tmp_path: Path, home: Path) -> None:
    (home / "vault.enc").write_bytes(b"not a vault")
    status, lines = failed_start(proxy_with(tmp_path / "mitmdump", home))
    assert (status, lines) == (1, [f"vaultproxy: cannot load the vault: {home / 'vault.enc'} is not a vaultproxy vault"])


def test_good_options_start(tmp_path: Path, home: Path) -> None:
    """The control: the same options with valid values, from the command line and the config file."""
    proxy = proxy_with(tmp_path / "mitmdump", home, {"vault_allow_plaintext": True, "vault_on_missing": "keep", "vault_max_growth": "512k"})
    proxy.confdir.mkdir(parents=True)
    (proxy.confdir / "config.yaml").write_text("vault_redact_responses: false\n")
    with proxy:
        proxy.wait_for_output(f"vaultproxy: 1 keys from {home}")


SLOW_START = """import asyncio
import logging


class SlowStart:
    async def running(self):
        await asyncio.sleep({seconds})
        logging.warning("slow start: over")


addons = [SlowStart()]
"""
VALUE = "sk_live_Zq9Start"


def slow_start(directory: Path, seconds: float) -> Path:
    """An addon whose `running` takes `seconds`: loaded ahead of vaultproxy, it holds
    vaultproxy's own `running` back while mitmproxy already listens."""
    slow = directory / "slow_start.py"
    slow.write_text(SLOW_START.format(seconds=seconds))
    return slow


def post(target: str, authority: str, body: bytes = b"") -> bytes:
    """A POST with a placeholder in a header, and `body` (text) as its body."""
    return (
        f"POST {target} HTTP/1.1\r\nHost: {authority}\r\nX-Token: <<vault:start.k>>\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def answer_head(sock: socket.socket) -> http.client.HTTPResponse:
    answer = http.client.HTTPResponse(sock)
    answer.begin()
    return answer


# Past stream_large_bodies: the header leaves with the head, resolved in requestheaders.
STREAMED_BODY = b"token=<<vault:start.k>>&" + b"a" * 4096


@pytest.mark.parametrize("client", ["a request", "a streamed upload", "a tunnel"])
def test_a_request_that_comes_while_the_proxy_starts_waits_until_it_has(
    mitmdump: StartProxy, upstream: RecordingUpstream, tmp_path: Path, home: Path, client: str
) -> None:
    """mitmproxy listens, then runs its addons' `running` hooks one after another: here an
    addon ahead of vaultproxy takes two seconds over its own. A request in that window went
    on before vaultproxy had put its substitution at the end of the chain (the placeholder
    went upstream unresolved), and a CONNECT before its client gate had started. It now
    waits, and is served in full. (No client can present the proxy credential in that
    window: each proxy makes its own in `running`.)"""
    proxy = mitmdump(addon=False, args=["-s", str(slow_start(tmp_path, 2)), "-s", str(ADDON_SCRIPT)],
                     options={"vault_home": str(home), "stream_large_bodies": "1k"})
    authority = f"{LOOPBACK}:{upstream.port}"
    body = STREAMED_BODY if client == "a streamed upload" else b""
    with socket.create_connection((LOOPBACK, proxy.port), timeout=CLIENT_TIMEOUT) as sock:
        if client == "a tunnel":
            sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        else:
            sock.sendall(post(f"{upstream.url}/early", authority, body=body))
        assert "slow start: over" not in proxy.output(), "the request came after the start, not during it"
        answer = answer_head(sock)
        if client == "a tunnel":
            assert answer.status == 200
            sock.sendall(post("/early", authority))
            answer = answer_head(sock)
    assert answer.status == 200
    (received,) = upstream.requests
    assert received.header("x-token") == VALUE
    assert received.body == body.replace(b"<<vault:start.k>>", VALUE.encode())


OTHER_SCRIPT = "addons = []\n"


@pytest.mark.parametrize("reloaded", ["vaultproxy's script", "another script"])
def test_a_request_held_for_the_start_is_dropped_when_a_script_reload_comes_first(
    mitmdump: StartProxy, upstream: RecordingUpstream, tmp_path: Path, home: Path, reloaded: str
) -> None:
    """A script reload in that window either retires the instance that holds the request
    before it ever ran, or has mitmproxy go on with the request through a copy of the addon
    chain that was made before vaultproxy's substitution joined it (a streamed body's head
    would leave unresolved). Either way the request is dropped, not held for ever nor sent
    unresolved; the proxy serves the requests that come after."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    other, addon = scripts / "other.py", scripts / ADDON_SCRIPT.name
    other.write_text(OTHER_SCRIPT)
    shutil.copy(ADDON_SCRIPT, addon)
    proxy = mitmdump(addon=False, args=["-s", str(slow_start(tmp_path, 4)), "-s", str(other), "-s", str(addon)],
                     options={"vault_home": str(home), "stream_large_bodies": "1k"})
    touched = addon if reloaded == "vaultproxy's script" else other
    authority = f"{LOOPBACK}:{upstream.port}"
    with socket.create_connection((LOOPBACK, proxy.port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(post(f"{upstream.url}/held", authority, body=STREAMED_BODY))
        # The port may listen a moment before mitmproxy first looks at the scripts: a change
        # made before that look would be the script as it loads, not a reload.
        proxy.wait_for_output(f"vaultproxy: 1 keys from {home}")
        later = time.time() + 10
        os.utime(touched, (later, later))  # mitmproxy looks every second
        wait_until(lambda: proxy.output().count(f"Loading script {touched}") == 2, CLIENT_TIMEOUT, "the reload")
        assert "slow start: over" not in proxy.output(), "the reload came after the start, not during it"
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(1) == b"", "the held request was answered"
    assert not upstream.requests
    with socket.create_connection((LOOPBACK, proxy.port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(post(f"{upstream.url}/after", authority, body=STREAMED_BODY))
        assert answer_head(sock).status == 200
    (received,) = upstream.requests
    assert received.header("x-token") == VALUE
