"""End to end: `vaultproxy env`, `vaultproxy exec` and `vaultproxy start` with a real proxy.

The addon writes proxy.json (address, confdir) into the vault home when it runs; `env` and
`exec` follow it. `exec -- curl ...` runs the real curl, which trusts only the CA bundle exec
hands it (system CAs plus mitmproxy's CA, not the test CA the upstream's certificate comes
from), so a resolved placeholder at the HTTPS upstream proves curl went through the proxy.
`start` is run for real on 0.0.0.0 and must warn about it.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.env import child_env
from tests.support.net import LOOPBACK, free_port, is_listening, wait_until
from tests.support.proxy import MitmdumpProcess, StartProxy
from tests.support.upstream import RecordingUpstream
from vaultcore.vault import Vault

TIMEOUT = 60
CLI = Path(sys.executable).with_name("vaultproxy")
VALUE = "sk_live_Zq9ExecToken"
HOSTS = {"*.example.com": LOOPBACK}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "vault-home"
    Vault(home).set("exec.k", VALUE, hosts=["api.example.com"])
    return home


def wait_for_proxy_json(home: Path) -> dict[str, object]:
    """The addon writes proxy.json once mitmproxy runs, a moment after the port listens."""
    path = home / "proxy.json"
    wait_until(path.exists, TIMEOUT, "proxy.json")
    return json.loads(path.read_text())


@pytest.fixture
def proxy(mitmdump: StartProxy, home: Path) -> MitmdumpProcess:
    proxy = mitmdump(options={"vault_home": str(home)}, hosts=HOSTS)
    wait_for_proxy_json(home)
    return proxy


def vaultproxy(home: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI against `home`, with a HOME of its own (no ~/.curlrc, no user config)."""
    result = subprocess.run(
        [str(CLI), *args], capture_output=True, timeout=TIMEOUT, check=False,
        env=child_env({"VAULTPROXY_HOME": str(home)}, home=tmp_path / "cli-home"),
    )
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def exports(output: str) -> dict[str, str]:
    """`export NAME='value'` lines, parsed as a shell would."""
    variables = {}
    for line in output.splitlines():
        word, assignment = shlex.split(line)
        assert word == "export"
        name, _, value = assignment.partition("=")
        variables[name] = value
    return variables


def test_proxy_json_tells_where_the_proxy_runs(proxy: MitmdumpProcess, home: Path) -> None:
    info = wait_for_proxy_json(home)
    assert (info["host"], info["port"], Path(info["confdir"])) == (LOOPBACK, proxy.port, proxy.confdir)
    assert proxy.stop() == 0
    assert not (home / "proxy.json").exists()  # a stopped proxy is not advertised


def test_env_prints_the_proxy_and_a_bundle_with_mitmproxys_ca(proxy: MitmdumpProcess, home: Path, tmp_path: Path) -> None:
    result = vaultproxy(home, tmp_path, "env")
    assert result.returncode == 0, result.stderr
    variables = exports(result.stdout)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert variables[name] == f"http://{LOOPBACK}:{proxy.port}"
    bundle = Path(variables["SSL_CERT_FILE"])
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        assert variables[name] == str(bundle)
    assert proxy.ca_path.read_text().strip() in bundle.read_text()


def test_exec_runs_curl_through_the_proxy(
    proxy: MitmdumpProcess, tls_upstream: RecordingUpstream, home: Path, tmp_path: Path
) -> None:
    url = tls_upstream.url_for("api.example.com") + "/exec"
    result = vaultproxy(home, tmp_path, "exec", "--", "curl", "--silent", "--show-error", "--fail",
                        "-H", "Authorization: Bearer <<vault:exec.k>>", url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"ok": True}  # the upstream's answer reached curl
    (received,) = tls_upstream.wait_for(1)
    assert received.header("Authorization") == f"Bearer {VALUE}"
    assert received.header("Host") == f"api.example.com:{tls_upstream.port}"
    assert VALUE not in result.stdout + result.stderr + proxy.output()


def test_exec_without_a_running_proxy_fails_clearly(proxy: MitmdumpProcess, home: Path, tmp_path: Path) -> None:
    proxy.stop()
    # As a proxy that died without cleaning up would leave it: its port now answers nothing.
    dead_port = free_port()
    (home / "proxy.json").write_text(json.dumps({"host": LOOPBACK, "port": dead_port, "confdir": str(proxy.confdir)}))
    result = vaultproxy(home, tmp_path, "exec", "--", "curl", "--silent", "https://api.example.com/")
    assert result.returncode == 1
    assert f"no proxy answers on {LOOPBACK}:{dead_port}: start it with `vaultproxy start`" in result.stderr


@pytest.fixture(scope="module")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mitmproxy's confdir for `vaultproxy start`, shared: making its CA takes seconds."""
    return tmp_path_factory.mktemp("confdir")


@contextlib.contextmanager
def vaultproxy_start(
    home: Path, tmp_path: Path, confdir: Path, *listen: str
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """`vaultproxy start [listen...]` on a free port until it listens; stopped on exit.
    Yields the process (start replaces itself with mitmdump), its port and its stderr file."""
    port = free_port()
    stderr = tmp_path / "start-stderr.log"
    with stderr.open("wb") as log:
        process = subprocess.Popen(
            [str(CLI), "start", *listen, "--listen-port", str(port), "--", "--set", f"confdir={confdir}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            env=child_env({"VAULTPROXY_HOME": str(home)}, home=tmp_path / "start-home"),
        )
    try:
        wait_until(lambda: process.poll() is not None or is_listening(process.pid, port), TIMEOUT, "vaultproxy start to listen")
        assert process.poll() is None, stderr.read_text()
        yield process, port, stderr
    finally:
        process.terminate()
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_start_on_all_interfaces_warns(home: Path, tmp_path: Path, confdir: Path) -> None:
    with vaultproxy_start(home, tmp_path, confdir, "--listen-host", "0.0.0.0") as (_, port, stderr):
        warning = stderr.read_text()
        assert "vaultproxy: warning: listening on 0.0.0.0: anyone who can reach this address can use your secrets" in warning
        assert "proxyauth" in warning  # and says how to protect it
        # Clients are still pointed at loopback, which reaches a proxy on every interface.
        assert wait_for_proxy_json(home)["host"] == "0.0.0.0"
        result = vaultproxy(home, tmp_path, "env")
        assert result.returncode == 0, result.stderr
        assert exports(result.stdout)["HTTPS_PROXY"] == f"http://{LOOPBACK}:{port}"


def test_start_on_loopback_does_not_warn(home: Path, tmp_path: Path, confdir: Path) -> None:
    with vaultproxy_start(home, tmp_path, confdir) as (_, port, stderr):
        assert wait_for_proxy_json(home)["port"] == port
    assert "warning" not in stderr.read_text()
