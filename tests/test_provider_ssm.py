"""AWS Systems Manager Parameter Store behind the vault, against moto's server over real HTTP:
String, StringList and SecureString, a whole path, batching, per-row errors, the CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli
from tests.support.moto import REGION, MotoServer, count_operations
from vaultcore.profiles import ConfigError, ProviderConfig, SecretMapping, dump_config, parse_config
from vaultcore.providers.base import StaticCredentials
from vaultcore.vault import Vault

HOST = "api.example.com"
KEYS = StaticCredentials("FAKESSMTEST000000001", "FAKE-ssm-secret-key-51c2")
SECURE = "FAKE-ssm-secure-db-password-6b1e"


@pytest.fixture
def ssm(moto: MotoServer) -> Any:
    return moto.client("ssm")


@pytest.fixture
def ssm_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The Parameter Store operations vaultcore makes in this test, by name."""
    return count_operations(monkeypatch, "ssm")


def params_config(moto: MotoServer, *secrets: SecretMapping, **changes: Any) -> ProviderConfig:
    return ProviderConfig(name="params", display_name="Params", region=REGION, provider="ssm",
                          endpoint_url=moto.endpoint_url, hosts=(HOST,), secrets=secrets, **changes)


@pytest.fixture
def vault(vault_home: Path, moto: MotoServer) -> Vault:
    vault = Vault(vault_home)
    vault.add_config(params_config(moto), KEYS)
    return vault


def test_every_parameter_type_and_a_whole_path(vault: Vault, ssm: Any, ssm_calls: Counter[str]) -> None:
    ssm.put_parameter(Name="/app/plain", Value="FAKE-plain", Type="String")
    ssm.put_parameter(Name="/app/list", Value="a,b,c", Type="StringList")
    ssm.put_parameter(Name="/app/secure", Value=SECURE, Type="SecureString")
    ssm.put_parameter(Name="/tree/db/user", Value="FAKE-user", Type="String")
    ssm.put_parameter(Name="/tree/db/password", Value=SECURE, Type="SecureString")
    ssm.put_parameter(Name="/tree/region", Value="eu", Type="String")
    for alias, name in (("plain", "/app/plain"), ("list", "/app/list"), ("secure", "/app/secure")):
        vault.add_secret(SecretMapping(alias, name))
    vault.add_secret(SecretMapping("tree", "/tree/", mode="json"))

    results = vault.fetch()
    assert all(r.error is None for r in results.values()), results
    assert vault.get("plain") == "FAKE-plain" and vault.get("list") == "a,b,c" and vault.get("secure") == SECURE
    assert vault.get("tree.db/password") == SECURE and vault.get("tree.db/user") == "FAKE-user" and vault.get("tree.region") == "eu"
    assert vault.resolve("<<vault:tree.db/password>>", HOST) == SECURE
    # Three names, one GetParameters call; the path one walk (moto pages by 10).
    assert ssm_calls["GetParameters"] == 1 and ssm_calls["GetParameter"] == 0 and ssm_calls["GetParametersByPath"] == 1
    assert SECURE not in json.dumps([vault.status(), vault.secret_rows()])


def test_batches_of_ten_and_one_by_one(vault: Vault, ssm: Any, ssm_calls: Counter[str]) -> None:
    for i in range(23):
        ssm.put_parameter(Name=f"/bulk/p{i}", Value=f"FAKE-v{i}", Type="SecureString")
    for i in range(23):
        vault.add_secret(SecretMapping(f"p{i}", f"/bulk/p{i}"))
    assert all(r.error is None for r in vault.fetch().values())
    assert ssm_calls["GetParameters"] == 3 and vault.get("p22") == "FAKE-v22"
    ssm_calls.clear()
    assert all(r.error is None for r in vault.fetch(["p0", "p1"], use_batch=False).values())
    assert ssm_calls == Counter({"GetParameter": 2})


def test_missing_parameter_is_a_row_error_and_the_cached_value_stays(vault: Vault, ssm: Any) -> None:
    ssm.put_parameter(Name="/app/token", Value="FAKE-token-1", Type="SecureString")
    vault.add_secret(SecretMapping("token", "/app/token"))
    vault.add_secret(SecretMapping("gone", "/app/gone"))
    vault.add_secret(SecretMapping("nothing", "/empty/", mode="json"))
    results = vault.fetch()
    assert results["token"].error is None
    assert results["gone"].error == "parameter not found: /app/gone" and results["gone"].error_code == "not_found"
    assert results["nothing"].error == "no parameters under /empty/"
    ssm.delete_parameter(Name="/app/token")
    assert vault.fetch(["token"])["token"].error_code == "not_found"
    assert vault.get("token") == "FAKE-token-1"  # the last good value keeps resolving
    row = next(r for r in vault.secret_rows() if r["alias"] == "token")
    assert row["status"] == "error" and "not found" in row["error"]


def test_move_to_local_rotation_and_refresh_plan(vault: Vault, ssm: Any) -> None:
    ssm.put_parameter(Name="/svc/db/user", Value="FAKE-u", Type="String")
    ssm.put_parameter(Name="/svc/db/pass", Value=SECURE, Type="SecureString")
    vault.add_secret(SecretMapping("svc", "/svc/", mode="json", refresh=60))
    assert vault.refresh_plan(0)[1] == ["svc"]  # never fetched: due at once
    vault.fetch()
    name, due, next_at = vault.refresh_plan(0)
    assert name == "params" and due == [] and next_at is not None
    assert vault.fetch_pending(["svc"], "params") == {}  # no rotation stages in Parameter Store
    assert sorted(vault.move_to_local("svc")) == ["svc", "svc.db/pass", "svc.db/user"]
    assert vault.config().secrets == () and vault.get("svc.db/pass") == SECURE


def test_invalid_files_name_the_line() -> None:
    text = "name: p\nprovider: ssm\nregion: us-east-1\nsecrets:\n  - alias: tree\n    secret_id: /tree/\n"
    with pytest.raises(ConfigError, match=r"^p.yaml:5: secrets\[0\].mode: a path \(ending in /\) fetches every parameter"):
        parse_config(text, "p.yaml")
    with pytest.raises(ConfigError, match=r"^p.yaml:6: secrets\[0\].secret_id: a path must start with /"):
        parse_config(text.replace("/tree/", "tree/") + "    mode: json\n", "p.yaml")
    with pytest.raises(ConfigError, match=r"^p.yaml:6: secrets\[0\].version_stage: unknown field"):
        parse_config(text.replace("  - alias: tree\n", "  - alias: tree\n    version_stage: AWSCURRENT\n"), "p.yaml")
    config = parse_config(text + "    mode: json\n", "p.yaml")
    assert config.provider == "ssm" and parse_config(dump_config(config), "p.yaml") == config


def test_cli_adds_fetches_exports_and_lists(tmp_path: Path, moto: MotoServer, ssm: Any) -> None:
    ssm.put_parameter(Name="/cli/key", Value=SECURE, Type="SecureString")
    home = tmp_path / "home"
    added = run_cli(home, "config", "add", "params", "--provider", "ssm", "--region", REGION,
                    "--endpoint-url", moto.endpoint_url, "--hosts", HOST, stdin=b"FAKECLI\nFAKE-cli-ssm-secret\n")
    assert added.returncode == 0, added.stderr
    assert b"saved configuration params" in added.stdout and b"connected as arn:aws:" in added.stdout
    assert run_cli(home, "secret", "add", "key", "--secret-id", "/cli/key").returncode == 0
    fetched = run_cli(home, "secret", "fetch", "--all")
    assert fetched.stdout == b"fetched 1 of 1\n", fetched.stderr
    exported = run_cli(home, "config", "export", "params").stdout.decode()
    assert "provider: ssm" in exported and "FAKE-cli-ssm-secret" not in exported and SECURE not in exported
    listed = json.loads(run_cli(home, "config", "list", "--json").stdout)
    assert listed[0]["provider"] == "ssm" and listed[0]["location"] == REGION and listed[0]["error"] is None
    wrong = run_cli(home, "config", "add", "x", "--provider", "ssm", "--region", REGION, "--address", "http://127.0.0.1:1")
    assert wrong.returncode == 2 and b"--address is a setting of vault, not of provider ssm" in wrong.stderr
    for output in (added, fetched):
        assert SECURE.encode() not in output.stdout + output.stderr
