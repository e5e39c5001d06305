"""moto's server mode on loopback: a real HTTP endpoint speaking Secrets Manager and STS.

Clients made here always carry the endpoint URL and dummy credentials, so nothing can
fall through to real AWS.
"""

from __future__ import annotations

import urllib.request
from typing import Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

from .net import LOOPBACK

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
# Proxies bypassed explicitly: moto is on loopback and must be reached directly.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class MotoServer:
    """A ThreadedMotoServer on 127.0.0.1 (port picked by the OS at bind time, so no race)."""

    def __init__(self) -> None:
        self._server: ThreadedMotoServer | None = None
        self.port = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> MotoServer:
        self._server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def reset(self) -> None:
        """Forget every secret and resource (moto's POST /moto-api/reset)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", data=b"", method="POST")
        with _DIRECT.open(request, timeout=60) as response:
            response.read()

    def client(self, service: str = "secretsmanager", **kwargs: Any) -> Any:
        """A boto3 client for this server with dummy credentials, region us-east-1, no proxy, no retries."""
        session = boto3.session.Session(region_name=REGION, **CREDENTIALS)
        config = Config(proxies={}, retries={"max_attempts": 1, "mode": "standard"})
        return session.client(service, endpoint_url=self.endpoint_url, config=config, **kwargs)

    def aws_env(self) -> dict[str, str]:
        """Environment for a child process whose boto3 default chain should reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
