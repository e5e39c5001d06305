"""End to end: `vaultproxy env`, `vaultproxy exec` and `vaultproxy start` with a real proxy.

The addon writes proxy.json (address, confdir) into the vault home when it runs; `env` and
`exec` follow it. `exec -- curl ...` runs the real curl, which trusts only the CA bundle exec
hands it (system CAs plus mitmproxy's CA, not the test CA the upstream's certificate comes
from), so a resolved placeholder at the HTTPS upstream proves curl went through the proxy.
`start` is run for real on 0.0.0.0 and must warn about it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import StartVaultproxy, parse_exports, run_cli
from tests.support.net import LOOPBACK, free_port, wait_until
from tests.support.proxy import EXAMPLE_HOSTS, MitmdumpProcess, StartProxy
from tests.support.upstream import RecordingUpstream
from vaultcore.vault import Vault

TIMEOUT = 60
VALUE = "sk_live_Zq9ExecToken"


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
    proxy = mitmdump(options={"vault_home": str(home)}, hosts=EXAMPLE_HOSTS)
    wait_for_proxy_json(home)
    return proxy


def test_proxy_json_tells_where_the_proxy_runs(proxy: MitmdumpProcess, home: Path) -> None:
    info = wait_for_proxy_json(home)
    assert (info["host"], info["port"], Path(info["confdir"])) == (LOOPBACK, proxy.port, proxy.confdir)
    assert proxy.stop() == 0
    assert not (home / "proxy.json").exists()  # a stopped proxy is not advertised


def test_env_prints_the_proxy_and_a_bundle_with_mitmproxys_ca(proxy: MitmdumpProcess, home: Path) -> None:
    result = run_cli(home, "env")
    assert result.returncode == 0, result.stderr.decode()
    variables = parse_exports(result.stdout.decode())
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert variables[name] == f"http://{LOOPBACK}:{proxy.port}"
    bundle = Path(variables["SSL_CERT_FILE"])
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        assert variables[name] == str(bundle)
    assert proxy.ca_path.read_text().strip() in bundle.read_text()


def test_exec_runs_curl_through_the_proxy(proxy: MitmdumpProcess, tls_upstream: RecordingUpstream, home: Path) -> None:
    url = tls_upstream.url_for("api.example.com") + "/exec"
    result = run_cli(home, "exec", "--", "curl", "--silent", "--show-error", "--fail",
                     "-H", "Authorization: Bearer <<vault:exec.k>>", url)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout) == {"ok": True}  # the upstream's answer reached curl
    (received,) = tls_upstream.wait_for(1)
    assert received.header("Authorization") == f"Bearer {VALUE}"
    assert received.header("Host") == f"api.example.com:{tls_upstream.port}"
    assert VALUE not in (result.stdout + result.stderr).decode() + proxy.output()


def test_exec_without_a_running_proxy_fails_clearly(proxy: MitmdumpProcess, home: Path) -> None:
    proxy.stop()
    # As a proxy that died without cleaning up would leave it: its port now answers nothing.
    dead_port = free_port()
    (home / "proxy.json").write_text(json.dumps({"host": LOOPBACK, "port": dead_port, "confdir": str(proxy.confdir)}))
    result = run_cli(home, "exec", "--", "curl", "--silent", "https://api.example.com/")
    assert result.returncode == 1
    assert f"no proxy answers on {LOOPBACK}:{dead_port}: start it with `vaultproxy start`" in result.stderr.decode()


@pytest.fixture(scope="module")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mitmproxy's confdir for `vaultproxy start`, shared: making its CA takes seconds."""
    return tmp_path_factory.mktemp("confdir")


def test_start_on_all_interfaces_warns(start_vaultproxy: StartVaultproxy, home: Path, confdir: Path) -> None:
    proxy = start_vaultproxy(home, confdir=confdir, start_args=["--listen-host", "0.0.0.0"])
    warning = proxy.stderr()
    assert "vaultproxy: warning: listening on 0.0.0.0: anyone who can reach this address can use your secrets" in warning
    assert "proxyauth" in warning  # and says how to protect it
    # Clients are still pointed at loopback, which reaches a proxy on every interface.
    assert wait_for_proxy_json(home)["host"] == "0.0.0.0"
    result = run_cli(home, "env")
    assert result.returncode == 0, result.stderr.decode()
    assert parse_exports(result.stdout.decode())["HTTPS_PROXY"] == f"http://{LOOPBACK}:{proxy.port}"


def test_start_on_loopback_does_not_warn(start_vaultproxy: StartVaultproxy, home: Path, confdir: Path) -> None:
    proxy = start_vaultproxy(home, confdir=confdir)
    assert wait_for_proxy_json(home)["port"] == proxy.port
    proxy.stop()
    assert "warning" not in proxy.stderr()
