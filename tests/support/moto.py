"""moto's server mode on loopback: a real HTTP endpoint speaking Secrets Manager, STS and IAM.

Clients made here always carry the endpoint URL and dummy credentials, so nothing can
fall through to real AWS. Also: IAM enforcement switched on for a block (`enforced_auth`),
and a count of the Secrets Manager operations vaultcore makes (`count_operations`).
"""

from __future__ import annotations

import json
import threading
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

from vaultcore.profiles import ProviderConfig
from vaultcore.providers import aws
from vaultcore.providers.aws import StaticCredentials

from .net import LOOPBACK

if TYPE_CHECKING:  # bench imports this module without pytest
    import pytest

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

    def _post(self, path: str, data: bytes) -> bytes:
        # Not urllib's default form type: moto would parse the body as a form and read it empty.
        headers = {"Content-Type": "text/plain"}
        request = urllib.request.Request(f"{self.endpoint_url}{path}", data=data, headers=headers, method="POST")
        with _DIRECT.open(request, timeout=60) as response:
            return response.read()

    def reset(self) -> None:
        """Forget every secret and resource (moto's POST /moto-api/reset)."""
        self._post("/moto-api/reset", b"")

    def allow_unauthenticated(self, count: str) -> str:
        """Let `count` more requests ("inf": all) skip IAM checks, "0" enforcing IAM from now on
        (moto's POST /moto-api/reset-auth, process-wide); returns the previous setting."""
        answer = json.loads(self._post("/moto-api/reset-auth", count.encode()))
        return answer["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]

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


READ_ACTIONS = ("secretsmanager:GetSecretValue", "secretsmanager:BatchGetSecretValue")


@dataclass(frozen=True)
class IamUsers:
    """Access keys of two IAM users: `reader` may do `reader_actions`, `nobody` nothing at all."""

    reader: StaticCredentials
    nobody: StaticCredentials


@contextmanager
def enforced_auth(moto: MotoServer, reader_actions: Sequence[str] = READ_ACTIONS) -> Iterator[IamUsers]:
    """IAM users made while moto is open, then moto's IAM enforcement on for the block
    (process-wide: it is always restored, other tests must not see it)."""
    iam = moto.client("iam")
    users = {}
    for role, actions in (("reader", list(reader_actions)), ("nobody", [])):
        user = f"{role}-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        if actions:
            policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
            iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        users[role] = StaticCredentials(key["AccessKeyId"], key["SecretAccessKey"])
    previous = moto.allow_unauthenticated("0")
    try:
        yield IamUsers(**users)
    finally:
        moto.allow_unauthenticated(previous)


def count_operations(monkeypatch: pytest.MonkeyPatch, service: str = "secrets-manager") -> Counter[str]:
    """Counts the operations of `service` (botocore's event name: secrets-manager, ssm) that
    vaultcore's fetches make, with a botocore event hook on each session it creates (clients
    inherit the session's handlers)."""
    counter: Counter[str] = Counter()
    lock = threading.Lock()  # fetch calls from several threads
    real_session_for = aws.session_for

    def count(model: Any, **_: Any) -> None:
        with lock:
            counter[model.name] += 1

    def counting_session_for(config: ProviderConfig, credentials: StaticCredentials | None) -> Any:
        session = real_session_for(config, credentials)
        session.events.register(f"before-call.{service}", count)
        return session

    monkeypatch.setattr(aws, "session_for", counting_session_for)
    return counter
