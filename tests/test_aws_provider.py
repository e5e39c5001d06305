"""The Secrets Manager client against moto's server mode on loopback, over real HTTP."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.moto import ACCOUNT_ID, REGION, MotoServer, enforced_auth
from tests.support.net import LOOPBACK, free_port
from tests.support.upstream import RecordingUpstream
from vaultcore.profiles import ProviderConfig, SecretMapping
from vaultcore.providers import aws
from vaultcore.providers.aws import FetchResult, ProviderError, StaticCredentials

KEYS = StaticCredentials("FAKEVAULTPROXYTEST01", "FAKE-secret-access-key-7c1d", "FAKE-session-token-5e2a")


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
    """Two secrets, then two users and moto's IAM enforcement for the test (see enforced_auth);
    the reader may not use BatchGetSecretValue."""
    for i in range(2):
        secrets_admin.create_secret(Name=f"{prefix}s{i}", SecretString=f"FAKE-guarded-{i}")
    with enforced_auth(moto_server, reader_actions=["secretsmanager:GetSecretValue"]) as users:
        yield Guarded([SecretMapping(f"s{i}", f"{prefix}s{i}") for i in range(2)], users.nobody, users.reader)


@pytest.mark.parametrize("credentials", [
    StaticCredentials("FAKEUNKNOWNKEY000001", "FAKE-never-issued-secret"),
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


def test_endpoint_down_is_unreachable() -> None:
    config = config_for(f"http://{LOOPBACK}:{free_port()}")  # nobody listens there
    results = aws.fetch(config, [SecretMapping("a", "x"), SecretMapping("b", "y", version_stage="AWSPREVIOUS")], KEYS)
    for result in results.values():
        assert result.value is None and result.error_code == "unreachable"
        assert result.error.startswith("endpoint unreachable: ")
    with pytest.raises(ProviderError) as caught:
        aws.test_connection(config, KEYS)
    assert caught.value.code == "unreachable"


def test_endpoint_that_never_answers_times_out() -> None:
    with RecordingUpstream(behaviour="hang") as endpoint:  # reads requests, never answers
        results = aws.fetch(config_for(endpoint.url), [SecretMapping("a", "x")], KEYS, read_timeout=0.5)
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
        "[team]\naws_access_key_id = FAKEPROFILETEST00001\naws_secret_access_key = FAKE-profile-secret\n"
    )
    config = config_for(moto_endpoint, credentials_source="profile", aws_profile="team")
    assert aws.session_for(config, None).get_credentials().access_key == "FAKEPROFILETEST00001"
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
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "FAKEENVTEST000000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "FAKE-env-secret")
    assert ok(aws.fetch(config, [SecretMapping("d", f"{prefix}d")], None)["d"]) == "FAKE-via-env"


def test_reprs_hide_secrets() -> None:
    assert KEYS.secret_access_key not in repr(KEYS) and KEYS.session_token not in repr(KEYS)
    assert KEYS.access_key_id in repr(KEYS)
    assert "FAKE-value" not in repr(FetchResult("a", "FAKE-value", "v1"))


def test_static_credentials_dict_round_trip() -> None:
    assert StaticCredentials.from_dict(KEYS.to_dict()) == KEYS
    plain = StaticCredentials("FAKE1", "FAKE-s")
    assert StaticCredentials.from_dict(plain.to_dict()) == plain
    with pytest.raises(ValueError) as caught:
        StaticCredentials.from_dict({"access_key_id": "FAKE1", "secret_access_key": ""})
    assert "secret_access_key" in str(caught.value)
