"""Where the proxy runs and how clients find it: the mitmdump command line that
`vaultproxy start` runs, and the environment (`vaultproxy env` / `exec`) that points curl,
Python and Node at the proxy, with its credential, and makes them trust mitmproxy's CA.

The running addon writes `proxy.json` into the vault home (address and mitmproxy confdir),
so `env` and `exec` follow whatever `--listen-port` or confdir the proxy was started with.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from pathlib import Path

from vaultcore.credential import CREDENTIAL_USER, read_credential
from vaultcore.store import VaultError, check_home

ADDON_SCRIPT = Path(__file__).resolve().parent.parent / "addon" / "vaultproxy_addon.py"
RUNTIME_FILE = "proxy.json"
DEFAULT_ADDRESS = ("127.0.0.1", 8080)
DEFAULT_CONFDIR = Path("~/.mitmproxy")
SYSTEM_CA_CANDIDATES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")


def mitmdump_argv(home: Path, listen_host: str, listen_port: int, extra: list[str]) -> list[str]:
    """mitmdump from this interpreter's environment, with the addon and the vault home.
    No UI: live UIs would be shown flows with values in them (DESIGN.md)."""
    mitmdump = Path(sys.executable).parent / "mitmdump"
    if not ADDON_SCRIPT.exists():
        raise VaultError(f"the addon script {ADDON_SCRIPT} is missing: install vaultproxy from its source tree (pip install -e .)")
    return [
        str(mitmdump), "-s", str(ADDON_SCRIPT),
        "--listen-host", listen_host, "--listen-port", str(listen_port),
        "--set", f"vault_home={home}",
        *extra,
    ]


def runtime_info(home: Path) -> dict[str, object]:
    """What the running proxy wrote about itself; empty when absent or unreadable."""
    try:
        info = json.loads((home / RUNTIME_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def proxy_address(home: Path) -> tuple[str, int]:
    info = runtime_info(home)
    host = str(info.get("host") or DEFAULT_ADDRESS[0])
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    port = info.get("port")
    return host, port if isinstance(port, int) and 0 < port < 65536 else DEFAULT_ADDRESS[1]


def proxy_url(host: str, port: int, credential: str | None = None) -> str:
    """The proxy's URL; with the credential as its password (clients send it as
    Proxy-Authorization) when there is one."""
    userinfo = f"{CREDENTIAL_USER}:{credential}@" if credential else ""
    return f"http://{userinfo}[{host}]:{port}" if ":" in host else f"http://{userinfo}{host}:{port}"


def system_ca_file() -> Path | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get("SSL_CERT_FILE"), paths.cafile, paths.openssl_cafile, *SYSTEM_CA_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    try:
        import certifi  # a dependency of mitmproxy and requests

        return Path(certifi.where())
    except ImportError:
        return None


def ca_bundle(home: Path) -> Path:
    """System CAs plus mitmproxy's CA in one file: clients that take a single bundle
    (curl, requests, OpenSSL) then trust both the proxy and sites reached without it."""
    confdir = Path(str(runtime_info(home).get("confdir") or DEFAULT_CONFDIR)).expanduser()
    mitm_ca = confdir / "mitmproxy-ca-cert.pem"
    if not mitm_ca.is_file():
        raise VaultError(f"mitmproxy's CA {mitm_ca} does not exist yet: start the proxy once (`vaultproxy start`)")
    system = system_ca_file()
    bundle = home / "ca-bundle.pem"
    parts = [system.read_text() if system else "", mitm_ca.read_text()]
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = bundle.with_suffix(".tmp")
    tmp.write_text("\n".join(p.strip() for p in parts if p) + "\n")
    os.replace(tmp, bundle)
    return bundle


def client_environment(home: Path) -> dict[str, str]:
    """The variables that send a client through the proxy: in a home someone else can write
    to, proxy.json could send it (and its secrets) anywhere, so such a home is refused."""
    check_home(home)
    proxy = proxy_url(*proxy_address(home), read_credential(home))
    bundle = str(ca_bundle(home))
    return {
        "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy,
        "SSL_CERT_FILE": bundle, "REQUESTS_CA_BUNDLE": bundle, "CURL_CA_BUNDLE": bundle,
        "NODE_EXTRA_CA_CERTS": bundle,
    }
