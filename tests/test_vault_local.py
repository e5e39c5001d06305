"""The Vault facade for local secrets: set/get/unset, validation, resolution through the
index and its host/origin/plaintext policy, shadowing, and the proxy's snapshot: when it is stale."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from vaultcore.index import Destination, Secret, SecretIndex
from vaultcore.placeholders import Context, SubstitutionError
from vaultcore.profiles import ConfigDirectory, ProviderConfig, SecretMapping
from vaultcore.store import State, VaultError
from vaultcore.vault import MAX_VALUE_BYTES, Vault

FAKE_TOKEN = "FAKE-token-5d2e8b1f"
FAKE_OTHER = "FAKE-other-a93c7710"
FAKE_PROVIDER = "FAKE-provider-value-44e1"
FAKE_BINARY = b"\xff\xfeFAKE-binary\x00\x80\xc3"


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return Vault(tmp_path / "home")


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def refusal(vault: Vault, text: str, host: str, **kwargs: str) -> SubstitutionError:
    """The SubstitutionError that resolving must raise; it never carries a value."""
    with pytest.raises(SubstitutionError) as caught:
        vault.resolve(text, host, **kwargs)  # type: ignore[arg-type]
    error = caught.value
    for value in (FAKE_TOKEN, FAKE_OTHER, FAKE_PROVIDER):
        assert value not in str(error) and value not in repr(error.args)
    return error


# --- set / get / unset ----------------------------------------------------------------------


def test_set_get_unset_and_keys(vault: Vault) -> None:
    vault.set("api/token", FAKE_TOKEN, hosts=["api.example.com"])
    vault.set("other.key_2-x", FAKE_OTHER, hosts=("*.example.com",), origins=["http://localhost:3000"])
    assert vault.get("api/token") == FAKE_TOKEN
    assert vault.get("other.key_2-x") == FAKE_OTHER
    assert sorted(vault.keys()) == ["api/token", "other.key_2-x"]
    listing = {row["key"]: row for row in vault.local_secrets()}
    assert listing["api/token"]["hosts"] == ["api.example.com"]
    assert listing["other.key_2-x"]["origins"] == ["http://localhost:3000"]
    assert FAKE_TOKEN not in repr(listing) and FAKE_OTHER not in repr(listing)

    vault.set("api/token", FAKE_OTHER)  # replace the value
    assert vault.get("api/token") == FAKE_OTHER

    vault.unset("api/token")
    assert vault.keys() == ["other.key_2-x"]
    with pytest.raises(VaultError, match="unknown key") as caught:
        vault.get("api/token")
    assert FAKE_OTHER not in str(caught.value)
    with pytest.raises(VaultError, match="no local secret"):
        vault.unset("api/token")

    assert files_containing(vault.home, FAKE_TOKEN.encode()) == []
    assert files_containing(vault.home, FAKE_OTHER.encode()) == []


def test_setting_again_without_hosts_keeps_hosts_and_origins(vault: Vault) -> None:
    vault.set("k", FAKE_TOKEN, hosts=["api.example.com"], origins=["http://localhost:3000"])
    vault.set("k", FAKE_OTHER)
    [row] = vault.local_secrets()
    assert row["hosts"] == ["api.example.com"] and row["origins"] == ["http://localhost:3000"]

    vault.set("k", FAKE_OTHER, hosts=["b.example.com"])  # given: replaced, origins still kept
    [row] = vault.local_secrets()
    assert row["hosts"] == ["b.example.com"] and row["origins"] == ["http://localhost:3000"]

    vault.set("k", FAKE_OTHER, hosts=[], origins=[])  # given empty: cleared
    [row] = vault.local_secrets()
    assert row["hosts"] == [] and row["origins"] == []


@pytest.mark.parametrize(
    "key",
    ["", "a b", " a", "a\n", "x" * 257, "clé", "ключ", "a:b", "a|b", "<<vault:a>>", "a\x00"],
    ids=["empty", "space", "leading-space", "newline", "257-chars", "accent", "cyrillic", "colon", "pipe", "placeholder", "nul"],
)
def test_invalid_key_names_are_refused(vault: Vault, key: str) -> None:
    with pytest.raises(VaultError, match="invalid key") as caught:
        vault.set(key, FAKE_TOKEN, hosts=["h"])
    assert FAKE_TOKEN not in str(caught.value)
    assert not (vault.home / "vault.enc").exists()


def test_longest_key_is_accepted(vault: Vault) -> None:
    key = "k" * 256
    vault.set(key, FAKE_TOKEN, hosts=["h"])
    assert vault.get(key) == FAKE_TOKEN


@pytest.mark.parametrize("empty", ["", b""], ids=["str", "bytes"])
def test_empty_value_is_refused(vault: Vault, empty: str | bytes) -> None:
    with pytest.raises(VaultError, match="empty"):
        vault.set("k", empty, hosts=["h"])
    assert vault.keys() == []


def test_value_size_limit_is_one_mebibyte_of_utf8(vault: Vault) -> None:
    assert MAX_VALUE_BYTES == 1024 * 1024
    biggest = "v" * MAX_VALUE_BYTES
    vault.set("big", biggest, hosts=["h"])
    assert vault.get("big") == biggest
    wide = "é" * (MAX_VALUE_BYTES // 2)  # 2 bytes each: exactly at the limit
    vault.set("wide", wide, hosts=["h"])
    assert vault.get("wide") == wide

    for too_big in ("v" * (MAX_VALUE_BYTES + 1), wide + "é", b"\x00" * (MAX_VALUE_BYTES + 1)):
        with pytest.raises(VaultError, match="at most") as caught:
            vault.set("big", too_big, hosts=["h"])
        assert len(str(caught.value)) < 200
    assert vault.get("big") == biggest


def test_binary_values_round_trip_as_bytes(vault: Vault) -> None:
    vault.set("bin", FAKE_BINARY, hosts=["h"])
    vault.set("text", FAKE_TOKEN, hosts=["h"])
    fresh = Vault(vault.home)
    assert fresh.get("bin") == FAKE_BINARY and isinstance(fresh.get("bin"), bytes)
    assert fresh.get("text") == FAKE_TOKEN and isinstance(fresh.get("text"), str)
    assert files_containing(vault.home, b"FAKE-binary") == []


# --- resolution through the index --------------------------------------------------------------


def test_resolve_for_an_allowed_host(vault: Vault) -> None:
    vault.set("tok", FAKE_TOKEN, hosts=["api.example.com", "*.example.org"])
    assert vault.resolve("Bearer <<vault:tok>>", "api.example.com") == f"Bearer {FAKE_TOKEN}"
    assert vault.resolve("Bearer <<vault:tok>>", "API.Example.com.") == f"Bearer {FAKE_TOKEN}"
    assert vault.resolve("x=<<vault:tok>>", "deep.sub.example.org") == f"x={FAKE_TOKEN}"
    assert vault.resolve("no placeholder here", "anything.test") == "no placeholder here"


def test_resolve_escapes_for_the_context(vault: Vault) -> None:
    vault.set("odd", 'a b/"c"&d', hosts=["h.test"])
    assert vault.resolve("/p?q=<<vault:odd>>", "h.test", Context.URL) == "/p?q=a%20b%2F%22c%22%26d"
    assert vault.resolve('{"t": "<<vault:odd>>"}', "h.test", Context.JSON) == '{"t": "a b/\\"c\\"&d"}'
    assert vault.resolve("t=<<vault:odd>>", "h.test", Context.FORM) == "t=a+b%2F%22c%22%26d"


def test_resolve_refuses_a_host_not_allowed(vault: Vault) -> None:
    vault.set("tok", FAKE_TOKEN, hosts=["api.example.com", "*.example.org"])
    for host in ("evil.test", "api.example.com.evil.test", "example.org", "xapi.example.com"):
        error = refusal(vault, "Bearer <<vault:tok>>", host)
        assert error.code == "host_not_allowed" and error.key == "tok"
        assert host in str(error)


def test_resolve_refuses_a_secret_without_hosts_rule_and_says_how_to_add_one(vault: Vault) -> None:
    vault.set("tok", FAKE_TOKEN)
    error = refusal(vault, "<<vault:tok>>", "api.example.com")
    assert error.code == "no_hosts_rule"
    assert "vaultproxy local set tok --hosts api.example.com" in str(error)


def test_resolve_refuses_an_unknown_key(vault: Vault) -> None:
    vault.set("tok", FAKE_TOKEN, hosts=["*"])
    error = refusal(vault, "<<vault:tok>> <<vault:nope>>", "api.example.com")
    assert error.code == "unknown_key" and error.key == "nope"


def test_resolve_for_a_web_origin_needs_the_origin_allowed(vault: Vault) -> None:
    vault.set("tok", FAKE_TOKEN, hosts=["api.example.com"])
    vault.set("app", FAKE_OTHER, hosts=["api.example.com"], origins=["http://localhost:3000"])

    error = refusal(vault, "<<vault:tok>>", "api.example.com", origin="https://evil.test")
    assert error.code == "origin_not_allowed" and "--origins https://evil.test" in str(error)
    assert refusal(vault, "<<vault:app>>", "api.example.com", origin="http://localhost:3001").code == "origin_not_allowed"
    assert refusal(vault, "<<vault:app>>", "api.example.com", origin="null").code == "origin_not_allowed"

    assert vault.resolve("<<vault:app>>", "api.example.com", origin="http://localhost:3000") == FAKE_OTHER
    assert vault.resolve("<<vault:app>>", "api.example.com") == FAKE_OTHER  # no Origin: not a web page
    # the host rule still applies to an allowed origin
    assert refusal(vault, "<<vault:app>>", "evil.test", origin="http://localhost:3000").code == "host_not_allowed"


def test_resolve_over_plain_http_only_to_loopback(vault: Vault) -> None:
    vault.set("tok", FAKE_TOKEN, hosts=["api.example.com", "127.0.0.1", "localhost", "::1", "app.localhost"])
    error = refusal(vault, "<<vault:tok>>", "api.example.com", scheme="http")
    assert error.code == "plaintext_not_allowed" and "https" in str(error)
    for loopback in ("127.0.0.1", "localhost", "[::1]"):
        assert vault.resolve("<<vault:tok>>", loopback, scheme="http") == FAKE_TOKEN
    assert refusal(vault, "<<vault:tok>>", "app.localhost", scheme="http").code == "plaintext_not_allowed"  # DNS may answer
    assert vault.resolve("<<vault:tok>>", "api.example.com", scheme="https") == FAKE_TOKEN


def test_index_check_allows_plaintext_when_told() -> None:
    index = SecretIndex(local_secrets=[Secret("tok", FAKE_TOKEN, ("api.example.com",))])
    with pytest.raises(SubstitutionError, match="plain HTTP"):
        index.check("tok", Destination("api.example.com", "http"))
    assert index.check("tok", Destination("api.example.com", "http"), allow_plaintext=True).value == FAKE_TOKEN


def test_lookup_keeps_unknown_keys_only_when_asked() -> None:
    index = SecretIndex(local_secrets=[Secret("tok", FAKE_TOKEN, ("h.test",))])
    keep = index.lookup_for(Destination("h.test"), keep_unknown=True)
    assert keep("nope") is None and keep("tok") == FAKE_TOKEN
    with pytest.raises(SubstitutionError) as caught:
        index.lookup_for(Destination("other.test"), keep_unknown=True)("tok")
    assert caught.value.code == "host_not_allowed"  # keep_unknown never relaxes the policy
    with pytest.raises(SubstitutionError, match="unknown key"):
        index.lookup_for(Destination("h.test"))("nope")


# --- shadowing -------------------------------------------------------------------------------


def test_provider_secret_shadows_a_local_one_with_the_same_key() -> None:
    provider = Secret("shared", FAKE_PROVIDER, ("api.example.com",), source="aws:prod")
    local = [Secret("shared", FAKE_TOKEN, ("*",)), Secret("mine", FAKE_OTHER, ("*",))]
    index = SecretIndex([provider], local)
    assert index.get("shared") is provider
    assert index.shadowed == {"shared": "aws:prod"}
    assert {s.key for s in index.secrets()} == {"shared", "mine"} and len(index) == 2
    # the provider secret's own hosts rule applies, not the shadowed local one's
    assert index.check("shared", Destination("api.example.com")).value == FAKE_PROVIDER
    with pytest.raises(SubstitutionError) as caught:
        index.check("shared", Destination("other.test"))
    assert caught.value.code == "host_not_allowed"
    assert FAKE_TOKEN not in repr(index.get("shared")) and FAKE_PROVIDER not in repr(index.get("shared"))


def test_status_reports_a_shadowed_local_secret(vault: Vault) -> None:
    """A configuration with a cached value (the state a fetch leaves, per vault.py's layout)."""
    vault.set("shared", FAKE_TOKEN, hosts=["*"])
    vault.set("mine", FAKE_OTHER, hosts=["*"])
    ConfigDirectory(vault.home / "configs").save(
        ProviderConfig(name="prod", display_name="Prod", region="us-east-1", hosts=("api.example.com",),
                       secrets=(SecretMapping("shared", "prod/shared"),))
    )
    cache = {"shared": {"secret_id": "prod/shared", "version_stage": None, "value": FAKE_PROVIDER, "binary": False,
                        "fetched_at": "2025-01-01T00:00:00+00:00"}}
    vault.store.update(lambda state: state.update(active_config="prod", configs={"prod": {"cache": cache}}))

    assert vault.get("shared") == FAKE_PROVIDER
    assert vault.resolve("<<vault:shared>>", "api.example.com") == FAKE_PROVIDER
    status = vault.status()
    rows = [(row["key"], row["source"], row.get("shadowed_by")) for row in status["keys"]]
    assert ("shared", "aws:prod", None) in rows
    assert ("shared", "local", "aws:prod") in rows
    assert ("mine", "local", None) in rows
    assert status["active_config"] == "prod"
    for value in (FAKE_TOKEN, FAKE_OTHER, FAKE_PROVIDER):
        assert value not in repr(status)
    with pytest.raises(VaultError, match="comes from configuration 'prod'"):
        vault.set("shared", FAKE_OTHER)


# --- the reload signature: is the proxy's snapshot still current? ------------------------------


def test_snapshot_is_stale_after_every_write(vault: Vault) -> None:
    snapshot = vault.snapshot()  # no vault file yet: its creation is a change too
    for i in range(40):
        # same size every time, and the same value half the time: only the write itself differs
        value = FAKE_TOKEN if i % 2 else FAKE_OTHER
        vault.set("k", value, hosts=["h"])
        assert snapshot.is_stale(), i
        snapshot = vault.snapshot(snapshot)
        assert not snapshot.is_stale() and snapshot.signature == vault.signature()
        assert snapshot.index.get("k").value == value
    vault.unset("k")
    assert snapshot.is_stale()


def test_only_the_active_configuration_file_is_watched(vault: Vault) -> None:
    vault.add_config(ProviderConfig(name="prod", display_name="Prod", region="us-east-1", credentials_source="default"))
    snapshot = vault.snapshot()
    assert snapshot.is_stale() is False and snapshot.config is not None and snapshot.config.name == "prod"
    vault.configs.save(ProviderConfig(name="staging", display_name="Staging", region="us-east-1"))
    assert snapshot.is_stale()  # renamed into configs/: its mtime changed
    snapshot = vault.snapshot(snapshot)
    # Edited in place (same inode, configs/ untouched), as some editors do: only the active file counts.
    with vault.configs.file("staging").open("a") as f:
        f.write("# another configuration\n")
    assert not snapshot.is_stale()
    with vault.configs.file("prod").open("a") as f:
        f.write("# the active one\n")
    assert snapshot.is_stale()


def test_a_write_during_a_rebuild_is_seen_by_the_next_check(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file is stamped before it is read: a write landing mid-build leaves the snapshot stale."""
    vault.add_config(ProviderConfig(name="prod", display_name="Prod", region="us-east-1", credentials_source="default"))
    vault.set("k", FAKE_TOKEN, hosts=["h"])
    other = Vault(vault.home)  # another process's CLI
    read_state, load_config = vault.state, vault.configs.load

    def read_then_write() -> State:
        state = read_state()
        other.set("k", FAKE_OTHER)
        return state

    def load_then_save(name: str) -> ProviderConfig:
        config = load_config(name)
        other.configs.save(dataclasses.replace(config, display_name="Prod again"))
        return config

    monkeypatch.setattr(vault, "state", read_then_write)
    snapshot = vault.snapshot()
    assert snapshot.index.get("k").value == FAKE_TOKEN and snapshot.is_stale()
    monkeypatch.setattr(vault, "state", read_state)
    monkeypatch.setattr(vault.configs, "load", load_then_save)
    snapshot = vault.snapshot(snapshot)
    assert snapshot.index.get("k").value == FAKE_OTHER and snapshot.is_stale()


def test_vault_on_an_unreadable_vault_file_says_so(vault: Vault) -> None:
    vault.set("k", FAKE_TOKEN, hosts=["h"])
    snapshot = vault.snapshot()
    path = vault.home / "vault.enc"
    path.write_bytes(os.urandom(64))
    assert snapshot.is_stale()
    calls = (vault.keys, lambda: vault.get("k"), vault.status, lambda: vault.set("k", FAKE_OTHER), lambda: vault.snapshot(snapshot))
    for call in calls:
        with pytest.raises(VaultError, match="not a vaultproxy vault"):
            call()
