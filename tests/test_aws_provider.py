"""The Secrets Manager client against moto's server mode on loopback, over real HTTP."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.moto import ACCOUNT_ID, REGION, MotoServer
from vaultcore.profiles import ProviderConfig, SecretMapping
from vaultcore.providers import aws
from vaultcore.providers.aws import FetchResult, ProviderError, StaticCredentials

KEYS = StaticCredentials("AKIAVAULTPROXYTEST01", "FAKE-secret-access-key-7c1d", "FAKE-session-token-5e2a")


@pytest.fixture
def moto_endpoint(moto_server: MotoServer) -> str:
    return moto_server.endpoint_url


@pytest.fixture
def secrets_admin(moto_server: MotoServer) -> Any:
    return moto_server.client("secretsmanager")


@pytest.fixture
def prefix() -> str:
    """Moto's state lives as long as the server: each test uses its own secret names."""
    return f"t{uuid.uuid4().hex[:10]}/"


def config_for(endpoint: str, **changes: Any) -> ProviderConfig:
    return ProviderConfig(name="moto", display_name="Moto", region=REGION, endpoint_url=endpoint, **changes)


@pytest.fixture
def config(moto_endpoint: str) -> ProviderConfig:
    return config_for(moto_endpoint)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the Secrets Manager operations fetch makes, with a botocore event hook on the
    session it creates (clients inherit the session's handlers)."""
    counter: Counter[str] = Counter()
    lock = threading.Lock()  # fetch calls from several threads
    real_session_for = aws.session_for

    def count(model: Any, **_: Any) -> None:
        with lock:
            counter[model.name] += 1

    def counting_session_for(config: ProviderConfig, credentials: StaticCredentials | None) -> Any:
        session = real_session_for(config, credentials)
        session.events.register("before-call.secrets-manager", count)
        return session

    monkeypatch.setattr(aws, "session_for", counting_session_for)
    return counter


def ok(result: FetchResult) -> str | bytes:
    assert result.error is None and result.error_code is None, result.error
    assert result.value is not None and result.version_id
    return result.value


@pytest.mark.parametrize("use_batch", [True, False], ids=["batch", "serial"])
def test_fetch_plaintext_json_and_binary(secrets_admin: Any, prefix: str, config: ProviderConfig, use_batch: bool) -> None:
    nested = json.dumps({"user": "FAKE-user", "conn": {"host": "db.internal", "port": 5432}, "hosts": ["a", "b"]})
    binary = b"\x00\xffFAKE-binary\x80"
    secrets_admin.create_secret(Name=f"{prefix}plain", SecretString="FAKE-plain-value")
    secrets_admin.create_secret(Name=f"{prefix}json", SecretString=nested)
    arn = secrets_admin.create_secret(Name=f"{prefix}bin", SecretBinary=binary)["ARN"]
    mappings = [
        SecretMapping("plain", f"{prefix}plain"),
        SecretMapping("db", f"{prefix}json", mode="json"),
        SecretMapping("blob", arn),  # by ARN: the batch answer must be matched back by ARN
    ]
    results = aws.fetch(config, mappings, KEYS, use_batch=use_batch)
    assert set(results) == {"plain", "db", "blob"}
    assert ok(results["plain"]) == "FAKE-plain-value"
    assert ok(results["db"]) == nested  # raw text: JSON expansion is the vault's job
    assert ok(results["blob"]) == binary and isinstance(results["blob"].value, bytes)


@pytest.mark.parametrize(("use_batch", "expected"), [
    (True, {"BatchGetSecretValue": 3}),
    (False, {"GetSecretValue": 45}),
], ids=["batch", "serial"])
def test_45_secrets(secrets_admin: Any, prefix: str, config: ProviderConfig, calls: Counter[str],
                    use_batch: bool, expected: dict[str, int]) -> None:
    for i in range(45):
        secrets_admin.create_secret(Name=f"{prefix}s{i}", SecretString=f"FAKE-value-{i}")
    mappings = [SecretMapping(f"s{i}", f"{prefix}s{i}") for i in range(45)]
    seen: list[tuple[int, int]] = []
    results = aws.fetch(config, mappings, KEYS, use_batch=use_batch, max_workers=4,
                        progress=lambda done, total: seen.append((done, total)))
    assert {alias: ok(r) for alias, r in results.items()} == {f"s{i}": f"FAKE-value-{i}" for i in range(45)}
    assert calls == expected
    assert seen == [(n, 45) for n in range(1, 46)]


def test_version_stage(secrets_admin: Any, prefix: str, config: ProviderConfig, calls: Counter[str]) -> None:
    name = f"{prefix}rotated"
    secrets_admin.create_secret(Name=name, SecretString="FAKE-old-value")
    secrets_admin.put_secret_value(SecretId=name, SecretString="FAKE-new-value")
    mappings = [
        SecretMapping("current", name),
        SecretMapping("previous", name, version_stage="AWSPREVIOUS"),
        SecretMapping("pinned", name, version_stage="AWSCURRENT"),
    ]
    results = aws.fetch(config, mappings, KEYS)
    assert ok(results["current"]) == "FAKE-new-value"
    assert ok(results["pinned"]) == "FAKE-new-value"
    assert ok(results["previous"]) == "FAKE-old-value"
    assert results["previous"].version_id != results["current"].version_id
    assert calls == {"BatchGetSecretValue": 1, "GetSecretValue": 2}


def test_two_aliases_for_one_secret(secrets_admin: Any, prefix: str, config: ProviderConfig) -> None:
    secrets_admin.create_secret(Name=f"{prefix}shared", SecretString="FAKE-shared")
    results = aws.fetch(config, [SecretMapping("a", f"{prefix}shared"), SecretMapping("b", f"{prefix}shared")], KEYS)
    assert ok(results["a"]) == ok(results["b"]) == "FAKE-shared"


@pytest.mark.parametrize("use_batch", [True, False], ids=["batch", "serial"])
def test_missing_secret_is_an_error_row(secrets_admin: Any, prefix: str, config: ProviderConfig, use_batch: bool) -> None:
    secrets_admin.create_secret(Name=f"{prefix}here", SecretString="FAKE-present-value")
    mappings = [SecretMapping("here", f"{prefix}here"), SecretMapping("gone", f"{prefix}gone")]
    results = aws.fetch(config, mappings, KEYS, use_batch=use_batch)
    assert ok(results["here"]) == "FAKE-present-value"
    gone = results["gone"]
    assert (gone.value, gone.error_code, gone.error) == (None, "not_found", f"secret not found: {prefix}gone")
    assert "FAKE-present-value" not in repr(results)


@dataclass(frozen=True)
class Guarded:
    secrets: list[SecretMapping]
    nobody: StaticCredentials   # no permissions at all
    reader: StaticCredentials   # GetSecretValue only: BatchGetSecretValue is denied


@pytest.fixture
def guarded(moto_server: MotoServer, secrets_admin: Any, prefix: str) -> Iterator[Guarded]:
    """Two secrets and two users made while moto is open, then moto's IAM enforcement switched
    on for the test and restored afterwards (it is process-wide: other tests must not see it)."""
    for i in range(2):
        secrets_admin.create_secret(Name=f"{prefix}s{i}", SecretString=f"FAKE-guarded-{i}")
    iam = moto_server.client("iam")
    users = {}
    for role, actions in (("nobody", []), ("reader", ["secretsmanager:GetSecretValue"])):
        user = f"{role}-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        if actions:
            policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
            iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        users[role] = StaticCredentials(key["AccessKeyId"], key["SecretAccessKey"])
    # The body is the number of unauthenticated requests still allowed: 0 enforces IAM from now.
    reset_auth = f"{moto_server.endpoint_url}/moto-api/reset-auth"
    answer = requests.post(reset_auth, data=b"0", timeout=10)
    answer.raise_for_status()
    previous = answer.json()["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
    try:
        yield Guarded([SecretMapping(f"s{i}", f"{prefix}s{i}") for i in range(2)], **users)
    finally:
        requests.post(reset_auth, data=previous.encode(), timeout=10).raise_for_status()


@pytest.mark.parametrize("credentials", [
    StaticCredentials("AKIAUNKNOWNKEY000001", "FAKE-never-issued-secret"),
    pytest.param(None, id="right-key-id-wrong-secret"),
])
def test_invalid_credentials(guarded: Guarded, config: ProviderConfig, credentials: StaticCredentials | None) -> None:
    credentials = credentials or StaticCredentials(guarded.reader.access_key_id, "FAKE-wrong-secret-key")
    results = aws.fetch(config, guarded.secrets, credentials)
    for result in results.values():
        assert result.value is None and result.error_code == "invalid_credentials"
        assert result.error.startswith("credentials rejected (")
        assert result.error.endswith("fix them with `vaultproxy config set-credentials moto`")
        assert credentials.secret_access_key not in result.error
    with pytest.raises(ProviderError) as caught:
        aws.test_connection(config, credentials)
    assert caught.value.code == "invalid_credentials"
    assert credentials.secret_access_key not in str(caught.value)


def test_access_denied_after_batch_fallback(guarded: Guarded, config: ProviderConfig, calls: Counter[str]) -> None:
    results = aws.fetch(config, guarded.secrets, guarded.nobody)
    for result in results.values():
        assert result.value is None and result.error_code == "access_denied"
        assert result.error.startswith("access denied (AccessDenied")
        assert "GetSecretValue" in result.error
    assert calls == {"BatchGetSecretValue": 1, "GetSecretValue": 2}


def test_batch_denied_falls_back_per_secret(guarded: Guarded, config: ProviderConfig, calls: Counter[str]) -> None:
    results = aws.fetch(config, guarded.secrets, guarded.reader)
    assert {alias: ok(r) for alias, r in results.items()} == {"s0": "FAKE-guarded-0", "s1": "FAKE-guarded-1"}
    assert calls == {"BatchGetSecretValue": 1, "GetSecretValue": 2}
    identity = aws.test_connection(config, guarded.reader)
    assert identity.account == ACCOUNT_ID
    assert identity.arn.startswith(f"arn:aws:iam::{ACCOUNT_ID}:user/reader-")


def test_connection_ok(config: ProviderConfig) -> None:
    identity = aws.test_connection(config, KEYS)
    assert identity.account == ACCOUNT_ID
    assert identity.arn.startswith(f"arn:aws:sts::{ACCOUNT_ID}:") and identity.user_id


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_down_is_unreachable() -> None:
    config = config_for(f"http://127.0.0.1:{closed_port()}")
    results = aws.fetch(config, [SecretMapping("a", "x"), SecretMapping("b", "y", version_stage="AWSPREVIOUS")], KEYS)
    for result in results.values():
        assert result.value is None and result.error_code == "unreachable"
        assert result.error.startswith("endpoint unreachable: ")
    with pytest.raises(ProviderError) as caught:
        aws.test_connection(config, KEYS)
    assert caught.value.code == "unreachable"


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """Accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    held: list[socket.socket] = []

    def hold() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def test_endpoint_that_never_answers_times_out() -> None:
    with silent_endpoint() as endpoint:
        results = aws.fetch(config_for(endpoint), [SecretMapping("a", "x")], KEYS, read_timeout=0.5)
    assert results["a"].value is None and results["a"].error_code == "timeout"


def test_static_source_needs_credentials(config: ProviderConfig) -> None:
    with pytest.raises(ProviderError) as caught:
        aws.fetch(config, [SecretMapping("a", "x")], None)
    assert caught.value.code == "missing_credentials"
    assert "`vaultproxy config set-credentials moto`" in str(caught.value)


def test_profile_source(secrets_admin: Any, prefix: str, moto_endpoint: str, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    secrets_admin.create_secret(Name=f"{prefix}p", SecretString="FAKE-via-profile")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    (tmp_path / "aws-config").write_text("[profile team]\nregion = eu-west-1\n")
    (tmp_path / "aws-credentials").write_text(
        "[team]\naws_access_key_id = AKIAPROFILETEST00001\naws_secret_access_key = FAKE-profile-secret\n"
    )
    config = config_for(moto_endpoint, credentials_source="profile", aws_profile="team")
    assert aws.session_for(config, None).get_credentials().access_key == "AKIAPROFILETEST00001"
    assert ok(aws.fetch(config, [SecretMapping("p", f"{prefix}p")], None)["p"]) == "FAKE-via-profile"
    with pytest.raises(ProviderError) as caught:
        other = config_for(moto_endpoint, credentials_source="profile", aws_profile="other")
        aws.fetch(other, [SecretMapping("p", "x")], None)
    assert caught.value.code == "missing_credentials" and "'other'" in str(caught.value)


def test_default_source(secrets_admin: Any, prefix: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_for(moto_endpoint, credentials_source="default")
    with pytest.raises(ProviderError) as caught:
        aws.fetch(config, [SecretMapping("d", f"{prefix}d")], None)
    assert caught.value.code == "missing_credentials"
    secrets_admin.create_secret(Name=f"{prefix}d", SecretString="FAKE-via-env")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENVTEST000000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "FAKE-env-secret")
    assert ok(aws.fetch(config, [SecretMapping("d", f"{prefix}d")], None)["d"]) == "FAKE-via-env"


def test_reprs_hide_secrets() -> None:
    assert KEYS.secret_access_key not in repr(KEYS) and KEYS.session_token not in repr(KEYS)
    assert KEYS.access_key_id in repr(KEYS)
    assert "FAKE-value" not in repr(FetchResult("a", "FAKE-value", "v1"))


def test_static_credentials_dict_round_trip() -> None:
    assert StaticCredentials.from_dict(KEYS.to_dict()) == KEYS
    plain = StaticCredentials("AKIA1", "FAKE-s")
    assert StaticCredentials.from_dict(plain.to_dict()) == plain
    with pytest.raises(ValueError) as caught:
        StaticCredentials.from_dict({"access_key_id": "AKIA1", "secret_access_key": ""})
    assert "secret_access_key" in str(caught.value)
