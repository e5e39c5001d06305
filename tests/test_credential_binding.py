"""Credentials kept in the vault go only where they were set for: each record notes its
configuration's destination (the provider and the fields that say where credentials are sent
or whom they log in to); a file changed since (by `config import --replace`, by hand, by a
copy) gets no credentials until they are set again. And configuration files are changed under
the vault's lock, so that concurrent commands lose none of each other's changes.

In process, against 127.0.0.1 only: the providers' own servers are in test_provider_vault.py
and test_cli_aws.py."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import free_port
from tests.support.upstream import RecordingUpstream
from vaultcore import store as store_module
from vaultcore.profiles import ProviderConfig, SecretMapping, dump_config
from vaultcore.providers.base import PROVIDER_MODULES, ProviderError, StaticCredentials, schema_for
from vaultcore.providers.vault import VaultCredentials
from vaultcore.store import LOCK_FILE, VaultError
from vaultcore.vault import Vault

HOST = "api.example.com"
KEYS = StaticCredentials("FAKEBINDINGTEST00001", "FAKE-binding-secret-access-key-3e1d")
TOKEN = "FAKE-binding-vault-token-61f0"
FIX = "`vaultproxy config set-credentials team`"


def aws_config(**changes: Any) -> ProviderConfig:
    config = ProviderConfig(name="team", display_name="Team", region="us-east-1", endpoint_url="http://127.0.0.1:4566",
                            hosts=(HOST,), secrets=(SecretMapping("token", "prod/token"),))
    return dataclasses.replace(config, **changes)


def vault_config(address: str = "https://vault.example.com:8200", **options: Any) -> ProviderConfig:
    options = {"address": address, **options}
    return ProviderConfig(name="team", display_name="Team", provider="vault", hosts=(HOST,),
                          secrets=(SecretMapping("token", "app/token", options=(("field", "v"),)),),
                          options=tuple((k, v) for k, v in options.items() if v is not None))


def hand_edited(vault: Vault, config: ProviderConfig) -> None:
    """The file rewritten outside the CLI (an editor, a copy from a teammate)."""
    vault.configs.file(config.name).write_text(dump_config(config))


def refusal(vault: Vault, name: str = "team") -> str:
    """The message of the refusal to hand `name`'s kept credentials to its provider."""
    with pytest.raises(ProviderError) as refused:
        vault.credentials(name)
    assert refused.value.code == "destination_changed"
    message = str(refused.value)
    assert FIX in message and TOKEN not in message and KEYS.secret_access_key not in message
    return message


def unbind(vault: Vault, name: str = "team") -> None:
    """Make the record look like one kept before credentials were bound to a destination."""
    vault.store.update(lambda state: state["configs"][name].pop("destination", None))


# --- what each provider declares ---------------------------------------------------------------


def test_each_provider_declares_the_fields_that_decide_where_its_credentials_go() -> None:
    declared = {p: {f.name for f in schema_for(p).fields if f.destination} for p in PROVIDER_MODULES}
    assert declared == {
        "aws": {"region", "endpoint_url"},
        "ssm": {"region", "endpoint_url"},
        "vault": {"address", "namespace", "ca_cert", "method"},
        "command": set(),  # keeps no credentials in the vault
    }


# --- a changed destination: refused, and says what changed and the fix ---------------------------


@pytest.mark.parametrize(("changed", "says"), [
    (aws_config(endpoint_url="http://127.0.0.1:9999"), "endpoint_url is now http://127.0.0.1:9999, not http://127.0.0.1:4566"),
    (aws_config(endpoint_url=None), "endpoint_url is now unset, not http://127.0.0.1:4566"),
    (aws_config(region="eu-west-1"), "region is now eu-west-1, not us-east-1"),
    (aws_config(provider="ssm"), "provider is now ssm, not aws"),
], ids=["endpoint", "endpoint-dropped", "region", "provider"])
def test_aws_keys_stay_behind_when_the_destination_changes(vault_home: Path, changed: ProviderConfig, says: str) -> None:
    vault = Vault(vault_home)
    vault.add_config(aws_config(), KEYS)
    assert vault.credentials("team") == KEYS
    hand_edited(vault, changed)
    message = refusal(vault)
    assert message == f"AWS keys kept for team were set for another destination ({says}): they are not used until set again with {FIX}"
    vault.set_credentials("team", KEYS)  # the user says they belong there: bound to it from now on
    assert vault.credentials("team") == KEYS


@pytest.mark.parametrize(("changed", "says"), [
    (vault_config("http://127.0.0.1:18211"), "address is now http://127.0.0.1:18211, not https://vault.example.com:8200"),
    (vault_config(namespace="team-b"), "namespace is now team-b, not unset"),
    (vault_config(ca_cert="/tmp/someone-elses-ca.pem"), "ca_cert is now /tmp/someone-elses-ca.pem, not unset"),
    (vault_config("http://127.0.0.1:1", namespace="x"), "address is now http://127.0.0.1:1, not https://vault.example.com:8200; "
                                                        "namespace is now x, not unset"),
], ids=["address", "namespace", "ca_cert", "two"])
def test_a_vault_token_stays_behind_when_the_destination_changes(vault_home: Path, changed: ProviderConfig, says: str) -> None:
    vault = Vault(vault_home)
    vault.add_config(vault_config(), VaultCredentials(token=TOKEN))
    hand_edited(vault, changed)
    assert f"Vault credentials kept for team were set for another destination ({says}): " in refusal(vault)


def test_changes_that_send_nothing_elsewhere_keep_the_credentials(vault_home: Path) -> None:
    vault = Vault(vault_home)
    vault.add_config(vault_config(), VaultCredentials(token=TOKEN))
    hand_edited(vault, dataclasses.replace(vault_config(mount="kv", kv_version=1), hosts=("other.example.com",), refresh=60,
                                           display_name="Renamed", secrets=()))
    assert vault.credentials("team") == VaultCredentials(token=TOKEN)
    hand_edited(vault, vault_config(method="approle"))  # logging in another way is another destination
    assert "method is now approle, not unset" in refusal(vault)


def test_a_moved_configuration_never_hands_its_credentials_to_the_provider(vault_home: Path) -> None:
    """Fetch and test fail with the refusal; nothing reaches the new address."""
    with RecordingUpstream() as elsewhere:
        vault = Vault(vault_home)
        vault.add_config(vault_config(), VaultCredentials(token=TOKEN))
        hand_edited(vault, vault_config(elsewhere.url))
        (result,) = vault.fetch().values()
        assert result.error_code == "destination_changed" and f"address is now {elsewhere.url}" in (result.error or "")
        assert f"address is now {elsewhere.url}" in (vault.status()["config_error"] or "")  # configuration-wide
        with pytest.raises(ProviderError, match="were set for another destination"):
            vault.test_config()
        assert not elsewhere.requests, "a request reached the new address"
        assert TOKEN.encode() not in elsewhere.all_bytes(), "the kept token reached the new address"


# --- records kept before this change ----------------------------------------------------------


def test_import_replace_binds_an_old_record_to_the_configuration_it_replaces(vault_home: Path, tmp_path: Path) -> None:
    vault = Vault(vault_home)
    vault.add_config(vault_config(), VaultCredentials(token=TOKEN))
    unbind(vault)
    shared = tmp_path / "team.yaml"
    shared.write_text(dump_config(vault_config("http://127.0.0.1:18211")))
    vault.import_config(shared, replace=True)
    assert "address is now http://127.0.0.1:18211, not https://vault.example.com:8200" in refusal(vault)
    shared.write_text(dump_config(vault_config()))  # the old address again: they fit again
    vault.import_config(shared, replace=True)
    assert vault.credentials("team") == VaultCredentials(token=TOKEN)


def test_import_over_leftover_credentials_of_an_unknown_destination_refuses_them(vault_home: Path, tmp_path: Path) -> None:
    """The file was deleted by hand, its credentials stayed in the vault: nothing says where they belonged."""
    vault = Vault(vault_home)
    vault.add_config(vault_config(), VaultCredentials(token=TOKEN))
    unbind(vault)
    vault.configs.file("team").unlink()
    shared = tmp_path / "team.yaml"
    shared.write_text(dump_config(vault_config("http://127.0.0.1:18211")))
    vault.import_config(shared)
    assert "Vault credentials kept for team are left from before its file was imported" in refusal(vault)


def test_an_old_record_is_bound_where_it_is_first_used(vault_home: Path) -> None:
    """Nothing says where an old record belongs until it is used: then its configuration's
    destination is noted, and a change after that is caught."""
    closed = f"http://127.0.0.1:{free_port()}"
    vault = Vault(vault_home)
    vault.add_config(vault_config(closed), VaultCredentials(token=TOKEN))
    unbind(vault)
    assert vault.credentials("team") == VaultCredentials(token=TOKEN)  # taken as bound to the current file
    assert vault.fetch()["token"].error_code == "unreachable"  # used: bound to it
    hand_edited(vault, vault_config("http://127.0.0.1:18211"))
    assert f"address is now http://127.0.0.1:18211, not {closed}" in refusal(vault)


# --- the lock around configuration files ---------------------------------------------------------


@pytest.fixture
def short_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock that cannot be had fails in a second, not thirty."""
    monkeypatch.setattr(store_module, "LOCK_TIMEOUT_SECONDS", 1.0)


def test_the_vaults_lock_is_reentrant_in_the_thread_that_holds_it(vault_home: Path, short_lock: None) -> None:
    vault = Vault(vault_home)
    with vault.store.locked():
        vault.store.update(lambda state: state.update(active_config=None))
        with vault.store.locked():
            vault.store.update(lambda state: state.update(local={}))
        outcome: list[str] = []
        other = threading.Thread(target=lambda: outcome.append(write_or_why(vault)))
        other.start()
        other.join()
        assert outcome == ["locked"]  # another thread of this process waits for it like another process
    assert vault.state() == {"active_config": None, "local": {}}


def write_or_why(vault: Vault) -> str:
    try:
        vault.store.update(lambda state: None)
    except VaultError as e:
        return "locked" if "is locked by another vaultproxy process" in str(e) else "failed"
    return "written"


def test_configuration_changes_wait_for_the_vaults_lock(vault_home: Path) -> None:
    vault = Vault(vault_home)
    vault.add_config(aws_config(secrets=()), KEYS)
    done: list[str] = []
    fd = os.open(vault_home / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another vaultproxy process holds it
        adder = threading.Thread(target=lambda: done.append(vault.add_secret(SecretMapping("late", "prod/late")).name))
        adder.start()
        time.sleep(0.5)
        assert not done and vault.configs.load("team").secrets == (), "the file was changed under another's lock"
    finally:
        os.close(fd)
    adder.join(10)
    assert done == ["team"] and [m.alias for m in vault.configs.load("team").secrets] == ["late"]
