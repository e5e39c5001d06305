"""A real mitmdump subprocess on a free loopback port, and clients forced through it.

HTTP clients bypass proxies for 127.0.0.1/localhost by default (NO_PROXY handling, or
requests' proxy_bypass): every client made here sets the proxy explicitly and ignores
the environment, so loopback traffic really goes through mitmdump.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
import requests
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as websocket_connect

from vaultproxy.audit import FLUSH_SECONDS

from .env import child_env
from .net import LOOPBACK, free_port, is_listening, wait_until

REPO = Path(__file__).resolve().parents[2]
ADDON_SCRIPT = REPO / "addon" / "vaultproxy_addon.py"
HOSTS_SCRIPT = Path(__file__).with_name("hosts_addon.py")
MITMDUMP = Path(sys.executable).with_name("mitmdump")
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CLIENT_TIMEOUT = 60.0
PORT_ATTEMPTS = 5
# `hosts=` for upstreams reached as api.example.com, other.example.com... (the test certificate's names)
EXAMPLE_HOSTS = {"*.example.com": LOOPBACK}

CA_FILE = "mitmproxy-ca.pem"  # mitmproxy makes its CA files in a confdir that has none

OptionValue = str | int | bool | Sequence[str]
StartProxy = Callable[..., "MitmdumpProcess"]  # the `mitmdump` fixture's factory


def _format_option(name: str, value: OptionValue) -> list[str]:
    """`--set` arguments for one option; a sequence becomes one `--set` per item, as mitmproxy expects."""
    if isinstance(value, bool):
        values = ["true" if value else "false"]
    elif isinstance(value, (str, int)):
        values = [str(value)]
    else:
        values = list(value)
    return [arg for item in values for arg in ("--set", f"{name}={item}")]


def make_ca_template(directory: Path) -> Path:
    """mitmproxy's CA files, as mitmproxy makes them in a fresh confdir; returns `directory`.

    Making a CA costs a proxy about half a second of CPU at start-up: the test session makes
    one template and MitmdumpProcess copies it into each fresh confdir (see `ca_template`).
    """
    from mitmproxy import certs
    from mitmproxy.options import CONF_BASENAME

    certs.CertStore.from_store(directory, CONF_BASENAME, 2048)
    return directory


def seed_ca(confdir: Path, template: Path | None) -> None:
    """Copy the CA files of `template` (modes kept) into `confdir` unless it has a CA already."""
    if template is None or (confdir / CA_FILE).exists():
        return
    confdir.mkdir(parents=True, exist_ok=True)
    for path in template.iterdir():
        shutil.copy2(path, confdir / path.name)


class _PreferH2Context(ssl.SSLContext):
    """Offers h2 before http/1.1, as browsers and curl do.

    httpx offers ["http/1.1", "h2"] inside a proxy tunnel and mitmproxy honours the
    client's order, so without this an httpx client never gets HTTP/2 from mitmproxy.
    """

    def set_alpn_protocols(self, alpn_protocols: Iterable[str]) -> None:
        super().set_alpn_protocols(sorted(alpn_protocols, key=lambda protocol: protocol != "h2"))


class MitmdumpProcess:
    """mitmdump (the binary next to sys.executable) with its confdir, home and logs in `workdir`.

    `addon`: load addon/vaultproxy_addon.py (False: plain mitmdump, for baselines).
    `upstream_ca`: PEM that upstream certificates are verified against.
    `options`: extra `--set name=value`; `args`: extra command-line arguments (e.g. `-w file`).
    `env`: extra environment (VAULTPROXY_HOME...): secrets go here or in files, never in argv.
    `hosts`: {glob: address}, e.g. {"*.example.com": "127.0.0.1"}, to reach loopback upstreams
    under test names (see hosts_addon.py). `port`: a fixed port (default: a free one).

    A confdir without a CA gets a copy of `ca_template`'s (when set: the test session sets it),
    so that mitmproxy does not make one at each start.
    """

    ca_template: Path | None = None

    def __init__(
        self,
        workdir: Path,
        *,
        addon: bool = True,
        upstream_ca: Path | None = None,
        options: Mapping[str, OptionValue] | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        hosts: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.confdir = workdir / "confdir"
        self.home = workdir / "home"
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        self._addon = addon
        self._upstream_ca = upstream_ca
        self._options = dict(options or {})
        self._args = list(args)
        self._env = dict(env or {})
        self._hosts = dict(hosts or {})
        self._fixed_port = port
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def ca_path(self) -> Path:
        """mitmproxy's CA certificate, generated in confdir at first start."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def proxies(self) -> dict[str, str]:
        """For requests: `session.proxies = proxy.proxies` (with trust_env off, see requests_session)."""
        return {"http": self.url, "https": self.url}

    def command(self) -> list[str]:
        cmd = [
            str(MITMDUMP),
            "--listen-host", LOOPBACK,
            "--listen-port", str(self.port),
            "--set", f"confdir={self.confdir}",
        ]
        if self._upstream_ca is not None:
            cmd += _format_option("ssl_verify_upstream_trusted_ca", str(self._upstream_ca))
        if self._addon:
            cmd += ["-s", str(ADDON_SCRIPT)]
        if self._hosts:
            cmd += ["-s", str(HOSTS_SCRIPT)]
            cmd += _format_option("test_hosts", [f"{glob}={address}" for glob, address in self._hosts.items()])
        for name, value in self._options.items():
            cmd += _format_option(name, value)
        return cmd + self._args

    def start(self) -> MitmdumpProcess:
        """Start and wait until mitmdump itself listens on the port.

        A free port can be taken by someone else before mitmdump binds it: then another
        port is tried. Any other early exit raises with everything mitmdump printed.
        """
        for directory in (self.workdir, self.confdir, self.home):
            directory.mkdir(parents=True, exist_ok=True)
        seed_ca(self.confdir, self.ca_template)
        attempts = 1 if self._fixed_port is not None else PORT_ATTEMPTS
        for _ in range(attempts):
            self.port = self._fixed_port or free_port()
            if self._launch():
                return self
            if "address already in use" not in self.output().lower():
                break
        raise RuntimeError(
            f"mitmdump exited with status {self._exit_status()} before listening on port {self.port}; "
            f"command: {self.command()}\n--- output ---\n{self.output()}"
        )

    def _launch(self) -> bool:
        """Spawn mitmdump; True once it listens, False if it exited first."""
        self._logs = [self.stdout_path.open("ab"), self.stderr_path.open("ab")]
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._logs[0],
            stderr=self._logs[1],
            # A wide "terminal": the dumper cuts flow lines (URLs) to the terminal width otherwise.
            env=child_env({"COLUMNS": "100000", **self._env}, home=self.home),
            cwd=self.workdir,
        )
        process = self._process
        try:
            wait_until(
                lambda: process.poll() is not None or is_listening(process.pid, self.port),
                STARTUP_TIMEOUT,
                f"mitmdump to listen on {LOOPBACK}:{self.port}",
            )
        except TimeoutError as exc:
            self.stop()
            raise TimeoutError(f"{exc}\n--- output ---\n{self.output()}") from None
        if process.poll() is None:
            return True
        self._close_logs()
        return False

    def _exit_status(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    @property
    def pid(self) -> int:
        """The mitmdump process's id (for /proc checks)."""
        if self._process is None:
            raise RuntimeError("mitmdump not started")
        return self._process.pid

    def peak_memory(self) -> int:
        """The most memory the process has held resident so far, in bytes (Linux: VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/PID/status")

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def output(self) -> str:
        """Everything mitmdump printed so far (stdout, then stderr): for leak checks and flow lines."""
        parts = [path.read_bytes() for path in (self.stdout_path, self.stderr_path) if path.exists()]
        return b"".join(parts).decode("utf-8", errors="replace")

    def wait_for_output(self, text: str, timeout: float = CLIENT_TIMEOUT) -> None:
        """Block until `text` appears in the output (mitmdump prints flows after they complete)."""
        wait_until(lambda: text in self.output(), timeout, f"{text!r} in mitmdump's output")

    def terminate(self) -> None:
        """Ask mitmdump to exit (SIGTERM) without waiting for it: stop() waits for it later."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()

    def stop(self) -> int | None:
        """Terminate (mitmdump then flushes -w files), kill if it does not exit; returns the exit status."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._close_logs()
        return self._process.returncode

    def _close_logs(self) -> None:
        for log in self._logs:
            log.close()
        self._logs = []

    def __enter__(self) -> MitmdumpProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def ssl_context(self, prefer_h2: bool = False) -> ssl.SSLContext:
        """A client context trusting mitmproxy's CA (what clients see for HTTPS through the proxy)."""
        context = (_PreferH2Context if prefer_h2 else ssl.SSLContext)(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(self.ca_path))
        return context

    def requests_session(self) -> requests.Session:
        """A requests session that always uses this proxy, loopback included, and its CA."""
        session = requests.Session()
        session.trust_env = False  # no NO_PROXY bypass, no env CA bundle, no .netrc
        session.proxies = self.proxies
        session.verify = str(self.ca_path)
        return session

    def httpx_client(self, http2: bool = False, **kwargs: Any) -> httpx.Client:
        """An httpx client through this proxy, trusting its CA.

        With http2=True, HTTPS requests speak HTTP/2 to the proxy, provided mitmproxy has
        not connected upstream before the client's TLS handshake: with an HTTP/1.1-only
        upstream, start the proxy with options={"connection_strategy": "lazy"}, otherwise
        mitmproxy mirrors the upstream's http/1.1 to the client.
        """
        return httpx.Client(
            proxy=self.url, verify=self.ssl_context(prefer_h2=http2), http2=http2,
            trust_env=False, timeout=CLIENT_TIMEOUT, **kwargs,
        )

    def websocket(self, url: str, **kwargs: Any) -> ClientConnection:
        """A websockets (sync) client connection through this proxy (HTTP CONNECT tunnel)."""
        if url.startswith("wss:"):
            kwargs.setdefault("ssl", self.ssl_context())
        return websocket_connect(url, proxy=self.url, open_timeout=CLIENT_TIMEOUT, **kwargs)


def audit_lines(vault_home: Path, path: str | None = None, *, count: int = 1) -> list[dict[str, Any]]:
    """The addon's audit log (audit.log in the vault home, a JSON object a request); only the
    requests for `path` (without query) when given. The proxy writes a resolved request's line
    within FLUSH_SECONDS: this waits for `count` such lines (at most CLIENT_TIMEOUT), or with
    `count=0`, for a line that must not come, a few flush intervals."""

    def lines() -> list[dict[str, Any]]:
        log = vault_home / "audit.log"
        every = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return [line for line in every if path is None or line["path"] == path]

    if count:
        wait_until(lambda: len(lines()) >= count, CLIENT_TIMEOUT, f"{count} audit line(s) for {path or 'any path'}")
    else:
        time.sleep(FLUSH_SECONDS * 3)
    return lines()


def audit_text(vault_home: Path) -> str:
    """The whole audit log once every line recorded so far is written (for leak checks)."""
    time.sleep(FLUSH_SECONDS * 3)
    return (vault_home / "audit.log").read_text()


def curl(
    proxy: MitmdumpProcess, url: str, *args: str, input: bytes | None = None, timeout: float = CLIENT_TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    """Run the curl binary through `proxy`, trusting its CA; returns the finished process (not checked).

    `--noproxy ''` and a proxy-free environment stop curl from bypassing the proxy for
    loopback. Put headers with placeholders in args freely; never a secret value.
    """
    command = [
        "curl", "--silent", "--show-error",
        "--proxy", proxy.url, "--noproxy", "",
        "--cacert", str(proxy.ca_path),
        *args, url,
    ]
    return subprocess.run(command, input=input, capture_output=True, env=child_env(), timeout=timeout, check=False)
